//! `/v1/installs`: install a plugin version for the tenant with a config
//! (validated against the plugin's JSON Schema, field by field) and the
//! capabilities the admin grants; change config, grants or enabled; remove.
//! `/v1/invocations`: the recorded plugin calls (failures with their cause).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::TenantAuth;
use crate::api::error::{ApiError, ApiJson};
use crate::store::Install;

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/installs", get(list).post(create))
        .route("/v1/installs/{id}", get(fetch).patch(patch).delete(remove))
        .route("/v1/invocations", get(invocations))
}

/// Query of `GET /v1/invocations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationQuery {
    /// Only this install's calls.
    pub install_id: Option<String>,
    /// Most records (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// Recorded plugin calls (failures with their cause, action runs), newest first.
async fn invocations(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    query: Result<axum::extract::Query<InvocationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let items = state.store.list_invocations(&tenant, q.install_id.as_deref(), limit).await?;
    Ok(Json(json!({"items": items})))
}

/// Body of `POST /v1/installs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInstall {
    /// The plugin version to install (from `GET /v1/plugins`).
    pub plugin_version_id: String,
    /// The config, checked against the plugin's schema.
    #[serde(default = "empty_object")]
    pub config: Value,
    /// Capabilities granted (a subset of what the plugin asks for).
    #[serde(default)]
    pub grants: Vec<String>,
}

fn empty_object() -> Value {
    json!({})
}

/// Body of `PATCH /v1/installs/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchInstall {
    /// New config.
    pub config: Option<Value>,
    /// New grants.
    pub grants: Option<Vec<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

fn install_json(state: &AppState, install: &Install) -> Value {
    let stats = state.registry.get(&install.tenant_id, &install.id).map(|a| a.stats.snapshot());
    json!({
        "id": install.id,
        "plugin_version_id": install.plugin_version_id,
        "plugin": install.plugin_name,
        "config": install.config,
        "grants": install.grants,
        "enabled": install.enabled,
        "created_at": install.created_at,
        "stats": stats,
    })
}

async fn create(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateInstall>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let install = state.registry.install(&tenant, &body.plugin_version_id, body.config, body.grants).await?;
    Ok((StatusCode::CREATED, Json(install_json(&state, &install))))
}

async fn list(TenantAuth(tenant): TenantAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let installs = state.store.list_installs(&tenant).await?;
    Ok(Json(json!({"items": installs.iter().map(|i| install_json(&state, i)).collect::<Vec<_>>()})))
}

async fn fetch(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let install = state.store.get_install(&tenant, &id).await?.ok_or(ApiError::NotFound("install"))?;
    Ok(Json(install_json(&state, &install)))
}

async fn patch(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchInstall>,
) -> Result<Json<Value>, ApiError> {
    let install = state.registry.update_install(&tenant, &id, body.config, body.grants, body.enabled).await?;
    Ok(Json(install_json(&state, &install)))
}

async fn remove(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.registry.remove_install(&tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("install"))
    }
}
