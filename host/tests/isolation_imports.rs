//! Tenant isolation through every plugin import (issue 5, item 6): tenant B's
//! action, `guest-cross-tenant-all`, is handed tenant A's ids in its config
//! and turns each store import (`get-contact`, `find-contact-by-email`,
//! `count-events`, `recent-events`, `set-properties`, `add-tag`,
//! `remove-tag`, `create-task`, `add-note`, `emit-event`) and each state
//! function (`get`, `set`, `delete`) against A's contact, its email, tags,
//! events, task and the state key one of A's installs wrote. (`isolation.rs`
//! covers the API routes; the remaining imports, `log` and `http`, name no
//! tenant data.)
//!
//! Every probe must come back as if A's records did not exist: `not-found`
//! (never `denied`, which would confirm the id exists somewhere), `none`, `0`
//! or an empty list; nothing of A's may appear in B's outputs; and A's
//! contact, tags, properties, events, tasks, notes, runs, invocations and
//! install state must be byte-for-byte the same afterwards.
//!
//! ## Layout
//! - [`set_up_a`]: tenant A (made with the admin key): a contact with
//!   properties, tags, events and a task; its own install of the same guest
//!   in `plant` mode writes a state key and a note on that contact.
//! - [`snapshot`]: everything of A's, read with A's key, plus A's rows of
//!   `plugin_state` read from the database (no route shows an install's state).
//! - [`expected`]: what each probe must answer, for a real workflow run and a
//!   dry run (`/v1/workflows/{id}/test`, where writes are checked but not kept).
//! - [`tenant_b_reaches_for_tenant_a_through_every_plugin_import_and_gets_nothing`]:
//!   the attack over HTTP (a workflow run, then a dry run), the scan of what
//!   B can read for A's data, the comparison, A's install reading its state
//!   back, the one-line summary; then a control: the same probes run by an
//!   install of A's on A's contact do find and change A's records, and the
//!   snapshot shows it (so neither the probes nor the comparison are blind).

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use cairn::catalog::guest_bytes;
use cairn::clock::Clock;
use cairn::demo::{Client, wait_for};
use cairn::server::Server;
use cairn::store::testing::TempSqlite;
use common::{ADMIN_KEY, MONDAY_0800_UTC, PATIENCE};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;

const GUEST: &str = "guest-cross-tenant-all";
const GRANTS: [&str; 3] = ["store-read", "store-write", "state"];

// Tenant A's data: each value is distinctive, so finding it in B's answers
// is a leak and nothing else.
const A_EMAIL: &str = "alice.private@a-tenant.test";
const A_FIRST_NAME: &str = "Alicia-Private";
const A_PHONE: &str = "+49 30 5550199";
const A_OWNER: &str = "owner-of-a";
const A_REGION: &str = "EMEA-private-region";
const A_TAG: &str = "vip-private-tag";
const A_KIND: &str = "pricing_viewed";
const A_URL: &str = "/pricing?a-private-page";
const A_TASK_TITLE: &str = "Call Alicia about the private renewal";
const A_TASK_KEY: &str = "a-private-task-key";
const A_STATE_KEY: &str = "a-private-cursor";
const A_STATE_VALUE: &str = "a-private-state-value";
const A_NOTE: &str = "A's private note: renewal at 40k";
/// The event kind that runs A's `plant` install.
const SEED_KIND: &str = "seed_state";

/// The store and state imports the guest attacks.
const IMPORTS: [&str; 13] = [
    "get_contact",
    "find_contact_by_email",
    "count_events",
    "recent_events",
    "set_properties",
    "add_tag",
    "remove_tag",
    "create_task",
    "add_note",
    "emit_event",
    "state_get",
    "state_set",
    "state_delete",
];

fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().cloned().unwrap_or_default()
}

/// A new tenant made with the admin key: its id and client.
async fn tenant(server: &Server, name: &str) -> (String, Client) {
    let admin = Client::new(&server.url(), ADMIN_KEY);
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": name}))).await.unwrap();
    let client = Client::new(&server.url(), created["api_key"].as_str().unwrap());
    let id = client.ok(Method::GET, "/v1/tenant", None).await.unwrap()["id"].as_str().unwrap().to_string();
    (id, client)
}

/// Upload the guest and install it with `config` and every grant it asks for.
async fn install(client: &Client, config: Value) -> String {
    let (s, uploaded) = client.upload(guest_bytes(GUEST).expect("guest built")).await.unwrap();
    // 200: this tenant uploaded the same bytes before.
    assert!(s == 201 || s == 200, "{GUEST} uploads: {uploaded}");
    let body = json!({"plugin_version_id": uploaded["id"], "config": config, "grants": GRANTS});
    client.ok(Method::POST, "/v1/installs", Some(body)).await.unwrap()["id"].as_str().unwrap().to_string()
}

