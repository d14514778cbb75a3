//! What the tests that run the real `cairn serve` binary share: the child
//! server process, a webhook receiver that records headers and arrival
//! times, an event loader with idempotency keys, and the checks on runs,
//! steps, webhook keys and stored events after the load.
//!
//! Every test here runs the same workflow: webhook A → delay → webhook B →
//! delay → tag ([`hook_workflow`]), on tenant Acme as `cairn::demo::set_up`
//! creates it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use cairn::demo::Client;
use reqwest::Method;
use serde_json::{Value, json};

/// Each delay of the workflow, as written ...
pub const DELAY: &str = "1s";
/// ... and in ms.
pub const DELAY_MS: i64 = 1000;
/// The workflow's steps in order: id and kind.
pub const STEPS: [(&str, &str); 5] =
    [("hook-a", "action"), ("wait-1", "delay"), ("hook-b", "action"), ("wait-2", "delay"), ("tag-done", "action")];
/// Which receiver path each webhook step posts to (the demo tenant's
/// `email` and `sales_webhook` installs post to `/hooks/email` and
/// `/hooks/sales`).
pub const HOOK_STEPS: [(&str, &str); 2] = [("email", "hook-a"), ("sales", "hook-b")];
/// Each delay and the step it must precede.
pub const DELAYS: [(&str, &str, &str); 2] = [("hook-a", "wait-1", "hook-b"), ("hook-b", "wait-2", "tag-done")];
/// Any one HTTP call of the test.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack between the test's monotonic clock and the server's wall clock
/// when comparing webhook arrival times over a delay.
pub const CLOCK_SLACK_MS: i64 = 5;

// ------------------------------------------------------------ small parts

/// A xorshift64 generator: the schedule repeats from its printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed: any seed (0 too) gives a good, non-zero state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-enough in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// A seed from `var` when it is set, else from the time.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1))
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A call with a deadline: a hung server is an error, not a hung test.
pub async fn call(client: &Client, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
    match tokio::time::timeout(REQUEST_TIMEOUT, client.call(method, path, body)).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("{path}: no answer within {REQUEST_TIMEOUT:?}"),
    }
}

/// GET `path`, requiring 200.
pub async fn get(client: &Client, path: &str) -> anyhow::Result<Value> {
    match call(client, Method::GET, path, None).await? {
        (200, value) => Ok(value),
        (status, value) => anyhow::bail!("GET {path} answered {status}: {value}"),
    }
}

/// Every item of a paginated list (`limit=1000`, following `next_cursor`).
pub async fn all_pages(client: &Client, path: &str) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_path = match &cursor {
            Some(c) => format!("{path}&limit=1000&cursor={c}"),
            None => format!("{path}&limit=1000"),
        };
        let page = get(client, &page_path).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(items),
        }
    }
}

// ------------------------------------------------------- the child server

/// How to run `cairn serve`.
pub struct Serve {
    /// Names the server in what the test prints.
    pub name: String,
    /// `CAIRN_ADMIN_KEY`.
    pub admin_key: String,
    /// `--db`; `None`: the SQLite file in the data directory.
    pub database_url: Option<String>,
    /// More flags (`--allow-private-network` is always given).
    pub args: Vec<String>,
}

/// The `cairn serve` child process on one data directory and port. Dropping
/// it kills the child, so no server outlives a failed test; the data
/// directory is removed unless the test is failing (then its path is
/// printed, with the server log in it).
pub struct ServerProcess {
    child: Option<Child>,
    serve: Serve,
    pub dir: PathBuf,
    addr: String,
    pub log: PathBuf,
    pub starts: u32,
    /// Starts that exited before answering `/healthz` and were tried again.
    pub start_retries: u32,
}

impl ServerProcess {
    pub fn new(serve: Serve, dir: PathBuf, port: u16) -> ServerProcess {
        let log = dir.join("server.log");
        ServerProcess { child: None, serve, dir, addr: format!("127.0.0.1:{port}"), log, starts: 0, start_retries: 0 }
    }

