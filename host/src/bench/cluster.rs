//! `cluster`: events/s with 1, 2 and 3 `cairn serve` nodes on one
//! PostgreSQL database (`cairn bench --cluster-only`; needs PostgreSQL at
//! `CAIRN_TEST_POSTGRES_URL`, by default `postgres://postgres@127.0.0.1:5432`).
//!
//! For each node count a fresh database is created (and dropped after), the
//! nodes are started as child processes of this binary, and a few tenants,
//! each with a rules-scorer install, are set up through the first node; the
//! benchmark waits until every node runs every install. Then batches of
//! [`BATCH`] events for [`CONTACTS`] contacts are posted round-robin to the
//! nodes, [`SENDERS_PER_NODE`] requests in flight per node, and two rates
//! are measured from the first request:
//!
//! - ingest: events / time until the last `202` (every event durable);
//! - pipeline: events / time until no event in the database is unprocessed
//!   (polled every 50 ms on the same database).
//!
//! Where the time goes: the CPU used during the measured window by each
//! node, by all PostgreSQL server processes (and by the backends of this
//! database), by this process (the load generator) and by anything else on
//! the machine, each as a share of cores × wall time; what the database's
//! active backends were waiting on (sampled from `pg_stat_activity` with
//! each poll: `CPU` is running or runnable, `Lock:*` a row or transaction
//! lock, `LWLock:*`/`IO:*` the server's own contention); and how many events
//! each node's pipeline processed.
//!
//! Everything shares the machine's cores: the load generator, PostgreSQL
//! and the nodes. On a small machine more nodes add processes competing for
//! the same cores, not capacity; the CPU shares say which one ran out.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::bench::{emit, proc_comm, proc_ticks, scorer_config};
use crate::demo::Client;
use crate::store::testing::TempPostgres;

/// The admin key every node registers.
const ADMIN_KEY: &str = "bench-cluster-admin-key-0123456789";
/// Tenants, each with its own rules-scorer install and share of the contacts
/// and events. More than one, so that a single node can run several
/// pipeline lanes at once (lanes are per tenant) and one node is not held
/// back by the one-lane-per-tenant rule that more nodes would side-step.
const TENANTS: usize = 4;
/// Contacts, across the tenants.
const CONTACTS: usize = 200;
/// Events per request (the API's maximum).
const BATCH: usize = 1000;
/// Requests in flight per node.
const SENDERS_PER_NODE: usize = 2;
/// How often the database is polled for unprocessed events.
const POLL: Duration = Duration::from_millis(50);
/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;
/// Longest a node may take to answer `/healthz` (the first start on a
/// cold compile cache compiles every catalog plugin).
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest the measured load may take, per node count.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
/// Before each measurement, wait up to this long for the machine to be
/// mostly idle ([`QUIET_BUSY`]): other work on it (a build, another
/// benchmark) would take cores from the nodes and PostgreSQL. What was left
/// is reported as `other`.
const QUIET_WAIT: Duration = Duration::from_secs(60);
/// Share of all cores busy, over a second, that counts as quiet.
const QUIET_BUSY: f64 = 0.15;

/// Run the benchmark for 1, 2 and 3 nodes and print one JSON line each and
/// a summary. Ctrl-C stops it and still kills every node it started.
pub async fn run(quick: bool) -> anyhow::Result<()> {
    tokio::select! {
        result = run_all(quick) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (the nodes were stopped)"),
    }
}

