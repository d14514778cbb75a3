//! The record of plugin calls.
//!
//! Every invocation (score, execute, on-event, ...) is kept with its outcome,
//! the cause of a failure (`deadline`, `fuel`, `memory`, `trap`, `plugin`,
//! `output-too-large`, ...), fuel and time used: the run history users read,
//! and the failure counts the circuit breaker reads.
//!
//! ## Inputs, for replay
//! A record also keeps what the call was given (`input_json`: a
//! `RecordedCall` document, see [`crate::runtime::recorded`]) and the plugin
//! version that ran, so a developer can fetch a failed call and run it
//! against a fixed build (`cairn plugin replay`). Inputs hold customer data
//! and can be large, so:
//! - an input over [`MAX_INPUT_JSON`] is not written at all: the record says
//!   [`InputStatus::TooLarge`];
//! - inputs are erased after a retention period by
//!   [`Store::expire_invocation_inputs`] (the server runs it periodically):
//!   the record stays, marked [`InputStatus::Expired`];
//! - lists and the contact timeline never read them; only
//!   [`Store::get_invocation`] does.

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Arguments, Row};

use crate::store::Store;
use crate::store::coalesce::Job;
use crate::store::error::{Result, StoreError};
use crate::store::script::{Script, Slot};
use crate::store::sql::{self, Arg, Builder, page_limit};

/// Longest error message kept: a plugin controls this text and could
/// otherwise fill the table with one failure.
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Largest output JSON kept per invocation or action run.
pub const MAX_OUTPUT_JSON: usize = 64 << 10;
/// Largest input JSON kept per invocation. A contact with many properties
/// and its recent events fit many times over; an input larger than this is
/// a contact stuffed with data, and keeping it for every call of every step
/// would let one tenant grow the table by gigabytes a day.
pub const MAX_INPUT_JSON: usize = 256 << 10;
/// Rows one pass of [`Store::expire_invocation_inputs`] erases per
/// statement, so a long backlog never holds SQLite's write lock (or a
/// PostgreSQL transaction) for long.
const EXPIRE_BATCH: i64 = 1000;

/// The columns lists and the timeline read: everything but the input.
pub(crate) const INVOCATION_COLUMNS: &str = "id, tenant_id, install_id, kind, contact_id, event_id, ok, error_cause, \
     error_message, fuel_used, duration_us, idempotency_key, output_json, at, plugin_version_id, input_status";

/// What became of a call's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputStatus {
    /// Kept: [`Store::get_invocation`] returns it.
    Kept,
    /// Larger than [`MAX_INPUT_JSON`]: never written.
    TooLarge,
    /// Erased by the retention task (the record itself stays).
    Expired,
}

impl InputStatus {
    fn as_str(self) -> &'static str {
        match self {
            InputStatus::Kept => "kept",
            InputStatus::TooLarge => "too-large",
            InputStatus::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Result<InputStatus> {
        match s {
            "kept" => Ok(InputStatus::Kept),
            "too-large" => Ok(InputStatus::TooLarge),
            "expired" => Ok(InputStatus::Expired),
            other => Err(StoreError::Corrupt(format!("column input_status: unknown value `{other}`"))),
        }
    }
}

/// One recorded plugin call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    /// Record id: the `invocation-id` the plugin saw in its call context.
    pub id: String,
    /// The tenant of the call.
    pub tenant_id: String,
    /// The install called.
    pub install_id: String,
    /// Which export: `score`, `execute`, `send`, `on-event`, `parse-inbound`.
    pub kind: String,
    /// The contact the call was about.
    pub contact_id: Option<String>,
    /// The event that caused it.
    pub event_id: Option<String>,
    /// Whether it succeeded.
    pub ok: bool,
    /// Why it failed: `deadline`, `fuel`, `memory`, `trap`, `plugin`, `output-too-large`, ...
    pub error_cause: Option<String>,
    /// The failure in words (cut to 4 KiB).
    pub error_message: Option<String>,
    /// Fuel (instructions) used.
    pub fuel_used: Option<i64>,
    /// Wall time, microseconds.
    pub duration_us: i64,
    /// The idempotency key passed to an action.
    pub idempotency_key: Option<String>,
    /// What it returned, as JSON.
    pub output_json: Option<String>,
    /// When, epoch ms (business time).
    pub at: i64,
    /// The plugin version that ran (`None` on records from before inputs
    /// were kept).
    #[serde(default)]
    pub plugin_version_id: Option<String>,
    /// What the call was given: a `RecordedCall` as JSON text. Writers set
    /// it; [`Store::get_invocation`] reads it back; lists and the timeline
    /// leave it `None` (it can be 256 KiB a row). Not serialized: the API
    /// shows it parsed, as `input`.
    #[serde(skip)]
    pub input_json: Option<String>,
    /// What became of the input; `None` when the call recorded none. Set by
    /// the store from `input_json` (a writer's value is ignored).
    #[serde(default)]
    pub input_status: Option<InputStatus>,
}

