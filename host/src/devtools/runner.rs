//! The local harness behind `cairn plugin test` and `cairn plugin replay`:
//! a plugin's calls run by the real runtime, in test mode, against a scratch
//! store, with what each call used shown against its limits.
//!
//! Why the real runtime rather than the SDK's native `testkit`: the native
//! tests cannot see fuel, memory, deadlines, the component's imports, the
//! config crossing the boundary as JSON text, or how the host classifies a
//! failure. The harness uses [`Runtime::new`], [`Runtime::load`] and
//! [`Runtime::call_recorded`] exactly as the server does, with the limits
//! `cairn serve` uses by default (overridable).
//!
//! Each call is a dry-run call ([`CallScope::test_mode`]): the plugin is told
//! it is a test, its store writes are acknowledged and not kept, and no HTTP
//! leaves. As in a workflow dry run on an inline sample contact, the call's
//! contact is the scope's `test_contact`, so writes to it are accepted even
//! though it is not stored. When the call is granted `store-read`, the
//! contact and the call's events are also put in the scratch store (a fresh
//! tenant per call), so `get-contact`, `find-contact-by-email` and
//! `count-events` find them. The store gives the contact its own id: the
//! call sees that id wherever the fixture has the contact's id (the
//! contact, its events, config values equal to it), and it is mapped back to
//! the fixture's id in the result, the error and the logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde_json::Value as Json;

use crate::runtime::engine::EngineSettings;
use crate::runtime::grants::Grants;
use crate::runtime::recorded::{RecordedCall, RecordedEvent};
use crate::runtime::{CallError, CallScope, CallStats, Description, Limits, LoadedPlugin, Runtime, RuntimeSettings};
use crate::store::{self, NewContact, NewEvent, Store};

use super::build::human_size;
use super::fixtures::{self, Fixture};

/// The install id calls run under (the plugin's state is keyed by it).
const TEST_INSTALL: &str = "plugin-test";
/// Calls the harness runs at once: one, but the engine's pool needs a few
/// slots (describe, a call).
const MAX_INSTANCES: u32 = 4;
/// Longest result JSON printed on a report line.
const MAX_PRINTED_RESULT: usize = 600;

/// The limits of one call, as the CLI takes them.
#[derive(Debug, Clone, Copy)]
pub struct LimitArgs {
    /// Wall-clock deadline, ms.
    pub deadline_ms: u64,
    /// Fuel.
    pub fuel: u64,
    /// Memory cap, MiB.
    pub memory_mib: usize,
}

impl LimitArgs {
    /// As runtime limits (the others as `cairn serve` has them).
    pub fn limits(self) -> Limits {
        Limits {
            deadline: std::time::Duration::from_millis(self.deadline_ms),
            fuel: self.fuel,
            memory_bytes: self.memory_mib << 20,
            ..Limits::default()
        }
    }
}

/// What one call did.
#[derive(Debug, Clone)]
pub struct CallReport {
    /// The result as JSON, or the failure.
    pub result: Result<Json, CallError>,
    /// What it used.
    pub stats: CallStats,
}

impl CallReport {
    /// The outcome as [`fixtures::check`] takes it.
    pub fn outcome(&self) -> fixtures::Outcome<'_> {
        match &self.result {
            Ok(v) => Ok(v),
            Err(e) => Err((e.cause.as_str(), e.message.as_str())),
        }
    }

    /// `ok {...}` or `failed <cause>: <message>`.
    pub fn summary(&self) -> String {
        match &self.result {
            Ok(v) => {
                let mut text = v.to_string();
                if text.len() > MAX_PRINTED_RESULT {
                    let mut cut = MAX_PRINTED_RESULT;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push('…');
                }
                format!("ok {text}")
            }
            Err(e) => format!("failed {}: {}", e.cause.as_str(), e.message),
        }
    }
}

/// A loaded plugin, ready to run calls.
pub struct Harness {
    runtime: Runtime,
    plugin: Arc<LoadedPlugin>,
    store: Store,
    /// The component file.
    pub wasm: PathBuf,
    /// Its size, bytes.
    pub size: u64,
}