async fn run_all(quick: bool) -> anyhow::Result<()> {
    let events = if quick { 6_000 } else { 60_000 };
    let patience = if quick { Duration::from_secs(10) } else { QUIET_WAIT };
    let root = TempDir::new()?;
    let mut results: Vec<Value> = Vec::new();
    for nodes in 1..=3 {
        let line = measure(nodes, events, patience, &root.0).await.with_context(|| format!("cluster of {nodes}"))?;
        emit(line.clone());
        results.push(line);
    }
    let rate = |i: usize, key: &str| results.get(i).and_then(|r| r[key].as_f64()).unwrap_or(f64::NAN);
    let speedup = |key: &str| {
        json!({
            "2_nodes": round2(rate(1, key) / rate(0, key)),
            "3_nodes": round2(rate(2, key) / rate(0, key)),
        })
    };
    let busy: Vec<Value> = results.iter().map(|r| r["cpu"]["machine_busy"].clone()).collect();
    let other: Vec<Value> = results.iter().map(|r| r["cpu"]["other"].clone()).collect();
    let cost: Vec<Value> = results.iter().map(|r| r["cpu_ms_per_1000_events"]["total"].clone()).collect();
    emit(json!({
        "bench": "cluster_summary",
        "what": "speedup against 1 node, same machine, same load; per run (1, 2, 3 nodes): share of all cores busy, share used by other programs, CPU ms per 1000 events of nodes + PostgreSQL + load generator",
        "events": events,
        "cores": cores(),
        "ingest_speedup": speedup("ingest_per_sec"),
        "pipeline_speedup": speedup("pipeline_per_sec"),
        "machine_busy": busy,
        "other_busy": other,
        "cpu_ms_per_1000_events": cost,
    }));
    Ok(())
}

