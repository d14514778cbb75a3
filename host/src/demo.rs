//! `cairn demo`: seed scenarios (a) and (d), end to end, on a fresh
//! temporary store, in virtual time.
//!
//! (a) A new lead is assigned an owner by region and gets a five-day welcome
//! sequence; clicking an email raises the score, and at the end an engaged
//! lead gets a call-now task. (d) On the way, pricing page views push the
//! score over the MQL threshold: the stage becomes `mql` and sales gets a
//! hand-off task and a signed webhook.
//!
//! Everything goes through the real HTTP API of a real server with the
//! prebuilt plugins and the example workflows under `examples/workflows/`.
//! The server's clock is a manual one the demo moves a day at a time, so the
//! five days take a second; delays are timers in the store, exactly as with
//! the system clock. Webhooks (the email provider stand-in and the sales
//! channel) land on a receiver the demo runs on loopback, which checks their
//! HMAC signatures. The same set-up ([`set_up`]) serves the end-to-end tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::engine::Clock;
use crate::runtime::RuntimeSettings;
use crate::server::{self, ServerConfig};

/// The shared secret the demo's webhook install signs with.
const WEBHOOK_SECRET: &str = "demo-secret-not-for-production";

/// A webhook as the receiver saw it.
#[derive(Debug, Clone)]
pub struct ReceivedHook {
    /// The last path segment: `/hooks/email` → `email`.
    pub name: String,
    /// Parsed JSON body.
    pub body: Value,
    /// Whether `x-cairn-signature` matched the HMAC of the body.
    pub signature_ok: bool,
}

/// A loopback HTTP receiver that records webhooks and checks signatures.
pub struct HookReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    pub received: Arc<Mutex<Vec<ReceivedHook>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a receiver that verifies signatures made with `secret`.
pub async fn start_receiver(secret: &'static str) -> anyhow::Result<HookReceiver> {
    let received: Arc<Mutex<Vec<ReceivedHook>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hooks/{name}",
        axum::routing::post(move |Path(name): Path<String>, headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let signature_ok = headers
                    .get("x-cairn-signature")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("sha256="))
                    .and_then(|hex_sig| hex::decode(hex_sig).ok())
                    .is_some_and(|sig| {
                        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
                        mac.update(&body);
                        mac.verify_slice(&sig).is_ok()
                    });
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if let Ok(mut v) = sink.lock() {
                    v.push(ReceivedHook { name, body, signature_ok });
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(HookReceiver { addr, received, task })
}

/// A tiny JSON client for the API.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    /// A client for `base` with a bearer key.
    pub fn new(base: &str, key: &str) -> Client {
        Client { http: reqwest::Client::new(), base: base.to_string(), key: key.to_string() }
    }

    /// Send a request; returns status and JSON body (null when empty).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("calling {path}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, value))
    }

    /// Send and require a 2xx status.
    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {value}");
        }
        Ok(value)
    }

    /// Upload raw component bytes.
    pub async fn upload(&self, bytes: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}/v1/plugins", self.base))
            .bearer_auth(&self.key)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }
}

/// The example workflows under `examples/workflows/`, by scenario letter.
/// They name installs as `${placeholder}`; [`workflow_from_example`] fills
/// in the install ids of a tenant set up by [`set_up`].
pub const EXAMPLE_WORKFLOWS: [(&str, &str); 6] = [
    ("a", include_str!("../../examples/workflows/a-welcome-new-leads.json")),
    ("b", include_str!("../../examples/workflows/b-pricing-page-interest.json")),
    ("c", include_str!("../../examples/workflows/c-reactivate-idle-contacts.json")),
    ("d", include_str!("../../examples/workflows/d-mql-hand-off.json")),
    ("e", include_str!("../../examples/workflows/e-churn-risk.json")),
    ("f", include_str!("../../examples/workflows/f-subject-line-test.json")),
];

/// The custom action the new-lead scenario uses (an SDK example, not part
/// of the catalog), uploaded by [`set_up`] like a tenant would.
const ASSIGN_BY_REGION: &[u8] = include_bytes!(concat!(env!("CAIRN_GUEST_DIR"), "/assign_by_region.wasm"));

/// A tenant set up for the seed scenarios.
pub struct Scenario {
    /// The tenant's client.
    pub client: Client,
    /// Install ids by the placeholder the example workflows use
    /// (`email`, `create_task`, …).
    pub installs: BTreeMap<String, String>,
}