impl Harness {
    /// Compile and check the component (imports, exports, `describe()`)
    /// exactly as an upload would, and open a scratch store.
    pub async fn load(wasm: &Path, limits: Limits) -> anyhow::Result<Harness> {
        let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
        let size = bytes.len() as u64;
        let defaults = Limits::default();
        let lowered = limits.fuel < defaults.fuel
            || limits.memory_bytes < defaults.memory_bytes
            || limits.deadline < defaults.deadline;
        let settings = RuntimeSettings {
            // The engine's largest memory is the cap itself, so a raised
            // --memory-mib is not cut by the default pool size.
            engine: EngineSettings { max_instances: MAX_INSTANCES, max_memory_bytes: limits.memory_bytes },
            limits,
            cache_dir: None,
            allow_private_network: false,
        };
        let runtime = Runtime::new(settings).context("starting the wasm runtime")?;
        let plugin = runtime.load(Arc::new(bytes)).await.map_err(|e| {
            if lowered {
                // The refusal may be the lowered limits' doing, not the plugin's.
                anyhow::anyhow!(
                    "{} cannot be loaded under the limits given (--fuel, --memory-mib, --deadline-ms are below \
                     what `cairn serve` allows by default): {e}",
                    wasm.display()
                )
            } else {
                anyhow::anyhow!("{} would be refused by Cairn: {e}", wasm.display())
            }
        })?;
        // In memory: nothing to clean up, and nothing a call writes survives.
        let store = Store::open("sqlite::memory:").await.context("opening the scratch store")?;
        Ok(Harness { runtime, plugin, store, wasm: wasm.to_path_buf(), size })
    }

    /// What the plugin's `describe()` said.
    pub fn description(&self) -> &Description {
        &self.plugin.description
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &Limits {
        self.runtime.limits()
    }

    /// What an install gets by default (`plugin push` grants the same): all
    /// the plugin asks for.
    pub fn default_grants(&self) -> anyhow::Result<Grants> {
        Grants::parse(&self.description().capabilities)
            .map_err(|e| anyhow::anyhow!("describe() asks for a capability no install can be granted: {e}"))
    }

    /// Where a fixture's config breaks the plugin's schema (an install with
    /// it would be refused); empty when it fits.
    pub fn config_problems(&self, call: &RecordedCall) -> Vec<String> {
        match crate::registry::config::validate(&self.description().config_schema, config_of(call)) {
            Ok(()) => Vec::new(),
            Err(errors) => errors
                .into_iter()
                .map(|e| format!("{} {}", if e.field.is_empty() { "/" } else { &e.field }, e.message))
                .collect(),
        }
    }

    /// Run `call` in test mode with `grants` (default: [`Self::default_grants`])
    /// at `now` (default: the real time).
    pub async fn run(
        &self,
        call: &RecordedCall,
        grants: Option<Grants>,
        now: Option<i64>,
        invocation_id: &str,
    ) -> anyhow::Result<CallReport> {
        let grants = match grants {
            Some(g) => g,
            None => self.default_grants()?,
        };
        let now = now.unwrap_or_else(store::now_ms);
        // A tenant per call: calls cannot see one another's contacts, and two
        // fixtures may use the same email.
        let tenant = self.store.create_tenant("plugin test").await.context("creating the scratch tenant")?.id;
        let mut call = call.clone();
        let stored = if grants.store_read { self.store_contact(&tenant, &mut call, now).await? } else { None };
        let scope = CallScope {
            tenant_id: tenant,
            install_id: TEST_INSTALL.to_string(),
            grants: Arc::new(grants),
            store: self.store.clone(),
            egress: self.runtime.egress.clone(),
            test_mode: true,
            now,
            test_contact: call.contact().map(|c| c.id.clone()),
        };
        let report = match self.runtime.call_recorded(&self.plugin, scope, &call, invocation_id).await {
            Ok(called) => CallReport { result: Ok(called.value), stats: called.stats },
            Err(e) => CallReport { stats: e.stats.clone(), result: Err(e) },
        };
        Ok(match stored {
            Some(ids) => ids.map_back(report),
            None => report,
        })
    }

    /// Put the call's contact and events in the scratch store and point the
    /// call at the stored contact.
    async fn store_contact(&self, tenant: &str, call: &mut RecordedCall, now: i64) -> anyhow::Result<Option<IdMap>> {
        let Some(contact) = call.contact().cloned() else { return Ok(None) };
        if contact.id.is_empty() {
            return Ok(None);
        }
        let new = NewContact {
            email: contact.email.clone(),
            phone: contact.phone.clone(),
            first_name: contact.first_name.clone(),
            last_name: contact.last_name.clone(),
            owner: contact.owner.clone(),
            lifecycle_stage: contact.lifecycle_stage.clone(),
            score: Some(contact.score),
            tags: contact.tags.clone(),
            properties: contact.properties.clone(),
            company_id: None,
        };
        let stored = self.store.create_contact(tenant, new).await.context(
            "the call's contact could not be stored for the plugin's store reads (fix the fixture's contact)",
        )?;
        let ids = IdMap { fixture: contact.id.clone(), stored: stored.id.clone() };
        let events: Vec<NewEvent> = events_of(call)
            .into_iter()
            .filter(|e| e.contact_id.is_empty() || e.contact_id == ids.fixture)
            .map(|e| NewEvent {
                contact_id: Some(ids.stored.clone()),
                email: None,
                kind: e.kind.clone(),
                occurred_at: Some(if e.occurred_at == 0 { now } else { e.occurred_at }),
                properties: e.properties.clone(),
                idempotency_key: None,
            })
            .filter(|e| !e.kind.is_empty())
            .collect();
        if !events.is_empty() {
            self.store.insert_events(tenant, events).await.context(
                "the call's events could not be stored for the plugin's store reads (fix the fixture's events)",
            )?;
        }
        ids.point_call_at_stored(call);
        Ok(Some(ids))
    }
}

/// The fixture's contact id and the id the scratch store gave it.
struct IdMap {
    fixture: String,
    stored: String,
}

impl IdMap {
    fn point_call_at_stored(&self, call: &mut RecordedCall) {
        let swap = |id: &mut String| {
            if *id == self.fixture {
                id.clone_from(&self.stored);
            }
        };
        // A config may name the contact too (a plugin that reads "the
        // contact in `contact_id`"): config values that are exactly the id.
        fn swap_in_config(value: &mut Json, from: &str, to: &str) {
            match value {
                Json::String(s) if s == from => *s = to.to_string(),
                Json::Array(items) => items.iter_mut().for_each(|v| swap_in_config(v, from, to)),
                Json::Object(map) => map.values_mut().for_each(|v| swap_in_config(v, from, to)),
                _ => {}
            }
        }
        match call {
            RecordedCall::Score { config, .. }
            | RecordedCall::OnEvent { config, .. }
            | RecordedCall::Execute { config, .. }
            | RecordedCall::Send { config, .. }
            | RecordedCall::ParseInbound { config, .. } => swap_in_config(config, &self.fixture, &self.stored),
        }
        match call {
            RecordedCall::Score { contact, events, .. } => {
                swap(&mut contact.id);
                events.iter_mut().for_each(|e| swap(&mut e.contact_id));
            }
            RecordedCall::OnEvent { contact, event, history, .. } => {
                swap(&mut contact.id);
                swap(&mut event.contact_id);
                history.iter_mut().for_each(|e| swap(&mut e.contact_id));
            }
            RecordedCall::Execute { contact, trigger_event, .. } => {
                swap(&mut contact.id);
                if let Some(e) = trigger_event {
                    swap(&mut e.contact_id);
                }
            }
            RecordedCall::Send { contact, .. } => swap(&mut contact.id),
            RecordedCall::ParseInbound { .. } => {}
        }
    }

