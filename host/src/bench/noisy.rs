//! `noisy_neighbour`: what a tenant whose plugins run away costs another
//! tenant's events.
//!
//! One server (SQLite, system clock, the default limits: 16 plugin calls at
//! once per tenant, a 500 ms deadline) and two tenants:
//! - **B**, the well-behaved one: 200 single events/s over HTTP, each for a
//!   new contact (created by its email), scored by the rules scorer and
//!   enrolling the contact in a one-step workflow whose webhook action posts
//!   to a receiver in this process. B's latency is end to end: from just
//!   before the event's `POST /v1/events` to the webhook arriving, through
//!   the durable queue, the pipeline, the enrollment and the workflow runner.
//! - **A**, the noisy one: several senders post batches of events as fast
//!   as they are answered, to 64 contacts scored by runaway test guests, and
//!   enrolling them in a workflow whose action is stuck in a host call (a
//!   webhook to an endpoint that never answers) until its deadline, retried.
//!   With [`Options::a_events_per_sec`] the senders keep to that rate
//!   instead: at B's rate, A's plugins still take every call slot A has
//!   (its scorers run per contact, and 100 runaway enrollments a second
//!   are more than 16 slots of 500 ms serve), so what B then pays is A's
//!   plugins, not A's event volume.
//!
//! B's load runs four times for the figures: alone; while A *floods*
//! events with no plugin installed yet (A's events are stored, claimed and
//! processed, nothing more); while A's plugins are stuck *waiting* (a scorer that sleeps in a
//! host call, the hanging action: each holds one of A's call slots for the
//! whole 500 ms deadline); and while A's plugins also *burn CPU* (an
//! infinite loop, a loop that keeps yielding, a memory hog: each runs to
//! its fuel, memory or deadline limit). The figures are B's p99 in each
//! noisy phase over B's p99 alone (goal: at most 1.5). The flood alone is
//! the baseline of the other two: what A's event volume costs B, with no
//! plugin to contain; the waiting phase adds the engine's own fairness
//! (does a stuck tenant hold other tenants' events?); the burning phase
//! adds competition for the CPU, which the runaway guests would take whole
//! on a small machine if CPU turns (`runtime::cpu_turns`) did not hold
//! them to one core's worth. A fifth run, B alone again after A has
//! stopped, is a control (`p99_ratio_alone_after`): how far B's p99 moves
//! between the first phase and the last with no neighbour at all, from
//! the database's growth and the machine's drift.
//!
//! Each phase also reports the cores this process used while B's load ran,
//! by thread name (`cores_used`: tokio's workers, SQLite's connection
//! threads, the background runtime): whether a phase was short of CPU, and
//! whose threads took it. The load generators run in this process too.
//!
//! Two limits differ from the defaults, on purpose:
//! - the circuit breaker is off (`breaker_failures` 0) so A stays noisy for
//!   the whole run: with it on, A's installs are disabled after 20 failures
//!   in a row and the benchmark would measure the breaker instead;
//! - the per-tenant event rate limit is [`TENANT_EVENTS_PER_SEC`], not the
//!   default 20 000/s, which is above what the intake of a 2-core machine
//!   takes in total: there a tenant allowed the default takes the whole
//!   intake, and B's latency measures the machine's capacity, not fairness
//!   (the rate limit is the answer to that flood, sized to the machine). A's
//!   senders meet the limit: it holds their requests to pace them to the
//!   rate, and refuses what would wait longer than a quarter second (the
//!   `429`s are counted); B's rate is far below it.
//!
//! The runaway guests are the hostile test guests `host/build.rs` builds
//! (`tests/guests/guest-*`), read from the directory the binary was built
//! with: run the benchmark from the repository.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use reqwest::Method;
use serde_json::{Value, json};

use crate::bench::{client_key, emit, median, percentile, proc_comm, proc_ticks, scorer_config};
use crate::catalog::{GUEST_DIR, guest_bytes};
use crate::demo::Client;
use crate::engine::Clock;
use crate::server::{self, Server, ServerConfig};
use crate::store::Store;
use crate::store::testing::TempPostgres;

/// B's events per second, across its clients.
const B_RATE: u64 = 200;
const B_CLIENTS: u64 = 4;
/// A's concurrent senders and the events in each of their requests.
const A_SENDERS: usize = 4;
const A_BATCH: usize = 100;
/// A's contacts: every round of A's events re-scores each of them with
/// every runaway scorer.
const A_CONTACTS: usize = 64;
/// Events per second per tenant (see the module docs): ten times B's rate.
const TENANT_EVENTS_PER_SEC: u32 = 2_000;
/// A's runaway scorers that wait: installed from the start.
const WAITING_SCORERS: [&str; 1] = ["guest-sleep"];
/// A's runaway scorers that burn CPU: added for the last phase.
const BURNING_SCORERS: [&str; 3] = ["guest-loop", "guest-yield-loop", "guest-memory-hog"];
/// Signs both tenants' webhooks (the receiver does not check it).
const SECRET: &str = "noisy-neighbour-bench-secret";
const ADMIN_KEY: &str = "bench-admin-key-0123456789";

