//! A three-node cluster with a node killed (issue 6, item 3): three real
//! `cairn serve` child processes on loopback ports share one PostgreSQL
//! database, each with a data directory (and compile cache) of its own.
//! Senders post events round-robin to the three nodes; a hot reload is made
//! on node 1 while they do; then node 2 is SIGKILLed with work in flight
//! (its own `/metrics` counters rising, runs waiting), and the load goes on
//! through nodes 1 and 3 (a request that fails is sent again, unchanged, to
//! the next node). After the dead node's leases ran out and the work
//! drained:
//!
//! - every event answered `202` is stored once (its idempotency key unique)
//!   and `processed` (read with sqlx from the database), and no event of the
//!   database is left unprocessed; the nodes' pipeline counters add up to
//!   no more than the events stored (none was finished twice);
//! - every acknowledged event enrolled exactly one run (its trigger event),
//!   every run completed, every step is recorded `ok`, and every delay held
//!   the next step back; no run is stuck waiting;
//! - every webhook delivery of one step, whichever node sent it, carries
//!   that step's idempotency key `run:<run id>:<step id>` and different
//!   steps never share a key; repeats after the kill (at-least-once) are
//!   counted and printed, not failed;
//! - the upgrade made on node 1 reached nodes 2 and 3 within
//!   [`RELOAD_BOUND`] (the measured times are printed; the goal is 1 s).
//!
//! The summary line (`cluster: nodes=3 killed=node2 ...`) goes to stderr:
//! run with `--nocapture`. Besides the checked figures it shows the work at
//! the kill, who did the work, and how many runs and events waited for a
//! lease of the dead node (`resumed_runs`, `late_events`): the kill lands
//! at a random point of node 2's work, so these vary from run to run. `CAIRN_CLUSTER_SEED=<n>` repeats the batch
//! sizes; the servers' timing still varies.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::catalog::guest_bytes;
use cairn::demo::{self, Client};
use cairn::store::Principal;
use cairn::store::testing::TempPostgres;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};

use common::child::{
    DELAYS, Load, Loader, REQUEST_TIMEOUT, STEPS, Serve, ServerProcess, call, check_runs, check_stored, free_port, get,
    hook_workflow, now_ms, pending_work, save_workflow, seed_from_env, start_receiver, wait_for_runs,
};

/// The admin key every node registers (`CAIRN_ADMIN_KEY`).
const ADMIN_KEY: &str = "cluster-admin-key-0123456789abcdef";
/// The event kind that enrolls contacts into the test workflow.
const KIND: &str = "cluster_test";
/// The tag the last step gives each contact.
const DONE_TAG: &str = "cluster-done";
/// How many nodes, and which one is killed (index: node 2).
const NODES: usize = 3;
const KILLED: usize = 1;
/// `--claim-lease-secs`: how soon the others resume the dead node's work.
const LEASE_SECS: u64 = 8;
/// Concurrent senders of events; each starts on another node.
const SENDERS: usize = 3;
/// Pause between two requests of one sender.
const LOAD_TICK: Duration = Duration::from_millis(60);
/// Most events in one request.
const MAX_BATCH: u64 = 3;
/// When, after the load started, the hot reload is made on node 1.
const RELOAD_AFTER: Duration = Duration::from_secs(1);
/// The hot reload must reach the other nodes within this (the goal is 1 s;
/// room for a loaded CI machine).
const RELOAD_BOUND: Duration = Duration::from_secs(5);
/// When, after the load started, node 2 is killed (once it is busy) ...
const KILL_AFTER: Duration = Duration::from_millis(2500);
/// ... waiting at most this much longer for it to be busy.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long the load goes on through the surviving nodes.
const LOAD_AFTER_KILL: Duration = Duration::from_secs(3);
/// A step (or the first step of a run) that started this much after it
/// was due waited for a lease of the dead node to run out: its run was
/// resumed by another node. (Due steps start within a second or two on a
/// loaded machine; a lease outlives its holder by up to [`LEASE_SECS`].)
const RESUMED_LATE_MS: i64 = 4000;
/// First start of each node: a cold compile cache, every prebuilt plugin
/// compiled, three nodes at once.
const FIRST_START: Duration = Duration::from_secs(120);
/// Until nodes 2 and 3 run the installs made through node 1.
const KNOWN_BOUND: Duration = Duration::from_secs(30);
/// After the load: until every run is done (the dead node's leases expire
/// after [`LEASE_SECS`]).
const DRAIN: Duration = Duration::from_secs(90);