    /// The report as if the contact had had the fixture's id all along.
    fn map_back(&self, mut report: CallReport) -> CallReport {
        fn walk(value: &mut Json, from: &str, to: &str) {
            match value {
                Json::String(s) if s.contains(from) => *s = s.replace(from, to),
                Json::Array(items) => items.iter_mut().for_each(|v| walk(v, from, to)),
                Json::Object(map) => map.values_mut().for_each(|v| walk(v, from, to)),
                _ => {}
            }
        }
        match &mut report.result {
            Ok(v) => walk(v, &self.stored, &self.fixture),
            Err(e) => e.message = e.message.replace(&self.stored, &self.fixture),
        }
        for line in &mut report.stats.logs {
            line.message = line.message.replace(&self.stored, &self.fixture);
        }
        report
    }
}

/// The config a recorded call carries.
pub fn config_of(call: &RecordedCall) -> &Json {
    match call {
        RecordedCall::Score { config, .. }
        | RecordedCall::OnEvent { config, .. }
        | RecordedCall::Execute { config, .. }
        | RecordedCall::Send { config, .. }
        | RecordedCall::ParseInbound { config, .. } => config,
    }
}

/// The events a recorded call carries (input events, history, the event
/// offered, the trigger event), each once.
fn events_of(call: &RecordedCall) -> Vec<&RecordedEvent> {
    let mut all: Vec<&RecordedEvent> = match call {
        RecordedCall::Score { events, .. } => events.iter().collect(),
        RecordedCall::OnEvent { event, history, .. } => std::iter::once(event).chain(history).collect(),
        RecordedCall::Execute { trigger_event, .. } => trigger_event.iter().collect(),
        RecordedCall::Send { .. } | RecordedCall::ParseInbound { .. } => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    all.retain(|e| e.id.is_empty() || seen.insert(e.id.clone()));
    all
}

/// `12345678` as `12,345,678`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `fuel 41,234/50,000,000  memory 1.1/64.0 MiB  time 1.4/500 ms`: what a
/// call used against its limits.
pub fn usage(stats: &CallStats, limits: &Limits) -> String {
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    format!(
        "fuel {}/{}  memory {:.1}/{:.1} MiB  time {:.1}/{} ms",
        thousands(stats.fuel_used),
        thousands(limits.fuel),
        mib(stats.peak_memory_bytes),
        mib(limits.memory_bytes as u64),
        stats.duration_us as f64 / 1000.0,
        limits.deadline.as_millis()
    )
}

/// The lines printed once before the calls.
pub fn header(harness: &Harness) -> Vec<String> {
    let d = harness.description();
    let kinds: Vec<String> = d
        .kinds
        .iter()
        .map(|k| serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default())
        .collect();
    let limits = harness.limits();
    let mut lines = vec![format!("plugin  {} {} ({})", d.name, d.version, kinds.join(", "))];
    if !d.summary.is_empty() {
        lines.push(format!("        {}", d.summary));
    }
    lines.push(format!("file    {} ({})", harness.wasm.display(), human_size(harness.size)));
    let asks = if d.capabilities.is_empty() { "nothing".to_string() } else { d.capabilities.join(", ") };
    lines.push(format!("asks    {asks} (granted to every call unless a fixture says otherwise)"));
    lines.push(format!(
        "limits  fuel {}  memory {} MiB  deadline {} ms per call",
        thousands(limits.fuel),
        limits.memory_bytes >> 20,
        limits.deadline.as_millis()
    ));
    lines.push("mode    test: the plugin is told so, store writes are not kept, no HTTP leaves".to_string());
    lines
}

/// Run every fixture; print one line per call. `Ok(failed fixture names)`.
pub async fn run_fixtures(harness: &Harness, files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let width = files.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy().len()).max().unwrap_or(0);
    let mut failed = Vec::new();
    for file in files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let fixture = match fixtures::read(file) {
            Ok(f) => f,
            Err(e) => {
                println!("FAIL  {name:width$}  invalid fixture: {e:#}");
                failed.push(name);
                continue;
            }
        };
        let verdict = run_one(harness, &fixture, width).await?;
        if !verdict {
            failed.push(name);
        }
    }
    Ok(failed)
}

