//! `cairn demo`: the seed scenario, end to end, on a fresh temporary store.
//!
//! "A lead views the pricing page 3 times → score rises → crosses the MQL
//! threshold → a 'call now' task is created for the owner and a webhook is
//! delivered." Everything goes through the real HTTP API of a real server
//! with the prebuilt plugins; the webhook lands on a receiver the demo runs
//! on loopback, which checks the HMAC signature.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::engine::Clock;
use crate::runtime::RuntimeSettings;
use crate::server::{self, ServerConfig};

/// The shared secret the demo's webhook install signs with.
const WEBHOOK_SECRET: &str = "demo-secret-not-for-production";

/// A webhook as the receiver saw it.
#[derive(Debug, Clone)]
pub struct ReceivedHook {
    /// Parsed JSON body.
    pub body: Value,
    /// Whether `x-cairn-signature` matched the HMAC of the body.
    pub signature_ok: bool,
}

/// A loopback HTTP receiver that records webhooks and checks signatures.
pub struct HookReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    pub received: Arc<Mutex<Vec<ReceivedHook>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a receiver that verifies signatures made with `secret`.
pub async fn start_receiver(secret: &'static str) -> anyhow::Result<HookReceiver> {
    let received: Arc<Mutex<Vec<ReceivedHook>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hooks/{name}",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let signature_ok = headers
                    .get("x-cairn-signature")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("sha256="))
                    .and_then(|hex_sig| hex::decode(hex_sig).ok())
                    .is_some_and(|sig| {
                        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
                        mac.update(&body);
                        mac.verify_slice(&sig).is_ok()
                    });
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if let Ok(mut v) = sink.lock() {
                    v.push(ReceivedHook { body, signature_ok });
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(HookReceiver { addr, received, task })
}

/// A tiny JSON client for the API.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    /// A client for `base` with a bearer key.
    pub fn new(base: &str, key: &str) -> Client {
        Client { http: reqwest::Client::new(), base: base.to_string(), key: key.to_string() }
    }

    /// Send a request; returns status and JSON body (null when empty).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("calling {path}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, value))
    }

    /// Send and require a 2xx status.
    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {value}");
        }
        Ok(value)
    }

    /// Upload raw component bytes.
    pub async fn upload(&self, bytes: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}/v1/plugins", self.base))
            .bearer_auth(&self.key)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }
}

/// Ids of what the scenario set up.
pub struct Scenario {
    /// The tenant's client.
    pub client: Client,
    /// The contact who views the pricing page.
    pub lead_id: String,
}

/// Set up the seed scenario for a new tenant on a running server: installs,
/// threshold, rules, contacts. Shared by the demo and the end-to-end test.
pub async fn set_up(base: &str, admin_key: &str, hook_url: &str) -> anyhow::Result<Scenario> {
    use reqwest::Method;
    let admin = Client::new(base, admin_key);
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": "Acme Robotics"}))).await?;
    let key = created["api_key"].as_str().context("tenant key")?.to_string();
    let client = Client::new(base, &key);

    let plugins = client.ok(Method::GET, "/v1/plugins", None).await?;
    let version_of = |name: &str| -> anyhow::Result<String> {
        plugins["items"]
            .as_array()
            .and_then(|items| items.iter().find(|p| p["name"] == name))
            .and_then(|p| p["id"].as_str())
            .map(str::to_string)
            .with_context(|| format!("plugin {name} is not in the catalog"))
    };
    let install = |plugin: &str, config: Value, grants: Value| {
        let body = json!({"plugin_version_id": version_of(plugin).ok(), "config": config, "grants": grants});
        let client = &client;
        async move { client.ok(Method::POST, "/v1/installs", Some(body)).await }
    };
    install(
        "rules-scorer",
        json!({
            "rules": [
                {"event_kind": "page_viewed", "property": "url", "contains": "/pricing", "points": 20},
                {"event_kind": "page_viewed", "points": 2, "max_times": 10},
                {"event_kind": "email_opened", "points": 5},
            ],
            "half_life_days": 30,
        }),
        json!([]),
    )
    .await?;
    let task = install(
        "create-task",
        json!({"title": "Call {{first_name}} now: viewed pricing, score {{score}}", "due_in_hours": 4}),
        json!(["store-write"]),
    )
    .await?;
    let hook_host = reqwest::Url::parse(hook_url)?.host_str().context("hook host")?.to_string();
    let hook =
        install("webhook", json!({"url": hook_url, "secret": WEBHOOK_SECRET}), json!([format!("http:{hook_host}")]))
            .await?;

    client.ok(Method::PUT, "/v1/thresholds/mql", Some(json!({"min_score": 50}))).await?;
    for (name, action) in [("MQL → call-now task", &task), ("MQL → notify sales webhook", &hook)] {
        client
            .ok(
                Method::POST,
                "/v1/rules",
                Some(json!({
                    "name": name,
                    "trigger": {"event_kind": "lifecycle_stage_changed", "where": {"to": "mql"}},
                    "action_install_id": action["id"],
                })),
            )
            .await?;
    }
    let lead = client
        .ok(
            Method::POST,
            "/v1/contacts",
            Some(json!({
                "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace",
                "owner": "alice@acme.test", "properties": {"region": "EMEA", "job_title": "VP Engineering"},
            })),
        )
        .await?;
    for (email, first) in [("grace@example.com", "Grace"), ("alan@example.com", "Alan")] {
        client
            .ok(
                Method::POST,
                "/v1/contacts",
                Some(json!({"email": email, "first_name": first, "owner": "bob@acme.test"})),
            )
            .await?;
    }
    let lead_id = lead["id"].as_str().context("contact id")?.to_string();
    Ok(Scenario { client, lead_id })
}

