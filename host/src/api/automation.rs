//! `/v1/thresholds`: score thresholds that move the lifecycle stage (e.g.
//! `mql` at 50). What happens then is a workflow's business (a
//! `property_changed` trigger on `lifecycle_stage`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::TenantAuth;
use crate::api::error::{ApiError, ApiJson};
use crate::cluster::Change;
use crate::engine::pipeline::STAGES;

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/thresholds", get(list_thresholds))
        .route("/v1/thresholds/{stage}", put(set_threshold).delete(delete_threshold))
}

async fn list_thresholds(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"items": state.store.list_lifecycle_thresholds(&tenant).await?})))
}

/// Body of `PUT /v1/thresholds/{stage}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetThreshold {
    /// The score at which a contact moves to the stage.
    pub min_score: f64,
}

async fn set_threshold(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(stage): Path<String>,
    ApiJson(body): ApiJson<SetThreshold>,
) -> Result<Json<Value>, ApiError> {
    if !STAGES.contains(&stage.as_str()) {
        return Err(ApiError::invalid(format!("stage `{stage}` is not one of {}", STAGES.join(", "))));
    }
    if !body.min_score.is_finite() {
        return Err(ApiError::invalid("min_score must be a finite number"));
    }
    let threshold = state.store.set_lifecycle_threshold(&tenant, &stage, body.min_score).await?;
    state.node.changed(Change::Automation { tenant: tenant.clone() });
    Ok(Json(json!(threshold)))
}

async fn delete_threshold(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(stage): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleted = state.store.delete_lifecycle_threshold(&tenant, &stage).await?;
    state.node.changed(Change::Automation { tenant: tenant.clone() });
    if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::NotFound("threshold")) }
}
