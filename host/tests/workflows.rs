//! The workflow engine's guarantees, end to end through the HTTP API, on a
//! real server with the prebuilt plugins and a manual clock:
//!
//! - a definition is checked as a whole before it is saved: every problem at
//!   once, each named by a JSON pointer to the step and field, installs of
//!   this tenant only, step config against the plugin's schema;
//! - a run finishes on the version it enrolled on, while new enrollments take
//!   the newly active one;
//! - delays are durable timers: a run waiting five days survives a restart
//!   (SQLite and PostgreSQL) and goes on at the right business time;
//! - a failing step retries with exponential backoff under one idempotency
//!   key, then fails the run visibly; a retry resumes from the failed step;
//! - a disabled install fails its step with an error that names it;
//! - a workflow that re-triggers itself stops (no re-enrollment, or the
//!   daily cap);
//! - enrollment rules (`reenroll`, `min_interval`, `suppress_if`);
//! - dry runs walk a version and keep nothing;
//! - runs are visible per workflow, contact and status, with every step's
//!   record, to their own tenant only;
//! - delays read the tenant's time zone, which the tenant can change.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use cairn::clock::Clock;
use cairn::demo::{Client, wait_for};
use cairn::store::Principal;
use cairn::store::testing::{TempPostgres, TempSqlite};
use common::{DAY, MONDAY_0800_UTC, PATIENCE, WEBHOOK_SECRET, World};
use reqwest::Method;
use serde_json::{Value, json};

const MINUTE: i64 = 60_000;

// ---------------------------------------------------------------- helpers

/// Save `definition` and activate it; returns the workflow id.
async fn activate(world: &World, definition: Value) -> String {
    let created = world
        .client()
        .ok(Method::POST, "/v1/workflows?activate=true", Some(definition))
        .await
        .unwrap_or_else(|e| panic!("workflow saved and activated: {e}"));
    created["workflow"]["id"].as_str().expect("workflow id").to_string()
}

/// A small definition: trigger on event `kind`, these steps.
fn on_event(kind: &str, steps: Value) -> Value {
    json!({"name": format!("on {kind}"), "trigger": {"type": "event", "kind": kind}, "steps": steps})
}

/// The install id of a placeholder of the demo tenant (`create_task`, ...).
fn install(world: &World, name: &str) -> String {
    world.acme.installs.get(name).unwrap_or_else(|| panic!("no install {name}")).clone()
}

/// A tag-contact step.
fn tag_step(world: &World, id: &str, tag: &str) -> Value {
    json!({"id": id, "type": "action", "install_id": install(world, "tag_contact"), "config": {"tag": tag}})
}

/// A create-task step.
fn task_step(world: &World, id: &str, title: &str) -> Value {
    json!({"id": id, "type": "action", "install_id": install(world, "create_task"), "config": {"title": title}})
}

/// Send `body` and require status `expected`; returns the body.
async fn expect_status(client: &Client, method: Method, path: &str, body: Option<Value>, expected: u16) -> Value {
    let (status, value) = client.call(method.clone(), path, body).await.expect("request sent");
    assert_eq!(status, expected, "{method} {path} answered {status}: {value}");
    value
}

/// The `field`s of a 422's `error.details`.
fn detail_fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("a 422 with details: {body}"))
        .iter()
        .map(|d| d["field"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The message of the detail at `field`.
fn detail_message(body: &Value, field: &str) -> String {
    body["error"]["details"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["field"] == field))
        .and_then(|d| d["message"].as_str())
        .unwrap_or_else(|| panic!("no detail at {field}: {body}"))
        .to_string()
}

/// The step record `step_id` of a run (`GET /v1/runs/{id}`).
fn step<'a>(run: &'a Value, step_id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step_id"] == step_id))
        .unwrap_or_else(|| panic!("run has no step {step_id}: {run}"))
}

/// The step ids a run recorded, in order.
fn step_ids(run: &Value) -> Vec<String> {
    run["steps"].as_array().into_iter().flatten().map(|s| s["step_id"].as_str().unwrap_or("?").to_string()).collect()
}

