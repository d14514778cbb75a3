//! End to end, through a real server: a handed-over run gives its place up
//! when its plugin calls are over, before its last save.
//!
//! The bookkeeping has unit tests of its own (`super::tests`); this drives
//! `Workflows::advance_with` as the pipeline does. SQLite's one writer is
//! taken by the test the moment the first webhook arrives and kept, so
//! every run that has called its webhook is stuck at its save. A tenant
//! has [`HANDED_AT_ONCE`] places: if the saving runs kept theirs, the runs
//! queued behind them would never call their webhooks while the writer is
//! held.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify};

use super::HANDED_AT_ONCE;
use crate::demo::Client;
use crate::server::{self, Server, ServerConfig};
use crate::store::{Store, WriteTurn};

const ADMIN_KEY: &str = "direct-test-admin-key-0123456789";
/// Runs handed over at once: more than a tenant's places.
const RUNS: usize = HANDED_AT_ONCE + 4;
const PATIENCE: Duration = Duration::from_secs(30);
/// How long the webhook takes to answer.
const STEP_TAKES: Duration = Duration::from_millis(50);

/// A webhook endpoint that takes SQLite's write turn before it answers the
/// first call and keeps it until told to let go.
#[derive(Clone)]
struct Receiver {
    store: Store,
    held: Arc<Mutex<Option<WriteTurn>>>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    called: Arc<Notify>,
}

async fn hook(State(receiver): State<Receiver>) -> &'static str {
    {
        let mut held = receiver.held.lock().await;
        if held.is_none() {
            // No run has saved yet: each saves only after this answer.
            *held = Some(receiver.store.write_gate().await.expect("the write turn"));
        }
    }
    // A step that takes a while: its record must say when it ended.
    tokio::time::sleep(STEP_TAKES).await;
    receiver.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    receiver.called.notify_waiters();
    "ok"
}

async fn start_receiver(receiver: Receiver) -> SocketAddr {
    let app = axum::Router::new().route("/hooks/x", axum::routing::post(hook)).with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn start_server(dir: &std::path::Path) -> Server {
    let mut config = ServerConfig::in_dir(dir.to_path_buf());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin_key = Some(ADMIN_KEY.into());
    config.runtime.allow_private_network = true;
    server::start(config).await.expect("server starts")
}

/// A tenant whose `ping` events each run a one-step workflow posting to
/// `hooks`.
async fn tenant_with_hook_workflow(server: &Server, hooks: SocketAddr) -> Client {
    let admin = Client::new(&server.url(), ADMIN_KEY);
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": "saving"}))).await.unwrap();
    let client = Client::new(&server.url(), created["api_key"].as_str().unwrap());
    let plugins = client.ok(Method::GET, "/v1/plugins", None).await.unwrap();
    let webhook = plugins["items"].as_array().unwrap().iter().find(|p| p["name"] == "webhook").unwrap()["id"].clone();
    let install = json!({
        "plugin_version_id": webhook,
        "config": {"url": format!("http://{hooks}/hooks/x"), "secret": "s3cret-for-the-test"},
        "grants": [format!("http:{}", hooks.ip())],
    });
    let hook = client.ok(Method::POST, "/v1/installs", Some(install)).await.unwrap()["id"].clone();
    let definition = json!({
        "name": "ping",
        "trigger": {"type": "event", "kind": "ping"},
        "steps": [{"id": "notify", "type": "action", "install_id": hook}],
    });
    client.ok(Method::POST, "/v1/workflows?activate=true", Some(definition)).await.unwrap();
    client
}

async fn wait_calls(receiver: &Receiver, n: usize) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let called = receiver.called.notified();
        let calls = receiver.calls.load(std::sync::atomic::Ordering::SeqCst);
        if calls >= n || tokio::time::Instant::now() >= deadline {
            return calls;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), called).await;
    }
}

async fn completed_runs(client: &Client) -> Vec<Value> {
    let runs = client.ok(Method::GET, "/v1/runs?status=completed&limit=100", None).await.unwrap();
    runs["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_stuck_at_their_last_save_leave_their_places_to_the_runs_queued_behind() {
    let dir = std::env::temp_dir().join(format!("cairn-direct-saving-{}", crate::store::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = start_server(&dir).await;
    let receiver = Receiver {
        store: server.state.store.clone(),
        held: Arc::default(),
        calls: Arc::default(),
        called: Arc::default(),
    };
    let hooks = start_receiver(receiver.clone()).await;
    let client = tenant_with_hook_workflow(&server, hooks).await;

    // One request, so one lane commit enrolls (and hands over) every run.
    let events: Vec<Value> = (0..RUNS).map(|i| json!({"email": format!("c{i}@saving.test"), "kind": "ping"})).collect();
    client.ok(Method::POST, "/v1/events", Some(json!({"events": events}))).await.unwrap();

    let calls = wait_calls(&receiver, RUNS).await;
    assert!(receiver.held.lock().await.is_some(), "the writer is held from the first webhook on");
    assert_eq!(calls, RUNS, "every run called its webhook while the first {HANDED_AT_ONCE} were stuck saving");
    assert!(completed_runs(&client).await.is_empty(), "no run saved while the writer was held");

    // Let go: every run saves and completes, none lost on the way.
    drop(receiver.held.lock().await.take());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while completed_runs(&client).await.len() < RUNS && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed = completed_runs(&client).await;
    assert_eq!(completed.len(), RUNS);
    assert_eq!(receiver.calls.load(std::sync::atomic::Ordering::SeqCst), RUNS, "one call per run");

    // Each step record ends when its call came back, not when it began.
    let id = completed[0]["id"].as_str().unwrap();
    let run = client.ok(Method::GET, &format!("/v1/runs/{id}"), None).await.unwrap();
    let step = run["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == "notify").unwrap().clone();
    let took_ms = step["finished_at"].as_i64().unwrap() - step["started_at"].as_i64().unwrap();
    assert!(took_ms >= STEP_TAKES.as_millis() as i64, "{step}");
    assert!(took_ms * 1000 + 1000 >= step["duration_us"].as_i64().unwrap(), "{step}");

    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