/// What the bench's webhook receiver saw.
#[derive(Default)]
struct Hooks {
    /// B's webhooks: the contact's email → when its first webhook arrived.
    arrived: Mutex<HashMap<String, Instant>>,
    /// Requests to the endpoint that never answers (A's runaway action).
    hung: AtomicU64,
}

/// Aborts the receiver's task when the benchmark ends, however it ends.
struct Receiver {
    addr: SocketAddr,
    hooks: Arc<Hooks>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `/hooks/b` records when B's webhook for a contact arrives; `/hooks/hang`
/// holds every request for a minute (far past any plugin deadline).
async fn start_receiver() -> anyhow::Result<Receiver> {
    let hooks = Arc::new(Hooks::default());
    let (b, hang) = (hooks.clone(), hooks.clone());
    let app = axum::Router::new()
        .route(
            "/hooks/b",
            axum::routing::post(move |body: Bytes| {
                let hooks = b.clone();
                async move {
                    let at = Instant::now();
                    let email = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["contact"]["email"].as_str().map(str::to_string));
                    if let (Some(email), Ok(mut arrived)) = (email, hooks.arrived.lock()) {
                        arrived.entry(email).or_insert(at);
                    }
                    "ok"
                }
            }),
        )
        .route(
            "/hooks/hang",
            axum::routing::post(move || {
                let hooks = hang.clone();
                async move {
                    hooks.hung.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "too late"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Receiver { addr, hooks, task })
}

/// The runaway guests' bytes, or an error that says how to get them.
fn runaway_guests(names: &[&'static str]) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    names
        .iter()
        .map(|name| {
            let file = std::path::Path::new(GUEST_DIR).join(format!("{}.wasm", name.replace('-', "_")));
            guest_bytes(name).map(|b| (*name, b)).with_context(|| {
                format!(
                    "noisy-neighbour benchmark: the runaway test guest {name} is missing ({}); it is built by \
                     host/build.rs from host/tests/guests/{name}: run the benchmark from the repository \
                     (`cargo run --release -- bench --noisy-only`)",
                    file.display()
                )
            })
        })
        .collect()
}

/// How the benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// The database of the benchmark's server.
    pub database: Database,
    /// Tenant A's events per second (at least 1); `None`: as fast as its
    /// rate limit ([`TENANT_EVENTS_PER_SEC`]) lets its senders post.
    pub a_events_per_sec: Option<u32>,
    /// How many times the whole benchmark runs, each on a new server (0 is
    /// taken as 1). With more than one, a last line pools the rounds: B's
    /// p99 of each phase over all its rounds' events, and each round's
    /// ratios with their median. One round's p99 rests on its slowest 20
    /// events, which on a noisy VM can be a single stall of the machine;
    /// pooled rounds spread that over several stretches of time.
    pub rounds: u32,
}

/// Which database the benchmark's server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Database {
    /// A SQLite file in the benchmark's directory (the embedded default):
    /// one writer at a time for every tenant.
    #[default]
    Sqlite,
    /// A fresh PostgreSQL database (see [`TempPostgres`]), dropped after:
    /// tenants' writes run side by side.
    Postgres,
}

async fn start(dir: &std::path::Path, database: Option<&TempPostgres>) -> anyhow::Result<Server> {
    let mut config = ServerConfig::in_dir(dir.to_path_buf());
    if let Some(db) = database {
        config.database_url = db.url().to_owned();
    }
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.clock = Clock::System;
    config.admin_key = Some(ADMIN_KEY.into());
    // Both tenants' webhooks go to this process, on loopback.
    config.runtime.allow_private_network = true;
    // A's installs stay installed and failing (see the module docs).
    config.runtime.limits.breaker_failures = 0;
    config.runtime.limits.tenant_events_per_sec = TENANT_EVENTS_PER_SEC;
    server::start(config).await
}

/// A new tenant: its client and API key.
async fn new_tenant(server: &Server, name: &str) -> anyhow::Result<(Client, String)> {
    let admin = Client::new(&server.url(), ADMIN_KEY);
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": name}))).await?;
    let key = client_key(&created);
    Ok((Client::new(&server.url(), &key), key))
}

async fn catalog_version(client: &Client, name: &str) -> anyhow::Result<Value> {
    let plugins = client.ok(Method::GET, "/v1/plugins", None).await?;
    plugins["items"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name))
        .map(|p| p["id"].clone())
        .with_context(|| format!("catalog plugin {name}"))
}

async fn install(client: &Client, version: Value, config: Value, grants: Value) -> anyhow::Result<String> {
    let body = json!({"plugin_version_id": version, "config": config, "grants": grants});
    let installed = client.ok(Method::POST, "/v1/installs", Some(body)).await?;
    installed["id"].as_str().map(str::to_string).context("install id")
}

/// A one-step workflow: on `kind`, call webhook install `hook`.
async fn hook_workflow(client: &Client, name: &str, kind: &str, hook: &str, retry: Value) -> anyhow::Result<()> {
    let definition = json!({
        "name": name,
        "trigger": {"type": "event", "kind": kind},
        "enrollment": {"reenroll": true},
        "retry": retry,
        "steps": [{"id": "notify", "type": "action", "install_id": hook}]
    });
    client.ok(Method::POST, "/v1/workflows?activate=true", Some(definition)).await?;
    Ok(())
}

/// Tenant B: the rules scorer and a workflow that posts every scored
/// `page_viewed` to `/hooks/b`.
async fn set_up_b(server: &Server, hooks: SocketAddr) -> anyhow::Result<String> {
    let (b, key) = new_tenant(server, "noisy-b").await?;
    install(&b, catalog_version(&b, "rules-scorer").await?, scorer_config(), json!([])).await?;
    let hook = install(
        &b,
        catalog_version(&b, "webhook").await?,
        json!({"url": format!("http://{hooks}/hooks/b"), "secret": SECRET}),
        json!([format!("http:{}", hooks.ip())]),
    )
    .await?;
    hook_workflow(&b, "notify", "page_viewed", &hook, json!({"max_attempts": 3, "backoff": "1s"})).await?;
    Ok(key)
}

/// Upload and install scorer guests for `a`; (name, install id) of each.
async fn install_guests(a: &Client, guests: Vec<(&'static str, Vec<u8>)>) -> anyhow::Result<Vec<(String, String)>> {
    let mut installs = Vec::new();
    for (name, bytes) in guests {
        let (status, uploaded) = a.upload(bytes).await?;
        anyhow::ensure!(status == 201 || status == 200, "uploading {name} answered {status}: {uploaded}");
        installs.push((name.to_string(), install(a, uploaded["id"].clone(), json!({}), json!([])).await?));
    }
    Ok(installs)
}

/// Tenant A and its contacts, with no plugin yet. Returns the client, its
/// key and the contact ids.
async fn set_up_a(server: &Server) -> anyhow::Result<(Client, String, Vec<String>)> {
    let (a, key) = new_tenant(server, "noisy-a").await?;
    let mut contacts = Vec::with_capacity(A_CONTACTS);
    for i in 0..A_CONTACTS {
        let c = a.ok(Method::POST, "/v1/contacts", Some(json!({"email": format!("a{i}@a.test")}))).await?;
        contacts.push(c["id"].as_str().context("contact id")?.to_string());
    }
    Ok((a, key, contacts))
}

/// A's runaway plugins that wait: the waiting scorers and a workflow on
/// `a_work` whose action hangs. Returns the install ids.
async fn arm_a(
    a: &Client,
    hooks: SocketAddr,
    guests: Vec<(&'static str, Vec<u8>)>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut installs = install_guests(a, guests).await?;
    let hang = install(
        a,
        catalog_version(a, "webhook").await?,
        json!({"url": format!("http://{hooks}/hooks/hang"), "secret": SECRET}),
        json!([format!("http:{}", hooks.ip())]),
    )
    .await?;
    installs.push(("webhook (hangs)".to_string(), hang.clone()));
    // Retried quickly: the runaway action comes back for more.
    hook_workflow(a, "runaway", "a_work", &hang, json!({"max_attempts": 5, "backoff": "1s"})).await?;
    Ok(installs)
}

/// What B's load sent: when each event was sent, by its contact's email,
/// and how long each `POST` took to be answered (ms).
struct Sent {
    at: HashMap<String, Instant>,
    /// By email: how long its `POST` took to be answered, ms.
    answered_ms: HashMap<String, f64>,
}

/// B's paced load for `duration`: one event per request, each for a new
/// contact named `<phase>-<client>-<n>@b.test`.
async fn b_load(url: &str, key: &str, phase: &str, duration: Duration) -> anyhow::Result<Sent> {
    let mut clients = tokio::task::JoinSet::new();
    for w in 0..B_CLIENTS {
        let (c, phase) = (Client::new(url, key), phase.to_string());
        clients.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 * B_CLIENTS / B_RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let started = Instant::now();
            let mut sent = Vec::new();
            while started.elapsed() < duration {
                tick.tick().await;
                let email = format!("{phase}-{w}-{}@b.test", sent.len());
                let event = json!({"email": email, "kind": "page_viewed", "properties": {"url": "/pricing"}});
                let at = Instant::now();
                let (status, body) = c.call(Method::POST, "/v1/events", Some(event)).await?;
                anyhow::ensure!(status == 202, "B's event answered {status}: {body}");
                sent.push((email, at, at.elapsed().as_secs_f64() * 1000.0));
            }
            Ok::<_, anyhow::Error>(sent)
        });
    }
    let mut sent = Sent { at: HashMap::new(), answered_ms: HashMap::new() };
    while let Some(r) = clients.join_next().await {
        for (email, at, answered) in r?? {
            sent.answered_ms.insert(email.clone(), answered);
            sent.at.insert(email, at);
        }
    }
    Ok(sent)
}

/// B's latencies (ms) by email for the events in `sent`, once every
/// webhook arrived or `patience` passed; and how many never arrived.
async fn b_latencies(
    hooks: &Hooks,
    sent: &HashMap<String, Instant>,
    patience: Duration,
) -> anyhow::Result<(HashMap<String, f64>, usize)> {
    let until = Instant::now() + patience;
    loop {
        let done = {
            let arrived = hooks.arrived.lock().map_err(|_| anyhow::anyhow!("receiver lock poisoned"))?;
            sent.keys().all(|e| arrived.contains_key(e))
        };
        if done || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrived = hooks.arrived.lock().map_err(|_| anyhow::anyhow!("receiver lock poisoned"))?;
    let latencies: HashMap<String, f64> = sent
        .iter()
        .filter_map(|(email, at)| {
            arrived.get(email).map(|got| (email.clone(), got.duration_since(*at).as_secs_f64() * 1000.0))
        })
        .collect();
    let missing = sent.len() - latencies.len();
    Ok((latencies, missing))
}

/// Wait until `tenant` has no unprocessed events and no workflow run still
/// going (A's runaway runs retry their hanging action for seconds).
async fn quiet(server: &Server, tenant: &str) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let (total, processed) = server.state.store.event_counts(tenant).await?;
        let running: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM workflow_runs WHERE tenant_id = $1 AND status = 'waiting'")
                .bind(tenant)
                .fetch_one(server.state.store.pool())
                .await?;
        if processed >= total && running == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < until, "tenant A's events and runs were not done within 5 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What A's senders got.
#[derive(Default)]
struct Flood {
    accepted: AtomicU64,
    throttled: AtomicU64,
    refused: AtomicU64,
}

/// A's senders: batches of `page_viewed` (scored by every runaway scorer)
/// and `a_work` (enrolls in the runaway workflow) events, as fast as the
/// server takes them (or, with `per_sec`, at that rate in all, the senders
/// staggered), until `stop`: after a `429` a sender waits what
/// `Retry-After` says, as an HTTP client should (one that does not spends
/// the server's CPU on refusals, which is the API's concern, not the
/// plugins').
fn a_flood(
    url: &str,
    key: &str,
    contacts: Arc<Vec<String>>,
    per_sec: Option<u32>,
    stop: Arc<AtomicBool>,
    flood: Arc<Flood>,
) -> tokio::task::JoinSet<()> {
    let mut senders = tokio::task::JoinSet::new();
    // Each sender's time between batches when paced.
    let every = per_sec.map(|r| Duration::from_secs_f64((A_SENDERS * A_BATCH) as f64 / f64::from(r)));
    for w in 0..A_SENDERS {
        let (http, url, key) = (reqwest::Client::new(), format!("{url}/v1/events"), key.to_string());
        let (contacts, stop, flood) = (contacts.clone(), stop.clone(), flood.clone());
        let mut pace = every.map(|every| {
            let first = tokio::time::Instant::now() + every.mul_f64(w as f64 / A_SENDERS as f64);
            let mut pace = tokio::time::interval_at(first, every);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            pace
        });
        senders.spawn(async move {
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                if let Some(pace) = &mut pace {
                    pace.tick().await;
                }
                let events: Vec<Value> = (0..A_BATCH)
                    .map(|i| {
                        n += 1;
                        let kind = if i % 2 == 0 { "page_viewed" } else { "a_work" };
                        json!({"contact_id": contacts[n % contacts.len()], "kind": kind})
                    })
                    .collect();
                let sent = http.post(&url).bearer_auth(&key).json(&json!({"events": events})).send().await;
                let (counter, pause) = match &sent {
                    Ok(r) if r.status().as_u16() == 202 => (&flood.accepted, Duration::ZERO),
                    Ok(r) if r.status().as_u16() == 429 => {
                        let secs = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(1);
                        (&flood.throttled, Duration::from_secs(secs.min(5)))
                    }
                    _ => (&flood.refused, Duration::from_millis(100)),
                };
                counter.fetch_add(A_BATCH as u64, Ordering::Relaxed);
                if let Ok(r) = sent {
                    // Read the answer: the connection is then reused.
                    let _ = r.bytes().await;
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        });
    }
    senders
}

/// Percentile `p` of `v` in ms, to 0.1 ms.
fn ms(v: &[f64], p: f64) -> f64 {
    (percentile(v.to_vec(), p) * 10.0).round() / 10.0
}

/// Where B's load goes and how it is measured.
struct BLoad<'a> {
    url: String,
    key: String,
    tenant: String,
    hooks: &'a Hooks,
    store: &'a Store,
    /// How long to wait for a phase's last webhooks.
    patience: Duration,
}

/// Where one of B's events spent its time, ms: from accepted to the
/// enrollment decision (the pipeline's pickup, reads and scoring), from
/// there to its step's start (the pipeline's commit and the runner's
/// pickup), and the step (the webhook call).
const STAGES: [&str; 3] = ["accepted_to_enrolled_ms", "enrolled_to_step_ms", "step_ms"];

/// Each of a phase's events' stages (see [`STAGES`]), by contact email,
/// read from the store: the event's `received_at`, its run's
/// `enrolled_at`, its step's `started_at` and `duration_us` (µs, where
/// `finished_at` has whole milliseconds of the business clock).
async fn b_stages(load: &BLoad<'_>, phase: &str) -> anyhow::Result<HashMap<String, [f64; 3]>> {
    let rows = sqlx::query(
        "SELECT c.email, e.received_at, r.enrolled_at, s.started_at, s.duration_us \
         FROM workflow_runs r JOIN contacts c ON c.id = r.contact_id \
         JOIN events e ON e.id = r.trigger_event_id JOIN run_steps s ON s.run_id = r.id \
         WHERE r.tenant_id = $1 AND c.email LIKE $2",
    )
    .bind(&load.tenant)
    .bind(format!("{phase}-%"))
    .fetch_all(load.store.pool())
    .await?;
    let mut stages = HashMap::with_capacity(rows.len());
    for row in rows {
        use sqlx::Row;
        let (email, received, enrolled, started): (String, i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let duration_us: Option<i64> = row.try_get(4)?;
        let step = duration_us.map_or(f64::NAN, |us| us as f64 / 1000.0);
        stages.insert(email, [(enrolled - received) as f64, (started - enrolled) as f64, step]);
    }
    Ok(stages)
}

/// CPU ticks this process's threads have used, by thread name (tokio's
/// workers, SQLite's connection threads, the background runtime, ...):
/// where a phase's CPU went. Threads that ended are not counted.
fn thread_ticks() -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let stat = task.path().join("stat");
        let stat = stat.to_string_lossy();
        if let (Some(name), Some(ticks)) = (proc_comm(&stat), proc_ticks(&stat, false)) {
            *by_name.entry(name).or_default() += ticks;
        }
    }
    by_name
}

/// Cores busy per thread name between two [`thread_ticks`] over `elapsed`
/// (the benchmark's own clients and receiver included: they run in this
/// process, on tokio's workers).
fn cores_used(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, elapsed: Duration) -> Value {
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let mut cores = serde_json::Map::new();
    let mut total = 0.0;
    for (name, ticks) in after {
        let used = ticks.saturating_sub(before.get(name).copied().unwrap_or(0)) as f64 / ticks_per_s;
        let share = used / elapsed.as_secs_f64().max(0.001);
        total += share;
        cores.insert(name.clone(), json!((share * 100.0).round() / 100.0));
    }
    cores.insert("total".into(), json!((total * 100.0).round() / 100.0));
    Value::Object(cores)
}

/// One phase of B's load, measured.
struct Phase {
    sent: Sent,
    /// Cores this process used while B's load ran, by thread name.
    cores: Value,
    /// Webhook latencies, ms, of the events whose webhook came, by email.
    latencies: HashMap<String, f64>,
    /// Events whose webhook did not come within the patience.
    missing: usize,
    /// Each event's stages (see [`STAGES`]), by email.
    stages: HashMap<String, [f64; 3]>,
}

impl Phase {
    /// B's load for `duration`, then its webhooks, waited for up to the
    /// load's patience.
    async fn run(load: &BLoad<'_>, name: &str, duration: Duration) -> anyhow::Result<Phase> {
        let (ticks, started) = (thread_ticks(), Instant::now());
        let sent = b_load(&load.url, &load.key, name, duration).await?;
        let cores = cores_used(&ticks, &thread_ticks(), started.elapsed());
        let (latencies, missing) = b_latencies(load.hooks, &sent.at, load.patience).await?;
        let stages = b_stages(load, name).await?;
        Ok(Phase { sent, cores, latencies, missing, stages })
    }