impl Scenario {
    /// Example workflow `letter` with this tenant's install ids filled in.
    pub fn workflow(&self, letter: &str) -> anyhow::Result<Value> {
        let (_, text) =
            EXAMPLE_WORKFLOWS.iter().find(|(l, _)| *l == letter).with_context(|| format!("no example {letter}"))?;
        workflow_from_example(text, &self.installs)
    }

    /// Save and activate example workflow `letter`; returns its id.
    pub async fn activate(&self, letter: &str) -> anyhow::Result<String> {
        let body = self.workflow(letter)?;
        let created = self.client.ok(reqwest::Method::POST, "/v1/workflows?activate=true", Some(body)).await?;
        created["workflow"]["id"].as_str().map(str::to_string).context("workflow id")
    }
}

/// Replace each `${name}` in an example with the install id for `name`.
pub fn workflow_from_example(text: &str, installs: &BTreeMap<String, String>) -> anyhow::Result<Value> {
    let mut filled = text.to_string();
    for (name, id) in installs {
        filled = filled.replace(&format!("${{{name}}}"), id);
    }
    if let Some(at) = filled.find("${") {
        let name: String = filled[at..].chars().take_while(|c| *c != '}').collect();
        bail!("the example names an install this tenant does not have: {name}}}");
    }
    Ok(serde_json::from_str(&filled)?)
}

/// Create tenant "Acme Robotics" (time zone Europe/Berlin) on a running
/// server and install what the seed scenarios use: scorers, actions, and
/// three webhook channels (the email provider, sales, customer success)
/// pointing at `hooks_base` (`http://host:port`, see [`start_receiver`]).
/// The MQL threshold is set at 50. No contacts, no workflows yet.
pub async fn set_up(base: &str, admin_key: &str, hooks_base: &str) -> anyhow::Result<Scenario> {
    use reqwest::Method;
    let admin = Client::new(base, admin_key);
    let body = json!({"name": "Acme Robotics", "time_zone": "Europe/Berlin"});
    let created = admin.ok(Method::POST, "/v1/tenants", Some(body)).await?;
    let key = created["api_key"].as_str().context("tenant key")?.to_string();
    let client = Client::new(base, &key);

    let (status, uploaded) = client.upload(ASSIGN_BY_REGION.to_vec()).await?;
    if status != 201 && status != 200 {
        bail!("uploading assign-by-region answered {status}: {uploaded}");
    }
    let plugins = client.ok(Method::GET, "/v1/plugins", None).await?;
    let version_of = |name: &str| -> anyhow::Result<String> {
        plugins["items"]
            .as_array()
            .and_then(|items| items.iter().find(|p| p["name"] == name))
            .and_then(|p| p["id"].as_str())
            .map(str::to_string)
            .with_context(|| format!("plugin {name} is not available"))
    };
    let hook_host = reqwest::Url::parse(hooks_base)?.host_str().context("hook host")?.to_string();
    let http = json!([format!("http:{hook_host}")]);
    let write = json!(["store-write"]);
    let hook = |path: &str| json!({"url": format!("{hooks_base}/hooks/{path}"), "secret": WEBHOOK_SECRET});
    // Install order matters for scorers: the first sets `score`, the health
    // scorer then writes `health_score`.
    let wanted: [(&str, &str, Value, &Value); 9] = [
        ("rules_scorer", "rules-scorer", scorer_config(), &Value::Null),
        ("health_scorer", "health-scorer", health_config(), &Value::Null),
        (
            "assign_by_region",
            "assign-by-region",
            json!({"property": "region", "owners": {"EMEA": "alice@acme.test", "NA": "bob@acme.test"}, "default_owner": "sales@acme.test"}),
            &write,
        ),
        ("create_task", "create-task", json!({"title": "Follow up with {{first_name}}", "due_in_hours": 24}), &write),
        ("tag_contact", "tag-contact", json!({"tag": "touched"}), &write),
        ("email", "webhook", hook("email"), &http),
        ("sales_webhook", "webhook", hook("sales"), &http),
        ("cs_webhook", "webhook", hook("cs"), &http),
        (
            "pricing_visits",
            "page-visits",
            json!({"url_contains": "/pricing", "times": 3, "within_days": 7}),
            &Value::Null,
        ),
    ];
    let mut installs = BTreeMap::new();
    for (placeholder, plugin, config, grants) in wanted {
        let mut body = json!({"plugin_version_id": version_of(plugin)?, "config": config});
        if !grants.is_null() {
            body["grants"] = grants.clone();
        }
        let install = client.ok(Method::POST, "/v1/installs", Some(body)).await?;
        installs.insert(placeholder.to_string(), install["id"].as_str().context("install id")?.to_string());
    }
    client.ok(Method::PUT, "/v1/thresholds/mql", Some(json!({"min_score": 50}))).await?;
    Ok(Scenario { client, installs })
}

