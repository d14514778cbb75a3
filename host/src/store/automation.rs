//! Lifecycle thresholds: a contact whose score reaches `min_score` moves to
//! the threshold's stage (e.g. `mql` at 50). What happens next is a
//! workflow's business (a `property_changed` trigger on `lifecycle_stage`).
//!
//! (Single-step rules lived here before workflows replaced them; their
//! tables are dropped by migration 0002.)

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::store::Store;
use crate::store::contacts::clean_stage;
use crate::store::error::{Result, StoreError};

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

impl Store {
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