    /// Latencies with the missing events counted as infinitely late (so
    /// with more than 1% missing the p99 is not finite: `null` in JSON).
    fn all(&self) -> Vec<f64> {
        let mut all: Vec<f64> = self.latencies.values().copied().collect();
        all.extend(std::iter::repeat_n(f64::INFINITY, self.missing));
        all
    }

    fn p99(&self) -> f64 {
        percentile(self.all(), 0.99)
    }

    /// Webhook latencies, how long the `POST`s took to be answered, and
    /// where the slowest 1% of events spent their time: the mean of each
    /// stage over them (the stages of a p99 do not add up to it).
    fn summary(&self) -> Value {
        let all = self.all();
        let answered: Vec<f64> = self.sent.answered_ms.values().copied().collect();
        let p99 = self.p99();
        let slowest: Vec<&String> = self.latencies.iter().filter(|(_, l)| **l >= p99).map(|(e, _)| e).collect();
        let mean = |v: Vec<f64>| {
            let v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
            (v.iter().sum::<f64>() / v.len().max(1) as f64 * 10.0).round() / 10.0
        };
        let mut tail = serde_json::Map::new();
        tail.insert("events".into(), json!(slowest.len()));
        tail.insert(
            "post_answered_ms".into(),
            json!(mean(slowest.iter().filter_map(|e| self.sent.answered_ms.get(*e).copied()).collect())),
        );
        for (i, stage) in STAGES.iter().enumerate() {
            let v = slowest.iter().filter_map(|e| self.stages.get(*e).map(|s| s[i])).collect();
            tail.insert((*stage).into(), json!(mean(v)));
        }
        let mut stages = serde_json::Map::new();
        for (i, stage) in STAGES.iter().enumerate() {
            let v: Vec<f64> = self.stages.values().map(|s| s[i]).filter(|x| x.is_finite()).collect();
            stages.insert((*stage).into(), json!({"p50": ms(&v, 0.5), "p99": ms(&v, 0.99)}));
        }
        json!({
            "sent": self.sent.at.len(), "delivered": self.latencies.len(), "missing": self.missing,
            "p50_ms": ms(&all, 0.5), "p99_ms": ms(&all, 0.99), "max_ms": ms(&all, 1.0),
            "post_answered_p50_ms": ms(&answered, 0.5),
            "post_answered_p99_ms": ms(&answered, 0.99),
            "stages": stages,
            "slowest_1pct_mean": tail,
            "cores_used": self.cores,
        })
    }