/// Wait until every event of `contact` has been through the pipeline (so
/// every enrollment it could cause has been decided).
async fn wait_processed(world: &World, contact: &str) {
    wait_for(PATIENCE, || async {
        let page = world.get(&format!("/v1/events?contact_id={contact}&limit=1000")).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        Ok((!items.is_empty() && items.iter().all(|e| e["processed"] == true)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("events of {contact} never all processed: {e}"));
}

/// Wait until the run is no longer waiting; returns it.
async fn wait_finished(world: &World, run: &str) -> Value {
    world.wait_run_state(run, "finished", |r| r["status"] != "waiting").await
}

/// Wait until the run waits on a timer (a delay or a retry backoff) later
/// than the clock's now.
async fn wait_timer(world: &World, run: &str) -> Value {
    let now = world.clock.now();
    world
        .wait_run_state(run, "waiting on a timer", |r| r["status"] == "waiting" && r["wake_at"].as_i64() > Some(now))
        .await
}

/// A second tenant, made by the admin; returns its client.
async fn other_tenant(world: &World, name: &str) -> Client {
    let created = world.admin().ok(Method::POST, "/v1/tenants", Some(json!({"name": name}))).await.unwrap();
    Client::new(&world.server.url(), created["api_key"].as_str().unwrap())
}

/// Install prebuilt plugin `plugin` for the tenant of `client`.
async fn install_for(client: &Client, plugin: &str, config: Value, grants: Value) -> String {
    let plugins = client.ok(Method::GET, "/v1/plugins", None).await.unwrap();
    let version = plugins["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["name"] == plugin))
        .and_then(|p| p["id"].as_str())
        .unwrap_or_else(|| panic!("plugin {plugin} is available: {plugins}"))
        .to_string();
    let body = json!({"plugin_version_id": version, "config": config, "grants": grants});
    let installed = client.ok(Method::POST, "/v1/installs", Some(body)).await.unwrap();
    installed["id"].as_str().unwrap().to_string()
}

// ------------------------------------------------------- 1. validation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_definition_is_refused_with_every_problem_named_by_step_and_field() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let client = world.client();

    // Several document problems: all of them come back in one answer.
    let bad = on_event(
        "go",
        json!([
            {"id": "wait", "type": "delay", "duration": "1d"},
            {"id": "later", "type": "delay", "duration": "5 parsecs"},
            {"id": "wait", "type": "delay", "duration": "2d"},
            {"id": "check", "type": "if", "condition": {"type": "tag", "tag": "x"},
             "then": [{"id": "inner", "type": "delay", "until": "25:00"}]},
            {"id": "ghost", "type": "action", "install_id": "no-such-install"}
        ]),
    );
    let body = expect_status(client, Method::POST, "/v1/workflows", Some(bad), 422).await;
    let fields = detail_fields(&body);
    assert_eq!(fields, ["/steps/1/duration", "/steps/2/id", "/steps/3/then/0/until", "/steps/4/install_id"], "{body}");
    assert!(detail_message(&body, "/steps/1/duration").contains("5 parsecs"), "{body}");
    assert!(detail_message(&body, "/steps/2/id").contains("wait"), "{body}");
    assert!(detail_message(&body, "/steps/4/install_id").contains("no-such-install"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("3 more problems"), "{body}");

    // An unknown step type is named at its step.
    let teleport =
        on_event("go", json!([{"id": "a", "type": "delay", "duration": "1d"}, {"id": "b", "type": "teleport"}]));
    let body = expect_status(client, Method::POST, "/v1/workflows", Some(teleport), 422).await;
    let fields = detail_fields(&body);
    assert!(fields.len() == 1 && fields[0].starts_with("/steps/1"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("teleport"), "{body}");

    // An install that does not exist, and another tenant's install.
    let globex = other_tenant(&world, "Globex").await;
    let foreign = install_for(&globex, "tag-contact", json!({"tag": "x"}), json!(["store-write"])).await;
    let steps = json!([
        {"id": "ghost", "type": "action", "install_id": "no-such-install"},
        tag_step(&world, "fine", "ok"),
        {"id": "theirs", "type": "action", "install_id": foreign, "config": {"tag": "y"}}
    ]);
    let body = expect_status(client, Method::POST, "/v1/workflows", Some(on_event("go", steps)), 422).await;
    assert_eq!(detail_fields(&body), ["/steps/0/install_id", "/steps/2/install_id"], "{body}");
    assert!(detail_message(&body, "/steps/2/install_id").contains(&foreign), "{body}");

    // A message only goes to a channel; the step config must fit the plugin's schema.
    let steps = json!([
        {"id": "task", "type": "action", "install_id": install(&world, "create_task"),
         "message": {"subject": "Hi", "body": "x"}},
        {"id": "bad-config", "type": "action", "install_id": install(&world, "create_task"),
         "config": {"due_in_hours": "soon"}},
        {"id": "extra", "type": "action", "install_id": install(&world, "tag_contact"),
         "config": {"tag": "ok", "colour": "red"}}
    ]);
    let body = expect_status(client, Method::POST, "/v1/workflows", Some(on_event("go", steps)), 422).await;
    let fields = detail_fields(&body);
    assert!(fields.contains(&"/steps/0/message".to_string()), "{body}");
    assert!(fields.contains(&"/steps/1/config/due_in_hours".to_string()), "{body}");
    assert!(fields.iter().any(|f| f.starts_with("/steps/2/config")), "{body}");
    assert!(detail_message(&body, "/steps/0/message").contains("not a channel"), "{body}");

    // The only channel plugin (webhook) is also an action: without a message it
    // is an action step, and a definition using it that way is valid.
    let steps = json!([{"id": "hook", "type": "action", "install_id": install(&world, "sales_webhook")}]);
    expect_status(client, Method::POST, "/v1/workflows", Some(on_event("go", steps)), 201).await;

    // Nothing refused was saved.
    let list = world.get("/v1/workflows").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
}

// --------------------------------------------------------- 2. versions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_finishes_on_its_version_while_new_contacts_run_the_new_one() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let v1 = on_event(
        "go",
        json!([tag_step(&world, "v1-start", "v1"), {"id": "v1-wait", "type": "delay", "duration": "5d"},
               task_step(&world, "v1-end", "v1 done")]),
    );
    let workflow = activate(&world, v1).await;
    let early = world.contact(json!({"email": "early@example.com"})).await;
    world.event(&early, "go", json!({})).await;
    let early_run = world.wait_run(&workflow, &early).await;
    wait_timer(&world, &early_run).await;

    // v2 has other steps; activating it archives v1.
    let v2 = on_event("go", json!([tag_step(&world, "v2-start", "v2"), task_step(&world, "v2-end", "v2 done")]));
    let saved = world.client().ok(Method::PUT, &format!("/v1/workflows/{workflow}"), Some(v2)).await.unwrap();
    assert_eq!(saved["version"]["version"], 2, "{saved}");
    assert_eq!(saved["version"]["status"], "draft", "{saved}");
    let path = format!("/v1/workflows/{workflow}/activate");
    world.client().ok(Method::POST, &path, Some(json!({"version": 2}))).await.unwrap();

    let late = world.contact(json!({"email": "late@example.com"})).await;
    world.event(&late, "go", json!({})).await;
    let late_run = world.wait_run(&workflow, &late).await;
    let late_done = wait_finished(&world, &late_run).await;
    assert_eq!(late_done["status"], "completed", "{late_done}");
    assert_eq!(late_done["version"], 2);
    assert_eq!(step_ids(&late_done), ["v2-start", "v2-end"]);

    // The early run still waits on v1's delay and ends with v1's last step.
    world.jump_to_timer(&early_run).await;
    let early_done = wait_finished(&world, &early_run).await;
    assert_eq!(early_done["status"], "completed", "{early_done}");
    assert_eq!(early_done["version"], 1);
    assert_eq!(step_ids(&early_done), ["v1-start", "v1-wait", "v1-end"]);
    let early_contact = world.get(&format!("/v1/contacts/{early}")).await;
    assert_eq!(early_contact["tags"], json!(["v1"]));
    let tasks = world.get(&format!("/v1/tasks?contact_id={early}")).await;
    assert_eq!(tasks["items"][0]["title"], "v1 done", "{tasks}");

    let shown = world.get(&format!("/v1/workflows/{workflow}")).await;
    assert_eq!(shown["workflow"]["active_version"], 2, "{shown}");
    // Newest first: v2 active, v1 archived (its run still finished on it).
    let versions: Vec<(i64, &str)> = shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_i64().unwrap(), v["status"].as_str().unwrap()))
        .collect();
    assert_eq!(versions, [(2, "active"), (1, "archived")], "{shown}");
    assert_eq!(shown["definition"]["steps"][0]["id"], "v2-start", "{shown}");
    assert_eq!(shown["runs"]["completed"], 2, "{shown}");
}

// ------------------------------------------------- 3. durable timers

/// A run waits on a five-day delay; the server stops; a new server on the
/// same database, with its clock five days on, runs the step after the delay.
async fn a_delay_survives_a_restart(database_url: &str) {
    let world = World::start(database_url).await;
    let definition = on_event(
        "go",
        json!([tag_step(&world, "before", "before"), {"id": "wait", "type": "delay", "duration": "5d"},
               tag_step(&world, "after", "after")]),
    );
    let workflow = activate(&world, definition).await;
    let contact = world.contact(json!({"email": "patient@example.com"})).await;
    world.event(&contact, "go", json!({})).await;
    let run_id = world.wait_run(&workflow, &contact).await;
    let waiting = wait_timer(&world, &run_id).await;
    // Five calendar days in Berlin from Monday 09:00: Saturday 09:00 (08:00 UTC).
    assert_eq!(waiting["wake_at"], MONDAY_0800_UTC + 5 * DAY, "{waiting}");
    let tenant = world.get("/v1/tenant").await["id"].as_str().unwrap().to_string();

    let World { server, receiver, .. } = world;
    server.shutdown().await;

    let clock = Clock::manual(MONDAY_0800_UTC + 5 * DAY);
    let server = common::start_server(database_url, clock).await;
    let key = server.state.store.create_api_key(&Principal::Tenant(tenant)).await.unwrap();
    let client = Client::new(&server.url(), &key);
    let run = wait_for(PATIENCE, || async {
        let run = client.ok(Method::GET, &format!("/v1/runs/{run_id}"), None).await?;
        Ok((run["status"] != "waiting").then_some(run))
    })
    .await
    .expect("the run goes on after the restart");
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(step_ids(&run), ["before", "wait", "after"]);
    assert_eq!(step(&run, "wait")["output"]["waited_until"], MONDAY_0800_UTC + 5 * DAY, "{run}");
    assert_eq!(step(&run, "after")["started_at"], MONDAY_0800_UTC + 5 * DAY, "{run}");
    let c = client.ok(Method::GET, &format!("/v1/contacts/{contact}"), None).await.unwrap();
    let mut tags: Vec<String> = serde_json::from_value(c["tags"].clone()).unwrap();
    tags.sort();
    assert_eq!(tags, ["after", "before"]);
    server.shutdown().await;
    drop(receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_day_delay_survives_a_restart_on_sqlite() {
    let db = TempSqlite::new();
    a_delay_survives_a_restart(&db.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_day_delay_survives_a_restart_on_postgres() {
    let db = TempPostgres::create().await.expect("PostgreSQL for tests");
    a_delay_survives_a_restart(db.url()).await;
}

// ----------------------------------------------------------- 4. retries

/// A webhook endpoint that answers 500 until told to recover, and records
/// the idempotency key of every request.
struct Flaky {
    healthy: AtomicBool,
    keys: Mutex<Vec<String>>,
}

impl Flaky {
    fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }
}

async fn start_flaky() -> (SocketAddr, Arc<Flaky>, tokio::task::JoinHandle<()>) {
    let flaky = Arc::new(Flaky { healthy: AtomicBool::new(false), keys: Mutex::new(Vec::new()) });
    let app = axum::Router::new()
        .route(
            "/flaky",
            axum::routing::post(|State(f): State<Arc<Flaky>>, headers: HeaderMap| async move {
                let key = headers.get("x-cairn-idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("");
                f.keys.lock().unwrap().push(key.to_string());
                if f.healthy.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, "upstream on fire")
                }
            }),
        )
        .with_state(flaky.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, flaky, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_retries_with_backoff_then_fails_and_a_retry_resumes_from_it() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let (addr, flaky, _endpoint) = start_flaky().await;
    let hook = install_for(
        world.client(),
        "webhook",
        json!({"url": format!("http://{addr}/flaky"), "secret": WEBHOOK_SECRET}),
        json!(["http:127.0.0.1"]),
    )
    .await;
    let definition = json!({
        "name": "notify",
        "trigger": {"type": "event", "kind": "go"},
        "retry": {"max_attempts": 3, "backoff": "1m"},
        "steps": [
            tag_step(&world, "first", "first"),
            {"id": "notify", "type": "action", "install_id": hook, "message": {"subject": "Hi", "body": "x"}}
        ]
    });
    let workflow = activate(&world, definition).await;
    let contact = world.contact(json!({"email": "retry@example.com"})).await;
    world.event(&contact, "go", json!({})).await;
    let run_id = world.wait_run(&workflow, &contact).await;

    // Attempt 1 at T0 fails: retry after 1 minute.
    let t0 = world.clock.now();
    let run = wait_timer(&world, &run_id).await;
    assert_eq!(run["attempts"], 1, "{run}");
    assert_eq!(run["wake_at"], t0 + MINUTE, "{run}");
    assert_eq!(step(&run, "notify")["status"], "retrying", "{run}");
    assert_eq!(step(&run, "notify")["attempts"], 1, "{run}");
    let first_step = step(&run, "first").clone();

    // Attempt 2 fails: the wait doubles to 2 minutes.
    world.jump_to_timer(&run_id).await;
    let t1 = world.clock.now();
    let run = world.wait_run_state(&run_id, "attempt 2 failed", |r| r["attempts"] == 2).await;
    assert_eq!(run["wake_at"], t1 + 2 * MINUTE, "{run}");
    assert_eq!(step(&run, "notify")["attempts"], 2, "{run}");

    // Attempt 3 is the last: the run fails, with the error on it and on the step.
    world.jump_to_timer(&run_id).await;
    let run = wait_finished(&world, &run_id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["cursor"], "notify", "{run}");
    assert_eq!(run["error"]["step"], "notify", "{run}");
    assert_eq!(run["error"]["attempts"], 3, "{run}");
    assert!(run["error"]["error"]["message"].as_str().unwrap().contains("HTTP 500"), "{run}");
    let failed = step(&run, "notify");
    assert_eq!(failed["status"], "failed", "{run}");
    assert_eq!(failed["attempts"], 3, "{run}");
    assert!(failed["error"]["message"].as_str().unwrap().contains("upstream on fire"), "{run}");
    assert_eq!(failed["error"]["retryable"], true, "{run}");

    // Every attempt carried the same idempotency key.
    let expected_key = format!("run:{run_id}:notify");
    assert_eq!(flaky.keys(), vec![expected_key.clone(); 3]);

    // The endpoint recovers; a retry runs the failed step only.
    flaky.healthy.store(true, Ordering::SeqCst);
    world.clock.advance(10 * MINUTE);
    let retried = world.client().ok(Method::POST, &format!("/v1/runs/{run_id}/retry"), None).await.unwrap();
    assert_eq!(retried["status"], "waiting", "{retried}");
    let run = wait_finished(&world, &run_id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert!(run["error"].is_null(), "{run}");
    assert_eq!(step(&run, "notify")["status"], "ok", "{run}");
    assert_eq!(step(&run, "first"), &first_step, "the step before the failed one ran once");
    assert_eq!(flaky.keys(), vec![expected_key; 4]);

    // A completed run cannot be retried.
    let body = expect_status(world.client(), Method::POST, &format!("/v1/runs/{run_id}/retry"), None, 422).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("only a failed run"), "{body}");
    // Nor can a run that does not exist.
    expect_status(world.client(), Method::POST, "/v1/runs/no-such-run/retry", None, 404).await;
}

// --------------------------------------------------- 5. disabled install

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_install_fails_its_step_with_an_error_naming_it() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let task = install(&world, "create_task");
    let workflow = activate(&world, on_event("go", json!([task_step(&world, "task", "Call")]))).await;
    let patched = world
        .client()
        .ok(Method::PATCH, &format!("/v1/installs/{task}"), Some(json!({"enabled": false})))
        .await
        .unwrap();
    assert_eq!(patched["enabled"], false, "{patched}");

    let contact = world.contact(json!({"email": "disabled@example.com"})).await;
    world.event(&contact, "go", json!({})).await;
    let run_id = world.wait_run(&workflow, &contact).await;
    let run = wait_finished(&world, &run_id).await;
    assert_eq!(run["status"], "failed", "{run}");
    let failed = step(&run, "task");
    assert_eq!(failed["status"], "failed", "{run}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains(&task), "the error names the install: {run}");
    assert!(message.contains("disabled"), "the error says why: {run}");
    assert_eq!(run["error"]["error"], failed["error"], "{run}");
    let tasks = world.get(&format!("/v1/tasks?contact_id={contact}")).await;
    assert_eq!(tasks["items"], json!([]), "{tasks}");
}

// ------------------------------------------------ 6. self re-triggering

/// A workflow triggered by an owner change whose own steps change the owner
/// twice.
fn owner_ping_pong(world: &World, reenroll: bool) -> Value {
    let assign = install(world, "assign_by_region");
    json!({
        "name": format!("owner ping-pong (reenroll {reenroll})"),
        "trigger": {"type": "property_changed", "name": "owner"},
        "enrollment": {"reenroll": reenroll},
        "steps": [
            {"id": "to-x", "type": "action", "install_id": assign,
             "config": {"default_owner": "x@acme.test", "owners": {}}},
            {"id": "to-y", "type": "action", "install_id": assign,
             "config": {"default_owner": "y@acme.test", "owners": {}}}
        ]
    })
}

/// Wait until the contact's runs of `workflow` are quiet: every event
/// processed, no run waiting, and still so after a settle. Returns how many
/// runs there are.
async fn settled_runs(world: &World, workflow: &str, contact: &str) -> usize {
    wait_for(PATIENCE, || async {
        wait_processed(world, contact).await;
        let runs = world.runs(workflow, contact).await;
        if runs.iter().any(|r| r["status"] == "waiting") {
            return Ok(None);
        }
        // Quiet now; still quiet after a settle?
        world.settle().await;
        wait_processed(world, contact).await;
        let again = world.runs(workflow, contact).await;
        Ok((again.len() == runs.len() && again.iter().all(|r| r["status"] != "waiting")).then_some(runs.len()))
    })
    .await
    .unwrap_or_else(|e| panic!("the workflow never settled: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_that_retriggers_itself_without_reenrollment_runs_once() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let workflow = activate(&world, owner_ping_pong(&world, false)).await;
    let contact = world.contact(json!({"email": "loop@example.com"})).await;
    let path = format!("/v1/contacts/{contact}");
    world.client().ok(Method::PATCH, &path, Some(json!({"owner": "z@acme.test"}))).await.unwrap();

    assert_eq!(settled_runs(&world, &workflow, &contact).await, 1);
    let runs = world.runs(&workflow, &contact).await;
    assert_eq!(runs[0]["status"], "completed", "{runs:?}");
    assert_eq!(world.get(&path).await["owner"], "y@acme.test");
    // Its steps changed the owner (so the trigger did fire again) ...
    let changes = world.get(&format!("/v1/events?contact_id={contact}&kind=property_changed")).await;
    let owners = changes["items"].as_array().unwrap().iter().filter(|e| e["properties"]["name"] == "owner").count();
    assert_eq!(owners, 3, "{changes}");
    // ... and nothing more happens later.
    world.settle().await;
    assert_eq!(world.runs(&workflow, &contact).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_that_retriggers_itself_with_reenrollment_stops_at_the_daily_cap() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let workflow = activate(&world, owner_ping_pong(&world, true)).await;
    let contact = world.contact(json!({"email": "loop@example.com"})).await;
    let path = format!("/v1/contacts/{contact}");
    world.client().ok(Method::PATCH, &path, Some(json!({"owner": "z@acme.test"}))).await.unwrap();

    let cap = 10; // definition::DEFAULT_MAX_ENROLLMENTS_PER_DAY
    let mut runs = settled_runs(&world, &workflow, &contact).await;
    assert!((1..=cap).contains(&runs), "{runs} runs");
    // A run's own owner changes enroll the contact again only when the
    // pipeline sees them after the run ended; should a race have stopped
    // the loop early, each further owner change enrolls once more, until
    // the cap refuses.
    let mut nudges = 0;
    while runs < cap && nudges < cap {
        let owner = format!("nudge{nudges}@acme.test");
        world.client().ok(Method::PATCH, &path, Some(json!({"owner": owner}))).await.unwrap();
        runs = settled_runs(&world, &workflow, &contact).await;
        nudges += 1;
    }
    assert_eq!(runs, cap, "the loop stops at the daily cap, not sooner or later");
    // At the cap, yet another owner change enrolls nothing.
    world.client().ok(Method::PATCH, &path, Some(json!({"owner": "w@acme.test"}))).await.unwrap();
    assert_eq!(settled_runs(&world, &workflow, &contact).await, cap);
    let all = world.runs(&workflow, &contact).await;
    assert!(all.iter().all(|r| r["status"] == "completed"), "{all:?}");

    // The cap is per 24 hours: a day later the contact enrolls again, and
    // the loop stops at the cap again.
    world.clock.advance(DAY + 1);
    world.client().ok(Method::PATCH, &path, Some(json!({"owner": "v@acme.test"}))).await.unwrap();
    let later = settled_runs(&world, &workflow, &contact).await;
    assert!(later > cap && later <= 2 * cap, "{later} runs after a day");
}

// -------------------------------------------------- 7. enrollment rules

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reenrollment_a_second_trigger_event_gives_no_second_run() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let mut definition = on_event("go", json!([tag_step(&world, "tag", "went")]));
    definition["enrollment"] = json!({"reenroll": false});
    let workflow = activate(&world, definition).await;
    let contact = world.contact(json!({"email": "once@example.com"})).await;
    world.event(&contact, "go", json!({})).await;
    let run = world.wait_run(&workflow, &contact).await;
    wait_finished(&world, &run).await;

    world.clock.advance(DAY);
    world.event(&contact, "go", json!({})).await;
    wait_processed(&world, &contact).await;
    world.settle().await;
    assert_eq!(world.runs(&workflow, &contact).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minimum_interval_refuses_a_second_run_after_one_day_and_allows_it_after_eight() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let mut definition = on_event("ping", json!([tag_step(&world, "tag", "pinged")]));
    definition["enrollment"] = json!({"reenroll": true, "min_interval": "7d"});
    let workflow = activate(&world, definition).await;
    let contact = world.contact(json!({"email": "weekly@example.com"})).await;
    world.event(&contact, "ping", json!({})).await;
    let run = world.wait_run(&workflow, &contact).await;
    wait_finished(&world, &run).await;

    world.clock.advance(DAY);
    world.event(&contact, "ping", json!({})).await;
    wait_processed(&world, &contact).await;
    world.settle().await;
    assert_eq!(world.runs(&workflow, &contact).await.len(), 1, "one day later is too soon");

    world.clock.advance(7 * DAY);
    world.event(&contact, "ping", json!({})).await;
    let runs = wait_for(PATIENCE, || async {
        let runs = world.runs(&workflow, &contact).await;
        Ok((runs.len() == 2).then_some(runs))
    })
    .await
    .expect("eight days later a second run");
    assert_eq!(runs[0]["enrolled_at"], MONDAY_0800_UTC + 8 * DAY, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suppressed_contact_never_enrolls() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let mut definition = on_event("hello", json!([tag_step(&world, "tag", "greeted")]));
    definition["enrollment"] = json!({"reenroll": true, "suppress_if": {"type": "tag", "tag": "unsubscribed"}});
    let workflow = activate(&world, definition).await;
    let quiet = world.contact(json!({"email": "quiet@example.com", "tags": ["unsubscribed"]})).await;
    let open = world.contact(json!({"email": "open@example.com"})).await;
    world.event(&quiet, "hello", json!({})).await;
    world.event(&open, "hello", json!({})).await;

    // The same trigger enrolls a contact that is not suppressed ...
    world.wait_run(&workflow, &open).await;
    // ... and never the one that is.
    wait_processed(&world, &quiet).await;
    world.settle().await;
    assert!(world.runs(&workflow, &quiet).await.is_empty());
    let c = world.get(&format!("/v1/contacts/{quiet}")).await;
    assert_eq!(c["tags"], json!(["unsubscribed"]));
}

// ----------------------------------------------------------- 8. dry run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_walks_delays_branches_and_actions_and_keeps_nothing() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let definition = on_event(
        "never-sent",
        json!([
            {"id": "wait", "type": "delay", "duration": "2d"},
            {"id": "clicked", "type": "if", "condition": {"type": "event", "kind": "email_clicked"},
             "then": [
                task_step(&world, "call", "Call {{first_name}}"),
                {"id": "mail", "type": "action", "install_id": install(&world, "email"),
                 "message": {"subject": "Hi {{first_name}}", "body": "x"}}
             ],
             "else": [tag_step(&world, "cold", "cold")]}
        ]),
    );
    // A draft: a dry run needs no active version.
    let created = world.client().ok(Method::POST, "/v1/workflows", Some(definition)).await.unwrap();
    let workflow = created["workflow"]["id"].as_str().unwrap().to_string();
    let test = format!("/v1/workflows/{workflow}/test");

    // An inline contact who clicked: the `then` branch, a task and an email, in test mode.
    let sample = json!({"contact": {"first_name": "Ada", "email": "ada@example.com"},
                        "events": [{"kind": "email_clicked", "properties": {"url": "/pricing"}}]});
    let walk = world.client().ok(Method::POST, &test, Some(sample)).await.unwrap();
    assert_eq!(walk["outcome"], "completed", "{walk}");
    assert_eq!(walk["version"], 1, "{walk}");
    let path: Vec<&str> = walk["path"].as_array().unwrap().iter().map(|s| s["step_id"].as_str().unwrap()).collect();
    assert_eq!(path, ["wait", "clicked", "call", "mail"], "{walk}");
    assert_eq!(walk["path"][0]["result"]["skipped"], true, "{walk}");
    assert_eq!(walk["path"][0]["result"]["would_wait_until"], MONDAY_0800_UTC + 2 * DAY, "{walk}");
    assert_eq!(walk["path"][1]["result"]["branch"], "then", "{walk}");
    assert!(walk["path"][2]["fuel_used"].as_u64().unwrap() > 0, "{walk}");
    assert_eq!(walk["path"][3]["result"]["status"], "test", "{walk}");
    assert_eq!(walk["path"][3]["result"]["subject"], "Hi Ada", "{walk}");

    // Without the click: the `else` branch.
    let sample = json!({"contact": {"first_name": "Bob"}, "events": [{"kind": "page_viewed"}]});
    let walk = world.client().ok(Method::POST, &test, Some(sample)).await.unwrap();
    let path: Vec<&str> = walk["path"].as_array().unwrap().iter().map(|s| s["step_id"].as_str().unwrap()).collect();
    assert_eq!(path, ["wait", "clicked", "cold"], "{walk}");
    assert_eq!(walk["path"][1]["result"]["branch"], "else", "{walk}");

    // An existing contact: read, never changed.
    let real = world.contact(json!({"email": "real@example.com", "first_name": "Real"})).await;
    wait_processed(&world, &real).await;
    let events_before = world.get(&format!("/v1/events?contact_id={real}")).await;
    let walk = world.client().ok(Method::POST, &test, Some(json!({"contact_id": real}))).await.unwrap();
    assert_eq!(walk["contact_id"], real.as_str(), "{walk}");
    let path: Vec<&str> = walk["path"].as_array().unwrap().iter().map(|s| s["step_id"].as_str().unwrap()).collect();
    assert_eq!(path, ["wait", "clicked", "cold"], "{walk}");
    assert!(walk["path"][2]["error"].is_null(), "{walk}");

    // Nothing was kept: no tag, no task, no webhook, no run.
    world.settle().await;
    let c = world.get(&format!("/v1/contacts/{real}")).await;
    assert_eq!(c["tags"], json!([]), "{c}");
    assert_eq!(world.get("/v1/tasks").await["items"], json!([]));
    assert!(world.hooks("email").is_empty(), "no email went out");
    assert_eq!(world.get(&format!("/v1/runs?workflow_id={workflow}")).await["items"], json!([]));
    assert_eq!(world.get(&format!("/v1/events?contact_id={real}")).await, events_before, "no event recorded");

    // Bad requests.
    let client = world.client();
    expect_status(client, Method::POST, &test, Some(json!({"contact_id": "no-such-contact"})), 404).await;
    let both = json!({"contact_id": real, "contact": {"first_name": "X"}});
    let body = expect_status(client, Method::POST, &test, Some(both), 422).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("contact_id"), "{body}");
    expect_status(client, Method::POST, &test, Some(json!({})), 422).await;
    expect_status(client, Method::POST, "/v1/workflows/no-such-workflow/test", Some(json!({})), 404).await;
}

// ------------------------------------------------------- 9. visibility

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_by_workflow_contact_and_status_with_every_step_recorded() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    let slow = activate(
        &world,
        on_event(
            "go",
            json!([tag_step(&world, "tag", "slow"), {"id": "wait", "type": "delay", "duration": "1d"},
                   task_step(&world, "task", "Follow up")]),
        ),
    )
    .await;
    let fast = activate(&world, on_event("go", json!([tag_step(&world, "mark", "fast")]))).await;
    let ann = world.contact(json!({"email": "ann@example.com"})).await;
    let ben = world.contact(json!({"email": "ben@example.com"})).await;
    for c in [&ann, &ben] {
        world.event(c, "go", json!({})).await;
    }
    let ann_slow = world.wait_run(&slow, &ann).await;
    let ben_slow = world.wait_run(&slow, &ben).await;
    for run in [&ann_slow, &ben_slow] {
        wait_timer(&world, run).await;
    }
    for c in [&ann, &ben] {
        let run = world.wait_run(&fast, c).await;
        wait_finished(&world, &run).await;
    }

    let ids = |page: &Value| -> Vec<String> {
        let mut ids: Vec<String> =
            page["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    let w = &world;
    let list = |query: String| async move { w.get(&format!("/v1/runs?{query}")).await };
    let mut expected = vec![ann_slow.clone(), ben_slow.clone()];
    expected.sort();
    assert_eq!(ids(&list(format!("workflow_id={slow}")).await), expected);
    assert_eq!(ids(&list("status=waiting".into()).await), expected);
    let completed = list("status=completed".into()).await;
    assert_eq!(completed["items"].as_array().unwrap().len(), 2, "{completed}");
    assert!(completed["items"].as_array().unwrap().iter().all(|r| r["workflow_id"] == fast.as_str()));
    let of_ann = list(format!("contact_id={ann}")).await;
    assert_eq!(of_ann["items"].as_array().unwrap().len(), 2, "{of_ann}");
    assert!(of_ann["items"].as_array().unwrap().iter().all(|r| r["contact_id"] == ann.as_str()));
    assert_eq!(ids(&list(format!("workflow_id={slow}&contact_id={ben}&status=waiting")).await), [ben_slow]);
    assert_eq!(list(format!("workflow_id={fast}&status=failed")).await["items"], json!([]));

    // Every step's record, with the plugin's fuel for action steps.
    world.jump_to_timer(&ann_slow).await;
    let run = wait_finished(&world, &ann_slow).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(step_ids(&run), ["tag", "wait", "task"]);
    for s in run["steps"].as_array().unwrap() {
        for field in ["input", "output", "attempts", "duration_us", "fuel_used", "status", "started_at"] {
            assert!(s.get(field).is_some(), "step {} has no {field}: {s}", s["step_id"]);
        }
        assert_eq!(s["status"], "ok", "{s}");
        assert_eq!(s["attempts"], 1, "{s}");
    }
    for action in ["tag", "task"] {
        let s = step(&run, action);
        assert!(s["fuel_used"].as_i64().unwrap() > 0, "{s}");
        assert!(s["duration_us"].as_i64().unwrap() > 0, "{s}");
        assert_eq!(s["input"]["idempotency_key"], format!("run:{ann_slow}:{action}"), "{s}");
        assert!(s["output"].is_object(), "{s}");
    }
    assert!(step(&run, "task")["output"]["task_id"].is_string(), "{run}");
    assert_eq!(step(&run, "wait")["output"]["waited_until"], MONDAY_0800_UTC + DAY, "{run}");

    // Another tenant sees none of it.
    let globex = other_tenant(&world, "Globex").await;
    expect_status(&globex, Method::GET, &format!("/v1/runs/{ann_slow}"), None, 404).await;
    expect_status(&globex, Method::POST, &format!("/v1/runs/{ann_slow}/retry"), None, 404).await;
    let theirs = globex.ok(Method::GET, "/v1/runs", None).await.unwrap();
    assert_eq!(theirs["items"], json!([]), "{theirs}");
    let theirs = globex.ok(Method::GET, &format!("/v1/runs?workflow_id={slow}"), None).await.unwrap();
    assert_eq!(theirs["items"], json!([]), "{theirs}");
    expect_status(&globex, Method::GET, &format!("/v1/workflows/{slow}"), None, 404).await;
}

// ------------------------------------------------------- 10. time zone

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_wait_for_wall_time_in_the_tenants_zone_which_the_tenant_can_change() {
    let db = TempSqlite::new();
    let world = World::start(&db.url()).await;
    assert_eq!(world.get("/v1/tenant").await["time_zone"], "Europe/Berlin");
    let definition = on_event(
        "go",
        json!([{"id": "nine", "type": "delay", "until": "09:00"},
               {"id": "nine-again", "type": "delay", "until": "09:00"},
               tag_step(&world, "done", "done")]),
    );
    let workflow = activate(&world, definition).await;
    let contact = world.contact(json!({"email": "tz@example.com"})).await;
    // Monday 08:00 UTC is 09:00 in Berlin: today's 09:00 is not ahead, so
    // the delay waits for tomorrow's.
    world.event(&contact, "go", json!({})).await;
    let run_id = world.wait_run(&workflow, &contact).await;
    let run = wait_timer(&world, &run_id).await;
    let tuesday_0800_utc = MONDAY_0800_UTC + DAY;
    assert_eq!(run["wake_at"], tuesday_0800_utc, "{run}");
    assert_eq!(step(&run, "nine")["output"]["until_local"], "2026-11-24T09:00:00+01:00[Europe/Berlin]", "{run}");

    // The tenant moves to Shanghai (UTC+8): the next delay, reached on
    // Tuesday 08:00 UTC (16:00 in Shanghai), ends at 09:00 Shanghai time on
    // Wednesday, which is 01:00 UTC.
    let moved =
        world.client().ok(Method::PATCH, "/v1/tenant", Some(json!({"time_zone": "Asia/Shanghai"}))).await.unwrap();
    assert_eq!(moved["time_zone"], "Asia/Shanghai", "{moved}");
    world.jump_to_timer(&run_id).await;
    let run = wait_timer(&world, &run_id).await;
    let wednesday_0100_utc = MONDAY_0800_UTC + 2 * DAY - 7 * 3_600_000;
    assert_eq!(run["wake_at"], wednesday_0100_utc, "{run}");
    assert_eq!(step(&run, "nine-again")["output"]["until_local"], "2026-11-25T09:00:00+08:00[Asia/Shanghai]", "{run}");
    world.jump_to_timer(&run_id).await;
    let run = wait_finished(&world, &run_id).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(step(&run, "done")["started_at"], wednesday_0100_utc, "{run}");

    // A zone that does not exist is refused, and nothing changes.
    let body =
        expect_status(world.client(), Method::PATCH, "/v1/tenant", Some(json!({"time_zone": "Mars/Olympus"})), 422)
            .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("time_zone"), "{body}");
    assert_eq!(world.get("/v1/tenant").await["time_zone"], "Asia/Shanghai");
}
