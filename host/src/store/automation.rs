//! Rules and lifecycle thresholds: the automation that exists before
//! workflows do.
//!
//! A rule is one step: when its trigger fires for a contact, run the action
//! install on it. The trigger is a trigger install (a plugin decides), or a
//! built-in matcher: an event kind plus property values the event must have,
//! evaluated natively. A lifecycle threshold moves a contact to a stage (e.g.
//! `mql`) when its score reaches `min_score`.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::contacts::clean_stage;
use crate::store::error::{Result, StoreError};
use crate::store::sql;
use crate::store::value::{Properties, decode_properties, encode_properties};
use crate::store::{Store, new_id, now_ms};

/// Longest rule name.
const MAX_RULE_NAME: usize = 200;

/// When the trigger fires, run the action install.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Rule id.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Name.
    pub name: String,
    /// The install whose trigger starts it; `None` for a built-in matcher.
    pub trigger_install_id: Option<String>,
    /// Built-in matcher: the event kind that starts it.
    pub event_kind: Option<String>,
    /// Built-in matcher: property values the event must have.
    pub event_filter: Properties,
    /// The install whose action it runs.
    pub action_install_id: String,
    /// Whether it runs.
    pub enabled: bool,
    /// Creation time, epoch ms.
    pub created_at: i64,
}

