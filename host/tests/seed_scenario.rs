//! End to end over HTTP: a real server on 127.0.0.1:0 with the prebuilt
//! plugins plays the seed scenario ("a lead views the pricing page 3 times →
//! score rises → crosses MQL → call-now task for the owner + signed
//! webhook"), on SQLite and on PostgreSQL.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use cairn::demo::{self, start_receiver, wait_for};
use cairn::engine::Clock;
use cairn::runtime::RuntimeSettings;
use cairn::server::{self, ServerConfig};
use cairn::store::testing::{TempPostgres, TempSqlite};
use reqwest::Method;
use serde_json::json;

const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

async fn play_seed_scenario(database_url: String) {
    let cache = std::env::temp_dir().join(format!("cairn-e2e-cache-{}", std::process::id()));
    let config = ServerConfig {
        database_url,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        runtime: RuntimeSettings { allow_private_network: true, cache_dir: Some(cache), ..RuntimeSettings::default() },
        clock: Clock::System,
        admin_key: Some(ADMIN_KEY.into()),
        run_pipeline: true,
    };
    let server = server::start(config).await.expect("server starts");
    let receiver = start_receiver("demo-secret-not-for-production").await.unwrap();
    let hook_url = format!("http://{}/hooks/sales", receiver.addr);
    let s = demo::set_up(&server.url(), ADMIN_KEY, &hook_url).await.expect("scenario set up");
    let contact_path = format!("/v1/contacts/{}", s.lead_id);

    for i in 0..3 {
        let ev = json!({"contact_id": s.lead_id, "kind": "page_viewed", "properties": {"url": "/pricing"}, "idempotency_key": format!("view-{i}")});
        let (status, body) = s.client.call(Method::POST, "/v1/events", Some(ev)).await.unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], 1);
    }
    let contact = wait_for(Duration::from_secs(20), || async {
        let c = s.client.ok(Method::GET, &contact_path, None).await?;
        Ok((c["lifecycle_stage"] == "mql").then_some(c))
    })
    .await
    .expect("the lead becomes an MQL");
    assert_eq!(contact["score"].as_f64(), Some(66.0), "3 × (20 for /pricing + 2 per view): {contact}");

    let tasks = wait_for(Duration::from_secs(20), || async {
        let t = s.client.ok(Method::GET, &format!("/v1/tasks?contact_id={}", s.lead_id), None).await?;
        Ok(t["items"].as_array().filter(|a| !a.is_empty()).cloned())
    })
    .await
    .expect("a call-now task is created");
    assert_eq!(tasks.len(), 1, "exactly one task: {tasks:?}");
    assert_eq!(tasks[0]["title"], "Call Ada now: viewed pricing, score 66");
    assert_eq!(tasks[0]["assignee"], "alice@acme.test", "the task is for the owner");

    let hooks = wait_for(Duration::from_secs(20), || async {
        let got = receiver.received.lock().map(|v| v.clone()).unwrap_or_default();
        Ok((!got.is_empty()).then_some(got))
    })
    .await
    .expect("the webhook is delivered");
    assert!(hooks[0].signature_ok, "HMAC signature verifies");
    assert_eq!(hooks[0].body["contact"]["email"], "ada@example.com");
    assert_eq!(hooks[0].body["contact"]["lifecycle_stage"], "mql");

    // Re-sending an event with the same idempotency key stores nothing new.
    let ev = json!({"contact_id": s.lead_id, "kind": "page_viewed", "properties": {"url": "/pricing"}, "idempotency_key": "view-0"});
    let (status, _) = s.client.call(Method::POST, "/v1/events", Some(ev)).await.unwrap();
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = s.client.ok(Method::GET, &contact_path, None).await.unwrap();
    assert_eq!(again["score"].as_f64(), Some(66.0));

    let timeline = s.client.ok(Method::GET, &format!("{contact_path}/timeline"), None).await.unwrap();
    let kinds: Vec<&str> = timeline["items"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(kinds.contains(&"event") && kinds.contains(&"score_change") && kinds.contains(&"task"), "{kinds:?}");
    let runs = kinds.iter().filter(|k| **k == "action_run").count();
    assert_eq!(runs, 2, "the task and the webhook rule runs are on the timeline: {kinds:?}");

    let metrics = reqwest::get(format!("{}/metrics", server.url())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("cairn_events_processed_total"), "{metrics}");
    assert!(metrics.contains("plugin=\"rules-scorer\",result=\"ok\""), "{metrics}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_runs_end_to_end_on_sqlite() {
    let db = TempSqlite::new();
    play_seed_scenario(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_runs_end_to_end_on_postgres() {
    let db = TempPostgres::create().await.expect("PostgreSQL on 127.0.0.1:5432");
    play_seed_scenario(db.url().to_string()).await;
}
