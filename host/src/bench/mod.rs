//! `cairn bench`: the numbers in the README, as JSON lines.
//!
//! - `plugin_call`: a fresh sandboxed scorer call (new Store + instantiate +
//!   call + drop, fuel and epochs on) on a contact with 20 properties and 50
//!   events, against the same scoring logic called natively (with the input
//!   copies a host would make), and their ratio.
//! - `pipeline_batched`: events/s from `POST /v1/events` batches of 1000 to
//!   "processed" (scored, triggers evaluated) on SQLite, durably.
//! - `http_single`: one event per request at concurrency 16: requests/s
//!   answered 202 (each durable), and the processing rate behind them.
//! - `hot_swap` ([`hot_swap`]): p99 event latency while an install swaps
//!   versions, against steady state.
//! - `noisy_neighbour` ([`noisy`]): a tenant's p99 event latency (event
//!   posted → its workflow's webhook received) while another tenant floods
//!   runaway plugins, against the same load alone.
//! - `startup_50`: server start with 50 installs from the compiled cache.
//! - `idle_rss`: resident memory of a fresh `cairn serve` child with 50
//!   installs, idle.
//! - `cluster` ([`cluster`], `--cluster-only`, not in the full run: it needs
//!   PostgreSQL): events/s with 1, 2 and 3 `cairn serve` nodes on one
//!   database, and where the CPU went.
//!
//! The load generator runs in this process, on the same two cores as the
//! server: figures are a floor for what a separate client would see.

pub mod cluster;
pub mod hot_swap;
pub mod noisy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::demo::Client;
use crate::engine::Clock;
use crate::runtime::invoke::ProjectedInput;
use crate::runtime::{CallScope, Runtime, RuntimeSettings};
use crate::server::{self, Server, ServerConfig};
use crate::store::{self, Store};