/// An active workflow that runs `install` on every `kind` event; its id.
async fn workflow(client: &Client, kind: &str, install: &str) -> String {
    let body = json!({
        "name": format!("{GUEST} on {kind}"),
        "trigger": {"type": "event", "kind": kind},
        "enrollment": {"reenroll": true},
        "steps": [{"id": "probe", "type": "action", "install_id": install}],
    });
    let created = client.ok(Method::POST, "/v1/workflows?activate=true", Some(body)).await.unwrap();
    created["workflow"]["id"].as_str().unwrap().to_string()
}

/// Send `kind` for `contact` and wait for the `n`th run of `workflow` to
/// complete; the outputs of `install`'s newest call.
async fn run_once(client: &Client, workflow: &str, install: &str, contact: &str, kind: &str, n: usize) -> Value {
    let event = json!({"contact_id": contact, "kind": kind});
    client.ok(Method::POST, "/v1/events", Some(event)).await.unwrap();
    let path = format!("/v1/runs?workflow_id={workflow}&limit=1000");
    let runs = wait_for(PATIENCE, || async {
        let page = client.ok(Method::GET, &path, None).await?;
        let runs = items(&page);
        let ended = runs.iter().filter(|r| r["status"] != "running" && r["status"] != "waiting").count();
        Ok((ended >= n).then_some(runs))
    })
    .await
    .unwrap_or_else(|e| panic!("run {n} of {workflow} never ended: {e}"));
    assert!(runs.iter().all(|r| r["status"] == "completed"), "{runs:#?}");
    let calls = client.ok(Method::GET, &format!("/v1/invocations?install_id={install}"), None).await.unwrap();
    let calls = items(&calls);
    assert_eq!(calls.len(), n, "one call per run: {calls:#?}");
    serde_json::from_str(calls[0]["output_json"].as_str().unwrap()).unwrap()
}

