//! Limits per tenant, so one tenant cannot take what the others need:
//! events per second (`429` with `Retry-After` past the rate; another
//! tenant is not affected) and plugin calls running at once (a tenant's
//! extra calls wait for its own slots, never for another tenant's).

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::catalog::guest_bytes;
use cairn::demo::Client;
use cairn::engine::Clock;
use cairn::runtime::grants::Grants;
use cairn::runtime::invoke::ProjectedInput;
use cairn::runtime::{CallScope, FailureCause, Limits, Runtime, RuntimeSettings};
use cairn::server::{self, ServerConfig};
use cairn::store::testing::TempSqlite;
use cairn::store::{self, Store};
use common::ADMIN_KEY;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_event_rate_gets_429_with_retry_after_and_another_tenant_does_not() {
    let db = TempSqlite::new();
    // 2/s: the pacing allowance (a request held up to 250 ms instead of
    // refused, `api::rate_limit`) is then half an event, so the first event
    // past the burst is refused rather than held.
    let limits = Limits { tenant_events_per_sec: 2, ..Limits::default() };
    let server = server::start(ServerConfig {
        database_url: db.url(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        runtime: RuntimeSettings { limits, ..RuntimeSettings::default() },
        clock: Clock::System,
        admin_key: Some(ADMIN_KEY.into()),
        run_pipeline: true,
    })
    .await
    .unwrap();
    let admin = Client::new(&server.url(), ADMIN_KEY);
    let mut tenants = Vec::new();
    for name in ["noisy", "quiet"] {
        let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": name}))).await.unwrap();
        tenants.push(created["api_key"].as_str().unwrap().to_string());
    }
    let batch = |tag: &str| {
        let events: Vec<_> =
            (0..1000).map(|i| json!({"email": format!("{tag}{}@example.com", i % 10), "kind": "ping"})).collect();
        json!({"events": events})
    };
    let noisy = Client::new(&server.url(), &tenants[0]);
    // A channel install, so the noisy tenant's provider callbacks can be
    // tried against the same limit.
    let plugins = noisy.ok(Method::GET, "/v1/plugins", None).await.unwrap();
    let webhook = plugins["items"].as_array().unwrap().iter().find(|p| p["name"] == "webhook").unwrap()["id"].clone();
    let config = json!({"url": "https://hooks.example.com/x", "secret": "0123456789abcdef0123"});
    let body = json!({"plugin_version_id": webhook, "config": config, "grants": ["http:hooks.example.com"]});
    let install = noisy.ok(Method::POST, "/v1/installs", Some(body)).await.unwrap();
    let inbound = format!("/v1/installs/{}/inbound", install["id"].as_str().unwrap());
    // The burst allowance takes one full batch; the next event is over.
    let (status, body) = noisy.call(Method::POST, "/v1/events", Some(batch("n"))).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events", server.url()))
        .bearer_auth(&tenants[0])
        .json(&json!({"email": "n0@example.com", "kind": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=200).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("more than 2 events per second"), "{body}");
    // A provider callback is events too: refused before the plugin runs.
    let callback = json!([{"event": "opened", "email": "n0@example.com"}]);
    let (status, body) = noisy.call(Method::POST, &inbound, Some(callback)).await.unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // The other tenant has its own allowance.
    let quiet = Client::new(&server.url(), &tenants[1]);
    let (status, body) = quiet.call(Method::POST, "/v1/events", Some(batch("q"))).await.unwrap();
    assert_eq!(status, 202, "{body}");
    // What was accepted is kept: the noisy tenant's 1000 events are stored.
    let contacts = noisy.ok(Method::GET, "/v1/contacts?limit=100", None).await.unwrap();
    let contacts = contacts["items"].as_array().unwrap();
    assert_eq!(contacts.len(), 10);
    let mut events = 0;
    for c in contacts {
        let path = format!("/v1/events?contact_id={}&limit=1000", c["id"].as_str().unwrap());
        let listed = noisy.ok(Method::GET, &path, None).await.unwrap();
        events += listed["items"].as_array().unwrap().iter().filter(|e| e["kind"] == "ping").count();
    }
    assert_eq!(events, 1000);
    server.shutdown().await;
}

fn scope(rt: &Runtime, store: &Store, tenant: &str) -> CallScope {
    CallScope {
        tenant_id: tenant.into(),
        install_id: "install".into(),
        grants: Arc::new(Grants::default()),
        store: store.clone(),
        egress: rt.egress.clone(),
        test_mode: false,
        now: store::now_ms(),
        test_contact: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_calls_beyond_its_slots_wait_for_its_own_and_never_block_another_tenant() {
    let limits = Limits { tenant_concurrent_calls: 1, deadline: Duration::from_millis(400), ..Limits::default() };
    let rt = Arc::new(Runtime::new(RuntimeSettings { limits, ..RuntimeSettings::default() }).unwrap());
    let store = Store::open("sqlite::memory:").await.unwrap();
    let slow = rt.load(Arc::new(guest_bytes("guest-yield-loop").unwrap())).await.unwrap();
    let fast = rt.load(Arc::new(guest_bytes("guest-versioned-1").unwrap())).await.unwrap();
    let (contact, events) = cairn::bench::sample_input(store::now_ms());
    let input = Arc::new(ProjectedInput::build(&slow, &contact, &events));

    // Tenant A: two slow calls at once with one slot. The first holds it to
    // its deadline; the second waits for it, and the wait counts against its
    // own deadline: it runs for what is left, or fails `unavailable`
    // (retryable: the host's limit, not the plugin's fault). Never both at once.
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..2 {
        let (rt, slow, store, input) = (rt.clone(), slow.clone(), store.clone(), input.clone());
        calls.push(tokio::spawn(async move {
            let began = Instant::now();
            let outcome = rt.score(&slow, scope(&rt, &store, "a"), "{}", (*input).clone(), "i").await;
            (outcome, began.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Tenant B meanwhile: its own slot, answered at once.
    let b_started = Instant::now();
    let b = rt.score(&fast, scope(&rt, &store, "b"), "{}", ProjectedInput::build(&fast, &contact, &events), "i").await;
    assert_eq!(b.unwrap().value.value, 1.0);
    assert!(b_started.elapsed() < Duration::from_millis(300), "B waited {:?}", b_started.elapsed());

    let mut ran_ms = Vec::new();
    for call in calls {
        let (outcome, total) = call.await.unwrap();
        let err = outcome.expect_err("a yield loop never finishes");
        assert!(matches!(err.cause, FailureCause::Deadline | FailureCause::Unavailable), "{err:?}");
        if err.cause == FailureCause::Unavailable {
            assert!(err.retryable && err.message.contains("already runs 1 plugin calls at once"), "{err:?}");
        }
        // Waiting included, no call takes much more than its deadline.
        assert!(total < Duration::from_millis(700), "{total:?}");
        ran_ms.push(err.stats.duration_us / 1000);
    }
    // One ran its whole deadline; the other only what was left after it.
    ran_ms.sort_unstable();
    assert!(ran_ms[1] >= 350 && ran_ms[0] < 150, "ran {ran_ms:?} ms: the calls overlapped");
    assert!(started.elapsed() < Duration::from_secs(5));
}