pub(crate) fn emit(line: Value) {
    println!("{line}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

/// The scorer config used by every benchmark.
pub fn scorer_config() -> Value {
    json!({
        "rules": [
            {"event_kind": "page_viewed", "property": "url", "contains": "/pricing", "points": 20},
            {"event_kind": "page_viewed", "points": 2, "max_times": 10},
            {"event_kind": "email_opened", "points": 5},
            {"event_kind": "form_submitted", "points": 15},
        ],
        "contact_rules": [{"property": "job_title", "contains": "VP", "points": 15}],
        "half_life_days": 30,
    })
}

/// A contact with 20 properties and 50 events, as the store holds them.
pub fn sample_input(now: i64) -> (store::Contact, Vec<store::Event>) {
    let mut properties = store::Properties::new();
    for i in 0..18 {
        properties.insert(format!("field_{i:02}"), store::Value::Text(format!("value number {i}")));
    }
    properties.insert("job_title".into(), store::Value::Text("VP Engineering".into()));
    properties.insert("region".into(), store::Value::Text("EMEA".into()));
    let contact = store::Contact {
        id: "c-bench".into(),
        tenant_id: "t-bench".into(),
        email: Some("ada@example.com".into()),
        phone: None,
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        owner: Some("alice@acme.test".into()),
        lifecycle_stage: "lead".into(),
        score: 0.0,
        tags: vec!["newsletter".into()],
        properties,
        company_id: None,
        created_at: now,
        updated_at: now,
        last_activity_at: None,
    };
    let kinds = ["page_viewed", "email_opened", "form_submitted", "page_viewed", "email_clicked"];
    let events = (0..50)
        .map(|i| {
            let mut props = store::Properties::new();
            props.insert(
                "url".into(),
                store::Value::Text(if i % 3 == 0 { "/pricing".into() } else { format!("/blog/{i}") }),
            );
            store::Event {
                id: format!("e{i}"),
                contact_id: contact.id.clone(),
                kind: kinds[i % kinds.len()].into(),
                occurred_at: now - (i as i64) * 3_600_000,
                properties: props,
                received_at: now,
                processed: true,
            }
        })
        .collect();
    (contact, events)
}

/// A fresh data folder for one benchmark, removed after it whatever happens.
async fn in_fresh_dir<F, Fut>(name: &str, bench: F) -> anyhow::Result<()>
where
    F: FnOnce(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let dir = std::env::temp_dir().join(format!("cairn-bench-{name}-{}-{}", std::process::id(), store::now_ms()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(dir.clone()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Which benchmarks [`run`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Only {
    /// Every benchmark.
    #[default]
    All,
    /// The workflow engine's figure.
    Workflows,
    /// The hot swap.
    Swap,
    /// The noisy neighbour, run as the options say.
    Noisy(noisy::Options),
}

/// Run every benchmark (or only the one `only` names).
pub async fn run(quick: bool, only: Only) -> anyhow::Result<()> {
    match only {
        Only::Swap => return in_fresh_dir("swap", |dir| async move { hot_swap::run(&dir, quick).await }).await,
        Only::Noisy(options) => {
            return in_fresh_dir("noisy", |dir| async move { noisy::run(&dir, quick, options).await }).await;
        }
        Only::Workflows => {}
        Only::All => {
            plugin_call(if quick { 500 } else { 5000 }).await?;
            in_fresh_dir("pipeline", |dir| async move { pipeline_and_http(&dir, quick).await }).await?;
            in_fresh_dir("swap", |dir| async move { hot_swap::run(&dir, quick).await }).await?;
            in_fresh_dir("noisy", |dir| async move { noisy::run(&dir, quick, noisy::Options::default()).await })
                .await?;
        }
    }
    in_fresh_dir("wf", |dir| async move { workflow_engine(&dir, quick).await }).await
}

/// Enrollments and steps per second through the workflow engine: N contacts
/// each send one event that enrolls them in a four-step workflow (three
/// tag-contact actions in wasm and an if/else); measured from the first
/// event posted to the last run completed, SQLite, system clock.
async fn workflow_engine(dir: &std::path::Path, quick: bool) -> anyhow::Result<()> {
    use reqwest::Method;
    let server = start_in(dir).await?;
    let admin = Client::new(&server.url(), "bench-admin-key-0123456789");
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": "bench-wf"}))).await?;
    let client = Client::new(&server.url(), created["api_key"].as_str().context("key")?);
    let plugins = client.ok(Method::GET, "/v1/plugins", None).await?;
    let tag_plugin = plugins["items"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "tag-contact"))
        .map(|p| p["id"].clone())
        .context("tag-contact")?;
    let install = client
        .ok(
            Method::POST,
            "/v1/installs",
            Some(json!({"plugin_version_id": tag_plugin, "config": {"tag": "enrolled"}, "grants": ["store-write"]})),
        )
        .await?;
    let tag = install["id"].clone();
    let definition = json!({
        "name": "bench",
        "trigger": {"type": "event", "kind": "bench_signup"},
        "steps": [
            {"id": "tag-1", "type": "action", "install_id": tag, "config": {"tag": "one"}},
            {"id": "check", "type": "if", "condition": {"type": "tag", "tag": "one"},
             "then": [{"id": "tag-2", "type": "action", "install_id": tag, "config": {"tag": "two"}}],
             "else": []},
            {"id": "tag-3", "type": "action", "install_id": tag, "config": {"tag": "three"}}
        ]
    });
    client.ok(Method::POST, "/v1/workflows?activate=true", Some(definition)).await?;
    let n = if quick { 300 } else { 2000 };
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let c = client.ok(Method::POST, "/v1/contacts", Some(json!({"email": format!("wf{i}@example.com")}))).await?;
        ids.push(c["id"].as_str().context("id")?.to_string());
    }
    // Let the `contact_created` events drain first: only the enrollments are timed.
    wait_processed(&server, n as u64, Duration::from_secs(600)).await?;
    let stats = &server.state.workflows.stats;
    let (steps_before, done_before) =
        (stats.steps_ok.load(Ordering::Relaxed), stats.runs_completed.load(Ordering::Relaxed));
    let started = Instant::now();
    for chunk in ids.chunks(1000) {
        let events: Vec<Value> = chunk.iter().map(|id| json!({"contact_id": id, "kind": "bench_signup"})).collect();
        client.ok(Method::POST, "/v1/events", Some(json!({"events": events}))).await?;
    }
    let mut enrolled_in = None;
    loop {
        if enrolled_in.is_none() && stats.enrolled.load(Ordering::Relaxed) >= n as u64 {
            enrolled_in = Some(started.elapsed());
        }
        if stats.runs_completed.load(Ordering::Relaxed) - done_before >= n as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("workflow runs did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let finished_in = started.elapsed();
    let steps = stats.steps_ok.load(Ordering::Relaxed) - steps_before;
    let enrolled_in = enrolled_in.unwrap_or(finished_in);
    emit(json!({
        "bench": "workflow_engine",
        "what": "events → pipeline → enrollment → 4-step runs (3 wasm actions + if) to completion, SQLite",
        "runs": n,
        "steps": steps,
        "enrollments_per_s": (n as f64 / enrolled_in.as_secs_f64()).round(),
        "steps_per_s": (steps as f64 / finished_in.as_secs_f64()).round(),
        "runs_completed_per_s": (n as f64 / finished_in.as_secs_f64()).round(),
    }));
    server.shutdown().await;
    Ok(())
}

async fn plugin_call(iterations: usize) -> anyhow::Result<()> {
    let runtime = Runtime::new(RuntimeSettings::default())?;
    let bytes = crate::catalog::PREBUILT
        .iter()
        .find(|(n, _)| *n == "rules-scorer")
        .map(|(_, b)| b.to_vec())
        .context("rules-scorer")?;
    let plugin = runtime.load(Arc::new(bytes)).await?;
    let store = Store::open("sqlite::memory:").await?;
    let now = store::now_ms();
    let (contact, events) = sample_input(now);
    let config = scorer_config().to_string();
    let scope = CallScope {
        tenant_id: "t-bench".into(),
        install_id: "i-bench".into(),
        grants: Arc::default(),
        store,
        egress: runtime.egress.clone(),
        test_mode: false,
        now,
        test_contact: None,
    };

    let mut wasm = Vec::with_capacity(iterations);
    let mut fuel = 0;
    let mut wasm_score = 0.0;
    for _ in 0..iterations {
        let started = Instant::now();
        // The projection is part of the call: the host builds the input each time.
        let input = ProjectedInput::build(&plugin, &contact, &events);
        let called = runtime.score(&plugin, scope.clone(), &config, input, "bench").await?;
        wasm.push(started.elapsed().as_nanos() as f64 / 1000.0);
        fuel = called.stats.fuel_used;
        wasm_score = called.value.value;
    }

    let native_config: rules_scorer::Config = serde_json::from_value(scorer_config())?;
    let mut native = Vec::with_capacity(iterations);
    let mut native_score = 0.0;
    for _ in 0..iterations {
        let started = Instant::now();
        // Same work a native plugin host would do: copy the inputs into the
        // plugin's own types, then score.
        let (c, e) = to_sdk(&contact, &events);
        let score = rules_scorer::score_events(&native_config, &c, &e, now);
        native.push(started.elapsed().as_nanos() as f64 / 1000.0);
        native_score = std::hint::black_box(score).value;
    }
    let (w, n) = (median(wasm.clone()), median(native));
    emit(json!({
        "bench": "plugin_call",
        "what": "fresh sandboxed rules-scorer call, 20 properties + 50 events, fuel+epochs on",
        "iterations": iterations,
        "wasm_median_us": (w * 10.0).round() / 10.0,
        "wasm_p99_us": (percentile(wasm, 0.99) * 10.0).round() / 10.0,
        "native_median_us": (n * 100.0).round() / 100.0,
        "ratio": (w / n * 10.0).round() / 10.0,
        "fuel_per_call": fuel,
        "same_score": (wasm_score - native_score).abs() < 0.01,
    }));
    Ok(())
}

fn to_sdk(contact: &store::Contact, events: &[store::Event]) -> (cairn_sdk::Contact, Vec<cairn_sdk::Event>) {
    fn value(v: &store::Value) -> cairn_sdk::Value {
        match v {
            store::Value::Null => cairn_sdk::Value::Null,
            store::Value::Bool(b) => cairn_sdk::Value::Bool(*b),
            store::Value::Number(n) => cairn_sdk::Value::Number(*n),
            store::Value::Text(s) => cairn_sdk::Value::Text(s.clone()),
            store::Value::TextList(l) => cairn_sdk::Value::TextList(l.clone()),
            store::Value::Timestamp(t) => cairn_sdk::Value::Timestamp(*t),
        }
    }
    let props = |p: &store::Properties| p.iter().map(|(k, v)| (k.clone(), value(v))).collect::<BTreeMap<_, _>>();
    let c = cairn_sdk::Contact {
        id: contact.id.clone(),
        email: contact.email.clone(),
        phone: contact.phone.clone(),
        first_name: contact.first_name.clone(),
        last_name: contact.last_name.clone(),
        owner: contact.owner.clone(),
        lifecycle_stage: contact.lifecycle_stage.clone(),
        score: contact.score,
        tags: contact.tags.clone(),
        properties: props(&contact.properties),
    };
    let e = events
        .iter()
        .map(|e| cairn_sdk::Event {
            id: e.id.clone(),
            contact_id: e.contact_id.clone(),
            kind: e.kind.clone(),
            occurred_at: e.occurred_at,
            properties: props(&e.properties),
        })
        .collect();
    (c, e)
}

pub(crate) async fn start_in(dir: &std::path::Path) -> anyhow::Result<Server> {
    let mut config = ServerConfig::in_dir(dir.to_path_buf());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.clock = Clock::System;
    config.admin_key = Some("bench-admin-key-0123456789".into());
    // The benchmarks measure capacity, not the per-tenant rate limit.
    config.runtime.limits.tenant_events_per_sec = 0;
    server::start(config).await
}

async fn wait_processed(server: &Server, target: u64, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while server.state.pipeline.stats.events.load(Ordering::Relaxed) < target {
        if started.elapsed() > timeout {
            anyhow::bail!("pipeline did not catch up within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(started.elapsed())
}

async fn pipeline_and_http(dir: &std::path::Path, quick: bool) -> anyhow::Result<()> {
    use reqwest::Method;
    let server = start_in(dir).await?;
    let admin = Client::new(&server.url(), "bench-admin-key-0123456789");
    let created = admin.ok(Method::POST, "/v1/tenants", Some(json!({"name": "bench"}))).await?;
    let client = Client::new(&server.url(), created["api_key"].as_str().context("key")?);
    let plugins = client.ok(Method::GET, "/v1/plugins", None).await?;
    let id_of = |name: &str| {
        plugins["items"].as_array().and_then(|a| a.iter().find(|p| p["name"] == name)).map(|p| p["id"].clone())
    };
    client
        .ok(
            Method::POST,
            "/v1/installs",
            Some(json!({"plugin_version_id": id_of("rules-scorer"), "config": scorer_config()})),
        )
        .await?;
    client
        .ok(
            Method::POST,
            "/v1/installs",
            Some(json!({"plugin_version_id": id_of("page-visits"), "config": {"url_contains": "/pricing", "times": 3, "within_days": 7}})),
        )
        .await?;
    let contacts = 200;
    let mut ids = Vec::new();
    for i in 0..contacts {
        let c = client.ok(Method::POST, "/v1/contacts", Some(json!({"email": format!("lead{i}@example.com")}))).await?;
        ids.push(c["id"].as_str().context("id")?.to_string());
    }
    // Creating a contact records a `contact_created` event; let those drain
    // so the counts below are the benchmark's own events.
    wait_processed(&server, contacts as u64, Duration::from_secs(600)).await?;
    let ids = Arc::new(ids);

    // Batched: 1000 events per request, 2 requests in flight.
    let batches = if quick { 10 } else { 60 };
    let base_processed = server.state.pipeline.stats.events.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    for b in 0..batches {
        let events: Vec<Value> = (0..1000)
            .map(|i| {
                let url = if i % 4 == 0 { "/pricing" } else { "/blog" };
                json!({"contact_id": ids[(b * 1000 + i) % ids.len()], "kind": "page_viewed", "properties": {"url": url}})
            })
            .collect();
        let c = Client::new(&server.url(), &client_key(&created));
        if inflight.len() >= 2 {
            inflight.join_next().await;
        }
        inflight.spawn(async move { c.ok(Method::POST, "/v1/events", Some(json!({"events": events}))).await });
    }
    while let Some(r) = inflight.join_next().await {
        r??;
    }
    let accepted_in = started.elapsed();
    let total = (batches * 1000) as u64;
    wait_processed(&server, base_processed + total, Duration::from_secs(600)).await?;
    let processed_in = started.elapsed();
    emit(json!({
        "bench": "pipeline_batched",
        "what": "POST /v1/events batches of 1000 → durable (202) → scored + triggers evaluated, SQLite",
        "events": total,
        "contacts": contacts,
        // Each batch re-scores its contacts over their declared history (the
        // rules scorer reads up to 500 events of 90 days), which grows as the
        // run goes on.
        "history_per_contact_at_end": total / contacts as u64,
        "accepted_per_s": (total as f64 / accepted_in.as_secs_f64()).round(),
        "processed_per_s": (total as f64 / processed_in.as_secs_f64()).round(),
    }));

    // One event per request, 16 concurrent clients.
    let per_client = if quick { 200 } else { 1500 };
    let base_processed = server.state.pipeline.stats.events.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for w in 0..16 {
        let c = Client::new(&server.url(), &client_key(&created));
        let ids = ids.clone();
        clients.spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let ev = json!({"contact_id": ids[(w * per_client + i) % ids.len()], "kind": "email_opened"});
                let t = Instant::now();
                let (status, body) = c.call(Method::POST, "/v1/events", Some(ev)).await?;
                if status != 202 {
                    anyhow::bail!("unexpected {status}: {body}");
                }
                latencies.push(t.elapsed().as_nanos() as f64 / 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(r) = clients.join_next().await {
        latencies.extend(r??);
    }
    let accepted_in = started.elapsed();
    let total = (16 * per_client) as u64;
    wait_processed(&server, base_processed + total, Duration::from_secs(600)).await?;
    let processed_in = started.elapsed();
    emit(json!({
        "bench": "http_single",
        "what": "one event per POST /v1/events, 16 concurrent clients, each answered after its group commit",
        "requests": total,
        "requests_per_s": (total as f64 / accepted_in.as_secs_f64()).round(),
        "p50_ms": (percentile(latencies.clone(), 0.5) / 10.0).round() / 100.0,
        "p99_ms": (percentile(latencies, 0.99) / 10.0).round() / 100.0,
        "processed_per_s": (total as f64 / processed_in.as_secs_f64()).round(),
    }));

    // 50 installs, then a restart from the compiled cache.
    for i in 0..48 {
        let (name, config) = match i % 3 {
            0 => ("rules-scorer", scorer_config()),
            1 => ("tag-contact", json!({"tag": format!("t{i}")})),
            _ => ("create-task", json!({"title": format!("task {i}")})),
        };
        client
            .ok(Method::POST, "/v1/installs", Some(json!({"plugin_version_id": id_of(name), "config": config, "grants": if name == "rules-scorer" { json!([]) } else { json!(["store-write"]) }})))
            .await?;
    }
    let installs =
        client.ok(Method::GET, "/v1/installs", None).await?["items"].as_array().map(|a| a.len()).unwrap_or(0);
    server.shutdown().await;
    let restarted = start_in(dir).await?;
    emit(json!({
        "bench": "startup_50",
        "what": "server start (open store, load catalog + installs from the compiled cache, bind)",
        "installs": installs,
        "startup_ms": restarted.startup.as_secs_f64() * 1000.0,
    }));
    restarted.shutdown().await;
    idle_rss(dir).await?;
    Ok(())
}

/// Start `cairn serve` on the benchmark's data directory (50 installs) as a
/// child process, let it settle, and read its resident memory.
async fn idle_rss(dir: &std::path::Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("CAIRN_ADMIN_KEY", "bench-admin-key-0123456789")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting `cairn serve`")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().context("child pid")?;
    let rss = rss_mib_of(&format!("/proc/{pid}/status"));
    let _ = child.kill().await;
    emit(
        json!({"bench": "idle_rss", "what": "resident memory of a fresh `cairn serve` with 50 installs, idle 2 s after start", "rss_mib": rss}),
    );
    Ok(())
}

pub(crate) fn client_key(created: &Value) -> String {
    created["api_key"].as_str().unwrap_or_default().to_string()
}

/// Resident set size from a `/proc/<pid>/status` file, MiB (Linux).
pub fn rss_mib_of(status_file: &str) -> f64 {
    std::fs::read_to_string(status_file)
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0)
}

/// The command name in a `/proc/<pid>/stat` file.
pub(crate) fn proc_comm(stat: &str) -> Option<String> {
    let text = std::fs::read_to_string(stat).ok()?;
    let (start, end) = (text.find('(')?, text.rfind(')')?);
    Some(text[start + 1..end].to_string())
}

/// utime + stime (and, with `children`, cutime + cstime) from a
/// `/proc/<pid>/stat` file, in clock ticks.
pub(crate) fn proc_ticks(stat: &str, children: bool) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // Fields after the command name, which may hold spaces: state is field 3,
    // utime 14, stime 15, cutime 16, cstime 17.
    let rest: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<i64>().ok()).map(|v| v.max(0) as u64);
    let own = field(14)? + field(15)?;
    Some(if children { own + field(16)? + field(17)? } else { own })
}