/// Wait until the pipeline has handled every event of `contact`.
async fn processed(client: &Client, contact: &str) {
    let path = format!("/v1/events?contact_id={contact}&limit=1000");
    wait_for(PATIENCE, || async {
        let events = items(&client.ok(Method::GET, &path, None).await?);
        Ok(events.iter().all(|e| e["processed"] == true).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("events of {contact} never processed: {e}"));
}

/// Tenant A's ids.
struct A {
    tenant: String,
    client: Client,
    contact: String,
    task: String,
    install: String,
    workflow: String,
    note: String,
}

async fn set_up_a(server: &Server) -> A {
    let (tenant, a) = tenant(server, "A Private GmbH").await;
    let contact = json!({
        "email": A_EMAIL, "first_name": A_FIRST_NAME, "last_name": "Private", "phone": A_PHONE,
        "owner": A_OWNER, "tags": [A_TAG, "customer"],
        "properties": {"region": A_REGION, "plan": "enterprise"},
    });
    let contact = a.ok(Method::POST, "/v1/contacts", Some(contact)).await.unwrap()["id"].as_str().unwrap().to_string();
    let events = json!({"events": [
        {"contact_id": contact, "kind": A_KIND, "properties": {"url": A_URL}},
        {"contact_id": contact, "kind": A_KIND, "properties": {"url": A_URL}},
        {"contact_id": contact, "kind": "email_opened", "properties": {"campaign": "a-private-campaign"}},
    ]});
    a.ok(Method::POST, "/v1/events", Some(events)).await.unwrap();
    let task = json!({"title": A_TASK_TITLE, "contact_id": contact, "assignee": A_OWNER,
                      "idempotency_key": A_TASK_KEY});
    let task = a.ok(Method::POST, "/v1/tasks", Some(task)).await.unwrap()["id"].as_str().unwrap().to_string();

    // A's own install of the guest writes the state key and a note on A's
    // contact: the honest way to give A state (only an install can write it).
    let plant = json!({"mode": "plant", "state_key": A_STATE_KEY, "state_value": A_STATE_VALUE, "note": A_NOTE});
    let install = install(&a, plant).await;
    let workflow = workflow(&a, SEED_KIND, &install).await;
    let planted = run_once(&a, &workflow, &install, &contact, SEED_KIND, 1).await;
    assert_eq!(planted["planted"], "yes", "{planted}");
    let note = planted["note_id"].as_str().unwrap().to_string();
    processed(&a, &contact).await;
    A { tenant, client: a, contact, task, install, workflow, note }
}

// ---------------------------------------------------------------------------
// Snapshots of A
// ---------------------------------------------------------------------------

/// Everything of A's, read with A's key (by path) and from the database
/// (A's install state, which no route shows).
async fn snapshot(server: &Server, a: &A) -> BTreeMap<String, Value> {
    let paths = [
        "/v1/tenant".to_string(),
        "/v1/contacts?limit=1000".into(),
        format!("/v1/contacts/{}", a.contact),
        format!("/v1/contacts/{}/timeline?limit=1000", a.contact),
        format!("/v1/events?contact_id={}&limit=1000", a.contact),
        "/v1/tasks?limit=1000".into(),
        format!("/v1/tasks/{}", a.task),
        "/v1/installs".into(),
        format!("/v1/installs/{}", a.install),
        format!("/v1/invocations?install_id={}&limit=1000", a.install),
        "/v1/runs?limit=1000".into(),
        format!("/v1/workflows/{}", a.workflow),
    ];
    let mut all = BTreeMap::new();
    for path in paths {
        let value = a.client.ok(Method::GET, &path, None).await.unwrap_or_else(|e| panic!("A reads {path}: {e}"));
        all.insert(path, value);
    }
    let rows = sqlx::query(
        "SELECT install_id, key, value, updated_at FROM plugin_state WHERE tenant_id = $1 ORDER BY install_id, key",
    )
    .bind(&a.tenant)
    .fetch_all(server.state.store.pool())
    .await
    .unwrap();
    let state: Vec<Value> = rows
        .iter()
        .map(|r| {
            let value: Vec<u8> = r.try_get("value").unwrap();
            json!({
                "install_id": r.try_get::<String, _>("install_id").unwrap(),
                "key": r.try_get::<String, _>("key").unwrap(),
                "value": hex::encode(value),
                "updated_at": r.try_get::<i64, _>("updated_at").unwrap(),
            })
        })
        .collect();
    all.insert("db: plugin_state of A".into(), json!(state));
    all
}

// ---------------------------------------------------------------------------
// What each probe must answer
// ---------------------------------------------------------------------------

/// Probe name → the only acceptable answer. `dry_run`: writes are checked
/// (a foreign contact is still `not-found`) but not kept, so B's own state
/// write reads back as nothing.
fn expected(dry_run: bool) -> BTreeMap<&'static str, &'static str> {
    let own_state = if dry_run { "none" } else { "value own" };
    let own_state_after_set = if dry_run { "none" } else { "value pwned by B" };
    BTreeMap::from([
        // Controls: B's grants work on B's own contact and state.
        ("control.get_contact_own", "ok"),
        ("control.state_set_own", "ok"),
        ("control.state_get_own", own_state),
        ("control.state_delete_own", "ok"),
        // store reads
        ("get_contact", "not-found"),
        ("get_contact.quoted", "not-found"),
        ("find_contact_by_email", "none"),
        ("find_contact_by_email.case", "none"),
        ("find_contact_by_email.wildcard", "none"),
        ("count_events", "0"),
        ("count_events.any_kind", "0"),
        ("recent_events", "empty"),
        ("recent_events.any_kind", "empty"),
        // store writes
        ("set_properties", "not-found"),
        ("set_properties.core_fields", "not-found"),
        ("set_properties.clear", "not-found"),
        ("add_tag", "not-found"),
        ("add_tag.existing", "not-found"),
        ("remove_tag", "not-found"),
        ("create_task", "not-found"),
        ("create_task.assignee", "not-found"),
        ("create_task.a_key", "not-found"),
        ("create_task.a_key_own_contact", "own task"),
        ("add_note", "not-found"),
        ("emit_event", "not-found"),
        ("emit_event.new_kind", "not-found"),
        // state: B's install sees none of A's install's keys
        ("state_get", "none"),
        ("state_get.install_slash", "none"),
        ("state_get.install_colon", "none"),
        ("state_get.install_id", "none"),
        ("state_get.wildcard", "none"),
        ("state_delete", "ok"),
        ("state_get.after_delete", "none"),
        ("state_set", "ok"),
        ("state_get.after_set", own_state_after_set),
        ("state_delete.after_set", "ok"),
    ])
}

/// Compare one path's outputs with [`expected`]; the mismatches.
fn check(path: &str, outputs: &Value, dry_run: bool) -> Vec<String> {
    let expected = expected(dry_run);
    let mut wrong = Vec::new();
    let Some(got) = outputs.as_object() else { return vec![format!("{path}: no outputs: {outputs}")] };
    for (probe, want) in &expected {
        match got.get(*probe) {
            Some(v) if v == want => {}
            other => wrong.push(format!("{path}: {probe} answered {other:?}, expected {want:?}")),
        }
    }
    for probe in got.keys().filter(|k| !expected.contains_key(k.as_str())) {
        wrong.push(format!("{path}: unexpected probe {probe}"));
    }
    wrong
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_b_reaches_for_tenant_a_through_every_plugin_import_and_gets_nothing() {
    let db = TempSqlite::new();
    let clock = Clock::manual(MONDAY_0800_UTC);
    let server = common::start_server(&db.url(), clock.clone()).await;
    let a = set_up_a(&server).await;
    let before = snapshot(&server, &a).await;
    let before_text = serde_json::to_string(&before).unwrap();
    assert!(before_text.contains(A_NOTE) && before_text.contains(A_TASK_KEY), "A's note and task are in the snapshot");
    assert!(before_text.contains(&hex::encode(A_STATE_VALUE)), "A's state is in the snapshot");
    let a_events = items(&before[&format!("/v1/events?contact_id={}&limit=1000", a.contact)]);
    assert!(a_events.iter().filter(|e| e["kind"] == A_KIND).count() == 2, "{a_events:#?}");

    // An hour later, so a write that only touched A's records (an
    // `updated_at`) would show too.
    clock.advance(3_600_000);

    // ---- B attacks ---------------------------------------------------------
    let (_, b) = tenant(&server, "Mallory Ltd").await;
    let mallory = json!({"email": "mallory@b-tenant.test", "first_name": "Mallory"});
    let mallory = b.ok(Method::POST, "/v1/contacts", Some(mallory)).await.unwrap()["id"].as_str().unwrap().to_string();
    let config = json!({
        "mode": "attack",
        "contact_id": a.contact, "email": A_EMAIL, "tag": A_TAG, "event_kind": A_KIND,
        "task_id": a.task, "task_key": A_TASK_KEY,
        "install_id": a.install, "state_key": A_STATE_KEY,
    });
    let attack = install(&b, config.clone()).await;
    let b_workflow = workflow(&b, "page_viewed", &attack).await;
    // Through a real run: the workflow action over HTTP, writes kept.
    let run_outputs = run_once(&b, &b_workflow, &attack, &mallory, "page_viewed", 1).await;
    // Through a dry run on B's own contact: the test-mode paths of each import.
    let dry = json!({"contact_id": mallory});
    let answer = b.ok(Method::POST, &format!("/v1/workflows/{b_workflow}/test"), Some(dry)).await.unwrap();
    let step = &answer["path"][0];
    assert_eq!(step["step_id"], "probe", "{answer}");
    assert!(step["error"].is_null(), "{answer}");
    let dry_outputs = step["result"].clone();
    // A dry run on A's contact is refused as if it did not exist.
    let on_a = json!({"contact_id": a.contact});
    let (status, body) = b.call(Method::POST, &format!("/v1/workflows/{b_workflow}/test"), Some(on_a)).await.unwrap();
    assert_eq!(status, 404, "{body}");
    processed(&b, &mallory).await;

    // ---- the answers -------------------------------------------------------
    for import in IMPORTS {
        assert!(expected(false).keys().any(|p| p.split('.').next() == Some(import)), "a probe of {import}");
    }
    let mut leaks = Vec::new();
    leaks.extend(check("workflow run", &run_outputs, false));
    leaks.extend(check("dry run", &dry_outputs, true));
    // Nothing of A's that B did not send itself appears anywhere B can read.
    let sent = config.to_string();
    let mut secrets: BTreeSet<String> =
        [A_FIRST_NAME, A_PHONE, A_OWNER, A_REGION, A_URL, A_TASK_TITLE, A_STATE_VALUE, A_NOTE, "a-private-campaign"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    secrets.extend([a.tenant.clone(), a.note.clone(), a.workflow.clone(), "A Private GmbH".into()]);
    secrets.extend(a_events.iter().filter_map(|e| e["id"].as_str().map(str::to_string)));
    secrets.retain(|s| !sent.contains(s.as_str()));
    let runs = b.ok(Method::GET, &format!("/v1/runs?workflow_id={b_workflow}"), None).await.unwrap();
    let mut seen_by_b = vec![
        ("B's recorded calls", b.ok(Method::GET, &format!("/v1/invocations?install_id={attack}"), None).await.unwrap()),
        ("B's dry run", answer.clone()),
        ("B's contact timeline", b.ok(Method::GET, &format!("/v1/contacts/{mallory}/timeline"), None).await.unwrap()),
    ];
    for run in items(&runs) {
        let id = run["id"].as_str().unwrap();
        seen_by_b.push(("B's run", b.ok(Method::GET, &format!("/v1/runs/{id}"), None).await.unwrap()));
    }
    for (what, value) in &seen_by_b {
        let text = value.to_string();
        for secret in secrets.iter().filter(|s| text.contains(s.as_str())) {
            leaks.push(format!("{what} contains A's {secret:?}: {text}"));
        }
    }
    // B's own task made with A's key is B's, on B's contact.
    let b_tasks = items(&b.ok(Method::GET, "/v1/tasks?limit=1000", None).await.unwrap());
    assert_eq!(b_tasks.len(), 1, "{b_tasks:#?}");
    assert_eq!(b_tasks[0]["contact_id"], json!(mallory), "{b_tasks:#?}");
    assert_ne!(b_tasks[0]["id"], json!(a.task));

    // ---- A after -------------------------------------------------------------
    let after = snapshot(&server, &a).await;
    let mut changed = Vec::new();
    for (path, value) in &before {
        if after.get(path) != Some(value) {
            changed.push(format!("{path}:\n  before {value}\n  after  {}", after.get(path).unwrap_or(&Value::Null)));
        }
    }
    // A's install still reads its own key through the state import.
    let again = run_once(&a.client, &a.workflow, &a.install, &a.contact, SEED_KIND, 2).await;
    if again != json!({"planted": "no", "state_value": A_STATE_VALUE}) {
        changed.push(format!("A's install reads its state back as {again}"));
    }

    let probes = expected(false).len();
    println!("probe: workflow run | dry run");
    for probe in expected(false).keys() {
        println!("  {probe}: {} | {}", run_outputs[*probe], dry_outputs[*probe]);
    }
    for line in leaks.iter().chain(&changed) {
        println!("LEAK: {line}");
    }
    println!(
        "imports attacked: {}, leaks: {} ({probes} probes each through a workflow run and a dry run; \
         A records compared: {}, changed: {})",
        IMPORTS.len(),
        leaks.len() + changed.len(),
        before.len(),
        changed.len(),
    );
    assert!(leaks.is_empty(), "B's probes saw A's data:\n{}", leaks.join("\n"));
    assert!(changed.is_empty(), "A's records changed:\n{}", changed.join("\n"));

    // Control: the same probes, run by an install of A's on A's own contact,
    // do reach A's records, so the answers B got mean "not yours" and not
    // "the probe cannot see anything". (State stays per install even within
    // a tenant: this install does not see the `plant` install's key either.)
    let control = install(&a.client, config).await;
    let control_workflow = workflow(&a.client, "control", &control).await;
    let own = run_once(&a.client, &control_workflow, &control, &a.contact, "control", 1).await;
    let starts = |probe: &str, prefix: &str| own[probe].as_str().is_some_and(|v| v.starts_with(prefix));
    assert!(starts("get_contact", "found") && own["get_contact"].as_str().unwrap().contains(A_REGION), "{own:#}");
    assert!(starts("find_contact_by_email", "found") && starts("find_contact_by_email.case", "found"), "{own:#}");
    assert_eq!(own["count_events"], "2", "{own:#}");
    let any_kind = own["count_events.any_kind"].as_str().and_then(|n| n.parse::<u32>().ok());
    assert!(any_kind.is_some_and(|n| n >= 4), "{own:#}");
    assert!(starts("recent_events", "found") && own["recent_events"].as_str().unwrap().contains(A_URL), "{own:#}");
    for probe in ["set_properties", "set_properties.core_fields", "add_tag", "remove_tag"] {
        assert_eq!(own[probe], "ok", "{probe}: {own:#}");
    }
    for probe in ["create_task", "create_task.assignee", "add_note", "emit_event", "emit_event.new_kind"] {
        assert!(starts(probe, "created "), "{probe}: {own:#}");
    }
    assert_eq!(own["create_task.a_key"], json!(format!("created {}", a.task)), "the key finds A's task: {own:#}");
    assert_eq!(own["create_task.a_key_own_contact"], json!(format!("returned A's task {}", a.task)), "{own:#}");
    assert_eq!(own["state_get"], "none", "state is per install: {own:#}");
    // And the snapshot sees such writes: the comparison above can fail.
    let touched = snapshot(&server, &a).await;
    for path in [
        format!("/v1/contacts/{}", a.contact),
        format!("/v1/contacts/{}/timeline?limit=1000", a.contact),
        format!("/v1/events?contact_id={}&limit=1000", a.contact),
        "/v1/tasks?limit=1000".into(),
    ] {
        assert_ne!(touched[&path], before[&path], "the snapshot shows A's own writes at {path}");
    }

    server.shutdown().await;
}