/// One node count: fresh database, nodes, tenants, load, figures.
async fn measure(n: usize, events: usize, patience: Duration, root: &Path) -> anyhow::Result<Value> {
    let db = TempPostgres::create().await?;
    let mut nodes = Nodes::default();
    // One at a time: the first applies the migrations and stores the
    // catalog, the others find them done.
    for i in 0..n {
        nodes.start(db.url(), &root.join(format!("node{i}"))).await?;
    }
    let tenants = set_up(&nodes.urls[0]).await?;
    wait_all_loaded(&nodes.urls, &tenants).await?;

    let mut conn = PgConnection::connect(db.url()).await.context("connecting to the benchmark database")?;
    // `contact_created` events of the set-up: let them drain first.
    let drain = Instant::now();
    while unprocessed(&mut conn).await? > 0 {
        if drain.elapsed() > Duration::from_secs(120) {
            bail!("the set-up's events were not processed within 2 minutes");
        }
        tokio::time::sleep(POLL).await;
    }

    // The requests, ready before the clock starts: the load generator only
    // sends bytes.
    let batches = events / BATCH;
    let bodies: Vec<(usize, Bytes)> = (0..batches).map(|b| batch(b, &tenants)).collect::<anyhow::Result<_>>()?;
    let bodies = Arc::new(bodies);
    let keys: Arc<Vec<String>> = Arc::new(tenants.iter().map(|t| t.key.clone()).collect());
    let processed_before = processed_by_node(&nodes.urls).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;

    let busy_before = wait_quiet(patience).await;
    let cpu_before = CpuSample::take(&nodes.pids(), db.name());
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for (k, url) in nodes.urls.iter().enumerate() {
        for s in 0..SENDERS_PER_NODE {
            let mine: Vec<usize> = (0..batches).filter(|b| b % n == k && (b / n) % SENDERS_PER_NODE == s).collect();
            let (http, url, bodies, keys) = (http.clone(), format!("{url}/v1/events"), bodies.clone(), keys.clone());
            senders.spawn(async move {
                for b in mine {
                    let (tenant, body) = &bodies[b];
                    let resp = http
                        .post(&url)
                        .bearer_auth(&keys[*tenant])
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .with_context(|| format!("POST {url}"))?;
                    let status = resp.status().as_u16();
                    if status != 202 {
                        let text = resp.text().await.unwrap_or_default();
                        bail!("POST {url} answered {status}: {text}");
                    }
                }
                Ok::<_, anyhow::Error>(Instant::now())
            });
        }
    }

    let mut waits = WaitSamples::default();
    let mut last_accepted: Option<Instant> = None;
    let processed_in = loop {
        while let Some(done) = senders.try_join_next() {
            let at = done.context("a sender panicked")??;
            last_accepted = Some(last_accepted.map_or(at, |l| l.max(at)));
        }
        waits.sample(&mut conn, db.name()).await?;
        let left = unprocessed(&mut conn).await?;
        if senders.is_empty() && left == 0 {
            break started.elapsed();
        }
        if started.elapsed() > RUN_TIMEOUT {
            bail!("{left} events still unprocessed after {RUN_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    };
    let cpu_after = CpuSample::take(&nodes.pids(), db.name());
    let accepted_in = last_accepted.map_or(processed_in, |at| at - started);
    let processed_after = processed_by_node(&nodes.urls).await?;
    // Backends publish their table counters when idle, within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows = table_rows(&mut conn, (batches * BATCH) as f64).await?;
    // Transactions PostgreSQL aborted to break a deadlock (each fails a
    // pipeline lane, whose events are claimed and processed again).
    let (deadlocks, rollbacks): (i64, i64) =
        sqlx::query_as("SELECT deadlocks, xact_rollback FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(&mut conn)
            .await?;
    let _ = conn.close().await;
    // Nodes first: the database is dropped under no one.
    drop(nodes);
    drop(db);

    let total = (batches * BATCH) as f64;
    let wall = processed_in.as_secs_f64();
    let capacity = cores() as f64 * wall * TICKS_PER_SEC;
    let share = |ticks: u64| round2(ticks as f64 / capacity);
    let per_1000 = |ticks: u64| (ticks as f64 / TICKS_PER_SEC * 1000.0 / total * 1000.0).round();
    let node_ticks: Vec<u64> =
        cpu_after.nodes.iter().zip(&cpu_before.nodes).map(|(a, b)| a.saturating_sub(*b)).collect();
    let nodes_total: u64 = node_ticks.iter().sum();
    let postgres = cpu_after.postgres.saturating_sub(cpu_before.postgres);
    let load = cpu_after.me.saturating_sub(cpu_before.me);
    let machine_busy = cpu_after.machine_busy.saturating_sub(cpu_before.machine_busy);
    let machine_total = cpu_after.machine_total.saturating_sub(cpu_before.machine_total).max(1);
    let busy_share = machine_busy as f64 / machine_total as f64;
    let other = busy_share - (nodes_total + postgres + load) as f64 / capacity;
    Ok(json!({
        "bench": "cluster",
        "what": format!(
            "{n} cairn serve node(s) on one PostgreSQL; {} tenants × rules-scorer, {CONTACTS} contacts; batches of \
             {BATCH} posted round-robin, {SENDERS_PER_NODE} in flight per node; load generator, PostgreSQL and \
             nodes on the same {} cores",
            TENANTS,
            cores()
        ),
        "nodes": n,
        "events": total as u64,
        "ingest_per_sec": (total / accepted_in.as_secs_f64()).round(),
        "pipeline_per_sec": (total / wall).round(),
        "ingest_s": round2(accepted_in.as_secs_f64()),
        "pipeline_s": round2(wall),
        "processed_by_node": processed_after.iter().zip(&processed_before).map(|(a, b)| a.saturating_sub(*b)).collect::<Vec<_>>(),
        "cpu": {
            "what": "share of cores × pipeline wall time",
            "nodes": node_ticks.iter().map(|t| share(*t)).collect::<Vec<_>>(),
            "nodes_total": share(nodes_total),
            "postgres": share(postgres),
            "postgres_this_db_backends": share(cpu_after.postgres_db.saturating_sub(cpu_before.postgres_db)),
            "load_generator": share(load),
            "other": round2(other.max(0.0)),
            "machine_busy": round2(busy_share),
            "machine_busy_before": round2(busy_before),
        },
        // What an event cost, whoever else used the machine: CPU ms per
        // 1000 events processed (ingest included).
        "cpu_ms_per_1000_events": {
            "nodes": per_1000(nodes_total),
            "postgres": per_1000(postgres),
            "load_generator": per_1000(load),
            "total": per_1000(nodes_total + postgres + load),
        },
        "pg_active_backends": waits.averages(),
        "db_rows_per_event": rows,
        "pg_deadlocks": deadlocks,
        "pg_rollbacks": rollbacks,
    }))
}

/// A tenant of the benchmark.
struct Tenant {
    key: String,
    install: String,
    contacts: Vec<String>,
}

/// Create the tenants through `url`: each a rules-scorer install and its
/// share of the contacts.
async fn set_up(url: &str) -> anyhow::Result<Vec<Tenant>> {
    let admin = Client::new(url, ADMIN_KEY);
    let mut tenants = Vec::new();
    for t in 0..TENANTS {
        let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": format!("cluster-{t}")}))).await?;
        let key = created["api_key"].as_str().context("tenant key")?.to_string();
        let client = Client::new(url, &key);
        let plugins = client.ok(Method::GET, "/v1/plugins", None).await?;
        let scorer = plugins["items"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == "rules-scorer"))
            .map(|p| p["id"].clone())
            .context("rules-scorer is not in the catalog")?;
        let body = json!({"plugin_version_id": scorer, "config": scorer_config()});
        let install = client.ok(Method::POST, "/v1/installs", Some(body)).await?;
        let install = install["id"].as_str().context("install id")?.to_string();
        let mut contacts = Vec::new();
        for i in 0..CONTACTS / TENANTS {
            let body = json!({"email": format!("lead{i}@tenant{t}.example.com"), "properties": {"job_title": if i % 5 == 0 { "VP Sales" } else { "Engineer" }}});
            let c = client.ok(Method::POST, "/v1/contacts", Some(body)).await?;
            contacts.push(c["id"].as_str().context("contact id")?.to_string());
        }
        tenants.push(Tenant { key, install, contacts });
    }
    Ok(tenants)
}

/// Wait until every node runs every tenant's install (the others learn of
/// it through `LISTEN/NOTIFY` and compile it themselves).
async fn wait_all_loaded(urls: &[String], tenants: &[Tenant]) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    for url in urls {
        for t in tenants {
            let client = Client::new(url, &t.key);
            loop {
                let got = client.ok(Method::GET, &format!("/v1/installs/{}", t.install), None).await?;
                if !got["running_version_id"].is_null() {
                    break;
                }
                if Instant::now() > until {
                    bail!("node {url} did not load install {} within 60 s", t.install);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Ok(())
}

/// Request body `b`: [`BATCH`] events of one tenant, spread over its
/// contacts; mostly page views (a quarter of them of the pricing page),
/// some email opens. Returns the tenant's index and the JSON.
fn batch(b: usize, tenants: &[Tenant]) -> anyhow::Result<(usize, Bytes)> {
    let t = b % tenants.len();
    let contacts = &tenants[t].contacts;
    let round = b / tenants.len();
    let events: Vec<Value> = (0..BATCH)
        .map(|i| {
            let contact = &contacts[(round * BATCH + i) % contacts.len()];
            if i % 10 == 9 {
                json!({"contact_id": contact, "kind": "email_opened"})
            } else {
                let url = if i % 4 == 0 { "/pricing" } else { "/blog/post" };
                json!({"contact_id": contact, "kind": "page_viewed", "properties": {"url": url}})
            }
        })
        .collect();
    Ok((t, Bytes::from(serde_json::to_vec(&json!({"events": events}))?)))
}

async fn unprocessed(conn: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE processed = 0").fetch_one(conn).await?)
}

/// What PostgreSQL did to the busiest tables over the database's life (the
/// set-up is a small part), per benchmark event: rows read (by index or
/// scan), inserted, updated (of which HOT, without index writes).
async fn table_rows(conn: &mut PgConnection, events: f64) -> anyhow::Result<Value> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0), n_tup_ins, n_tup_upd, \
         n_tup_hot_upd FROM pg_stat_user_tables WHERE relname IN ('events', 'contacts', 'score_changes')",
    )
    .fetch_all(conn)
    .await?;
    let per = |n: i64| round2(n as f64 / events);
    let mut out = serde_json::Map::new();
    for (table, read, inserted, updated, hot) in rows {
        out.insert(
            table,
            json!({"read": per(read), "inserted": per(inserted), "updated": per(updated), "hot_updated": per(hot)}),
        );
    }
    Ok(Value::Object(out))
}

/// `cairn_events_processed_total` of each node.
async fn processed_by_node(urls: &[String]) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for url in urls {
        let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
        let n = text
            .lines()
            .find_map(|l| l.strip_prefix("cairn_events_processed_total "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("{url}/metrics has no cairn_events_processed_total"))?;
        out.push(n);
    }
    Ok(out)
}

/// What the database's active backends were doing, sampled with each poll.
#[derive(Default)]
struct WaitSamples {
    samples: u64,
    counts: std::collections::BTreeMap<String, u64>,
}

impl WaitSamples {
    async fn sample(&mut self, conn: &mut PgConnection, database: &str) -> anyhow::Result<()> {
        let rows: Vec<(Option<String>, Option<String>, i64)> = sqlx::query_as(
            "SELECT wait_event_type, wait_event, COUNT(*) FROM pg_stat_activity \
             WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid() GROUP BY 1, 2",
        )
        .bind(database)
        .fetch_all(conn)
        .await?;
        self.samples += 1;
        for (kind, event, count) in rows {
            let key = match (kind, event) {
                (None, _) => "CPU".to_string(),
                (Some(k), Some(e)) => format!("{k}:{e}"),
                (Some(k), None) => k,
            };
            *self.counts.entry(key).or_default() += count as u64;
        }
        Ok(())
    }

    /// Average active backends per sample, by what they waited on.
    fn averages(&self) -> Value {
        let samples = self.samples.max(1) as f64;
        let mut out = serde_json::Map::new();
        out.insert("samples".into(), json!(self.samples));
        let mut sorted: Vec<(&String, &u64)> = self.counts.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1));
        for (key, count) in sorted {
            out.insert(key.clone(), json!(round2(*count as f64 / samples)));
        }
        Value::Object(out)
    }
}

/// CPU ticks used so far: by each node, by PostgreSQL (every process named
/// `postgres`, with the children they reaped), by the backends serving
/// `database`, by this process; and by the whole machine.
struct CpuSample {
    nodes: Vec<u64>,
    postgres: u64,
    postgres_db: u64,
    me: u64,
    machine_busy: u64,
    machine_total: u64,
}

impl CpuSample {
    fn take(nodes: &[u32], database: &str) -> CpuSample {
        let nodes = nodes.iter().map(|pid| proc_ticks(&format!("/proc/{pid}/stat"), false).unwrap_or(0)).collect();
        let me = proc_ticks("/proc/self/stat", false).unwrap_or(0);
        let (mut postgres, mut postgres_db) = (0, 0);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else { continue };
            let stat = format!("/proc/{pid}/stat");
            if proc_comm(&stat).as_deref() != Some("postgres") {
                continue;
            }
            let ticks = proc_ticks(&stat, true).unwrap_or(0);
            postgres += ticks;
            // A backend's title: `postgres: <user> <database> <client> <state>`.
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&title).split_whitespace().any(|w| w == database) {
                postgres_db += ticks;
            }
        }
        let (machine_busy, machine_total) = machine_ticks().unwrap_or((0, 0));
        CpuSample { nodes, postgres, postgres_db, me, machine_busy, machine_total }
    }
}

