//! Crash durability: the real `cairn serve` binary, a child process on a
//! SQLite file with the system clock, is SIGKILLed at random moments while a
//! client keeps sending events and workflow runs wait on real timers; each
//! time it restarts on the same data directory and port. Afterwards:
//!
//! - every event the server answered `202` is stored and processed: it
//!   enrolled its contact (the run names it as trigger), and its `processed`
//!   flag is set (read from the SQLite file: no HTTP API shows the flag, and
//!   the `/metrics` counters start again at every restart);
//! - every run completed with every step recorded `ok`, and no step after a
//!   delay started before the delay was over (by the steps' records and by
//!   the times the webhooks arrived);
//! - every webhook delivery of one step carries that step's idempotency key
//!   (`run:<run id>:<step id>`, header and body alike) and the keys of
//!   different steps differ; repeats after a kill (at-least-once) are
//!   counted and printed, not failed;
//! - at least one kill landed while runs were waiting, else the test proved
//!   nothing.
//!
//! The seed of the random kill times and batch sizes is printed;
//! `CAIRN_CRASH_SEED=<n>` repeats that schedule (the server's own timing
//! still varies). The summary line goes to stderr: run with `--nocapture`.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::demo;
use sqlx::Connection as _;

use common::child::{
    DELAYS, Load, Loader, Rng, STEPS, Serve, ServerProcess, check_runs, check_stored, free_port, hook_workflow,
    pending_work, save_workflow, seed_from_env, start_receiver, wait_for_runs,
};