/// Which invocations [`Store::list_invocations_where`] returns; every given
/// field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationFilter {
    /// Calls of this install.
    #[serde(default)]
    pub install_id: Option<String>,
    /// Calls about this contact.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// Only successes (`true`) or only failures (`false`).
    #[serde(default)]
    pub ok: Option<bool>,
}

/// Successes and failures of an install over a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationCounts {
    /// Calls that succeeded.
    pub ok: i64,
    /// Calls that failed.
    pub failed: i64,
}

/// Cut `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Read an invocation row (the [`INVOCATION_COLUMNS`]; `input_json` is left
/// `None`).
pub(crate) fn invocation_from_row(row: &AnyRow) -> Result<InvocationRecord> {
    let input_status: Option<String> = row.try_get("input_status")?;
    Ok(InvocationRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        install_id: row.try_get("install_id")?,
        kind: row.try_get("kind")?,
        contact_id: row.try_get("contact_id")?,
        event_id: row.try_get("event_id")?,
        ok: sql::get_bool(row, "ok")?,
        error_cause: row.try_get("error_cause")?,
        error_message: row.try_get("error_message")?,
        fuel_used: row.try_get("fuel_used")?,
        duration_us: row.try_get("duration_us")?,
        idempotency_key: row.try_get("idempotency_key")?,
        output_json: row.try_get("output_json")?,
        at: row.try_get("at")?,
        plugin_version_id: row.try_get("plugin_version_id")?,
        input_json: None,
        input_status: input_status.as_deref().map(InputStatus::parse).transpose()?,
    })
}

/// Add the insert of one record to `script`; with `of_run`, the record is
/// kept only while that run of its tenant exists. An output larger than
/// [`MAX_OUTPUT_JSON`] is dropped (the record says so in `error_message`
/// when it has none); an input larger than [`MAX_INPUT_JSON`] is dropped and
/// marked [`InputStatus::TooLarge`].
pub(crate) fn push_invocation(script: &mut Script<'_>, r: &InvocationRecord, of_run: Option<&str>) -> Result<Slot> {
    let too_big = r.output_json.as_ref().is_some_and(|o| o.len() > MAX_OUTPUT_JSON);
    let output = if too_big { None } else { r.output_json.clone() };
    let message = match (&r.error_message, too_big) {
        (Some(m), _) => Some(cut(m, MAX_ERROR_MESSAGE)),
        (None, true) => Some("output not kept: larger than 64 KiB"),
        (None, false) => None,
    };
    let (input, input_status) = match r.input_json.as_deref() {
        None => (None, None),
        Some(i) if i.len() > MAX_INPUT_JSON => (None, Some(InputStatus::TooLarge)),
        Some(i) => (Some(i.to_owned()), Some(InputStatus::Kept)),
    };
    let mut args = AnyArguments::default();
    let add = |args: &mut AnyArguments<'_>| -> std::result::Result<(), sqlx::error::BoxDynError> {
        args.add(r.id.clone())?;
        args.add(r.tenant_id.clone())?;
        args.add(r.install_id.clone())?;
        args.add(r.kind.clone())?;
        args.add(r.contact_id.clone())?;
        args.add(r.event_id.clone())?;
        args.add(i64::from(r.ok))?;
        args.add(r.error_cause.clone())?;
        args.add(message.map(str::to_owned))?;
        args.add(r.fuel_used)?;
        args.add(r.duration_us)?;
        args.add(r.idempotency_key.clone())?;
        args.add(output)?;
        args.add(r.at)?;
        args.add(r.plugin_version_id.clone())?;
        args.add(input_status.map(InputStatus::as_str))?;
        args.add(input)?;
        if let Some(run) = of_run {
            args.add(run.to_owned())?;
        }
        Ok(())
    };
    add(&mut args).map_err(sqlx::Error::Encode)?;
    let values = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17";
    // A step's call is kept only while its run exists (see
    // `Store::save_run_with_calls`).
    let sql = match of_run {
        None => format!("INSERT INTO invocations ({INVOCATION_COLUMNS}, input_json) VALUES ({values})"),
        Some(_) => format!(
            "INSERT INTO invocations ({INVOCATION_COLUMNS}, input_json) SELECT {values} \
             WHERE EXISTS (SELECT 1 FROM workflow_runs WHERE tenant_id = $2 AND id = $18)"
        ),
    };
    Ok(script.push_with(sql, args))
}

