//! Replay, server side, end to end through the HTTP API on a real server
//! with the prebuilt plugins and a manual clock:
//!
//! - every attempt of a workflow action step is an invocation the step
//!   names; `GET /v1/invocations/{id}` serves its input (the contact, the
//!   merged config, the idempotency key), which is a `RecordedCall` that,
//!   replayed in test mode against the same plugin, fails the same way, and
//!   against a fixed build passes: the story `cairn plugin replay` tells
//!   (SQLite and PostgreSQL);
//! - a failed scorer call keeps the contact and events as projected for the
//!   plugin, not the whole contact;
//! - a channel callback is recorded with its input, minus the tenant's key;
//! - inputs past the retention are erased by the server, the records kept;
//! - another tenant's invocation is a 404.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use cairn::catalog::guest_bytes;
use cairn::demo::{Client, wait_for};
use cairn::runtime::recorded::RecordedCall;
use cairn::runtime::{CallScope, FailureCause};
use cairn::store::new_id;
use cairn::store::testing::{TempPostgres, TempSqlite};
use common::{DAY, PATIENCE, World};
use reqwest::Method;
use serde_json::{Value, json};

// ---------------------------------------------------------------- helpers

/// Save and activate `definition`; returns the workflow id.
async fn activate(world: &World, definition: Value) -> String {
    let created = world.client().ok(Method::POST, "/v1/workflows?activate=true", Some(definition)).await.unwrap();
    created["workflow"]["id"].as_str().unwrap().to_string()
}

/// The install id of a placeholder of the demo tenant (`email`, ...).
fn install(world: &World, name: &str) -> String {
    world.acme.installs.get(name).unwrap_or_else(|| panic!("no install {name}")).clone()
}

/// The step record `step_id` of a run.
fn step<'a>(run: &'a Value, step_id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step_id"] == step_id))
        .unwrap_or_else(|| panic!("run has no step {step_id}: {run}"))
}

/// Upload test guest `guest` for the demo tenant and install it with no
/// config; returns the install id.
async fn install_guest(world: &World, guest: &str) -> String {
    let (status, uploaded) = world.client().upload(guest_bytes(guest).unwrap()).await.unwrap();
    assert!(status == 201 || status == 200, "{uploaded}");
    let body = json!({"plugin_version_id": uploaded["id"], "config": {}});
    let installed = world.client().ok(Method::POST, "/v1/installs", Some(body)).await.unwrap();
    installed["id"].as_str().unwrap().to_string()
}

/// Wait for the first recorded call of `install_id`; returns its id.
async fn first_invocation(world: &World, install_id: &str) -> String {
    let path = format!("/v1/invocations?install_id={install_id}");
    wait_for(PATIENCE, || async {
        let page = world.get(&path).await;
        Ok(page["items"].as_array().and_then(|i| i.last()).and_then(|i| i["id"].as_str()).map(str::to_string))
    })
    .await
    .unwrap_or_else(|e| panic!("no call of {install_id} recorded: {e}"))
}

/// The tenant's scope for a replay of a call of `install_id`, in test mode
/// (what `cairn plugin replay` does: no writes kept, nothing sent).
fn test_scope(world: &World, tenant: &str, install_id: &str) -> CallScope {
    let state = &world.server.state;
    let active = state.registry.get(tenant, install_id).expect("the install is loaded");
    CallScope { test_mode: true, ..active.scope(&state.store, state.registry.runtime(), world.clock.now()) }
}

// ------------------------------------------------ 1. a failed action step

