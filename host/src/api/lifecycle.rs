//! An install's version over time: `GET /v1/installs/{id}/history` (every
//! upgrade, rollback, automatic rollback and refused upgrade, with reasons
//! and self-test checks) and `POST /v1/installs/{id}/rollback` (back to the
//! version it ran before, or to any earlier version, in one call).

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::TenantAuth;
use crate::api::error::ApiError;

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/installs/{id}/history", get(history)).route("/v1/installs/{id}/rollback", post(rollback))
}

/// Query of `GET /v1/installs/{id}/history`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<u32>,
}

async fn history(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    state.store.get_install(&tenant, &id).await?.ok_or(ApiError::NotFound("install"))?;
    let items = state.store.install_history(&tenant, &id, q.limit.unwrap_or(100)).await?;
    Ok(Json(json!({"items": items})))
}

/// Body of `POST /v1/installs/{id}/rollback` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version to go back to; without it, the one the install ran
    /// before its latest change.
    #[serde(default)]
    pub plugin_version_id: Option<String>,
}

async fn rollback(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // The body is optional: empty means "the version before".
    let target = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<Rollback>(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid rollback body: {e}")))?
            .plugin_version_id
    };
    let install = state.registry.roll_back_install(&tenant, &id, target.as_deref()).await?;
    Ok(Json(json!({
        "id": install.id,
        "plugin_version_id": install.plugin_version_id,
        "plugin_version": install.plugin_version,
    })))
}