/// The admin key the child registers (`CAIRN_ADMIN_KEY`).
const ADMIN_KEY: &str = "crash-admin-key-0123456789abcdef";
/// The event kind that enrolls contacts into the test workflow.
const KIND: &str = "crash_test";
/// SIGKILLs per test.
const KILLS: usize = 12;
/// Random wait before each kill, ms.
const KILL_AFTER_MS: (u64, u64) = (200, 1500);
/// The tag the last step gives each contact.
const DONE_TAG: &str = "crash-done";
/// Pause between two event requests of the loader.
const LOAD_TICK: Duration = Duration::from_millis(40);
/// Most events in one request (1 is sent as a single-event body).
const MAX_BATCH: u64 = 4;
/// First start: a cold compile cache, every prebuilt plugin compiled.
const FIRST_START: Duration = Duration::from_secs(90);
/// A restart (compiled plugins come from the cache on disk).
const RESTART: Duration = Duration::from_secs(30);
/// After the last kill and the end of the load: until every run is done.
const DRAIN: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ test

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_and_runs_survive_repeated_sigkill() {
    let began = Instant::now();
    let seed = seed_from_env("CAIRN_CRASH_SEED");
    eprintln!("crash durability: seed={seed} (CAIRN_CRASH_SEED={seed} repeats the schedule)");
    let dir = std::env::temp_dir().join(format!("cairn-crash-{}-{seed:x}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let serve = Serve {
        name: "crash durability".into(),
        admin_key: ADMIN_KEY.into(),
        database_url: None,
        // A loaded CI machine must not turn a slow webhook into a failure.
        args: vec!["--deadline-ms".into(), "5000".into()],
    };
    let mut server = ServerProcess::new(serve, dir.clone(), free_port());
    let http = reqwest::Client::new();
    let first_start = server.start(&http, FIRST_START).await;

    // 1. Tenant, webhooks, workflow: A → 1 s → B → 1 s → tag.
    let receiver = start_receiver().await;
    let acme = match demo::set_up(&server.url(), ADMIN_KEY, &receiver.base).await {
        Ok(acme) => acme,
        Err(e) => server.fail(&format!("setting up the tenant: {e:#}")),
    };
    let client = acme.client.clone();
    let definition = hook_workflow("Crash durability", KIND, &acme.installs, DONE_TAG);
    let workflow = save_workflow(&client, definition).await.unwrap_or_else(|e| server.fail(&e));

    // 2. Load, and 3. the kill loop.
    let stop = Arc::new(AtomicBool::new(false));
    let loaded = Arc::new(Mutex::new(Load::default()));
    let sender = Loader {
        clients: vec![client.clone()],
        first: 0,
        kind: KIND,
        prefix: format!("crash-{seed:x}"),
        seed: seed ^ 0x10ad,
        tick: LOAD_TICK,
        max_batch: MAX_BATCH,
    };
    let loader = tokio::spawn(sender.run(stop.clone(), loaded.clone()));
    let mut rng = Rng::new(seed);
    let (mut kills, mut kills_with_waiting, mut kills_with_timers) = (0, 0, 0);
    let mut restarts = Vec::new();
    for i in 1..=KILLS {
        let after = rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1);
        tokio::time::sleep(Duration::from_millis(after)).await;
        let pending = pending_work(&client, &workflow).await;
        server.kill();
        kills += 1;
        if let Some((waiting, timers)) = pending {
            kills_with_waiting += usize::from(waiting > 0);
            kills_with_timers += usize::from(timers > 0);
        }
        let acked = loaded.lock().expect("load").acked.len();
        let back = server.start(&http, RESTART).await;
        restarts.push(back);
        let seen = pending.map_or("not seen".to_string(), |(w, t)| format!("{w} waiting runs ({t} on a timer)"));
        eprintln!("crash durability: kill {i} after {after} ms: {seen}, {acked} events acked; back in {back:?}");
    }
    stop.store(true, Ordering::SeqCst);
    loader.await.expect("the loader finishes");
    let load = std::mem::take(&mut *loaded.lock().expect("load"));
    if !load.unexpected.is_empty() {
        server.fail(&format!("the load saw answers that mean the test is wrong: {:?}", load.unexpected));
    }
    assert!(!load.acked.is_empty(), "no event was acknowledged");
    let acked: HashMap<&str, &str> = load.acked.iter().map(|(key, id)| (id.as_str(), key.as_str())).collect();
    assert_eq!(acked.len(), load.acked.len(), "two client events got one event id");

    // 4. Wait until every acknowledged event has a completed run.
    let drain_began = Instant::now();
    let runs = wait_for_runs(&client, &workflow, &acked, DRAIN).await.unwrap_or_else(|e| server.fail(&e));
    let drained_in = drain_began.elapsed();

    // 5. Assertions: one run per acknowledged event and no other, every
    // step ok and every delay waited, the webhook keys, the tags.
    let checked = check_runs(&client, &runs, &acked, &receiver.got, DONE_TAG).await.unwrap_or_else(|e| server.fail(&e));
    let mut problems = checked.problems;
    let (completed, steps_ok, timers_fired) = (checked.completed, checked.steps_ok, checked.timers_fired);
    let keys_consistent = checked.keys_consistent;

    // Stored and processed: the events table itself (read only; the server
    // keeps running). Exactly the acknowledged events are stored, since the
    // loader sent every unacknowledged batch again under the same keys.
    let db = dir.join("cairn.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).create_if_missing(false);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.expect("the SQLite file opens");
    let stored: Vec<(String, i64)> = sqlx::query_as("SELECT id, processed FROM events WHERE kind = ?")
        .bind(KIND)
        .fetch_all(&mut conn)
        .await
        .expect("reading events");
    let _ = conn.close().await;
    let (processed, stored_problems) = check_stored(&stored, &acked, KIND);
    problems.extend(stored_problems);

    let restart_max = restarts.iter().max().copied().unwrap_or_default();
    eprintln!(
        "crash durability: kills={kills} kills_with_waiting_runs={kills_with_waiting} \
         kills_with_pending_timers={kills_with_timers} acked_events={} processed={processed} runs={} \
         completed={completed} steps={steps_ok} hook_deliveries={} duplicate_deliveries={} \
         keys_consistent={keys_consistent} timers_fired={timers_fired} retried_steps={} \
         min_hook_gap_ms={} load_requests_ok={} load_failures={:?} start_retries={} \
         first_start={first_start:.1?} max_restart={restart_max:.1?} drain={drained_in:.1?} total={:.1?} seed={seed}",
        acked.len(),
        runs.len(),
        checked.deliveries,
        checked.duplicate_deliveries,
        checked.retried_steps,
        checked.min_gap_ms,
        load.accepted_requests,
        load.failures,
        server.start_retries,
        began.elapsed(),
    );
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(20).collect();
        server.fail(&format!("{} problems, first ones:\n{shown:#?}", problems.len()));
    }
    assert_eq!(kills, KILLS);
    assert_eq!(processed, acked.len(), "every acknowledged event processed");
    assert_eq!(completed, acked.len(), "one completed run per acknowledged event");
    assert_eq!(steps_ok, acked.len() * STEPS.len(), "every step of every run");
    assert_eq!(timers_fired, acked.len() * DELAYS.len(), "every delay fired, after its time");
    assert!(keys_consistent);
    if kills_with_waiting == 0 {
        server.fail("no kill landed while a run was waiting: the test proved nothing");
    }
    // Thirteen starts and thousands of admin and tenant requests later, the
    // admin key is nowhere in what the server wrote.
    let log = std::fs::read_to_string(&server.log).expect("server log reads");
    assert!(!log.is_empty(), "the server log is empty: nothing was checked");
    assert!(!log.contains(ADMIN_KEY), "the admin key appears in the server log");
}