impl Store {
    /// Keep the record of one plugin call (see [`insert_invocation`] for
    /// the caps on output and input). Workflow steps record theirs with the
    /// step instead ([`Store::save_run_with_calls`]).
    ///
    /// On SQLite, records of one tenant made at the same moment (a burst of
    /// calls failing at their deadline) share one write turn
    /// (`store::coalesce`).
    pub async fn record_invocation(&self, r: &InvocationRecord) -> Result<()> {
        let mut script = Script::new(self.backend);
        push_invocation(&mut script, r, None)?;
        let Some(groups) = &self.groups else {
            let mut conn = self.pool.acquire().await?;
            script.run(&mut conn).await?;
            return Ok(());
        };
        groups.invocations.write(self, &r.tenant_id, Job::new(script, |_| Ok(()))).await
    }

    /// Invocation `id` of `tenant`, with its input when one is kept. `None`
    /// for an unknown id or another tenant's.
    pub async fn get_invocation(&self, tenant: &str, id: &str) -> Result<Option<InvocationRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {INVOCATION_COLUMNS}, input_json FROM invocations WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut record = invocation_from_row(&row)?;
        record.input_json = row.try_get("input_json")?;
        Ok(Some(record))
    }

    /// The tenant's latest invocations, newest first, of one install when
    /// `install_id` is given (inputs are not read).
    pub async fn list_invocations(
        &self,
        tenant: &str,
        install_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<InvocationRecord>> {
        let filter = InvocationFilter { install_id: install_id.map(str::to_string), ..InvocationFilter::default() };
        self.list_invocations_where(tenant, &filter, limit).await
    }

    /// The tenant's latest invocations matching `filter`, newest first, at
    /// most `limit` (1 to 1000; inputs are not read).
    pub async fn list_invocations_where(
        &self,
        tenant: &str,
        filter: &InvocationFilter,
        limit: u32,
    ) -> Result<Vec<InvocationRecord>> {
        let mut b = Builder::new(&format!("SELECT {INVOCATION_COLUMNS} FROM invocations WHERE tenant_id = "));
        let t = b.arg(Arg::Text(tenant));
        b.push(&t);
        if let Some(i) = &filter.install_id {
            b.push_arg(" AND install_id = ", Arg::Text(i));
        }
        if let Some(c) = &filter.contact_id {
            b.push_arg(" AND contact_id = ", Arg::Text(c));
        }
        if let Some(ok) = filter.ok {
            b.push_arg(" AND ok = ", Arg::Int(i64::from(ok)));
        }
        b.push_arg(" ORDER BY at DESC, id DESC LIMIT ", Arg::Int(page_limit(limit)));
        let rows = b.query().fetch_all(&self.pool).await?;
        rows.iter().map(invocation_from_row).collect()
    }

    /// Erase the inputs of invocations recorded before `before_ms` (business
    /// time, epoch ms), every tenant's: `input_json` becomes NULL and the
    /// record says [`InputStatus::Expired`]; the record itself stays (the
    /// run history and failure counts read it). Returns how many inputs were
    /// erased. Works in batches, each its own short write.
    pub async fn expire_invocation_inputs(&self, before_ms: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let mut turn = self.write_gate().await?;
            let done = sqlx::query(
                "UPDATE invocations SET input_json = NULL, input_status = 'expired' WHERE id IN \
                 (SELECT id FROM invocations WHERE input_json IS NOT NULL AND at < $1 LIMIT $2)",
            )
            .bind(before_ms)
            .bind(EXPIRE_BATCH)
            .execute(turn.conn(&self.pool).await?)
            .await;
            let done = turn.check(done)?;
            total += done.rows_affected();
            if done.rows_affected() < EXPIRE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Successes and failures of install `install_id` at or after `since`.
    pub async fn invocation_counts(&self, tenant: &str, install_id: &str, since: i64) -> Result<InvocationCounts> {
        let rows = sqlx::query(
            "SELECT ok, COUNT(*) AS n FROM invocations WHERE tenant_id = $1 AND install_id = $2 AND at >= $3 GROUP BY ok",
        )
        .bind(tenant)
        .bind(install_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = InvocationCounts::default();
        for row in &rows {
            let n: i64 = row.try_get("n")?;
            if sql::get_bool(row, "ok")? {
                counts.ok += n;
            } else {
                counts.failed += n;
            }
        }
        Ok(counts)
    }
}
