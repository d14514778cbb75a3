//! The record of plugin calls.
//!
//! Every invocation (score, execute, on-event, ...) is kept with its outcome,
//! the cause of a failure (`deadline`, `fuel`, `memory`, `trap`, `plugin`,
//! `output-too-large`, ...), fuel and time used: the run history users read,
//! and the failure counts the circuit breaker reads.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::Store;
use crate::store::error::Result;
use crate::store::sql::{self, page_limit};

/// Longest error message kept: a plugin controls this text and could
/// otherwise fill the table with one failure.
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Largest output JSON kept per invocation or action run.
pub const MAX_OUTPUT_JSON: usize = 64 << 10;

pub(crate) const INVOCATION_COLUMNS: &str = "id, tenant_id, install_id, kind, contact_id, event_id, ok, error_cause, \
     error_message, fuel_used, duration_us, idempotency_key, output_json, at";

/// One recorded plugin call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    /// Record id (use [`crate::store::new_id`]).
    pub id: String,
    /// The tenant of the call.
    pub tenant_id: String,
    /// The install called.
    pub install_id: String,
    /// Which export: `score`, `execute`, `on-event`, ...
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
    /// When, epoch ms.
    pub at: i64,
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

/// Read an invocation row.
pub(crate) fn invocation_from_row(row: &AnyRow) -> Result<InvocationRecord> {
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
    })
}

impl Store {
    /// Keep the record of one plugin call. An output larger than
    /// [`MAX_OUTPUT_JSON`] is dropped (the record says so in `error_message`
    /// when it has none).
    pub async fn record_invocation(&self, r: &InvocationRecord) -> Result<()> {
        let too_big = r.output_json.as_ref().is_some_and(|o| o.len() > MAX_OUTPUT_JSON);
        let output = if too_big { None } else { r.output_json.as_deref() };
        let message = match (&r.error_message, too_big) {
            (Some(m), _) => Some(cut(m, MAX_ERROR_MESSAGE)),
            (None, true) => Some("output not kept: larger than 64 KiB"),
            (None, false) => None,
        };
        sqlx::query(&format!(
            "INSERT INTO invocations ({INVOCATION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&r.id)
        .bind(&r.tenant_id)
        .bind(&r.install_id)
        .bind(&r.kind)
        .bind(r.contact_id.as_deref())
        .bind(r.event_id.as_deref())
        .bind(i64::from(r.ok))
        .bind(r.error_cause.as_deref())
        .bind(message)
        .bind(r.fuel_used)
        .bind(r.duration_us)
        .bind(r.idempotency_key.as_deref())
        .bind(output)
        .bind(r.at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The tenant's latest invocations, newest first, of one install when
    /// `install_id` is given.
    pub async fn list_invocations(
        &self,
        tenant: &str,
        install_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<InvocationRecord>> {
        let filter = if install_id.is_some() { " AND install_id = $3" } else { "" };
        let sql = format!(
            "SELECT {INVOCATION_COLUMNS} FROM invocations WHERE tenant_id = $1{filter} ORDER BY at DESC, id DESC LIMIT $2"
        );
        let mut q = sqlx::query(&sql).bind(tenant).bind(page_limit(limit));
        if let Some(i) = install_id {
            q = q.bind(i);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(invocation_from_row).collect()
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
