//! The hostile plugin suite: one test per attack, each with a guest built
//! from source (`tests/guests/guest-*`), run through a real server over
//! HTTP where the attack can be made that way. Each test asserts the exact
//! outcome (the recorded failure cause, the upload or install refusal and
//! what it names, or what the host did instead) and then that the server
//! keeps serving: `/healthz` answers and the demo tenant's rules scorer
//! still scores a fresh contact.
//!
//! | attack | guest | outcome |
//! |---|---|---|
//! | infinite loop (fuel to spare) | `guest-loop` | cause `deadline` |
//! | fuel exhaustion with a large deadline (30 s) | `guest-loop` | cause `fuel`, well before the deadline |
//! | slow loop that yields (sleeps 1 ms, forever) | `guest-yield-loop` | cause `deadline` |
//! | sleeping past the deadline inside a host call | `guest-sleep` | cause `deadline` |
//! | unbounded memory growth (16 MiB cap, fuel to spare) | `guest-memory-hog` | cause `memory` (with the default limits its page writes run out of fuel first) |
//! | deep recursion | `guest-stack-overflow` | cause `stack-overflow` |
//! | a panic | `guest-panic` | cause `trap`, with the panic message |
//! | huge return value (10 MB) | `guest-huge-output` | cause `output-too-large` |
//! | huge log output (10 000 lines of 10 KB) | `guest-log-flood` | call succeeds; 100 lines kept, each cut to 2 KiB |
//! | thousands of host calls in one invocation | `guest-host-call-flood` | cause `plugin`, message names the 1000-call limit |
//! | a NaN score | `guest-nan-scorer` | cause `invalid-output`, score unchanged |
//! | an extreme (finite) score | `guest-extreme-scorer` | stored score clamped to 1e9 |
//! | reading/tagging another tenant's contact by id | `guest-cross-tenant` | call ok, the read answers `not found`, victim untouched |
//! | a channel adapter returning a forged contact id | `guest-forged-channel` | the event is rejected, nothing recorded for the victim |
//! | a trigger enrolling the same contact 5 000 times | `guest-enroll-flood` | exactly one run |
//! | outbound HTTP to a host not granted | `guest-http` | cause `plugin`, "not granted" |
//! | outbound HTTP to loopback / private / metadata addresses, granted | `guest-http` | cause `plugin`, "loopback or private" (operator did not allow) |
//! | importing `wasi:filesystem` | `guest-fs` | upload refused (422) naming it |
//! | importing `wasi:sockets` | `guest-sockets` | upload refused (422) naming it |
//! | importing an unknown interface | `guest-unknown-import` | upload refused (422) naming `acme:backdoor/shell` |
//! | bytes that are not a component | (inline bytes) | upload refused (422) |
//! | a `describe()` with a malformed config schema | `guest-bad-schema` | upload refused (422) naming `config-schema` |
//! | oversized config (100 KB) | `guest-cross-tenant` | install refused (422) naming the 64 KiB limit |
//!
//! | events emitted in a loop that re-trigger the same plugin | `guest-event-loop` | the chain stops at 100 events of the kind per contact per minute; cause `plugin`, the host's limit named |

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::catalog::guest_bytes;
use cairn::demo::{Client, wait_for};
use cairn::engine::Clock;
use cairn::runtime::grants::Grants;
use cairn::runtime::invoke::ProjectedInput;
use cairn::runtime::{CallScope, Limits, Runtime, RuntimeSettings};
use cairn::server::{self, Server, ServerConfig};
use cairn::store::testing::TempSqlite;
use cairn::store::{self, Store};
use common::{ADMIN_KEY, PATIENCE, World};
use reqwest::Method;
use serde_json::{Value, json};