    /// This phase's p99 over `base`'s, to 0.01 (not finite when events
    /// went missing).
    fn ratio_to(&self, base: &Phase) -> f64 {
        (self.p99() / base.p99() * 100.0).round() / 100.0
    }
}

/// B's latencies (ms, missing events infinite) in each of one round's
/// phases, in [`PHASES`] order.
type RoundLatencies = [Vec<f64>; 5];

/// The phases' names in the benchmark's output, in order: B alone, then
/// beside A flooding, waiting and burning, then alone again (the control:
/// see [`run_round`]).
const PHASES: [&str; 5] = ["alone", "flooding", "waiting", "burning", "alone_after"];

/// Run the benchmark [`Options::rounds`] times, each on a new server in
/// its own directory under `dir`, printing each round's figure and, with
/// more than one, the rounds pooled.
pub async fn run(dir: &std::path::Path, quick: bool, options: Options) -> anyhow::Result<()> {
    let rounds = options.rounds.max(1);
    let mut all = Vec::with_capacity(rounds as usize);
    for round in 1..=rounds {
        let dir = dir.join(format!("round-{round}"));
        std::fs::create_dir_all(&dir)?;
        all.push(run_round(&dir, quick, options, round).await?);
    }
    if rounds > 1 {
        emit(pooled(&all, options));
    }
    Ok(())
}

/// The rounds' figures together: each phase's p99 over every round's
/// events, its ratio to B alone pooled the same way, and the per-round
/// ratios with their median.
fn pooled(rounds: &[RoundLatencies], options: Options) -> Value {
    let p99 = |v: Vec<f64>| ms(&v, 0.99);
    let ratio = |a: f64, b: f64| (a / b * 100.0).round() / 100.0;
    let alone_p99 = p99(rounds.iter().flat_map(|r| r[0].iter().copied()).collect());
    let mut phases = serde_json::Map::new();
    for (i, phase) in PHASES.iter().enumerate() {
        let pooled_p99 = p99(rounds.iter().flat_map(|r| r[i].iter().copied()).collect());
        let per_round: Vec<f64> = rounds.iter().map(|r| ratio(p99(r[i].clone()), p99(r[0].clone()))).collect();
        phases.insert(
            (*phase).into(),
            json!({
                "p99_ms": pooled_p99,
                "ratio": ratio(pooled_p99, alone_p99),
                "median_round_ratio": median(per_round.clone()),
                "ratio_by_round": per_round,
            }),
        );
    }
    json!({
        "bench": "noisy_neighbour_rounds",
        "rounds": rounds.len(),
        "database": format!("{:?}", options.database).to_lowercase(),
        "a_events_per_sec": options.a_events_per_sec,
        "phases": phases,
        "p99_ratio": phases["burning"]["ratio"],
        "goal": 1.5,
    })
}

/// One round: a new server, B alone, then the three noisy phases, then B
/// alone again once A has stopped (its senders, its plugins removed, its
/// backlog and runs worked off); prints the round's figure and returns B's
/// latencies in each phase.
///
/// The last phase is a control, not a goal: B's p99 alone *after* the
/// noisy phases, on the same server, over B's p99 alone before. The noisy
/// phases run later than the first alone phase, on a database that A's
/// flood has grown (tens of thousands of events) and on a shared VM whose
/// speed drifts; what of a noisy phase's ratio is that, and not A, shows
/// in this ratio.
async fn run_round(dir: &std::path::Path, quick: bool, options: Options, round: u32) -> anyhow::Result<RoundLatencies> {
    let Options { database, a_events_per_sec, rounds } = options;
    let waiting_guests = runaway_guests(&WAITING_SCORERS)?;
    let burning_guests = runaway_guests(&BURNING_SCORERS)?;
    let receiver = start_receiver().await?;
    let postgres = match database {
        Database::Sqlite => None,
        Database::Postgres => Some(TempPostgres::create().await?),
    };
    let server = start(dir, postgres.as_ref()).await?;
    let url = server.url();
    let b_key = set_up_b(&server, receiver.addr).await?;
    let (a, a_key, a_contacts) = set_up_a(&server).await?;
    let a_tenant = a.ok(Method::GET, "/v1/tenant", None).await?["id"].as_str().context("tenant id")?.to_string();
    let duration = if quick { Duration::from_secs(4) } else { Duration::from_secs(10) };
    let patience = if quick { Duration::from_secs(20) } else { Duration::from_secs(60) };
    let b_tenant = Client::new(&url, &b_key).ok(Method::GET, "/v1/tenant", None).await?["id"]
        .as_str()
        .context("tenant id")?
        .to_string();
    let b = BLoad {
        url: url.clone(),
        key: b_key,
        tenant: b_tenant,
        hooks: &receiver.hooks,
        store: &server.state.store,
        patience,
    };
    // Creating A's contacts queued a `contact_created` event each: B's
    // first phase must not run beside them.
    quiet(&server, &a_tenant).await?;

    // Warm-up (connections, SQLite pages), then B alone.
    Phase::run(&b, "warm", Duration::from_secs(1)).await?;
    let alone = Phase::run(&b, "alone", duration).await?;

    // A floods, with no plugin yet: a second in, B's load starts.
    let (_, a_processed_before) = server.state.store.event_counts(&a_tenant).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let flood = Arc::new(Flood::default());
    let a_started = Instant::now();
    let mut senders = a_flood(&url, &a_key, Arc::new(a_contacts), a_events_per_sec, stop.clone(), flood.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flooding = Phase::run(&b, "flooding", duration).await?;

    // A's plugins that wait join; a second later they are stuck.
    let mut a_installs = arm_a(&a, receiver.addr, waiting_guests).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = Phase::run(&b, "waiting", duration).await?;

    // A's scorers that burn CPU join A's next rounds.
    a_installs.extend(install_guests(&a, burning_guests).await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burning = Phase::run(&b, "burning", duration).await?;
    stop.store(true, Ordering::Relaxed);
    while senders.join_next().await.is_some() {}
    let a_for = a_started.elapsed();
    let (a_total, a_processed) = server.state.store.event_counts(&a_tenant).await?;
    let a_stats = install_failures(&a, &a_installs).await?;

    // A stops: its plugins go, its backlog and its runs (failing now for
    // want of their action) are worked off, and B runs alone.
    for (_, id) in &a_installs {
        a.ok(Method::DELETE, &format!("/v1/installs/{id}"), None).await?;
    }
    quiet(&server, &a_tenant).await?;
    let alone_after = Phase::run(&b, "alone_after", duration).await?;

    let (causes, by_install) = a_stats;
    emit(json!({
        "bench": "noisy_neighbour",
        "round": round,
        "rounds": rounds.max(1),
        "what": format!(
            "tenant B: {B_RATE} single events/s for {} s, each scored (rules-scorer) and posted by a one-step webhook \
             workflow; latency POST sent → webhook received. Alone; while tenant A floods batches to {A_CONTACTS} \
             contacts, first with no plugin, then with runaway plugins that wait (a scorer sleeping in a host call, a workflow action hanging) to \
             their 500 ms deadline; and while A's plugins also burn CPU (loop, yielding loop, memory hog); then alone again \
             once A has stopped (a control). {:?}, \
             16 calls at once per tenant, {TENANT_EVENTS_PER_SEC} events/s per tenant, breaker off",
            duration.as_secs(),
            database
        ),
        "database": format!("{database:?}").to_lowercase(),
        // `null`: as fast as A's rate limit lets its senders post.
        "a_events_per_sec": a_events_per_sec,
        "b_alone": alone.summary(),
        "b_with_a_flooding": flooding.summary(),
        "b_with_a_waiting": waiting.summary(),
        "b_with_a_burning": burning.summary(),
        "b_alone_after": alone_after.summary(),
        "p99_ratio_flooding": flooding.ratio_to(&alone),
        "p99_ratio_waiting": waiting.ratio_to(&alone),
        "p99_ratio": burning.ratio_to(&alone),
        "p99_ratio_alone_after": alone_after.ratio_to(&alone),
        "goal": 1.5,
        "a": {
            "flood_s": (a_for.as_secs_f64() * 10.0).round() / 10.0,
            "events_accepted": flood.accepted.load(Ordering::Relaxed),
            "events_throttled_429": flood.throttled.load(Ordering::Relaxed),
            "events_refused": flood.refused.load(Ordering::Relaxed),
            "events_processed": a_processed - a_processed_before,
            "events_still_queued": a_total - a_processed,
            "failed_calls_by_cause": causes,
            "failed_calls_by_install": by_install,
            "hung_action_requests": receiver.hooks.hung.load(Ordering::Relaxed),
        },
    }));
    server.shutdown().await;
    drop(postgres);
    Ok([alone.all(), flooding.all(), waiting.all(), burning.all(), alone_after.all()])
}

/// The failed calls of A's installs, by cause in all and by install.
async fn install_failures(
    a: &Client,
    installs: &[(String, String)],
) -> anyhow::Result<(BTreeMap<String, u64>, serde_json::Map<String, Value>)> {
    let mut causes: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_install = serde_json::Map::new();
    for (name, id) in installs {
        let stats = a.ok(Method::GET, &format!("/v1/installs/{id}"), None).await?;
        let failed = stats["stats"]["failed"].as_object().cloned().unwrap_or_default();
        let failed: serde_json::Map<String, Value> =
            failed.into_iter().filter(|(_, n)| n.as_u64() != Some(0)).collect();
        for (cause, n) in &failed {
            *causes.entry(cause.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
        by_install.insert(name.clone(), Value::Object(failed));
    }
    Ok((causes, by_install))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_rounds_take_each_phases_p99_over_every_rounds_events() {
        let ms = |scale: f64| (1..=100).map(|i| f64::from(i) * scale).collect::<Vec<f64>>();
        // Three rounds: B alone 1..100 ms each time; beside A twice, four
        // and three times that.
        let rounds: Vec<RoundLatencies> =
            [2.0, 4.0, 3.0].iter().map(|&k| [ms(1.0), ms(1.0), ms(1.0), ms(k), ms(1.0)]).collect();
        let line = pooled(&rounds, Options { rounds: 3, ..Options::default() });
        assert_eq!(line["rounds"], 3);
        let burning = &line["phases"]["burning"];
        // 300 events each: the p99 is the 4th slowest, 99 ms alone and
        // 388 ms (400, 396, 392, 388) beside A.
        assert_eq!(line["phases"]["alone"]["p99_ms"], 99.0);
        assert_eq!(burning["p99_ms"], 388.0);
        assert_eq!(burning["ratio"], 3.92);
        assert_eq!(line["p99_ratio"], 3.92);
        assert_eq!(burning["ratio_by_round"], json!([2.0, 4.0, 3.0]));
        assert_eq!(burning["median_round_ratio"], 3.0);
        assert_eq!(line["phases"]["flooding"]["ratio"], 1.0);
        assert_eq!(line["phases"]["alone_after"]["ratio"], 1.0);
    }
}