// ----------------------------------------------------------------- nodes

/// The three child servers. Dropping it kills every child (also when the
/// test panics) and, unless the test is failing, removes the data
/// directories.
struct Nodes {
    base: PathBuf,
    list: Vec<ServerProcess>,
}

impl Nodes {
    fn new(base: PathBuf, database_url: &str) -> Nodes {
        let list = (1..=NODES)
            .map(|i| {
                let dir = base.join(format!("node{i}"));
                std::fs::create_dir_all(&dir).expect("node dir");
                let serve = Serve {
                    name: format!("cluster node{i}"),
                    admin_key: ADMIN_KEY.into(),
                    database_url: Some(database_url.into()),
                    args: format!("--deadline-ms 2000 --claim-lease-secs {LEASE_SECS} --tenant-events-per-sec 0")
                        .split(' ')
                        .map(String::from)
                        .collect(),
                };
                ServerProcess::new(serve, dir, free_port())
            })
            .collect();
        Nodes { base, list }
    }

    fn url(&self, i: usize) -> String {
        self.list[i].url()
    }

    /// Fail with `message` and the tail of every node's log.
    fn fail(&self, message: &str) -> ! {
        let mut logs = String::new();
        for n in &self.list {
            logs += &format!("\n---- {} ({}), log tail:\n{}", n.name(), n.log.display(), n.log_tail(40));
        }
        panic!("{message}\n(data dirs under {} kept){logs}", self.base.display())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in &mut self.list {
            n.kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

// ----------------------------------------------------------------- parts

/// Wait until `client`'s node runs `version` for install `id`
/// (`running_version_id`); how long that took.
async fn runs_version(client: &Client, id: &str, version: &str, bound: Duration) -> Result<Duration, String> {
    let began = Instant::now();
    let path = format!("/v1/installs/{id}");
    loop {
        let last = get(client, &path).await;
        if let Ok(install) = &last
            && install["running_version_id"] == version
        {
            return Ok(began.elapsed());
        }
        if began.elapsed() > bound {
            return Err(format!("install {id} does not run {version} after {bound:?}: {last:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Work in the database right now: waiting runs, runs a node holds (lease
/// in the future), and queued events (unprocessed, and those held).
#[derive(Debug)]
struct InFlight {
    waiting_runs: i64,
    held_runs: i64,
    queued_events: i64,
    held_events: i64,
}

async fn in_flight(db: &mut PgConnection) -> InFlight {
    let now = now_ms();
    let (waiting_runs, held_runs): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE lease_until > $1) FROM workflow_runs WHERE status = 'waiting'",
    )
    .bind(now)
    .fetch_one(&mut *db)
    .await
    .expect("counting runs");
    let (queued_events, held_events): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(*) FILTER (WHERE lease_until > $1) FROM events WHERE processed = 0")
            .bind(now)
            .fetch_one(&mut *db)
            .await
            .expect("counting events");
    InFlight { waiting_runs, held_runs, queued_events, held_events }
}

/// A node's own counters (`/metrics` without a key: the aggregate
/// series): events its pipeline finished, workflow steps it ran ok.
async fn node_counters(http: &reqwest::Client, url: &str) -> Option<(u64, u64)> {
    let answer = http.get(format!("{url}/metrics")).timeout(REQUEST_TIMEOUT).send().await.ok()?;
    let text = answer.text().await.ok()?;
    let value = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok());
    Some((value("cairn_events_processed_total ")?, value("cairn_workflow_steps_total{result=\"ok\"} ")?))
}

/// How late the latest-starting step of `run` (`GET /v1/runs/{id}`)
/// started, ms: after the step before it finished (a delay: after it
/// waited until), the first step after the run was enrolled.
fn latest_start_ms(run: &Value) -> i64 {
    let mut steps: Vec<&Value> = run["steps"].as_array().into_iter().flatten().collect();
    steps.sort_by_key(|s| s["started_at"].as_i64());
    let mut due = run["enrolled_at"].as_i64();
    let mut latest = 0;
    for step in steps {
        if let (Some(due), Some(started)) = (due, step["started_at"].as_i64()) {
            latest = latest.max(started - due);
        }
        due = step["output"]["waited_until"].as_i64().or(step["finished_at"].as_i64());
    }
    latest
}

// ------------------------------------------------------------------ test

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_the_work_and_survive_one_killed() {
    let began = Instant::now();
    let seed = seed_from_env("CAIRN_CLUSTER_SEED");
    eprintln!("cluster: seed={seed} (CAIRN_CLUSTER_SEED={seed} repeats the batch sizes)");
    let db = TempPostgres::create().await.expect("PostgreSQL is up");
    let base = std::env::temp_dir().join(format!("cairn-cluster-{}-{seed:x}", std::process::id()));
    let mut nodes = Nodes::new(base, db.url());

    // 1. Three nodes, started together on the fresh database.
    let http = reqwest::Client::new();
    let mut each = nodes.list.iter_mut();
    let (one, two, three) = (each.next().unwrap(), each.next().unwrap(), each.next().unwrap());
    let started =
        tokio::join!(one.start(&http, FIRST_START), two.start(&http, FIRST_START), three.start(&http, FIRST_START));
    let start = started.0.max(started.1).max(started.2);
    let start_retries: u32 = nodes.list.iter().map(|n| n.start_retries).sum();

    // 2. Through node 1: tenant, webhooks, the workflow A → 1 s → B → 1 s →
    // tag, and the hot-reload subject (a scorer, version 1 installed).
    let receiver = start_receiver().await;
    let acme = demo::set_up(&nodes.url(0), ADMIN_KEY, &receiver.base)
        .await
        .unwrap_or_else(|e| nodes.fail(&format!("setting up the tenant: {e:#}")));
    let admin_client = acme.client.clone();
    let definition = hook_workflow("Cluster", KIND, &acme.installs, DONE_TAG);
    let workflow = save_workflow(&admin_client, definition).await.unwrap_or_else(|e| nodes.fail(&e));
    let mut versions = Vec::new();
    for guest in ["guest-versioned-1", "guest-versioned-2"] {
        let (status, uploaded) = admin_client.upload(guest_bytes(guest).expect("guest built")).await.unwrap();
        if status != 201 && status != 200 {
            nodes.fail(&format!("uploading {guest} answered {status}: {uploaded}"));
        }
        versions.push(uploaded["id"].as_str().expect("version id").to_string());
    }
    let (v1, v2) = (versions[0].clone(), versions[1].clone());
    let body = json!({"plugin_version_id": v1, "config": {}});
    let scorer = match call(&admin_client, Method::POST, "/v1/installs", Some(body)).await {
        Ok((201, install)) => install["id"].as_str().expect("install id").to_string(),
        other => nodes.fail(&format!("installing {v1}: {other:?}")),
    };

    // The same tenant on every node: a second key (the demo's client keeps
    // its key to itself), made in the database the nodes share.
    let tenant = get(&admin_client, "/v1/tenant").await.unwrap()["id"].as_str().expect("tenant id").to_string();
    let store = db.open().await.expect("the store opens");
    let key = store.create_api_key(&Principal::Tenant(tenant)).await.expect("a tenant key");
    drop(store);
    let clients: Vec<Client> = (0..NODES).map(|i| Client::new(&nodes.url(i), &key)).collect();

    // Nodes 2 and 3 run what was installed through node 1.
    let mut wanted: Vec<(String, String)> = Vec::new();
    for name in ["email", "sales_webhook", "tag_contact"] {
        let id = &acme.installs[name];
        let install = get(&admin_client, &format!("/v1/installs/{id}")).await.unwrap();
        wanted.push((id.clone(), install["plugin_version_id"].as_str().expect("version").to_string()));
    }
    wanted.push((scorer.clone(), v1.clone()));
    for client in &clients[1..] {
        for (id, version) in &wanted {
            runs_version(client, id, version, KNOWN_BOUND).await.unwrap_or_else(|e| nodes.fail(&e));
        }
    }
    let mut pg = PgConnection::connect(db.url()).await.expect("the database opens");

    // 3. Load, round-robin over the three nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let loaded = Arc::new(Mutex::new(Load::default()));
    let load_began = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            let sender = Loader {
                clients: clients.clone(),
                first: i % NODES,
                kind: KIND,
                prefix: format!("cluster-{seed:x}-s{i}"),
                seed: seed ^ (0x10ad + i as u64),
                tick: LOAD_TICK,
                max_batch: MAX_BATCH,
            };
            tokio::spawn(sender.run(stop.clone(), loaded.clone()))
        })
        .collect();

    // 4. The hot reload, done on node 1 when the PATCH answers; how long
    // until nodes 2 and 3 run the new version, from that answer.
    tokio::time::sleep(RELOAD_AFTER).await;
    let reload_began = Instant::now();
    let path = format!("/v1/installs/{scorer}");
    match call(&admin_client, Method::PATCH, &path, Some(json!({"plugin_version_id": v2}))).await {
        Ok((200, upgraded)) if upgraded["plugin_version_id"] == v2.as_str() => {}
        other => nodes.fail(&format!("upgrading {scorer} to {v2}: {other:?}")),
    }
    let patch_ms = reload_began.elapsed().as_millis();
    let (seen_2, seen_3) = tokio::join!(
        runs_version(&clients[1], &scorer, &v2, RELOAD_BOUND),
        runs_version(&clients[2], &scorer, &v2, RELOAD_BOUND)
    );
    let reload_seen_ms: Vec<u128> = [seen_2, seen_3]
        .into_iter()
        .map(|seen| match seen {
            Ok(after_patch) => after_patch.as_millis(),
            Err(e) => nodes.fail(&format!("the hot reload on node 1 did not reach every node: {e}")),
        })
        .collect();

    // 5. Kill node 2 while it works (its own counters rising) and runs wait.
    tokio::time::sleep(KILL_AFTER.saturating_sub(load_began.elapsed())).await;
    let kill_wait = Instant::now();
    let killed_url = nodes.url(KILLED);
    let mut last = node_counters(&http, &killed_url).await;
    let (waiting, killed_counters) = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = pending_work(&clients[KILLED], &workflow).await.map_or(0, |(waiting, _)| waiting);
        let now = node_counters(&http, &killed_url).await;
        if let (Some(before), Some(now)) = (last, now)
            && (now.0 > before.0 || now.1 > before.1)
            && waiting > 0
        {
            break (waiting, now);
        }
        if kill_wait.elapsed() > KILL_WAIT {
            nodes.fail(&format!(
                "node 2 is not busy ({last:?} then {now:?}), {waiting} runs wait: a kill proves nothing"
            ));
        }
        last = now;
    };
    let at_kill = in_flight(&mut pg).await;
    nodes.list[KILLED].kill();
    let kill_after = load_began.elapsed();
    let acked_by_killed = loaded.lock().expect("load").acked_by.get(&KILLED).copied().unwrap_or(0);
    eprintln!(
        "cluster: node2 killed {kill_after:.1?} into the load, busy: {} events processed and {} steps run there, \
         {acked_by_killed} events acknowledged; {waiting} waiting runs; in the database: {at_kill:?}",
        killed_counters.0, killed_counters.1
    );

    // 6. The load goes on through nodes 1 and 3 (what went to node 2 goes
    // to the next node).
    tokio::time::sleep(LOAD_AFTER_KILL).await;
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.expect("a sender finishes");
    }
    let load_took = load_began.elapsed();
    let load = std::mem::take(&mut *loaded.lock().expect("load"));
    if !load.unexpected.is_empty() {
        nodes.fail(&format!("the load saw answers that mean the test is wrong: {:?}", load.unexpected));
    }
    assert!(!load.acked.is_empty(), "no event was acknowledged");
    let acked: HashMap<&str, &str> = load.acked.iter().map(|(key, id)| (id.as_str(), key.as_str())).collect();
    assert_eq!(acked.len(), load.acked.len(), "two client events got one event id");

    // 7. Wait until every acknowledged event has a completed run (listed
    // through node 1), then check them (read through node 3).
    let drain_began = Instant::now();
    let runs = wait_for_runs(&clients[0], &workflow, &acked, DRAIN).await.unwrap_or_else(|e| nodes.fail(&e));
    let drained_in = drain_began.elapsed();
    let checked =
        check_runs(&clients[2], &runs, &acked, &receiver.got, DONE_TAG).await.unwrap_or_else(|e| nodes.fail(&e));
    let mut problems = checked.problems;

    // Stored once, by idempotency key, and processed: the events table.
    let stored: Vec<(String, Option<String>, i64)> =
        sqlx::query_as("SELECT id, idempotency_key, processed FROM events WHERE kind = $1")
            .bind(KIND)
            .fetch_all(&mut pg)
            .await
            .expect("reading events");
    let by_key: HashMap<&str, &str> =
        stored.iter().filter_map(|(id, key, _)| key.as_deref().map(|k| (k, id.as_str()))).collect();
    if by_key.len() != stored.len() {
        problems.push(format!("{} events stored under {} idempotency keys", stored.len(), by_key.len()));
    }
    for (key, id) in &load.acked {
        if by_key.get(key.as_str()) != Some(&id.as_str()) {
            problems.push(format!("event {key} was acknowledged as {id}, stored as {:?}", by_key.get(key.as_str())));
        }
    }
    let stored: Vec<(String, i64)> = stored.into_iter().map(|(id, _, processed)| (id, processed)).collect();
    let (processed, stored_problems) = check_stored(&stored, &acked, KIND);
    problems.extend(stored_problems);
    let (unprocessed,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM events WHERE processed = 0").fetch_one(&mut pg).await.expect("counting");
    if unprocessed > 0 {
        problems.push(format!("{unprocessed} events of the database are not processed"));
    }
    // No run stuck, in the database too.
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM workflow_runs GROUP BY status ORDER BY status")
            .fetch_all(&mut pg)
            .await
            .expect("counting runs");
    let statuses: BTreeMap<String, i64> = statuses.into_iter().collect();
    if statuses.keys().any(|s| s != "completed") {
        problems.push(format!("runs not completed in the database: {statuses:?}"));
    }
    // Every event of the database by kind (the pipeline's counters below
    // count them all), and how late the events were enrolled.
    let kinds: Vec<(String, i64)> = sqlx::query_as("SELECT kind, COUNT(*) FROM events GROUP BY kind ORDER BY kind")
        .fetch_all(&mut pg)
        .await
        .expect("counting events");
    let kinds: BTreeMap<String, i64> = kinds.into_iter().collect();
    let (late_events, latest_event_ms): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE r.enrolled_at - e.received_at >= $2), MAX(r.enrolled_at - e.received_at) \
         FROM events e JOIN workflow_runs r ON r.trigger_event_id = e.id WHERE e.kind = $1",
    )
    .bind(KIND)
    .bind(RESUMED_LATE_MS)
    .fetch_one(&mut pg)
    .await
    .expect("reading enrollment times");
    let _ = pg.close().await;