/// A server with `runtime` settings (the `World` servers allow private
/// addresses and use the default limits) and a system clock, with the demo
/// tenant set up as in `World` (its webhooks point nowhere); its client.
async fn start_with(db: &TempSqlite, runtime: RuntimeSettings) -> (Server, Client) {
    let cache = std::env::temp_dir().join(format!("cairn-e2e-cache-{}", std::process::id()));
    let server = server::start(ServerConfig {
        database_url: db.url(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        runtime: RuntimeSettings { cache_dir: Some(cache), ..runtime },
        clock: Clock::System,
        admin_key: Some(ADMIN_KEY.into()),
        run_pipeline: true,
    })
    .await
    .expect("server starts");
    let acme = cairn::demo::set_up(&server.url(), ADMIN_KEY, "http://127.0.0.1:9").await.expect("tenant set up");
    (server, acme.client)
}

/// A new tenant on `server`: the attacker's own, so its calls are the only
/// ones recorded for its installs.
async fn tenant(server: &Server, name: &str) -> Client {
    let admin = Client::new(&server.url(), ADMIN_KEY);
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": name}))).await.unwrap();
    Client::new(&server.url(), created["api_key"].as_str().unwrap())
}

/// Whether `client`'s tenant counts as having burnt CPU lately (a call of
/// it ran wasm through a whole tick: its lanes run at low priority).
async fn burnt_lately(server: &Server, client: &Client) -> bool {
    let me = client.ok(Method::GET, "/v1/tenant", None).await.unwrap();
    server.state.registry.runtime().cpu_turns().burnt_lately(me["id"].as_str().unwrap())
}

/// How many of `client`'s tenant's plugin calls ran on the background
/// runtime, at the lowest priority.
async fn background_calls(server: &Server, client: &Client) -> u64 {
    let me = client.ok(Method::GET, "/v1/tenant", None).await.unwrap();
    server.state.registry.runtime().cpu_turns().background_calls(me["id"].as_str().unwrap())
}

/// Upload `guest` and install it with `config` and `grants`; the install id.
async fn install(client: &Client, guest: &str, config: Value, grants: &[&str]) -> String {
    let (s, uploaded) = client.upload(guest_bytes(guest).expect("guest built")).await.unwrap();
    // 200: the same bytes were uploaded before (by this tenant or the catalog).
    assert!(s == 201 || s == 200, "{guest} uploads: {uploaded}");
    let body = json!({"plugin_version_id": uploaded["id"], "config": config, "grants": grants});
    let installed = client.ok(Method::POST, "/v1/installs", Some(body)).await.unwrap();
    installed["id"].as_str().unwrap().to_string()
}

/// Send an event (creating the contact by email if needed).
async fn event(client: &Client, email: &str, kind: &str) {
    let (s, body) = client.call(Method::POST, "/v1/events", Some(json!({"email": email, "kind": kind}))).await.unwrap();
    assert_eq!(s, 202, "{body}");
}

/// The contact with `email`, once it exists.
async fn contact(client: &Client, email: &str) -> Value {
    let path = format!("/v1/contacts?email={email}");
    wait_for(PATIENCE, || async {
        let page = client.ok(Method::GET, &path, None).await?;
        Ok(page["items"].as_array().and_then(|i| i.first()).cloned())
    })
    .await
    .unwrap_or_else(|e| panic!("no contact {email}: {e}"))
}

/// The recorded calls of `install` (newest first), once there is one that
/// matches `ok`.
async fn invocations(client: &Client, install: &str, ok: bool) -> Vec<Value> {
    let path = format!("/v1/invocations?install_id={install}&ok={ok}");
    wait_for(PATIENCE, || async {
        let v = client.ok(Method::GET, &path, None).await?;
        Ok(v["items"].as_array().filter(|i| !i.is_empty()).cloned())
    })
    .await
    .unwrap_or_else(|e| panic!("no {} call of {install} recorded: {e}", if ok { "successful" } else { "failed" }))
}

/// Wait for the failed call of `install`, assert its cause; the record.
async fn failed_with(client: &Client, install: &str, cause: &str) -> Value {
    let failures = invocations(client, install, false).await;
    for f in &failures {
        assert_eq!(f["error_cause"], cause, "{failures:#?}");
    }
    let stats = client.ok(Method::GET, &format!("/v1/installs/{install}"), None).await.unwrap();
    assert!(stats["stats"]["failed"][cause].as_u64().unwrap_or(0) >= 1, "counted under {cause}: {stats}");
    failures[0].clone()
}

/// Install scorer `guest` in a tenant of its own, score a contact, and
/// return the failed call's record after asserting its `cause`.
async fn hostile_scorer_fails(world: &World, guest: &str, cause: &str) -> Value {
    let attacker = tenant(&world.server, guest).await;
    let id = install(&attacker, guest, json!({}), &[]).await;
    event(&attacker, "target@attacker.test", "page_viewed").await;
    failed_with(&attacker, &id, cause).await
}

/// The server keeps serving: `/healthz` answers and the demo tenant's rules
/// scorer scores a fresh contact's pricing page view.
async fn assert_still_serving(server_url: &str, acme: &Client, tag: &str) {
    let health = reqwest::get(format!("{server_url}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let email = format!("fresh-{tag}@acme.test");
    let ev = json!({"email": email, "kind": "page_viewed", "properties": {"url": "/pricing"}});
    let (s, body) = acme.call(Method::POST, "/v1/events", Some(ev)).await.unwrap();
    assert_eq!(s, 202, "{body}");
    let path = format!("/v1/contacts?email={email}");
    wait_for(PATIENCE, || async {
        let page = acme.ok(Method::GET, &path, None).await?;
        let c = page["items"].as_array().and_then(|i| i.first()).cloned();
        Ok(c.filter(|c| c["score"].as_f64().unwrap_or(0.0) > 0.0))
    })
    .await
    .unwrap_or_else(|e| panic!("the demo tenant's scorer no longer scores ({tag}): {e}"));
}

async fn world() -> (TempSqlite, World) {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    (db, world)
}

fn assert_refusal(status: u16, body: &Value, mentions: &str) {
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("an error message: {body}"));
    assert!(message.contains(mentions), "`{message}` should name `{mentions}`");
}

// ---- compute, memory and time ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_with_fuel_to_spare_is_stopped_at_the_deadline() {
    // Which limit stops a loop first under the defaults depends on the
    // machine's speed; with fuel out of the way the deadline always does
    // (and `fuel_stops_a_loop_long_before_a_large_deadline` the converse).
    let db = TempSqlite::new();
    let limits = Limits { fuel: u64::MAX / 4, ..Limits::default() };
    let (server, acme) = start_with(&db, RuntimeSettings { limits, ..RuntimeSettings::default() }).await;
    let attacker = tenant(&server, "loop").await;
    let id = install(&attacker, "guest-loop", json!({}), &[]).await;
    event(&attacker, "target@attacker.test", "page_viewed").await;
    let failure = failed_with(&attacker, &id, "deadline").await;
    assert!(failure["error_message"].as_str().unwrap().contains("deadline"), "{failure}");
    assert_still_serving(&server.url(), &acme, "loop").await;
    assert!(burnt_lately(&server, &attacker).await, "a spinning call burns CPU");
    // From now on the attacker's calls run at the lowest priority; the
    // demo tenant's, which never burnt CPU, where they are asked for.
    event(&attacker, "again@attacker.test", "page_viewed").await;
    wait_for(PATIENCE, || async { Ok((background_calls(&server, &attacker).await > 0).then_some(())) })
        .await
        .expect("the attacker's next call runs on the background runtime");
    assert_still_serving(&server.url(), &acme, "loop-again").await;
    assert_eq!(background_calls(&server, &acme).await, 0, "the demo tenant's calls stay in place");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_stops_a_loop_long_before_a_large_deadline() {
    let db = TempSqlite::new();
    let limits = Limits { deadline: Duration::from_secs(30), ..Limits::default() };
    let (server, acme) = start_with(&db, RuntimeSettings { limits, ..RuntimeSettings::default() }).await;
    let attacker = tenant(&server, "fuel").await;
    let id = install(&attacker, "guest-loop", json!({}), &[]).await;
    let started = Instant::now();
    event(&attacker, "target@attacker.test", "page_viewed").await;
    let failure = failed_with(&attacker, &id, "fuel").await;
    assert!(started.elapsed() < Duration::from_secs(15), "fuel, not the 30 s deadline: {:?}", started.elapsed());
    assert_eq!(failure["fuel_used"].as_i64(), Some(50_000_000), "the whole default budget: {failure}");
    assert_still_serving(&server.url(), &acme, "fuel").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loop_that_keeps_yielding_is_stopped_at_the_deadline() {
    let (_db, world) = world().await;
    let failure = hostile_scorer_fails(&world, "guest-yield-loop", "deadline").await;
    let took = failure["duration_us"].as_i64().unwrap();
    assert!((400_000..5_000_000).contains(&took), "stopped at the 500 ms deadline: {took} us");
    assert_still_serving(&world.server.url(), world.client(), "yield").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_inside_a_host_call_past_the_deadline_fails_the_call() {
    let (_db, world) = world().await;
    let failure = hostile_scorer_fails(&world, "guest-sleep", "deadline").await;
    let took = failure["duration_us"].as_i64().unwrap();
    assert!(took < 5_000_000, "not the hour it asked for: {took} us");
    assert_still_serving(&world.server.url(), world.client(), "sleep").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_memory_growth_hits_the_memory_cap() {
    // Under the default limits the hog's page writes use up its fuel before
    // 64 MiB; with fuel and time to spare, the memory cap is what stops it.
    let db = TempSqlite::new();
    let limits =
        Limits { memory_bytes: 16 << 20, fuel: u64::MAX / 4, deadline: Duration::from_secs(10), ..Limits::default() };
    let (server, acme) = start_with(&db, RuntimeSettings { limits, ..RuntimeSettings::default() }).await;
    let attacker = tenant(&server, "memory").await;
    let id = install(&attacker, "guest-memory-hog", json!({}), &[]).await;
    event(&attacker, "target@attacker.test", "page_viewed").await;
    let failure = failed_with(&attacker, &id, "memory").await;
    assert!(failure["error_message"].as_str().unwrap().contains("beyond the cap"), "{failure}");
    assert_still_serving(&server.url(), &acme, "memory").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_is_a_stack_overflow_for_that_call_only() {
    let (_db, world) = world().await;
    hostile_scorer_fails(&world, "guest-stack-overflow", "stack-overflow").await;
    assert_still_serving(&world.server.url(), world.client(), "stack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_trap_that_keeps_its_message() {
    let (_db, world) = world().await;
    let failure = hostile_scorer_fails(&world, "guest-panic", "trap").await;
    assert!(failure["error_message"].as_str().unwrap().contains("deliberate panic"), "{failure}");
    assert_still_serving(&world.server.url(), world.client(), "panic").await;
}

// ---- output, logs and host calls ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_return_value_is_refused_by_the_output_cap() {
    let (_db, world) = world().await;
    let failure = hostile_scorer_fails(&world, "guest-huge-output", "output-too-large").await;
    assert!(failure["error_message"].as_str().unwrap().contains("the cap is 1048576"), "{failure}");
    assert_still_serving(&world.server.url(), world.client(), "output").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_capped_and_the_call_still_succeeds() {
    let (_db, world) = world().await;
    let attacker = tenant(&world.server, "logs").await;
    let id = install(&attacker, "guest-log-flood", json!({}), &[]).await;
    event(&attacker, "target@attacker.test", "page_viewed").await;
    // Its only scorer: the call succeeded when the contact's score is 7.
    let path = "/v1/contacts?email=target@attacker.test";
    wait_for(PATIENCE, || async {
        let page = attacker.ok(Method::GET, path, None).await?;
        Ok(page["items"][0]["score"].as_f64().filter(|s| *s == 7.0))
    })
    .await
    .expect("the flooding scorer's call succeeds and its score is kept");
    let stats = attacker.ok(Method::GET, &format!("/v1/installs/{id}"), None).await.unwrap();
    assert!(stats["stats"]["ok"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["stats"]["consecutive_failures"], 0, "{stats}");

    // What the host kept of the 100 MB: the runtime reports the call's log.
    let rt = Runtime::new(RuntimeSettings::default()).unwrap();
    let store = Store::open("sqlite::memory:").await.unwrap();
    let plugin = rt.load(Arc::new(guest_bytes("guest-log-flood").unwrap())).await.unwrap();
    let (c, events) = cairn::bench::sample_input(store::now_ms());
    let input = ProjectedInput::build(&plugin, &c, &events);
    let scope = CallScope {
        tenant_id: "t1".into(),
        install_id: "install-under-test".into(),
        grants: Arc::new(Grants::default()),
        store: store.clone(),
        egress: rt.egress.clone(),
        test_mode: false,
        now: store::now_ms(),
        test_contact: None,
    };
    let called = rt.score(&plugin, scope, "{}", input.clone(), "inv").await.expect("succeeds");
    assert_eq!(called.value.value, 7.0);
    assert_eq!(called.stats.logs.len(), Limits::default().log_lines as usize, "lines beyond the quota are dropped");
    assert!(called.stats.logs.iter().all(|l| l.message.len() == 2048), "each line is cut to 2 KiB");
    assert_still_serving(&world.server.url(), world.client(), "logs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_host_calls_hit_the_per_invocation_limit() {
    // A thousand store reads fit the default 500 ms on an idle machine, not
    // under a loaded CI run: give the deadline room, so the host-call limit
    // is what stops the call.
    let db = TempSqlite::new();
    let limits = Limits { deadline: Duration::from_secs(20), ..Limits::default() };
    let (server, acme) = start_with(&db, RuntimeSettings { limits, ..RuntimeSettings::default() }).await;
    let attacker = tenant(&server, "host-calls").await;
    let id = install(&attacker, "guest-host-call-flood", json!({}), &["store-read"]).await;
    event(&attacker, "target@attacker.test", "page_viewed").await;
    let failure = failed_with(&attacker, &id, "plugin").await;
    let message = failure["error_message"].as_str().unwrap();
    assert!(message.contains("limit reached: more than 1000 host calls in one invocation"), "{failure}");
    assert_still_serving(&server.url(), &acme, "host-calls").await;
    server.shutdown().await;
}

// ---- scores -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_score_is_invalid_output_and_the_score_is_unchanged() {
    let (_db, world) = world().await;
    let attacker = tenant(&world.server, "nan").await;
    let id = install(&attacker, "guest-nan-scorer", json!({}), &[]).await;
    event(&attacker, "target@attacker.test", "page_viewed").await;
    let failure = failed_with(&attacker, &id, "invalid-output").await;
    assert!(failure["error_message"].as_str().unwrap().contains("NaN"), "{failure}");
    assert_eq!(contact(&attacker, "target@attacker.test").await["score"].as_f64(), Some(0.0));
    assert_still_serving(&world.server.url(), world.client(), "nan").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extreme_score_is_clamped_to_a_billion() {
    let (_db, world) = world().await;
    let attacker = tenant(&world.server, "extreme").await;
    install(&attacker, "guest-extreme-scorer", json!({}), &[]).await;
    event(&attacker, "target@attacker.test", "page_viewed").await;
    let path = "/v1/contacts?email=target@attacker.test";
    let score = wait_for(PATIENCE, || async {
        let page = attacker.ok(Method::GET, path, None).await?;
        Ok(page["items"][0]["score"].as_f64().filter(|s| *s != 0.0))
    })
    .await
    .expect("scored");
    assert_eq!(score, 1e9, "f64::MAX is clamped");
    assert_still_serving(&world.server.url(), world.client(), "extreme").await;
}

// ---- tenancy --------------------------------------------------------------

/// An active workflow of `client` that runs `action` on every `kind` event.
async fn workflow_running(client: &Client, kind: &str, action: &str) -> String {
    let body = json!({
        "name": format!("run {action} on {kind}"),
        "trigger": {"type": "event", "kind": kind},
        "enrollment": {"reenroll": true},
        "steps": [{"id": "act", "type": "action", "install_id": action}],
    });
    let created = client.ok(Method::POST, "/v1/workflows?activate=true", Some(body)).await.unwrap();
    created["workflow"]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_read_or_tag_another_tenants_contact_by_its_id() {
    let (_db, world) = world().await;
    let victim = world.contact(json!({"email": "victim@acme.test"})).await;
    let attacker = tenant(&world.server, "cross").await;
    let id =
        install(&attacker, "guest-cross-tenant", json!({"contact_id": victim}), &["store-read", "store-write"]).await;
    workflow_running(&attacker, "page_viewed", &id).await;
    event(&attacker, "target@attacker.test", "page_viewed").await;
    let calls = invocations(&attacker, &id, true).await;
    let output: Value = serde_json::from_str(calls[0]["output_json"].as_str().unwrap()).unwrap();
    assert_eq!(output["read"], "no", "{output}");
    assert_eq!(output["error"], "not found", "not `denied`, which would confirm the id: {output}");
    let after = world.get(&format!("/v1/contacts/{victim}")).await;
    assert_eq!(after["tags"], json!([]), "the victim is untouched: {after}");
    assert_still_serving(&world.server.url(), world.client(), "cross").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_adapter_forging_another_tenants_contact_id_is_rejected() {
    let (_db, world) = world().await;
    let victim = world.contact(json!({"email": "victim@acme.test"})).await;
    let attacker = tenant(&world.server, "forger").await;
    let id = install(&attacker, "guest-forged-channel", json!({"contact_id": victim}), &[]).await;
    let answer =
        attacker.ok(Method::POST, &format!("/v1/installs/{id}/inbound"), Some(json!({"any": "body"}))).await.unwrap();
    assert_eq!(answer, json!({"accepted": 0, "rejected": 1}));
    world.settle().await;
    let events = world.get(&format!("/v1/events?contact_id={victim}")).await;
    let forged = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "opened" || e["properties"]["channel"].is_string());
    assert!(!forged, "nothing recorded for the victim: {events}");
    assert_still_serving(&world.server.url(), world.client(), "forger").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_enrolling_one_contact_thousands_of_times_starts_one_run() {
    let (_db, world) = world().await;
    let trigger = install(world.client(), "guest-enroll-flood", json!({}), &[]).await;
    let tag = world.acme.installs["tag_contact"].clone();
    let body = json!({
        "name": "flooded",
        "trigger": {"type": "plugin", "install_id": trigger},
        "enrollment": {"reenroll": true, "min_interval": "30d"},
        "steps": [{"id": "tag", "type": "action", "install_id": tag, "config": {"tag": "flooded"}}],
    });
    let created = world.client().ok(Method::POST, "/v1/workflows?activate=true", Some(body)).await.unwrap();
    let workflow = created["workflow"]["id"].as_str().unwrap().to_string();
    let target = world.contact(json!({"email": "flooded@acme.test"})).await;
    world.event(&target, "page_viewed", json!({})).await;
    let run = world.wait_run(&workflow, &target).await;
    world.wait_step(&run, "tag").await;
    world.settle().await;
    let runs = world.runs(&workflow, &target).await;
    assert_eq!(runs.len(), 1, "one run, not 5000: {runs:?}");
    let stats = world.get(&format!("/v1/installs/{trigger}")).await;
    assert!(stats["stats"]["ok"].as_u64().unwrap() >= 1, "the trigger answered: {stats}");
    assert_still_serving(&world.server.url(), world.client(), "enroll").await;
}

// ---- outbound HTTP ------------------------------------------------------

/// In a server whose operator did not allow private addresses, run
/// `guest-http` on `url` with `grants`; the failed call's record.
async fn http_attempt(client: &Client, n: usize, url: &str, grants: &[&str]) -> Value {
    let id = install(client, "guest-http", json!({"url": url}), grants).await;
    let kind = format!("probe_{n}");
    workflow_running(client, &kind, &id).await;
    event(client, &format!("probe{n}@attacker.test"), &kind).await;
    failed_with(client, &id, "plugin").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_to_a_host_not_granted_is_refused() {
    let db = TempSqlite::new();
    let (server, acme) = start_with(&db, RuntimeSettings::default()).await;
    let attacker = tenant(&server, "egress").await;
    let failure = http_attempt(&attacker, 0, "http://example.com/", &["http:hooks.example.com"]).await;
    assert!(failure["error_message"].as_str().unwrap().contains("not granted"), "{failure}");
    assert_still_serving(&server.url(), &acme, "egress").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_to_loopback_and_private_ranges_is_refused_even_when_granted() {
    // A listener the plugin must not reach.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "internal" }));
        axum::serve(listener, app).await.unwrap();
    });
    let db = TempSqlite::new();
    let (server, acme) = start_with(&db, RuntimeSettings::default()).await;
    let attacker = tenant(&server, "egress").await;
    let targets = [
        (format!("http://127.0.0.1:{port}/"), "http:127.0.0.1"),
        ("http://10.0.0.1/".to_string(), "http:10.0.0.1"),
        ("http://192.168.1.1/".to_string(), "http:192.168.1.1"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "http:169.254.169.254"),
    ];
    for (n, (url, grant)) in targets.iter().enumerate() {
        let failure = http_attempt(&attacker, n, url, &[grant]).await;
        let message = failure["error_message"].as_str().unwrap();
        assert!(message.contains("loopback or private"), "{url}: {failure}");
    }
    assert_still_serving(&server.url(), &acme, "egress").await;
    server.shutdown().await;
}

// ---- refused at upload or install ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_importing_filesystem_sockets_or_an_unknown_interface_are_refused_naming_it() {
    let (_db, world) = world().await;
    for (guest, import) in [
        ("guest-fs", "wasi:filesystem"),
        ("guest-sockets", "wasi:sockets"),
        ("guest-unknown-import", "acme:backdoor/shell"),
    ] {
        let (s, body) = world.client().upload(guest_bytes(guest).unwrap()).await.unwrap();
        assert_refusal(s, &body, import);
    }
    assert_still_serving(&world.server.url(), world.client(), "imports").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_a_valid_component_are_refused() {
    let (_db, world) = world().await;
    let mut truncated = guest_bytes("guest-panic").unwrap();
    truncated.truncate(truncated.len() / 2);
    for bytes in [b"definitely not wasm".to_vec(), b"\0asm\x01\0\0\0".to_vec(), truncated] {
        let (s, body) = world.client().upload(bytes).await.unwrap();
        assert_refusal(s, &body, "not a valid WebAssembly component");
    }
    assert_still_serving(&world.server.url(), world.client(), "not-wasm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_with_a_malformed_config_schema_is_refused_naming_it() {
    let (_db, world) = world().await;
    let (s, body) = world.client().upload(guest_bytes("guest-bad-schema").unwrap()).await.unwrap();
    assert_refusal(s, &body, "describe().config-schema is not a valid JSON Schema");
    assert_still_serving(&world.server.url(), world.client(), "schema").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_config_is_refused_at_install() {
    let (_db, world) = world().await;
    let (s, uploaded) = world.client().upload(guest_bytes("guest-cross-tenant").unwrap()).await.unwrap();
    assert_eq!(s, 201, "{uploaded}");
    let config = json!({"contact_id": "x".repeat(100_000)});
    let (s, body) = world
        .client()
        .call(Method::POST, "/v1/installs", Some(json!({"plugin_version_id": uploaded["id"], "config": config})))
        .await
        .unwrap();
    assert_eq!(s, 422, "{body}");
    let detail = body["error"]["details"][0]["message"].as_str().unwrap_or_default();
    assert!(detail.contains("the limit is 65536"), "the limit is named: {body}");
    assert_still_serving(&world.server.url(), world.client(), "config").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_re_trigger_their_own_plugin_stop_at_the_emission_cap() {
    let (_db, world) = world().await;
    let attacker = tenant(&world.server, "looping").await;
    let id = install(&attacker, "guest-event-loop", json!({}), &["store-write"]).await;
    event(&attacker, "target@attacker.test", "page_viewed").await;
    // Each ping scores the contact again, which pings again, until the host
    // refuses the 101st ping of the minute: that call fails, the chain ends.
    let failure = failed_with(&attacker, &id, "plugin").await;
    let message = failure["error_message"].as_str().unwrap();
    assert!(message.contains("a plugin may not add more") && message.contains("`ping`"), "{message}");
    let target = contact(&attacker, "target@attacker.test").await;
    let tenant_id = attacker.ok(Method::GET, "/v1/tenant", None).await.unwrap()["id"].as_str().unwrap().to_string();
    let target = target["id"].as_str().unwrap();
    let store = &world.server.state.store;
    let pings = store.count_events(&tenant_id, target, "ping", 0).await.unwrap();
    assert_eq!(pings, cairn::runtime::host::MAX_EMITTED_PER_MINUTE);
    // Stopped for good, not slowed: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.count_events(&tenant_id, target, "ping", 0).await.unwrap(), pings);
    assert_still_serving(&world.server.url(), world.client(), "looping").await;
}
