//! Database faults (issue 5, item 7): the database goes away under load.
//!
//! - PostgreSQL is stopped mid-load with `pg_ctlcluster` and started again
//!   seconds later: while it is away every request is answered `503` with a
//!   JSON error and `Retry-After` within a bounded time (never a hang), and
//!   once it is back the server serves again without a restart.
//! - Another process holds SQLite's write lock past the busy timeout: the
//!   same, on the embedded default.
//! - While SQLite is locked that way, the writers of the process queued
//!   behind one that timed out fail at once rather than in turn.
//!
//! In both, clients retry unacknowledged events with their idempotency key
//! (what a real client does with a 503), and in the end every event the
//! server acknowledged with `202` is stored exactly once and processed.
//!
//! The PostgreSQL test stops the machine's shared cluster, so it is the only
//! test in this binary that touches PostgreSQL (cargo runs test binaries one
//! at a time), and a guard starts the cluster again even when it fails.

// Tests fail loudly on purpose: a panic is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::clock::Clock;
use cairn::demo::{Client, wait_for};
use cairn::runtime::RuntimeSettings;
use cairn::server::{self, Server, ServerConfig};
use cairn::store::testing::{TempPostgres, TempSqlite};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;

const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";
/// Senders posting events at once.
const SENDERS: usize = 4;
/// Longest a request may take before it counts as a hang: one wait for the
/// database (the pool's 3 s acquire timeout, SQLite's 5 s busy timeout),
/// plus room for a loaded CI machine.
const NO_HANG: Duration = Duration::from_secs(10);