/// A webhook step whose config sets a header the webhook reserves fails in
/// the plugin on every attempt and in a dry run alike (the plugin checks its
/// config before the test-mode shortcut), so its replay must fail the same
/// way. The "fixed build" is `guest-http`, an action that reads the same
/// `url` and, in test mode, gets a canned 200.
async fn a_failed_action_step_replays_to_the_same_failure_and_passes_on_a_fixed_build(database_url: &str) {
    let world = World::start(database_url).await;
    let email = install(&world, "email");
    let definition = json!({
        "name": "notify",
        "trigger": {"type": "event", "kind": "go"},
        "steps": [{"id": "notify", "type": "action", "install_id": email,
                   "config": {"headers": {"X-Cairn-Signature": "forged"}}}]
    });
    let workflow = activate(&world, definition).await;
    let contact =
        world.contact(json!({"email": "ada@example.com", "first_name": "Ada", "properties": {"plan": "pro"}})).await;
    world.event(&contact, "go", json!({"source": "test"})).await;
    let run_id = world.wait_run(&workflow, &contact).await;
    let run = world.wait_run_state(&run_id, "failed", |r| r["status"] == "failed").await;

    // The step names the call it made.
    let failed = step(&run, "notify");
    assert_eq!(failed["status"], "failed", "{run}");
    let invocation_id = failed["invocation_id"].as_str().unwrap_or_else(|| panic!("step names its call: {run}"));

    // The call, with its input.
    let call = world.get(&format!("/v1/invocations/{invocation_id}")).await;
    let key = format!("run:{run_id}:notify");
    assert_eq!(call["id"], invocation_id);
    assert_eq!(
        (&call["kind"], &call["ok"], &call["error_cause"]),
        (&json!("execute"), &json!(false), &json!("plugin"))
    );
    assert!(call["error_message"].as_str().unwrap().contains("X-Cairn-Signature"), "{call}");
    assert_eq!(call["idempotency_key"], key.as_str());
    assert_eq!(call["contact_id"], contact.as_str());
    assert_eq!(call["event_id"], run["trigger_event_id"], "{call}");
    let installed = world.get(&format!("/v1/installs/{email}")).await;
    assert_eq!(call["plugin_version_id"], installed["plugin_version_id"], "the version that ran");
    assert_eq!((&call["input_expired"], &call["input_dropped"]), (&json!(false), &json!(false)));
    let input = &call["input"];
    assert_eq!(input["export"], "execute", "{input}");
    assert_eq!(input["idempotency_key"], key.as_str());
    assert_eq!(input["contact"]["id"], contact.as_str());
    assert_eq!(input["contact"]["first_name"], "Ada");
    assert_eq!(input["contact"]["properties"]["plan"], "pro", "an action sees the whole contact: {input}");
    assert_eq!(input["trigger_event"]["kind"], "go");
    assert_eq!(input["trigger_event"]["properties"]["source"], "test");
    // The install's config with the step's laid over it.
    let mut merged = installed["config"].clone();
    merged["headers"] = json!({"X-Cairn-Signature": "forged"});
    assert_eq!(input["config"], merged);

    // Lists stay light, and filter by contact and outcome.
    let listed = world.get(&format!("/v1/invocations?contact_id={contact}&ok=false")).await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["id"], invocation_id);
    assert!(items[0].get("input").is_none(), "{listed}");
    assert_eq!(world.get(&format!("/v1/invocations?contact_id={contact}&ok=true")).await["items"], json!([]));

    // Replayed against the same plugin, in test mode: the same failure.
    let recorded: RecordedCall = serde_json::from_value(input.clone()).expect("the input is a RecordedCall");
    let tenant = call["tenant_id"].as_str().unwrap();
    let runtime = world.server.state.registry.runtime();
    let same = world.server.state.registry.get(tenant, &email).unwrap();
    let again = runtime.call_recorded(&same.plugin, test_scope(&world, tenant, &email), &recorded, &new_id()).await;
    let error = again.expect_err("the same build fails again");
    assert_eq!(error.cause, FailureCause::Plugin);
    assert_eq!(json!(error.message), call["error_message"]);

    // Against a fixed build: it passes.
    let fixed = runtime.load(Arc::new(guest_bytes("guest-http").unwrap())).await.unwrap();
    let replayed = runtime
        .call_recorded(&fixed, test_scope(&world, tenant, &email), &recorded, &new_id())
        .await
        .unwrap_or_else(|e| panic!("the fixed build passes: {e}"));
    assert_eq!(replayed.value, json!({"status": 200.0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_action_step_replays_to_the_same_failure_and_passes_on_a_fixed_build_on_sqlite() {
    let db = TempSqlite::new();
    a_failed_action_step_replays_to_the_same_failure_and_passes_on_a_fixed_build(&db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_action_step_replays_to_the_same_failure_and_passes_on_a_fixed_build_on_postgres() {
    let db = TempPostgres::create().await.expect("PostgreSQL for tests");
    a_failed_action_step_replays_to_the_same_failure_and_passes_on_a_fixed_build(db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_a_step_is_a_call_and_the_step_names_the_latest() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    // A webhook pointed at a port nobody listens on: a retryable failure.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let body = json!({
        "plugin_version_id": world.get(&format!("/v1/installs/{}", install(&world, "email"))).await["plugin_version_id"],
        "config": {"url": format!("http://{dead}/gone"), "secret": common::WEBHOOK_SECRET},
        "grants": ["http:127.0.0.1"],
    });
    let hook =
        world.client().ok(Method::POST, "/v1/installs", Some(body)).await.unwrap()["id"].as_str().unwrap().to_string();
    let definition = json!({
        "name": "tag then notify",
        "trigger": {"type": "event", "kind": "go"},
        "retry": {"max_attempts": 2, "backoff": "1m"},
        "steps": [
            {"id": "tag", "type": "action", "install_id": install(&world, "tag_contact"), "config": {"tag": "replayed"}},
            {"id": "notify", "type": "action", "install_id": hook}
        ]
    });
    let workflow = activate(&world, definition).await;
    let contact = world.contact(json!({"email": "twice@example.com"})).await;
    world.event(&contact, "go", json!({})).await;
    let run_id = world.wait_run(&workflow, &contact).await;

    // A step that succeeded names its call, ok, with output and fuel.
    let run = world.wait_step(&run_id, "tag").await;
    let tagged = world.get(&format!("/v1/invocations/{}", step(&run, "tag")["invocation_id"].as_str().unwrap())).await;
    assert_eq!((&tagged["kind"], &tagged["ok"]), (&json!("execute"), &json!(true)), "{tagged}");
    assert_eq!(tagged["input"]["config"]["tag"], "replayed");
    assert!(tagged["output_json"].is_string(), "{tagged}");
    assert!(tagged["fuel_used"].as_i64().unwrap() > 0, "{tagged}");

    // Attempt 1 fails and will be retried; attempt 2 fails the run.
    let run = world.wait_run_state(&run_id, "attempt 1 failed", |r| r["attempts"] == 1).await;
    let first = step(&run, "notify")["invocation_id"].as_str().unwrap().to_string();
    world.jump_to_timer(&run_id).await;
    let run = world.wait_run_state(&run_id, "failed", |r| r["status"] == "failed").await;
    let second = step(&run, "notify")["invocation_id"].as_str().unwrap().to_string();
    assert_ne!(first, second, "the step names its latest attempt");
    let listed = world.get(&format!("/v1/invocations?install_id={hook}")).await;
    let ids: Vec<&str> = listed["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "one call per attempt, newest first");
    for id in [&first, &second] {
        let call = world.get(&format!("/v1/invocations/{id}")).await;
        assert_eq!((&call["kind"], &call["ok"]), (&json!("execute"), &json!(false)), "{call}");
        assert_eq!(call["input"]["idempotency_key"], format!("run:{run_id}:notify"), "the same key on every attempt");
    }
}

// ------------------------------------------------ 2. a failed scorer call

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_scorer_call_keeps_the_contact_and_events_as_projected_for_the_plugin() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let panicky = install_guest(&world, "guest-panic").await;
    let contact = world.contact(json!({"email": "sam@example.com", "properties": {"plan": "pro"}})).await;
    world.event(&contact, "page_viewed", json!({"url": "/pricing"})).await;
    let id = first_invocation(&world, &panicky).await;

    let call = world.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!((&call["kind"], &call["ok"], &call["error_cause"]), (&json!("score"), &json!(false), &json!("trap")));
    assert_eq!(call["contact_id"], contact.as_str(), "{call}");
    let input = &call["input"];
    assert_eq!(input["export"], "score", "{input}");
    assert_eq!(input["contact"]["id"], contact.as_str());
    assert_eq!(input["contact"]["email"], "sam@example.com");
    // guest-panic declares it reads no custom property and no events: the
    // record keeps what it was given, not the whole contact.
    assert_eq!(input["contact"]["properties"], json!({}), "{input}");
    assert_eq!(input["events"], json!([]), "{input}");
    assert_eq!(input["config"], json!({}));

    // The same build traps again; a fixed one scores.
    let recorded: RecordedCall = serde_json::from_value(input.clone()).unwrap();
    let tenant = call["tenant_id"].as_str().unwrap();
    let runtime = world.server.state.registry.runtime();
    let same = world.server.state.registry.get(tenant, &panicky).unwrap();
    let error = runtime
        .call_recorded(&same.plugin, test_scope(&world, tenant, &panicky), &recorded, &new_id())
        .await
        .expect_err("still panics");
    assert_eq!(error.cause, FailureCause::Trap);
    let fixed = runtime.load(Arc::new(guest_bytes("guest-versioned-1").unwrap())).await.unwrap();
    let scored = runtime.call_recorded(&fixed, test_scope(&world, tenant, &panicky), &recorded, &new_id()).await;
    assert_eq!(scored.unwrap().value["score"], 1.0);
}

// ------------------------------------------------ 3. channel callbacks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_callback_is_recorded_with_its_input_but_not_the_tenants_key() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let email = install(&world, "email");
    let path = format!("/v1/installs/{email}/inbound");

    // One the plugin cannot parse: refused, and recorded as failed.
    let junk = json!({"event": "exploded", "email": "x@example.com"});
    let (status, body) = world.client().call(Method::POST, &path, Some(junk.clone())).await.unwrap();
    assert_eq!(status, 422, "{body}");
    let id = first_invocation(&world, &email).await;
    let call = world.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(
        (&call["kind"], &call["ok"], &call["error_cause"]),
        (&json!("parse-inbound"), &json!(false), &json!("plugin"))
    );
    let input = &call["input"];
    assert_eq!(input["export"], "parse-inbound", "{input}");
    assert_eq!(serde_json::from_str::<Value>(input["body"].as_str().unwrap()).unwrap(), junk);
    let headers: Vec<String> =
        input["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_ascii_lowercase()).collect();
    assert!(headers.contains(&"content-type".to_string()), "{headers:?}");
    assert!(!headers.contains(&"authorization".to_string()), "the tenant's key is no input: {headers:?}");
    assert!(!call.to_string().contains("Bearer"), "{call}");

    // One it parses: accepted, and recorded as ok with the events it gave.
    let good = json!({"event": "opened", "email": "x@example.com"});
    let (status, body) = world.client().call(Method::POST, &path, Some(good)).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let listed = world.get(&format!("/v1/invocations?install_id={email}&ok=true")).await;
    let ok = &listed["items"][0];
    assert_eq!(ok["kind"], "parse-inbound", "{listed}");
    let output: Value = serde_json::from_str(ok["output_json"].as_str().unwrap()).unwrap();
    assert_eq!(output[0]["kind"], "opened", "{output}");
}

// ------------------------------------------------ 4. retention

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_past_its_retention_is_erased_and_the_record_kept() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let panicky = install_guest(&world, "guest-panic").await;
    let contact = world.contact(json!({"email": "old@example.com"})).await;
    world.event(&contact, "page_viewed", json!({})).await;
    let id = first_invocation(&world, &panicky).await;
    let path = format!("/v1/invocations/{id}");
    assert!(world.get(&path).await["input"].is_object());

    // Six days on, still kept (the server's pass runs whenever the manual
    // clock moves; give it time to have run).
    world.clock.advance(6 * DAY);
    world.settle().await;
    let call = world.get(&path).await;
    assert!(call["input"].is_object(), "{call}");
    assert_eq!(call["input_expired"], false);

    // Past the default week: erased by the server's retention task; the
    // record stays.
    world.clock.advance(2 * DAY);
    let call = wait_for(PATIENCE, || async {
        let call = world.get(&path).await;
        Ok((call["input_expired"] == true).then_some(call))
    })
    .await
    .expect("the input expires");
    assert!(call["input"].is_null(), "{call}");
    assert_eq!((&call["kind"], &call["error_cause"]), (&json!("score"), &json!("trap")), "{call}");

    // A call recorded now keeps its input.
    let fresh = world.contact(json!({"email": "new@example.com"})).await;
    world.event(&fresh, "page_viewed", json!({})).await;
    let listed = wait_for(PATIENCE, || async {
        let page = world.get(&format!("/v1/invocations?install_id={panicky}&contact_id={fresh}")).await;
        Ok(page["items"].as_array().and_then(|i| i.first()).cloned())
    })
    .await
    .unwrap();
    let call = world.get(&format!("/v1/invocations/{}", listed["id"].as_str().unwrap())).await;
    assert!(call["input"].is_object(), "{call}");
}

// ------------------------------------------------ 5. tenants

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_cannot_fetch_an_invocation() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let panicky = install_guest(&world, "guest-panic").await;
    let contact = world.contact(json!({"email": "mine@example.com"})).await;
    world.event(&contact, "page_viewed", json!({})).await;
    let id = first_invocation(&world, &panicky).await;

    let created = world.admin().ok(Method::POST, "/v1/tenants", Some(json!({"name": "Globex"}))).await.unwrap();
    let globex = Client::new(&world.server.url(), created["api_key"].as_str().unwrap());
    let (status, body) = globex.call(Method::GET, &format!("/v1/invocations/{id}"), None).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = globex.call(Method::GET, "/v1/invocations/no-such-call", None).await.unwrap();
    assert_eq!(status, 404, "an unknown id answers the same: {body}");
    let listed = globex.ok(Method::GET, &format!("/v1/invocations?contact_id={contact}"), None).await.unwrap();
    assert_eq!(listed["items"], json!([]));
    // Its owner still can.
    assert_eq!(world.get(&format!("/v1/invocations/{id}")).await["id"], id.as_str());
}