/// The lead score: pricing views count most, email engagement too.
fn scorer_config() -> Value {
    json!({
        "rules": [
            {"event_kind": "page_viewed", "property": "url", "contains": "/pricing", "points": 20},
            {"event_kind": "page_viewed", "points": 2, "max_times": 10},
            {"event_kind": "email_opened", "points": 5, "max_times": 5},
            {"event_kind": "email_clicked", "points": 15, "max_times": 3},
        ],
        "half_life_days": 30,
    })
}

/// Customer health: trouble pulls it down from 100, usage back up.
fn health_config() -> Value {
    json!({
        "signals": [
            {"event_kind": "logged_in", "points": 5, "max_times": 6},
            {"event_kind": "support_ticket_opened", "points": -30},
            {"event_kind": "payment_failed", "points": -40},
        ],
    })
}

/// Poll `check` until it returns `Some`, or fail after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > until {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Monday 2026-11-23, 08:30 in Berlin: where the demo's virtual time starts.
const DEMO_START: &str = "2026-11-23T07:30:00Z";

/// Run the demo.
pub async fn run() -> anyhow::Result<()> {
    use reqwest::Method;
    let began = Instant::now();
    let dir = std::env::temp_dir().join(format!("cairn-demo-{}-{}", std::process::id(), crate::store::now_ms()));
    std::fs::create_dir_all(&dir)?;
    let start: jiff::Timestamp = DEMO_START.parse()?;
    let clock = Clock::manual(start.as_millisecond());
    let mut config = ServerConfig::in_dir(dir.clone());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.clock = clock.clone();
    // The demo's webhook receiver is on loopback.
    config.runtime = RuntimeSettings { allow_private_network: true, ..config.runtime };
    let server = server::start(config).await?;
    let admin_key = server.generated_admin_key.clone().context("a fresh store generates an admin key")?;
    println!(
        "Cairn on {} with a fresh SQLite store in {} (started in {} ms)",
        server.url(),
        dir.display(),
        server.startup.as_millis()
    );

    let receiver = start_receiver(WEBHOOK_SECRET).await?;
    let s = set_up(&server.url(), &admin_key, &format!("http://{}", receiver.addr)).await?;
    let welcome = s.activate("a").await?;
    s.activate("d").await?;
    let zone = jiff::tz::TimeZone::get("Europe/Berlin")?;
    let local = |ms: i64| crate::engine::workflows::time::format_local(ms, &zone).chars().take(16).collect::<String>();
    println!("Tenant \"Acme Robotics\" (Europe/Berlin): 9 installs, MQL at score 50, workflows");
    println!("  (a) examples/workflows/a-welcome-new-leads.json and (d) examples/workflows/d-mql-hand-off.json");
    println!();

    let lead = s
        .client
        .ok(
            Method::POST,
            "/v1/contacts",
            Some(json!({"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "properties": {"region": "EMEA"}})),
        )
        .await?;
    let lead_id = lead["id"].as_str().context("contact id")?.to_string();
    println!("[{}] New lead Ada Lovelace <ada@example.com>, region EMEA, no owner", local(clock.now()));
    let run_id = wait_for(Duration::from_secs(10), || async {
        let runs =
            s.client.ok(Method::GET, &format!("/v1/runs?workflow_id={welcome}&contact_id={lead_id}"), None).await?;
        Ok(runs["items"][0]["id"].as_str().map(str::to_string))
    })
    .await
    .context("the new lead enrolls in (a)")?;
    println!("  enrolled in \"Welcome new leads\", run {run_id}");

    let mut emails_seen = 0;
    for day in 0..5 {
        if day > 0 {
            // Jump virtual time to the run's next timer (the 09:00 delay).
            let run = s.client.ok(Method::GET, &format!("/v1/runs/{run_id}"), None).await?;
            let wake_at = run["wake_at"].as_i64().context("the run waits on a timer")?;
            clock.set(wake_at.max(clock.now()));
        }
        // Day 0 runs at once; later days when the 09:00 timer is due.
        let hooks = wait_for(Duration::from_secs(10), || async {
            let got = receiver.received.lock().map(|v| v.clone()).unwrap_or_default();
            let emails: Vec<ReceivedHook> = got.into_iter().filter(|h| h.name == "email").collect();
            Ok((emails.len() > emails_seen).then_some(emails))
        })
        .await
        .with_context(|| format!("welcome email {}", day + 1))?;
        if day == 0 {
            let c = s.client.ok(Method::GET, &format!("/v1/contacts/{lead_id}"), None).await?;
            println!("  assign-owner: owner → {}", c["owner"].as_str().unwrap_or("-"));
        }
        for h in &hooks[emails_seen..] {
            println!(
                "[{}] welcome-{}: email \"{}\" sent (signature {})",
                local(clock.now()),
                day + 1,
                h.body["subject"].as_str().unwrap_or("?"),
                if h.signature_ok { "verified" } else { "INVALID" }
            );
        }
        emails_seen = hooks.len();
        let score_before = s.client.ok(Method::GET, &format!("/v1/contacts/{lead_id}"), None).await?["score"].clone();
        let engagement: &[(&str, Value)] = match day {
            1 => &[("email_opened", json!({})), ("email_clicked", json!({"url": "/features"}))],
            2 => &[("page_viewed", json!({"url": "/pricing"})), ("page_viewed", json!({"url": "/pricing?plan=pro"}))],
            _ => &[],
        };
        for (kind, props) in engagement {
            let ev = json!({"contact_id": lead_id, "kind": kind, "properties": props});
            s.client.ok(Method::POST, "/v1/events", Some(ev)).await?;
        }
        if !engagement.is_empty() {
            let c = wait_for(Duration::from_secs(10), || async {
                let c = s.client.ok(Method::GET, &format!("/v1/contacts/{lead_id}"), None).await?;
                Ok((c["score"] != score_before).then_some(c))
            })
            .await?;
            let kinds: Vec<&str> = engagement.iter().map(|(k, _)| *k).collect();
            println!(
                "[{}] Ada: {} → score {} → {}, stage {}",
                local(clock.now()),
                kinds.join(", "),
                score_before,
                c["score"],
                c["lifecycle_stage"].as_str().unwrap_or("?")
            );
        }
        if day == 2 {
            let hand_off = wait_for(Duration::from_secs(10), || async {
                let got = receiver.received.lock().map(|v| v.clone()).unwrap_or_default();
                Ok(got.into_iter().find(|h| h.name == "sales"))
            })
            .await
            .context("(d) notifies sales")?;
            println!(
                "  (d) MQL hand-off: sales webhook \"{}\" (signature {})",
                hand_off.body["subject"].as_str().unwrap_or("?"),
                if hand_off.signature_ok { "verified" } else { "INVALID" }
            );
        }
    }
    let run = wait_for(Duration::from_secs(10), || async {
        let run = s.client.ok(Method::GET, &format!("/v1/runs/{run_id}"), None).await?;
        Ok((run["status"] != "waiting").then_some(run))
    })
    .await
    .context("(a) finishes")?;
    let tasks = s.client.ok(Method::GET, &format!("/v1/tasks?contact_id={lead_id}"), None).await?;
    println!();
    println!("Tasks for Ada:");
    for t in tasks["items"].as_array().into_iter().flatten() {
        println!("  \"{}\" for {}", t["title"].as_str().unwrap_or("?"), t["assignee"].as_str().unwrap_or("-"));
    }
    println!("Run {run_id}: {} — steps:", run["status"].as_str().unwrap_or("?"));
    for step in run["steps"].as_array().into_iter().flatten() {
        let detail = match step["kind"].as_str() {
            Some("if") => step["output"]["branch"].to_string(),
            Some("delay") => step["output"]["waited_until"].as_i64().map(local).unwrap_or_default(),
            _ => format!("{} µs, fuel {}", step["duration_us"], step["fuel_used"]),
        };
        println!(
            "  [{}] {:<12} {:<6} {:<4} {}",
            step["started_at"].as_i64().map(local).unwrap_or_default(),
            step["step_id"].as_str().unwrap_or("?"),
            step["kind"].as_str().unwrap_or("?"),
            step["status"].as_str().unwrap_or("?"),
            detail
        );
    }
    let metrics = reqwest::get(format!("{}/metrics", server.url())).await?.text().await?;
    for line in metrics.lines().filter(|l| l.starts_with("cairn_workflow_") || l.starts_with("cairn_events_processed"))
    {
        println!("  {line}");
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let virtual_days = (clock.now() - start.as_millisecond()) as f64 / 86_400_000.0;
    println!("Done: {virtual_days:.0} virtual days in {:.1} s of real time.", began.elapsed().as_secs_f64());
    Ok(())
}