    // The nodes alive run version 2.
    for i in [0, 2] {
        if let Err(e) = runs_version(&clients[i], &scorer, &v2, Duration::ZERO).await {
            problems.push(format!("node{}: {e}", i + 1));
        }
    }

    // Who did the work: each node's own counters (node 2's when it died).
    let mut processed_by = Vec::new();
    let mut steps_by = Vec::new();
    for i in 0..NODES {
        let counters = match i {
            KILLED => Some(killed_counters),
            _ => node_counters(&http, &nodes.url(i)).await,
        };
        processed_by.push(counters.map_or(-1, |c| c.0 as i64));
        steps_by.push(counters.map_or(-1, |c| c.1 as i64));
    }
    // The pipeline commits an event's effects and its `processed` flag in
    // one transaction, which a second commit of the same event (a claim that
    // outlived its lease) finds done and rolls back: so the nodes' counters
    // add up to the events in the database (node 2's read just before the
    // kill may miss its last batch), never more.
    let events_total: i64 = kinds.values().sum();
    let pipeline_total: i64 = processed_by.iter().sum();
    if pipeline_total > events_total {
        problems.push(format!(
            "the nodes finished {pipeline_total} events ({processed_by:?}), the database has {events_total}: \
             some were processed twice"
        ));
    }
    // Runs and events that waited for a lease of the dead node to run out.
    let late: Vec<i64> = checked.details.iter().map(latest_start_ms).collect();
    let resumed = late.iter().filter(|ms| **ms >= RESUMED_LATE_MS).count();
    let latest_ms = late.iter().max().copied().unwrap_or_default();
    let acked_by: Vec<u64> = (0..NODES).map(|i| load.acked_by.get(&i).copied().unwrap_or(0)).collect();
    let distinct_runs: HashSet<&str> = runs.iter().filter_map(|r| r["id"].as_str()).collect();
    eprintln!(
        "cluster: nodes={NODES} killed=node2 acked={} processed={processed} runs={} completed={} steps={} \
         timers_fired={} duplicates={} deliveries={} retried_steps={} keys_consistent={} \
         reload_seen_ms={reload_seen_ms:?} patch_ms={patch_ms} kill_after={kill_after:.1?} \
         waiting_at_kill={} held_at_kill={}/{} queued_at_kill={} resumed_runs={resumed} latest_step_ms={latest_ms} \
         late_events={late_events} latest_event_ms={} events_by_kind={kinds:?} \
         acked_by={acked_by:?} pipeline_finished={pipeline_total}/{events_total} processed_by={processed_by:?} steps_by={steps_by:?} load_requests_ok={} load_failures={:?} start={start:.1?} start_retries={start_retries} \
         load={load_took:.1?} drain={drained_in:.1?} total={:.1?} seed={seed}",
        acked.len(),
        distinct_runs.len(),
        checked.completed,
        checked.steps_ok,
        checked.timers_fired,
        checked.duplicate_deliveries,
        checked.deliveries,
        checked.retried_steps,
        checked.keys_consistent,
        at_kill.waiting_runs,
        at_kill.held_runs,
        at_kill.held_events,
        at_kill.queued_events,
        latest_event_ms.unwrap_or_default(),
        load.accepted_requests,
        load.failures,
        began.elapsed(),
    );
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(20).collect();
        nodes.fail(&format!("{} problems, first ones:\n{shown:#?}", problems.len()));
    }
    assert_eq!(processed, acked.len(), "every acknowledged event processed");
    assert_eq!(runs.len(), acked.len(), "one run per acknowledged event");
    assert_eq!(checked.completed, acked.len(), "every run completed");
    assert_eq!(checked.steps_ok, acked.len() * STEPS.len(), "every step of every run");
    assert_eq!(checked.timers_fired, acked.len() * DELAYS.len(), "every delay fired, after its time");
    assert!(checked.keys_consistent, "one idempotency key per step");
    let slowest = reload_seen_ms.iter().max().copied().unwrap_or_default();
    assert!(slowest <= RELOAD_BOUND.as_millis(), "the hot reload took {slowest} ms to reach every node");
    // Many starts and requests later, the admin key is in no node's log.
    for n in &nodes.list {
        let log = std::fs::read_to_string(&n.log).expect("server log reads");
        assert!(!log.is_empty() && !log.contains(ADMIN_KEY), "{}: the log is empty or shows the admin key", n.name());
    }
    drop(nodes);
}