/// Busy and total ticks of all cores, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Wait until the machine was at most [`QUIET_BUSY`] busy over a second,
/// or `patience` has passed; returns the last share seen.
async fn wait_quiet(patience: Duration) -> f64 {
    let until = Instant::now() + patience;
    loop {
        let before = machine_ticks().unwrap_or((0, 0));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = machine_ticks().unwrap_or((0, 0));
        let busy = after.0.saturating_sub(before.0) as f64 / after.1.saturating_sub(before.1).max(1) as f64;
        if busy <= QUIET_BUSY || Instant::now() > until {
            return busy;
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The node processes; dropping this kills and reaps every one, so no node
/// outlives the benchmark (an error, a panic or Ctrl-C included).
#[derive(Default)]
struct Nodes {
    children: Vec<Child>,
    urls: Vec<String>,
}

impl Nodes {
    /// Start `cairn serve` on `database` with `data_dir` (its compile
    /// cache and log) and wait for `/healthz`.
    async fn start(&mut self, database: &str, data_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(data_dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_path = data_dir.join("server.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .args(["--db", database, "--listen", &format!("127.0.0.1:{port}"), "--tenant-events-per-sec", "0"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("CAIRN_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_LOG", "cairn=warn,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting `cairn serve`")?;
        self.children.push(child);
        let url = format!("http://127.0.0.1:{port}");
        let until = Instant::now() + START_TIMEOUT;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        loop {
            if let Ok(resp) = http.get(format!("{url}/healthz")).send().await
                && resp.status().is_success()
            {
                break;
            }
            let exited = self.children.last_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > until {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
                bail!("node on {url} did not come up ({exited:?}); its log ends:\n{}", tail.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.urls.push(url);
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The benchmark's folder (node data directories), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let dir =
            std::env::temp_dir().join(format!("cairn-bench-cluster-{}-{}", std::process::id(), crate::store::now_ms()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