/// Run one fixture and print its lines; `Ok(true)` when it passed.
async fn run_one(harness: &Harness, fixture: &Fixture, width: usize) -> anyhow::Result<bool> {
    let grants = fixture.grants.as_ref().map(|g| g.to_grants()).transpose()?;
    let report = harness.run(&fixture.call, grants, fixture.now, &format!("test:{}", fixture.name)).await?;
    let verdict = fixtures::check(fixture.expect.as_ref(), report.outcome());
    println!(
        "{}  {:width$}  {} {}  [{}]",
        if verdict.is_ok() { "PASS" } else { "FAIL" },
        fixture.name,
        fixture.call.export(),
        report.summary(),
        usage(&report.stats, harness.limits()),
    );
    if let Err(why) = &verdict {
        println!("      {why}");
    }
    for line in &report.stats.logs {
        println!("      log {}: {}", line.level, line.message);
    }
    for problem in harness.config_problems(&fixture.call) {
        println!("      note: an install with this config would be refused: {problem}");
    }
    Ok(verdict.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(50_000_000), "50,000,000");
    }

    #[test]
    fn stored_ids_are_mapped_back() {
        let ids = IdMap { fixture: "c1".into(), stored: "0197-abc".into() };
        let report = CallReport {
            result: Ok(serde_json::json!([{"contact_id": "0197-abc", "reason": "x"}])),
            stats: CallStats::default(),
        };
        let back = ids.map_back(report);
        assert_eq!(back.result.ok(), Some(serde_json::json!([{"contact_id": "c1", "reason": "x"}])));
    }
}
