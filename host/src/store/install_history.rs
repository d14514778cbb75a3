//! The history of the versions an install ran: every upgrade, rollback,
//! automatic rollback and refused upgrade, with the reason and the new
//! version's self-test checks. What an admin reads to learn why an install
//! runs the version it runs.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::Store;
use crate::store::error::Result;
use crate::store::sql::{self, page_limit};

/// Longest reason kept: it quotes plugin output (trap messages).
const MAX_REASON: usize = 2000;

/// One change (or refused change) of an install's version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstallChange {
    /// Record id.
    pub id: String,
    /// The tenant.
    #[serde(skip)]
    pub tenant_id: String,
    /// The install.
    pub install_id: String,
    /// `upgraded`, `rolled-back`, `auto-upgraded`, `auto-rolled-back` or
    /// `refused` (the new version failed its health check; the old stayed).
    pub action: String,
    /// The version it ran before.
    pub from_version_id: Option<String>,
    /// The version it runs after (or, when refused, would have run).
    pub to_version_id: Option<String>,
    /// The version string before.
    pub from_version: Option<String>,
    /// The version string after.
    pub to_version: Option<String>,
    /// Why, in words.
    pub reason: Option<String>,
    /// The new version's self-test checks, when it has a self-test.
    pub checks: Option<serde_json::Value>,
    /// When, epoch ms.
    pub at: i64,
}

const COLUMNS: &str =
    "id, tenant_id, install_id, action, from_version_id, to_version_id, from_version, to_version, reason, checks, at";

fn from_row(row: &AnyRow) -> Result<InstallChange> {
    let checks: Option<String> = row.try_get("checks")?;
    Ok(InstallChange {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        install_id: row.try_get("install_id")?,
        action: row.try_get("action")?,
        from_version_id: row.try_get("from_version_id")?,
        to_version_id: row.try_get("to_version_id")?,
        from_version: row.try_get("from_version")?,
        to_version: row.try_get("to_version")?,
        reason: row.try_get("reason")?,
        checks: checks.and_then(|c| serde_json::from_str(&c).ok()),
        at: row.try_get("at")?,
    })
}

impl Store {
    /// Keep one change of an install's version.
    pub async fn record_install_change(&self, c: &InstallChange) -> Result<()> {
        let reason: Option<String> = c.reason.as_ref().map(|r| r.chars().take(MAX_REASON).collect());
        let checks = c.checks.as_ref().map(sql::to_json).transpose()?;
        let mut tx = self.begin_write().await?;
        sqlx::query(&format!(
            "INSERT INTO install_history ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&c.id)
        .bind(&c.tenant_id)
        .bind(&c.install_id)
        .bind(&c.action)
        .bind(c.from_version_id.as_deref())
        .bind(c.to_version_id.as_deref())
        .bind(c.from_version.as_deref())
        .bind(c.to_version.as_deref())
        .bind(reason.as_deref())
        .bind(checks.as_deref())
        .bind(c.at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The changes of install `install_id`, newest first.
    pub async fn install_history(&self, tenant: &str, install_id: &str, limit: u32) -> Result<Vec<InstallChange>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM install_history WHERE tenant_id = $1 AND install_id = $2 \
             ORDER BY at DESC, id DESC LIMIT $3"
        ))
        .bind(tenant)
        .bind(install_id)
        .bind(page_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }
}
