//! `cairn plugin replay`: run a call that happened on a server again, against
//! a local build, and show the recorded outcome next to the new one.
//!
//! The server keeps a failed call's input with its invocation record (a
//! [`RecordedCall`], for a limited time). `replay <id>` fetches it
//! (`GET /v1/invocations/{id}`, see [`fetch_invocation`]); `replay --input
//! <file>` reads it from a file instead: a saved invocation record, a
//! fixture, or a bare recorded call. The call then runs exactly as one
//! fixture of `cairn plugin test` does (test mode, scratch store, the
//! plugin's requested grants), at the time the invocation was recorded.
//! `--save` keeps the input as a fixture, so the fix stays tested.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value as Json;

use super::build::resolve_wasm;
use super::fixtures;
use super::push::{base_url, client, send};
use super::runner::{CallReport, Harness, LimitArgs, usage};
use crate::runtime::recorded::RecordedCall;

/// An invocation record as `GET /v1/invocations/{id}` returns it (fields
/// this command does not use are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FetchedInvocation {
    /// Record id.
    #[serde(default)]
    pub id: Option<String>,
    /// The install called.
    #[serde(default)]
    pub install_id: Option<String>,
    /// The export (`score`, `execute`, ...).
    #[serde(default)]
    pub kind: Option<String>,
    /// Whether it succeeded.
    #[serde(default)]
    pub ok: Option<bool>,
    /// Why it failed.
    #[serde(default)]
    pub error_cause: Option<String>,
    /// The failure in words.
    #[serde(default)]
    pub error_message: Option<String>,
    /// What it returned (JSON, or JSON text).
    #[serde(default)]
    pub output_json: Option<Json>,
    /// When, epoch ms (the replay's clock).
    #[serde(default)]
    pub at: Option<i64>,
    /// The call's input; `null` when it was not kept or has expired.
    #[serde(default)]
    pub input: Option<Json>,
    /// The input was erased by the server's retention.
    #[serde(default)]
    pub input_expired: Option<bool>,
    /// The input was larger than the server keeps.
    #[serde(default)]
    pub input_dropped: Option<bool>,
}

impl FetchedInvocation {
    /// The recorded input, or why there is none.
    pub fn call(&self) -> anyhow::Result<RecordedCall> {
        let id = self.id.as_deref().unwrap_or("?");
        let Some(input) = self.input.clone().filter(|i| !i.is_null()) else {
            let why = if self.input_expired == Some(true) {
                "it has expired (the server erases inputs after its retention period)"
            } else if self.input_dropped == Some(true) {
                "it was larger than the server keeps"
            } else {
                "the server did not keep it, or it has expired"
            };
            bail!(
                "invocation {id} has no recorded input: {why}; nothing to replay \
                 (write the call as a fixture by hand instead)"
            );
        };
        serde_json::from_value(input).with_context(|| {
            format!("invocation {id}: its input is not a recorded call this cairn understands (is it older or newer?)")
        })
    }

    /// `ok {...}` or `failed <cause>: <message>`, as recorded.
    pub fn recorded_outcome(&self) -> String {
        match self.ok {
            Some(true) => {
                let output = match &self.output_json {
                    // The record may hold the output as JSON text.
                    Some(Json::String(s)) => {
                        serde_json::from_str::<Json>(s).unwrap_or_else(|_| Json::String(s.clone()))
                    }
                    Some(v) => v.clone(),
                    None => Json::Null,
                };
                format!("ok {output}")
            }
            Some(false) => format!(
                "failed {}: {}",
                self.error_cause.as_deref().unwrap_or("?"),
                self.error_message.as_deref().unwrap_or("")
            ),
            None => "unknown".to_string(),
        }
    }
}

/// Fetch invocation `id` from the server, as the tenant.
pub async fn fetch_invocation(server: &str, key: &str, id: &str) -> anyhow::Result<FetchedInvocation> {
    let base = base_url(server)?;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c)) {
        bail!("`{id}` is not an invocation id (ids look like 0197b0c2-…; see GET /v1/invocations)");
    }
    if key.trim().is_empty() {
        bail!("no API key: pass --key <tenant key> or set CAIRN_API_KEY");
    }
    let request = client()?.get(format!("{base}/v1/invocations/{id}")).bearer_auth(key.trim());
    let (_, body) = send(request, &format!("GET /v1/invocations/{id}")).await?;
    let mut record: FetchedInvocation =
        serde_json::from_value(body).context("the server's invocation record has an unexpected shape")?;
    record.id.get_or_insert_with(|| id.to_string());
    Ok(record)
}

/// Where the call to replay comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An invocation on a server.
    Server {
        /// Base URL.
        server: String,
        /// Tenant key.
        key: String,
        /// Invocation id.
        id: String,
    },
    /// A file: an invocation record, a fixture or a recorded call.
    File(PathBuf),
}

/// What `plugin replay` is asked for.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// The call.
    pub source: Source,
    /// The crate whose build is run (unless `plugin`).
    pub crate_dir: PathBuf,
    /// The `.wasm` to run.
    pub plugin: Option<PathBuf>,
    /// Write the input here as a fixture.
    pub save: Option<PathBuf>,
    /// Per-call limits.
    pub limits: LimitArgs,
}

