//! What the end-to-end workflow tests share: a real server on 127.0.0.1:0
//! with a manual clock, a webhook receiver on loopback, and tenant "Acme
//! Robotics" set up as the demo sets it up (every prebuilt plugin installed,
//! see `cairn::demo::set_up`).

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod child;

use std::net::SocketAddr;
use std::time::Duration;

use cairn::clock::Clock;
use cairn::demo::{self, Client, HookReceiver, ReceivedHook, Scenario, start_receiver, wait_for};
use cairn::runtime::RuntimeSettings;
use cairn::server::{self, Server, ServerConfig};
use reqwest::Method;
use serde_json::{Value, json};

/// The admin key every test server registers.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";
/// The secret the demo's webhook installs sign with.
pub const WEBHOOK_SECRET: &str = "demo-secret-not-for-production";
/// Monday 2026-11-23 08:00 UTC (09:00 in Berlin, the tenant's zone).
pub const MONDAY_0800_UTC: i64 = 1_795_420_800_000;
/// One day, ms.
pub const DAY: i64 = 86_400_000;
/// How long to wait for the background loops to catch up.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running test world.
pub struct World {
    /// The server.
    pub server: Server,
    /// Its clock (manual).
    pub clock: Clock,
    /// Receives the webhooks (`email`, `sales`, `cs`).
    pub receiver: HookReceiver,
    /// Tenant "Acme Robotics" and its installs.
    pub acme: Scenario,
}

/// Start a server on `database_url` with a manual clock at `start_ms`.
pub async fn start_server(database_url: &str, clock: Clock) -> Server {
    let cache = std::env::temp_dir().join(format!("cairn-e2e-cache-{}", std::process::id()));
    let config = ServerConfig {
        database_url: database_url.to_string(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        runtime: RuntimeSettings { allow_private_network: true, cache_dir: Some(cache), ..RuntimeSettings::default() },
        clock,
        admin_key: Some(ADMIN_KEY.into()),
        run_pipeline: true,
    };
    server::start(config).await.expect("server starts")
}

impl World {
    /// A server on `database_url`, the receiver, and tenant Acme set up.
    pub async fn start(database_url: &str) -> World {
        let clock = Clock::manual(MONDAY_0800_UTC);
        let server = start_server(database_url, clock.clone()).await;
        let receiver = start_receiver(WEBHOOK_SECRET).await.expect("receiver");
        let hooks = format!("http://{}", receiver.addr);
        let acme = demo::set_up(&server.url(), ADMIN_KEY, &hooks).await.expect("tenant set up");
        World { server, clock, receiver, acme }
    }

    /// The tenant's client.
    pub fn client(&self) -> &Client {
        &self.acme.client
    }

    /// An admin client.
    pub fn admin(&self) -> Client {
        Client::new(&self.server.url(), ADMIN_KEY)
    }

    /// Create a contact; returns its id.
    pub async fn contact(&self, body: Value) -> String {
        let c = self.client().ok(Method::POST, "/v1/contacts", Some(body)).await.expect("contact created");
        c["id"].as_str().expect("id").to_string()
    }

    /// GET a path as the tenant.
    pub async fn get(&self, path: &str) -> Value {
        self.client().ok(Method::GET, path, None).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// POST an event for a contact.
    pub async fn event(&self, contact_id: &str, kind: &str, properties: Value) {
        let ev = json!({"contact_id": contact_id, "kind": kind, "properties": properties});
        self.client().ok(Method::POST, "/v1/events", Some(ev)).await.expect("event accepted");
    }

    /// Webhooks received on `/hooks/{name}` so far.
    pub fn hooks(&self, name: &str) -> Vec<ReceivedHook> {
        self.receiver
            .received
            .lock()
            .map(|v| v.iter().filter(|h| h.name == name).cloned().collect())
            .unwrap_or_default()
    }

    /// Wait until at least `n` webhooks arrived on `/hooks/{name}`.
    pub async fn wait_hooks(&self, name: &str, n: usize) -> Vec<ReceivedHook> {
        wait_for(PATIENCE, || async {
            let got = self.hooks(name);
            Ok((got.len() >= n).then_some(got))
        })
        .await
        .unwrap_or_else(|e| panic!("waiting for {n} webhooks on /hooks/{name} (have {}): {e}", self.hooks(name).len()))
    }

    /// The runs of `workflow` for `contact` (newest first).
    pub async fn runs(&self, workflow: &str, contact: &str) -> Vec<Value> {
        let page = self.get(&format!("/v1/runs?workflow_id={workflow}&contact_id={contact}")).await;
        page["items"].as_array().cloned().unwrap_or_default()
    }

    /// Wait for the (single) run of `workflow` for `contact` to exist.
    pub async fn wait_run(&self, workflow: &str, contact: &str) -> String {
        wait_for(PATIENCE, || async {
            Ok(self.runs(workflow, contact).await.first().and_then(|r| r["id"].as_str().map(str::to_string)))
        })
        .await
        .unwrap_or_else(|e| panic!("no run of {workflow} for {contact}: {e}"))
    }

    /// Wait until run `id` satisfies `ready` (given `GET /v1/runs/{id}`).
    pub async fn wait_run_state(&self, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/v1/runs/{id}");
        wait_for(PATIENCE, || async {
            let run = self.get(&path).await;
            Ok(ready(&run).then_some(run))
        })
        .await
        .unwrap_or_else(|e| panic!("run {id} never reached: {what}: {e}"))
    }

    /// Wait until run `id` has a step `step_id` with status `ok`.
    pub async fn wait_step(&self, id: &str, step_id: &str) -> Value {
        self.wait_run_state(id, &format!("step {step_id} ok"), |run| {
            run["steps"].as_array().is_some_and(|s| s.iter().any(|s| s["step_id"] == step_id && s["status"] == "ok"))
        })
        .await
    }

    /// Move virtual time to run `id`'s next timer and let it fire.
    pub async fn jump_to_timer(&self, id: &str) {
        let run = self.get(&format!("/v1/runs/{id}")).await;
        let wake_at = run["wake_at"].as_i64().unwrap_or_else(|| panic!("run {id} waits on no timer: {run}"));
        self.clock.set(wake_at.max(self.clock.now()));
    }

    /// Wait until the pipeline has nothing left and the runner nothing due.
    pub async fn settle(&self) {
        // Both loops are event driven; a short quiet period is enough here.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