    pub fn name(&self) -> &str {
        &self.serve.name
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut log = File::options().create(true).append(true).open(&self.log).expect("server log opens");
        let _ = writeln!(log, "==== test: start {} ====", self.starts);
        let stderr = log.try_clone().expect("server log handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        command.arg("serve").arg("--data-dir").arg(&self.dir).args(["--listen", &self.addr, "--allow-private-network"]);
        if let Some(db) = &self.serve.database_url {
            command.args(["--db", db]);
        }
        let child = command
            .args(&self.serve.args)
            .env("CAIRN_ADMIN_KEY", &self.serve.admin_key)
            .env_remove("CAIRN_DATABASE_URL")
            .env("RUST_LOG", "cairn=info,warn")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("cairn serve starts");
        self.child = Some(child);
    }

    /// SIGKILL (what `Child::kill` sends on unix) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start (again) and wait for `/healthz`; a start whose process exits
    /// early (e.g. the port not free yet) is tried again a few times.
    pub async fn start(&mut self, http: &reqwest::Client, timeout: Duration) -> Duration {
        let began = Instant::now();
        let mut tries = 0;
        loop {
            self.spawn();
            match self.wait_healthy(http, began + timeout).await {
                Ok(()) => return began.elapsed(),
                Err(why) if tries < 5 && Instant::now() < began + timeout => {
                    tries += 1;
                    self.start_retries += 1;
                    eprintln!("{}: start {} failed ({why}); trying again", self.serve.name, self.starts);
                    self.kill();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(why) => self.fail(&format!("the server did not come up: {why}")),
            }
        }
    }

    async fn wait_healthy(&mut self, http: &reqwest::Client, until: Instant) -> Result<(), String> {
        let url = format!("{}/healthz", self.url());
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("the process exited with {status}"));
            }
            let answer = http.get(&url).timeout(Duration::from_secs(2)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > until {
                return Err("no healthy answer in time".into());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fail with `message`, the data directory and the tail of the server log.
    pub fn fail(&self, message: &str) -> ! {
        panic!("{message}\n(data dir {} kept; server log tail:)\n{}", self.dir.display(), self.log_tail(60))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A port that was free a moment ago; every (re)start listens on it.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

// ------------------------------------------------------ webhook receiver

/// One webhook as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// `/hooks/{hook}`.
    pub hook: String,
    /// The `x-cairn-idempotency-key` header.
    pub key: Option<String>,
    /// The JSON body.
    pub body: Value,
    /// When it arrived (the test's clock).
    pub at: Instant,
}

pub type Deliveries = Arc<Mutex<Vec<Delivery>>>;

/// The demo's receiver (`cairn::demo::start_receiver`) keeps neither
/// headers nor arrival times; this one records both.
pub struct Receiver {
    pub base: String,
    pub got: Deliveries,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_receiver() -> Receiver {
    let got: Deliveries = Arc::default();
    let app = axum::Router::new().route("/hooks/{name}", axum::routing::post(record)).with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("receiver binds");
    let addr = listener.local_addr().expect("receiver address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver { base: format!("http://{addr}"), got, task }
}

async fn record(
    State(got): State<Deliveries>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let at = Instant::now();
    let key = headers.get("x-cairn-idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    got.lock().expect("deliveries").push(Delivery { hook, key, body, at });
    "ok"
}

// -------------------------------------------------------------- workflow

/// The workflow of these tests, triggered by events of `kind`: webhook A
/// (`/hooks/email`) → [`DELAY`] → webhook B (`/hooks/sales`) → [`DELAY`] →
/// tag `done_tag`, ten attempts per step. `installs` are the demo tenant's.
pub fn hook_workflow(name: &str, kind: &str, installs: &BTreeMap<String, String>, done_tag: &str) -> Value {
    json!({
        "name": name,
        "trigger": {"type": "event", "kind": kind},
        "enrollment": {"reenroll": false},
        "retry": {"max_attempts": 10, "backoff": "1s"},
        "steps": [
            {"id": "hook-a", "type": "action", "install_id": installs["email"]},
            {"id": "wait-1", "type": "delay", "duration": DELAY},
            {"id": "hook-b", "type": "action", "install_id": installs["sales_webhook"]},
            {"id": "wait-2", "type": "delay", "duration": DELAY},
            {"id": "tag-done", "type": "action", "install_id": installs["tag_contact"], "config": {"tag": done_tag}},
        ],
    })
}

/// Save `definition` and activate it; its id.
pub async fn save_workflow(client: &Client, definition: Value) -> Result<String, String> {
    match call(client, Method::POST, "/v1/workflows?activate=true", Some(definition)).await {
        Ok((201 | 200, created)) => {
            created["workflow"]["id"].as_str().map(str::to_string).ok_or_else(|| format!("no workflow id: {created}"))
        }
        other => Err(format!("saving the workflow: {other:?}")),
    }
}

/// Runs of the workflow waiting right now, and how many of those wait on a
/// timer still in the future; `None` when the server did not answer.
pub async fn pending_work(client: &Client, workflow: &str) -> Option<(usize, usize)> {
    let page = get(client, &format!("/v1/runs?workflow_id={workflow}&status=waiting&limit=1000")).await.ok()?;
    let items = page["items"].as_array()?;
    let now = now_ms();
    let timers = items.iter().filter(|r| r["wake_at"].as_i64().is_some_and(|w| w > now)).count();
    Some((items.len(), timers))
}

// ------------------------------------------------------------------ load

/// What the loader saw.
#[derive(Debug, Default)]
pub struct Load {
    /// Client key → event id, for every event answered `202`.
    pub acked: BTreeMap<String, String>,
    /// Requests answered `202`.
    pub accepted_requests: u64,
    /// Events answered `202`, by the index of the client (node) that took them.
    pub acked_by: BTreeMap<usize, u64>,
    /// Requests not acknowledged, by why (transport error, status).
    pub failures: BTreeMap<String, u64>,
    /// Answers that mean the test is wrong (4xx, a malformed 202).
    pub unexpected: Vec<String>,
}

/// One sender of events.
pub struct Loader {
    /// Where requests go, in turn (one client per node, all of one tenant).
    pub clients: Vec<Client>,
    /// The client of the first request.
    pub first: usize,
    /// The event kind.
    pub kind: &'static str,
    /// Event `n` has the idempotency key `{prefix}-{n}` and the email
    /// `{prefix}-{n}@example.test`; unique per sender.
    pub prefix: String,
    /// Seeds the batch sizes.
    pub seed: u64,
    /// Pause between two requests.
    pub tick: Duration,
    /// Most events in one request (1 is sent as a single-event body).
    pub max_batch: u64,
}

impl Loader {
    /// Event `n` of this sender: a fresh contact (created by the event, by
    /// email) and an idempotency key, so a batch whose answer was lost can
    /// be sent again without storing it twice.
    fn event(&self, n: u64) -> Value {
        json!({
            "email": format!("{}-{n}@example.test", self.prefix),
            "kind": self.kind,
            "properties": {"n": n},
            "idempotency_key": format!("{}-{n}", self.prefix),
        })
    }

    /// Send events until `stop`, then until the last unacknowledged batch
    /// is acknowledged. Requests go to the clients in turn. A failed request
    /// (connection refused or reset while a server is down, 503) is not
    /// acknowledged: the same batch goes again, to the next client, on the
    /// next tick.
    pub async fn run(self, stop: Arc<AtomicBool>, state: Arc<Mutex<Load>>) {
        let mut rng = Rng::new(self.seed);
        let mut next: u64 = 0;
        let mut target = self.first;
        let mut retry: Option<Vec<u64>> = None;
        let mut stopped_at: Option<Instant> = None;
        loop {
            if stop.load(Ordering::SeqCst) {
                if retry.is_none() {
                    return;
                }
                if stopped_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(30) {
                    state.lock().expect("load").unexpected.push(format!("batch {retry:?} never acknowledged"));
                    return;
                }
            }
            let batch = retry.take().unwrap_or_else(|| {
                (0..rng.range(1, self.max_batch))
                    .map(|_| {
                        next += 1;
                        next
                    })
                    .collect()
            });
            let mut events: Vec<Value> = batch.iter().map(|n| self.event(*n)).collect();
            let body = if events.len() == 1 { events.remove(0) } else { json!({"events": events}) };
            let client = &self.clients[target % self.clients.len()];
            let answer = call(client, Method::POST, "/v1/events", Some(body)).await;
            retry = self.record_answer(&mut state.lock().expect("load"), target % self.clients.len(), batch, answer);
            target += 1;
            tokio::time::sleep(self.tick).await;
        }
    }

    /// Note what a request of `batch` to client `to` got; returns the batch
    /// when it must go again.
    fn record_answer(
        &self,
        s: &mut Load,
        to: usize,
        batch: Vec<u64>,
        answer: anyhow::Result<(u16, Value)>,
    ) -> Option<Vec<u64>> {
        match answer {
            Ok((202, answer)) => {
                let ids: Vec<&str> = answer["ids"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                if ids.len() != batch.len() {
                    s.unexpected.push(format!("202 for {} events named {} ids: {answer}", batch.len(), ids.len()));
                }
                *s.acked_by.entry(to).or_default() += ids.len() as u64;
                for (n, id) in batch.iter().zip(ids) {
                    s.acked.insert(format!("{}-{n}", self.prefix), id.to_string());
                }
                s.accepted_requests += 1;
                None
            }
            Ok((status, answer)) => {
                *s.failures.entry(format!("http {status}")).or_default() += 1;
                if (400..500).contains(&status) && status != 429 {
                    s.unexpected.push(format!("POST /v1/events answered {status}: {answer}"));
                    None
                } else {
                    Some(batch)
                }
            }
            Err(_) => {
                *s.failures.entry("transport".into()).or_default() += 1;
                Some(batch)
            }
        }
    }
}

// ---------------------------------------------------------------- checks

/// Wait until every acknowledged event (`acked`: event id → client key)
/// has a run of `workflow` and no run waits; the runs. An error (with what
/// is missing or stuck) when a run ended otherwise than completed, or
/// after `timeout`.
pub async fn wait_for_runs(
    client: &Client,
    workflow: &str,
    acked: &HashMap<&str, &str>,
    timeout: Duration,
) -> Result<Vec<Value>, String> {
    let began = Instant::now();
    loop {
        let runs = all_pages(client, &format!("/v1/runs?workflow_id={workflow}"))
            .await
            .map_err(|e| format!("listing runs: {e:#}"))?;
        let enrolled: HashSet<&str> = runs.iter().filter_map(|r| r["trigger_event_id"].as_str()).collect();
        let missing: Vec<&&str> = acked.keys().filter(|id| !enrolled.contains(**id)).collect();
        let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &runs {
            *statuses.entry(r["status"].as_str().unwrap_or("?")).or_default() += 1;
        }
        if let Some(dead) = runs.iter().find(|r| !matches!(r["status"].as_str(), Some("waiting" | "completed"))) {
            let id = dead["id"].as_str().unwrap_or("?");
            let detail = get(client, &format!("/v1/runs/{id}")).await.unwrap_or(Value::Null);
            return Err(format!("run {id} ended {}: {detail}", dead["status"]));
        }
        if missing.is_empty() && !statuses.contains_key("waiting") {
            return Ok(runs);
        }
        if began.elapsed() > timeout {
            let stuck: Vec<String> = runs
                .iter()
                .filter(|r| r["status"] != "completed")
                .take(5)
                .map(|r| format!("{} at {} wake_at {} attempts {}", r["id"], r["cursor"], r["wake_at"], r["attempts"]))
                .collect();
            return Err(format!(
                "after {timeout:?}: {} of {} acknowledged events have no run (e.g. {:?}); runs {statuses:?}; \
                 not completed, e.g. {stuck:?} (now {})",
                missing.len(),
                acked.len(),
                missing.iter().take(5).collect::<Vec<_>>(),
                now_ms()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What [`check_runs`] found.
#[derive(Debug, Default)]
pub struct RunChecks {
    /// Everything wrong, in words.
    pub problems: Vec<String>,
    /// Trigger event id → run id.
    pub run_of_event: HashMap<String, String>,
    /// Runs completed.
    pub completed: usize,
    /// Steps recorded `ok` with the expected kind.
    pub steps_ok: usize,
    /// Delays that held the next step back for their time.
    pub timers_fired: usize,
    /// Steps `ok` after more than one attempt.
    pub retried_steps: usize,
    /// Webhooks received.
    pub deliveries: usize,
    /// Webhooks received beyond the first of their (run, step).
    pub duplicate_deliveries: usize,
    /// Every delivery carried its step's key, and no two steps one key.
    pub keys_consistent: bool,
    /// The shortest time between a run's last webhook A and first webhook B.
    pub min_gap_ms: i64,
    /// Every run with its steps (`GET /v1/runs/{id}`).
    pub details: Vec<Value>,
}

/// Check the finished `runs` (from [`wait_for_runs`]) against the
/// acknowledged events and the webhooks received:
///
/// - one run per acknowledged event, and no other run;
/// - every step of every run recorded `ok` (`GET /v1/runs/{id}`), and no
///   step after a delay started before the delay was over (by the steps'
///   records and by the times the webhooks arrived);
/// - every webhook delivery of one step carries that step's idempotency key
///   (`run:<run id>:<step id>`, header and body alike) and the keys of
///   different steps differ; repeats are counted, not failed;
/// - the last step tagged every contact with `done_tag`.
pub async fn check_runs(
    client: &Client,
    runs: &[Value],
    acked: &HashMap<&str, &str>,
    got: &Deliveries,
    done_tag: &str,
) -> Result<RunChecks, String> {
    // One run per acknowledged event, and no other run.
    let mut c = RunChecks { keys_consistent: true, min_gap_ms: i64::MAX, ..RunChecks::default() };
    for r in runs {
        let event = r["trigger_event_id"].as_str().unwrap_or_default().to_string();
        if !acked.contains_key(event.as_str()) {
            c.problems.push(format!("run {} was enrolled by {event}, not an acknowledged event", r["id"]));
        }
        if let Some(other) = c.run_of_event.insert(event.clone(), r["id"].as_str().unwrap_or_default().to_string()) {
            c.problems.push(format!("event {event} enrolled two runs: {other} and {}", r["id"]));
        }
    }
    c.completed = runs.iter().filter(|r| r["status"] == "completed").count();

    // Every step of every run, recorded ok, and the delays waited.
    let mut fetches = tokio::task::JoinSet::new();
    for chunk in runs.chunks(runs.len().div_ceil(8).max(1)) {
        let ids: Vec<String> = chunk.iter().filter_map(|r| r["id"].as_str().map(str::to_string)).collect();
        let client = client.clone();
        fetches.spawn(async move {
            let mut got = Vec::new();
            for id in ids {
                got.push(get(&client, &format!("/v1/runs/{id}")).await);
            }
            got
        });
    }
    let mut details = Vec::new();
    while let Some(done) = fetches.join_next().await {
        for run in done.expect("fetch task") {
            details.push(run.map_err(|e| format!("reading a run: {e:#}"))?);
        }
    }
    for run in &details {
        check_steps(run, &mut c);
    }
    c.details = details;

    // Webhooks: grouped by (run, step), one key per group, distinct keys.
    let deliveries = got.lock().expect("deliveries").clone();
    check_deliveries(&deliveries, runs.len(), &mut c);

    // The last step tagged every contact.
    let tagged: HashSet<String> = match all_pages(client, &format!("/v1/contacts?tag={done_tag}")).await {
        Ok(items) => items.iter().filter_map(|c| c["id"].as_str().map(str::to_string)).collect(),
        Err(e) => return Err(format!("listing tagged contacts: {e:#}")),
    };
    let untagged = runs.iter().filter(|r| !r["contact_id"].as_str().is_some_and(|c| tagged.contains(c))).count();
    if untagged > 0 {
        c.problems.push(format!("{untagged} contacts of completed runs lack the tag {done_tag}"));
    }
    Ok(c)
}

/// The steps of one run (`GET /v1/runs/{id}`): all `ok`, the delays held.
fn check_steps(run: &Value, c: &mut RunChecks) {
    let id = run["id"].as_str().unwrap_or("?");
    let steps: HashMap<&str, &Value> = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["step_id"].as_str().map(|sid| (sid, s)))
        .collect();
    for (step_id, kind) in STEPS {
        match steps.get(step_id) {
            Some(s) if s["status"] == "ok" && s["kind"] == kind => {
                c.steps_ok += 1;
                c.retried_steps += usize::from(s["attempts"].as_i64().unwrap_or(1) > 1);
            }
            Some(s) => c.problems.push(format!("run {id}: step {step_id} is {} ({kind} expected): {s}", s["status"])),
            None => c.problems.push(format!("run {id}: step {step_id} missing")),
        }
    }
    for (before, delay, after) in DELAYS {
        let started = |step: &str| steps.get(step).and_then(|s| s["started_at"].as_i64());
        let until = steps.get(delay).and_then(|s| s["output"]["waited_until"].as_i64());
        match (started(before), until, started(after)) {
            (Some(b), Some(u), Some(a)) if u >= b + DELAY_MS && a >= u => c.timers_fired += 1,
            (b, u, a) => c.problems.push(format!(
                "run {id}: {delay} did not hold {after} back: {before} at {b:?}, waited until {u:?}, {after} at {a:?}"
            )),
        }
    }
}

/// The webhooks received, by (run, step): keys and arrival times.
fn check_deliveries(deliveries: &[Delivery], runs: usize, c: &mut RunChecks) {
    let mut groups: BTreeMap<(String, &str), Vec<&Delivery>> = BTreeMap::new();
    for d in deliveries {
        let Some(step) = HOOK_STEPS.iter().find(|(hook, _)| *hook == d.hook).map(|(_, step)| *step) else {
            c.problems.push(format!("a webhook on an unexpected path /hooks/{}", d.hook));
            continue;
        };
        let event = d.body["properties"]["trigger_event_id"].as_str().unwrap_or_default();
        let Some(run) = c.run_of_event.get(event) else {
            c.problems.push(format!("a webhook for event {event:?}, which enrolled no run: {}", d.body));
            continue;
        };
        groups.entry((run.clone(), step)).or_default().push(d);
    }
    let mut owner_of_key: HashMap<&str, (String, &str)> = HashMap::new();
    for ((run, step), ds) in &groups {
        let expected = format!("run:{run}:{step}");
        for d in ds {
            let body_key = d.body["idempotency_key"].as_str();
            if d.key.as_deref() != Some(expected.as_str()) || body_key != Some(expected.as_str()) {
                c.keys_consistent = false;
                c.problems
                    .push(format!("{step} of run {run}: key {:?} (body {body_key:?}), {expected} expected", d.key));
            }
            if let Some(key) = d.key.as_deref()
                && let Some(owner) = owner_of_key.insert(key, (run.clone(), step))
                && owner != (run.clone(), *step)
            {
                c.keys_consistent = false;
                c.problems.push(format!("key {key} used by {owner:?} and by ({run}, {step})"));
            }
        }
    }
    let expected_groups = runs * HOOK_STEPS.len();
    if groups.len() != expected_groups {
        c.problems.push(format!("{} webhook steps delivered, {expected_groups} expected", groups.len()));
    }
    c.deliveries = deliveries.len();
    c.duplicate_deliveries = deliveries.len().saturating_sub(groups.len());
    // Arrival times: the first B of a run came a delay after its last A.
    for run in c.run_of_event.values() {
        let (Some(a), Some(b)) = (groups.get(&(run.clone(), "hook-a")), groups.get(&(run.clone(), "hook-b"))) else {
            continue;
        };
        let last_a = a.iter().map(|d| d.at).max().expect("a delivery");
        let first_b = b.iter().map(|d| d.at).min().expect("a delivery");
        let gap = first_b.checked_duration_since(last_a).map_or(-1, |g| g.as_millis() as i64);
        c.min_gap_ms = c.min_gap_ms.min(gap);
        if gap < DELAY_MS - CLOCK_SLACK_MS {
            c.problems.push(format!("run {run}: hook B arrived {gap} ms after hook A, the delay is {DELAY_MS} ms"));
        }
    }
}

/// The events table (`stored`: id and `processed` of every event of
/// `kind`) against the acknowledged events: every one stored and processed,
/// and no other. Returns how many acknowledged events are processed, and
/// the problems.
pub fn check_stored(stored: &[(String, i64)], acked: &HashMap<&str, &str>, kind: &str) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let processed = stored.iter().filter(|(id, p)| *p != 0 && acked.contains_key(id.as_str())).count();
    let stored_ids: HashSet<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
    let lost: Vec<&&str> = acked.keys().filter(|id| !stored_ids.contains(**id)).collect();
    if !lost.is_empty() {
        problems.push(format!(
            "{} acknowledged events are not stored, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    let unprocessed: Vec<&String> = stored.iter().filter(|(_, p)| *p == 0).map(|(id, _)| id).collect();
    if !unprocessed.is_empty() {
        problems.push(format!("{} stored events are not processed, e.g. {:?}", unprocessed.len(), &unprocessed[..1]));
    }
    if stored.len() != acked.len() {
        problems.push(format!("{} {kind} events stored, {} acknowledged", stored.len(), acked.len()));
    }
    (processed, problems)
}