/// A rule to create: exactly one of `trigger_install_id` and `event_kind`;
/// every install named must exist in the tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    /// Name.
    pub name: String,
    /// The trigger install.
    #[serde(default)]
    pub trigger_install_id: Option<String>,
    /// Built-in matcher: the event kind.
    #[serde(default)]
    pub event_kind: Option<String>,
    /// Built-in matcher: property values the event must have.
    #[serde(default)]
    pub event_filter: Properties,
    /// The action install.
    pub action_install_id: String,
    /// Whether it runs (true when absent).
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A contact whose score reaches `min_score` moves to `stage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LifecycleThreshold {
    /// Tenant.
    pub tenant_id: String,
    /// The stage, e.g. `mql`.
    pub stage: String,
    /// The score that qualifies.
    pub min_score: f64,
}

const RULE_COLUMNS: &str =
    "id, tenant_id, name, trigger_install_id, event_kind, event_filter, action_install_id, enabled, created_at";
/// Longest event kind a matcher names.
const MAX_KIND: usize = 100;

fn rule_from_row(row: &AnyRow) -> Result<Rule> {
    Ok(Rule {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        trigger_install_id: row.try_get("trigger_install_id")?,
        event_kind: row.try_get("event_kind")?,
        event_filter: decode_properties(&row.try_get::<String, _>("event_filter")?)?,
        action_install_id: row.try_get("action_install_id")?,
        enabled: sql::get_bool(row, "enabled")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Create a rule. Fails with [`StoreError::UnknownReference`] when an
    /// install does not exist in `tenant`.
    pub async fn create_rule(&self, tenant: &str, new: NewRule) -> Result<Rule> {
        let name = new.name.trim();
        if name.is_empty() || name.len() > MAX_RULE_NAME {
            return Err(StoreError::Invalid(format!("a rule name is 1 to {MAX_RULE_NAME} bytes")));
        }
        let event_kind = new.event_kind.as_deref().map(str::trim).filter(|k| !k.is_empty());
        match (&new.trigger_install_id, event_kind) {
            (Some(_), None) => {}
            (None, Some(k)) if k.len() <= MAX_KIND => {}
            (None, Some(_)) => return Err(StoreError::Invalid(format!("an event kind is 1 to {MAX_KIND} bytes"))),
            _ => {
                return Err(StoreError::Invalid(
                    "a rule has either a trigger install or an event kind to match, not both".into(),
                ));
            }
        }
        let rule = Rule {
            id: new_id(),
            tenant_id: tenant.to_owned(),
            name: name.to_owned(),
            event_kind: event_kind.map(str::to_owned),
            trigger_install_id: new.trigger_install_id,
            event_filter: new.event_filter,
            action_install_id: new.action_install_id,
            enabled: new.enabled.unwrap_or(true),
            created_at: now_ms(),
        };
        let filter_json = encode_properties(&rule.event_filter)?;
        let mut tx = self.begin_write().await?;
        for install in rule.trigger_install_id.iter().chain([&rule.action_install_id]) {
            let found = sqlx::query("SELECT 1 AS one FROM installs WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(install.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(StoreError::UnknownReference { entity: "install", id: install.clone() });
            }
        }
        sqlx::query(&format!("INSERT INTO rules ({RULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
            .bind(&rule.id)
            .bind(tenant)
            .bind(&rule.name)
            .bind(rule.trigger_install_id.as_deref())
            .bind(rule.event_kind.as_deref())
            .bind(&filter_json)
            .bind(&rule.action_install_id)
            .bind(i64::from(rule.enabled))
            .bind(rule.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rule)
    }

    /// Rule `id` of `tenant`.
    pub async fn get_rule(&self, tenant: &str, id: &str) -> Result<Option<Rule>> {
        let row = sqlx::query(&format!("SELECT {RULE_COLUMNS} FROM rules WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rule_from_row).transpose()
    }

    /// The tenant's rules, oldest first.
    pub async fn list_rules(&self, tenant: &str) -> Result<Vec<Rule>> {
        let rows = sqlx::query(&format!("SELECT {RULE_COLUMNS} FROM rules WHERE tenant_id = $1 ORDER BY id"))
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rule_from_row).collect()
    }

    /// The enabled rules that `trigger_install_id` starts.
    pub async fn list_rules_for_trigger(&self, tenant: &str, trigger_install_id: &str) -> Result<Vec<Rule>> {
        let rows = sqlx::query(&format!(
            "SELECT {RULE_COLUMNS} FROM rules WHERE tenant_id = $1 AND trigger_install_id = $2 AND enabled = 1 \
             ORDER BY id"
        ))
        .bind(tenant)
        .bind(trigger_install_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rule_from_row).collect()
    }

    /// Enable or disable rule `id`; false when it does not exist.
    pub async fn set_rule_enabled(&self, tenant: &str, id: &str, enabled: bool) -> Result<bool> {
        let done = sqlx::query("UPDATE rules SET enabled = $3 WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .bind(i64::from(enabled))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Delete rule `id`; false when it does not exist.
    pub async fn delete_rule(&self, tenant: &str, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM rules WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Set (create or replace) the score at which contacts move to `stage`.
    pub async fn set_lifecycle_threshold(
        &self,
        tenant: &str,
        stage: &str,
        min_score: f64,
    ) -> Result<LifecycleThreshold> {
        let stage = clean_stage(stage)?;
        if !min_score.is_finite() {
            return Err(StoreError::Invalid("min_score must be a finite number".into()));
        }
        sqlx::query(
            "INSERT INTO lifecycle_thresholds (tenant_id, stage, min_score) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, stage) DO UPDATE SET min_score = excluded.min_score",
        )
        .bind(tenant)
        .bind(&stage)
        .bind(min_score)
        .execute(&self.pool)
        .await?;
        Ok(LifecycleThreshold { tenant_id: tenant.to_owned(), stage, min_score })
    }

    /// The tenant's thresholds, lowest score first.
    pub async fn list_lifecycle_thresholds(&self, tenant: &str) -> Result<Vec<LifecycleThreshold>> {
        let rows = sqlx::query(
            "SELECT tenant_id, stage, min_score FROM lifecycle_thresholds WHERE tenant_id = $1 \
             ORDER BY min_score, stage",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LifecycleThreshold {
                    tenant_id: r.try_get("tenant_id")?,
                    stage: r.try_get("stage")?,
                    min_score: r.try_get("min_score")?,
                })
            })
            .collect()
    }

    /// Remove the threshold of `stage`; false when there was none.
    pub async fn delete_lifecycle_threshold(&self, tenant: &str, stage: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM lifecycle_thresholds WHERE tenant_id = $1 AND stage = $2")
            .bind(tenant)
            .bind(stage.trim())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