async fn start(database_url: &str) -> Server {
    let cache = std::env::temp_dir().join(format!("cairn-e2e-cache-{}", std::process::id()));
    server::start(ServerConfig {
        database_url: database_url.to_string(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        runtime: RuntimeSettings { cache_dir: Some(cache), ..RuntimeSettings::default() },
        clock: Clock::System,
        admin_key: Some(ADMIN_KEY.into()),
        run_pipeline: true,
    })
    .await
    .expect("server starts")
}

/// A tenant's API key, and one contact per sender.
async fn tenant(server: &Server) -> (String, Vec<String>) {
    let admin = Client::new(&server.url(), ADMIN_KEY);
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": "Faulty Ltd"}))).await.unwrap();
    let key = created["api_key"].as_str().unwrap().to_string();
    let client = Client::new(&server.url(), &key);
    let mut contacts = Vec::new();
    for i in 0..SENDERS {
        let c = client
            .ok(Method::POST, "/v1/contacts", Some(json!({"email": format!("c{i}@faulty.example")})))
            .await
            .unwrap();
        contacts.push(c["id"].as_str().unwrap().to_string());
    }
    (key, contacts)
}

/// What the senders saw.
#[derive(Default)]
struct Outcomes {
    /// Idempotency keys of events answered 202.
    acked: BTreeSet<String>,
    /// 503 answers, each checked for a JSON error and Retry-After.
    unavailable: usize,
    /// Anything else (a failure of the test).
    unexpected: Vec<String>,
    /// The slowest answer.
    slowest: Duration,
}

/// Senders that post one event at a time until `stop`, each retrying an
/// unacknowledged event (same idempotency key) until it is acknowledged.
fn spawn_senders(
    base: String,
    key: String,
    contacts: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Arc<Mutex<Outcomes>>, Vec<tokio::task::JoinHandle<()>>) {
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let tasks = contacts
        .into_iter()
        .enumerate()
        .map(|(sender, contact)| {
            let (http, base, key, stop, outcomes) =
                (http.clone(), base.clone(), key.clone(), stop.clone(), outcomes.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let idempotency_key = format!("s{sender}-{seq}");
                    let body = json!({"contact_id": contact, "kind": "fault_probe", "idempotency_key": idempotency_key,
                                      "properties": {"seq": seq}});
                    let started = Instant::now();
                    let sent = http.post(format!("{base}/v1/events")).bearer_auth(&key).json(&body).send().await;
                    let took = started.elapsed();
                    let answer = match sent {
                        Ok(r) => {
                            let (status, retry_after) = (r.status().as_u16(), r.headers().contains_key("retry-after"));
                            let body: Value = r.json().await.unwrap_or(Value::Null);
                            Ok((status, retry_after, body))
                        }
                        Err(e) => Err(e),
                    };
                    let acked = {
                        let mut o = outcomes.lock().unwrap();
                        o.slowest = o.slowest.max(took);
                        match answer {
                            Ok((202, _, _)) => {
                                o.acked.insert(idempotency_key);
                                true
                            }
                            Ok((503, true, body)) if body["error"]["code"] == "unavailable" => {
                                o.unavailable += 1;
                                false
                            }
                            Ok((status, _, body)) => {
                                o.unexpected.push(format!("{status}: {body}"));
                                false
                            }
                            Err(e) => {
                                o.unexpected.push(format!("request failed: {e}"));
                                false
                            }
                        }
                    };
                    if acked {
                        seq += 1;
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    (outcomes, tasks)
}

/// Wait until every acknowledged event is stored once and processed, read
/// straight from the database the server writes.
async fn wait_all_processed(database_url: &str, acked: &BTreeSet<String>) -> (i64, i64) {
    let store = cairn::store::Store::open(database_url).await.expect("store opens");
    let pool = store.pool().clone();
    let counts = wait_for(Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool);
            let stored = count("SELECT COUNT(*) FROM events WHERE kind = 'fault_probe'").await?;
            let processed = count("SELECT COUNT(*) FROM events WHERE kind = 'fault_probe' AND processed <> 0").await?;
            Ok((stored >= acked.len() as i64 && processed == stored).then_some((stored, processed)))
        }
    })
    .await
    .expect("every acknowledged event is processed");
    let stored: Vec<(String,)> =
        sqlx::query_as("SELECT idempotency_key FROM events WHERE kind = 'fault_probe'").fetch_all(&pool).await.unwrap();
    let stored: Vec<String> = stored.into_iter().map(|(k,)| k).collect();
    let unique: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "an event was stored twice");
    let missing: Vec<&String> = acked.iter().filter(|k| !unique.contains(k)).collect();
    assert!(missing.is_empty(), "acknowledged events lost: {missing:?}");
    store.close().await;
    counts
}

/// Starts the cluster again when dropped, so a failing test never leaves
/// the machine's PostgreSQL down for the tests after it.
struct ClusterGuard(String);

impl ClusterGuard {
    fn run(&self, action: &str) {
        let status = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.0, "main", action])
            .args(if action == "stop" { &["-m", "fast"][..] } else { &[][..] })
            .status()
            .unwrap_or_else(|e| {
                panic!("pg_ctlcluster {action}: {e} (this test needs the machine's PostgreSQL cluster)")
            });
        assert!(status.success(), "pg_ctlcluster {action} failed: {status}");
    }
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.0, "main", "start"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn cluster_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql lists the local clusters")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL cluster is installed")
}