/// A call to replay, with what is known about its first run.
#[derive(Debug, Clone)]
pub struct Replayable {
    /// The call.
    pub call: RecordedCall,
    /// The record it came from, when it came from one.
    pub record: Option<FetchedInvocation>,
    /// Grants from a fixture.
    pub grants: Option<fixtures::FixtureGrants>,
    /// The call's clock.
    pub now: Option<i64>,
}

/// Read a file given to `--input`.
pub fn read_input(path: &Path) -> anyhow::Result<Replayable> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Json = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if value.get("input").is_some() {
        let record: FetchedInvocation =
            serde_json::from_value(value).with_context(|| format!("{} is not an invocation record", path.display()))?;
        return Ok(Replayable { call: record.call()?, now: record.at, record: Some(record), grants: None });
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let fixture = fixtures::parse(&name, &text)?;
    Ok(Replayable { call: fixture.call, record: None, grants: fixture.grants, now: fixture.now })
}

/// Run the call against the plugin; the report, with the loaded harness.
pub async fn replay(request: &ReplayRequest) -> anyhow::Result<(Replayable, CallReport, Harness)> {
    let replayable = match &request.source {
        Source::File(path) => read_input(path)?,
        Source::Server { server, key, id } => {
            let record = fetch_invocation(server, key, id).await?;
            Replayable { call: record.call()?, now: record.at, record: Some(record), grants: None }
        }
    };
    let wasm = resolve_wasm(&request.crate_dir, request.plugin.as_deref())?;
    let harness = Harness::load(&wasm, request.limits.limits()).await?;
    let grants = replayable.grants.as_ref().map(|g| g.to_grants()).transpose()?;
    let id = replayable.record.as_ref().and_then(|r| r.id.clone()).unwrap_or_else(|| "input".into());
    let report = harness.run(&replayable.call, grants, replayable.now, &format!("replay:{id}")).await?;
    Ok((replayable, report, harness))
}

/// `cairn plugin replay`: print the recorded and the new outcome; fails
/// (exit code 1) when the call fails now.
pub async fn run(request: &ReplayRequest) -> anyhow::Result<()> {
    let (replayable, report, harness) = replay(request).await?;
    let d = harness.description();
    println!("plugin    {} {} ({})", d.name, d.version, harness.wasm.display());
    let recorded = match &replayable.record {
        Some(record) => {
            println!(
                "call      {} of invocation {} (install {})",
                replayable.call.export(),
                record.id.as_deref().unwrap_or("?"),
                record.install_id.as_deref().unwrap_or("?")
            );
            let outcome = record.recorded_outcome();
            println!("recorded: {outcome}");
            outcome
        }
        None => {
            println!("call      {} from {}", replayable.call.export(), input_name(&request.source));
            "not recorded".to_string()
        }
    };
    println!("now:      {}  [{}]", report.summary(), usage(&report.stats, harness.limits()));
    for line in &report.stats.logs {
        println!("          log {}: {}", line.level, line.message);
    }
    if let Some(path) = &request.save {
        save(path, &replayable, &recorded)?;
        println!("saved the input as fixture {}", path.display());
    }
    if let Err(e) = &report.result {
        bail!("the call still fails with this build ({}: {})", e.cause.as_str(), e.message);
    }
    Ok(())
}

fn input_name(source: &Source) -> String {
    match source {
        Source::File(p) => p.display().to_string(),
        Source::Server { id, .. } => id.clone(),
    }
}

/// Write the call as a fixture file (refusing to overwrite one).
fn save(path: &Path, replayable: &Replayable, recorded: &str) -> anyhow::Result<()> {
    if path.exists() {
        bail!("--save {} already exists: choose another file name", path.display());
    }
    let origin = match &replayable.record {
        Some(r) => format!("replay of invocation {} (recorded: {recorded})", r.id.as_deref().unwrap_or("?")),
        None => "saved by cairn plugin replay".to_string(),
    };
    let text = fixtures::fixture_text(&origin, replayable.now, &replayable.call, None);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_without_input_says_so() {
        let record: FetchedInvocation =
            serde_json::from_value(json!({"id": "inv1", "ok": false, "error_cause": "trap", "input": null})).unwrap();
        let e = format!("{:#}", record.call().unwrap_err());
        assert!(e.contains("inv1") && e.contains("no recorded input"), "{e}");
        let expired: FetchedInvocation =
            serde_json::from_value(json!({"id": "inv2", "input": null, "input_expired": true})).unwrap();
        let e = format!("{:#}", expired.call().unwrap_err());
        assert!(e.contains("expired"), "{e}");
    }

    #[test]
    fn the_recorded_outcome_reads_like_the_new_one() {
        let failed: FetchedInvocation = serde_json::from_value(
            json!({"ok": false, "error_cause": "trap", "error_message": "unreachable", "input": {"export": "score"}}),
        )
        .unwrap();
        assert_eq!(failed.recorded_outcome(), "failed trap: unreachable");
        assert_eq!(failed.call().unwrap().export(), "score");
        let ok: FetchedInvocation =
            serde_json::from_value(json!({"ok": true, "output_json": "{\"tag\":\"vip\"}"})).unwrap();
        assert_eq!(ok.recorded_outcome(), r#"ok {"tag":"vip"}"#);
    }
}