/// Poll `check` until it returns `Some`, or fail after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > until {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Run the demo.
pub async fn run() -> anyhow::Result<()> {
    use reqwest::Method;
    let dir = std::env::temp_dir().join(format!("cairn-demo-{}-{}", std::process::id(), crate::store::now_ms()));
    std::fs::create_dir_all(&dir)?;
    let mut config = ServerConfig::in_dir(dir.clone());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.clock = Clock::System;
    // The demo's webhook receiver is on loopback.
    config.runtime = RuntimeSettings { allow_private_network: true, ..config.runtime };
    let server = server::start(config).await?;
    let admin_key = server.generated_admin_key.clone().context("a fresh store generates an admin key")?;
    println!(
        "1. Started Cairn on {} with a fresh SQLite store in {} ({} ms)",
        server.url(),
        dir.display(),
        server.startup.as_millis()
    );

    let receiver = start_receiver(WEBHOOK_SECRET).await?;
    let hook_url = format!("http://{}/hooks/sales", receiver.addr);
    let s = set_up(&server.url(), &admin_key, &hook_url).await?;
    println!("2. Created tenant \"Acme Robotics\"; installed rules-scorer, create-task and webhook from the catalog");
    println!(
        "   MQL threshold at score 50; rules: lifecycle_stage_changed to mql → call-now task, → webhook to {hook_url}"
    );
    println!("3. Loaded 3 contacts; lead: Ada Lovelace <ada@example.com>, owner alice@acme.test");

    let contact_path = format!("/v1/contacts/{}", s.lead_id);
    for (i, url) in ["/blog/robots", "/pricing", "/pricing?plan=pro", "/pricing"].iter().enumerate() {
        let before = s.client.ok(Method::GET, &contact_path, None).await?["score"].as_f64().unwrap_or(0.0);
        let ev = json!({"contact_id": s.lead_id, "kind": "page_viewed", "properties": {"url": url}});
        let (status, _) = s.client.call(Method::POST, "/v1/events", Some(ev)).await?;
        let contact = wait_for(Duration::from_secs(10), || async {
            let c = s.client.ok(Method::GET, &contact_path, None).await?;
            Ok((c["score"].as_f64().unwrap_or(0.0) != before).then_some(c))
        })
        .await?;
        println!(
            "{}. Event page_viewed {url} → {status} Accepted; score {before} → {} (stage: {})",
            4 + i,
            contact["score"],
            contact["lifecycle_stage"].as_str().unwrap_or("?"),
        );
    }
    let tasks = wait_for(Duration::from_secs(10), || async {
        let t = s.client.ok(Method::GET, &format!("/v1/tasks?contact_id={}", s.lead_id), None).await?;
        Ok(t["items"].as_array().filter(|a| !a.is_empty()).cloned())
    })
    .await?;
    for t in &tasks {
        println!(
            "8. Task created: \"{}\" for {}",
            t["title"].as_str().unwrap_or("?"),
            t["assignee"].as_str().unwrap_or("-")
        );
    }
    let hooks = wait_for(Duration::from_secs(10), || async {
        let got = receiver.received.lock().map(|v| v.clone()).unwrap_or_default();
        Ok((!got.is_empty()).then_some(got))
    })
    .await?;
    for h in &hooks {
        println!(
            "9. Webhook delivered to {hook_url}: contact {} stage {}, signature {}",
            h.body["contact"]["email"].as_str().unwrap_or("?"),
            h.body["contact"]["lifecycle_stage"].as_str().unwrap_or("?"),
            if h.signature_ok { "verified (HMAC-SHA256)" } else { "INVALID" }
        );
    }
    let timeline = s.client.ok(Method::GET, &format!("{contact_path}/timeline"), None).await?;
    println!("10. Ada's timeline, newest first:");
    for entry in timeline["items"].as_array().into_iter().flatten().take(12) {
        println!("    {}", entry_line(entry));
    }
    let metrics = reqwest::get(format!("{}/metrics", server.url())).await?.text().await?;
    let processed = metrics.lines().find(|l| l.starts_with("cairn_events_processed_total")).unwrap_or("");
    println!("11. {processed}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("Done: the lead became an MQL, the owner has a call-now task, and sales got a signed webhook.");
    Ok(())
}

fn entry_line(entry: &Value) -> String {
    let kind = entry["type"].as_str().unwrap_or("?");
    let detail = match kind {
        "event" => format!("{} {}", entry["kind"].as_str().unwrap_or(""), entry["properties"]),
        "score_change" => format!("score {} → {} {}", entry["old_score"], entry["new_score"], entry["reasons"]),
        "task" => format!("\"{}\"", entry["title"].as_str().unwrap_or("")),
        "action_run" => format!(
            "{} {} {}",
            if entry["ok"] == true { "ok" } else { "failed" },
            entry["output_json"].as_str().unwrap_or(""),
            entry["error_message"].as_str().unwrap_or("")
        ),
        _ => entry.to_string(),
    };
    format!("{kind:<13} {detail}")
}