async fn healthz(base: &str) -> (u16, Duration) {
    let started = Instant::now();
    let status = reqwest::get(format!("{base}/healthz")).await.map(|r| r.status().as_u16()).unwrap_or(0);
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_mid_load_answers_503_then_recovers_and_loses_no_acknowledged_event() {
    let db = TempPostgres::create().await.expect("PostgreSQL is up");
    let server = start(db.url()).await;
    let (key, contacts) = tenant(&server).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (outcomes, senders) = spawn_senders(server.url(), key, contacts, stop.clone());

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = outcomes.lock().unwrap().acked.len();
    let cluster = ClusterGuard(cluster_version());
    let stopped_at = Instant::now();
    tokio::task::block_in_place(|| cluster.run("stop"));
    // While it is away: the health check and the senders get 503, in time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (health, health_took) = healthz(&server.url()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down_for = stopped_at.elapsed();
    tokio::task::block_in_place(|| cluster.run("start"));
    let during = outcomes.lock().unwrap().acked.len();
    // Back: the server reconnects by itself.
    let back = wait_for(Duration::from_secs(30), || {
        let base = server.url();
        async move { Ok((healthz(&base).await.0 == 200).then_some(())) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let o = std::mem::take(&mut *outcomes.lock().unwrap());
    back.expect("the server serves again once PostgreSQL is back");
    assert_eq!(health, 503, "/healthz answers 503 while the database is away");
    assert!(health_took < NO_HANG, "/healthz took {health_took:?} while the database was away");
    assert!(o.unexpected.is_empty(), "unexpected answers: {:?}", o.unexpected);
    assert!(o.unavailable > 0, "no sender saw a 503 while PostgreSQL was stopped for {down_for:?}");
    assert!(o.slowest < NO_HANG, "a request hung for {:?}", o.slowest);
    assert!(o.acked.len() > during, "no event was acknowledged after PostgreSQL came back");

    let (stored, processed) = wait_all_processed(db.url(), &o.acked).await;
    eprintln!(
        "postgres restart: down {down_for:?}; acknowledged {} ({before} before, {} after), 503 answers {}, \
         slowest answer {:?}, stored {stored}, processed {processed}, lost 0",
        o.acked.len(),
        o.acked.len() - during,
        o.unavailable,
        o.slowest
    );
    server.shutdown().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_locked_by_another_process_answers_503_then_recovers_and_loses_no_acknowledged_event() {
    let db = TempSqlite::new();
    let server = start(&db.url()).await;
    let (key, contacts) = tenant(&server).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (outcomes, senders) = spawn_senders(server.url(), key, contacts, stop.clone());

    tokio::time::sleep(Duration::from_secs(1)).await;
    // Another program takes the write lock and keeps it past the busy timeout.
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.url())).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    let locked_at = Instant::now();
    let acked_at_lock = outcomes.lock().unwrap().acked.len();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = outcomes.lock().unwrap().acked.len();
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let locked_for = locked_at.elapsed();
    other.close().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let o = std::mem::take(&mut *outcomes.lock().unwrap());
    assert!(o.unexpected.is_empty(), "unexpected answers: {:?}", o.unexpected);
    assert!(o.unavailable > 0, "no sender saw a 503 while SQLite was locked for {locked_for:?}");
    assert!(o.slowest < NO_HANG, "a request hung for {:?}", o.slowest);
    assert!(o.acked.len() > during, "no event was acknowledged after the lock was released");

    let (stored, processed) = wait_all_processed(&db.url(), &o.acked).await;
    eprintln!(
        "sqlite locked: {locked_for:?}; acknowledged {} ({acked_at_lock} before the lock, {} during, {} after), \
         503 answers {}, slowest answer {:?}, stored {stored}, processed {processed}, lost 0",
        o.acked.len(),
        during - acked_at_lock,
        o.acked.len() - during,
        o.unavailable,
        o.slowest
    );
    server.shutdown().await;
}

/// Writers of one process take turns at SQLite's write lock. When another
/// program holds it, the writer whose turn it is waits the busy timeout and
/// fails; the writers queued behind it then fail at once instead of each
/// waiting as long again (a request behind the pipeline's claim would
/// otherwise wait two timeouts, or succeed late without ever saying the
/// database was locked). Shown by order, not timing: the second writer
/// queued while the first waited, and it gets `Locked`, not its own
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_queued_behind_a_lock_timeout_fail_at_once() {
    use cairn::store::{Store, StoreError};
    let db = TempSqlite::new();
    let store = Store::open(&db.url()).await.unwrap();
    let tenant = store.create_tenant("locked out").await.unwrap().id;
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.url())).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();

    let claim =
        |store: Store, tenant: String| tokio::spawn(async move { store.claim_tenant_events(&tenant, 10).await });
    let first = claim(store.clone(), tenant.clone());
    // The first writer holds the turn, waiting in SQLite's busy handler.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = claim(store.clone(), tenant.clone());
    let first = first.await.unwrap().expect_err("the first writer waits the busy timeout and fails");
    assert!(matches!(first, StoreError::Database(_)), "{first:?}");
    let second = second.await.unwrap().expect_err("the queued writer fails too");
    assert!(matches!(second, StoreError::Locked), "the queued writer fails at once: {second:?}");

    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    assert!(store.claim_tenant_events(&tenant, 10).await.unwrap().is_empty(), "writes go on once the lock is gone");
}
