//! `POST /v1/tenants` (admin): create a tenant and its first API key;
//! `GET/PATCH /v1/tenant` (the caller's own tenant): its settings, today the
//! time zone that delays ("until 09:00") and schedules are read in.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::{AdminAuth, TenantAuth};
use crate::api::error::{ApiError, ApiJson};
use crate::cluster::Change;
use crate::engine::workflows::time;
use crate::store::Principal;

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/tenants", post(create).get(list)).route("/v1/tenant", get(fetch_own).patch(patch_own))
}

/// Body of `POST /v1/tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Display name.
    pub name: String,
    /// IANA time zone, e.g. `Europe/Berlin` (default `UTC`).
    #[serde(default)]
    pub time_zone: Option<String>,
}

async fn create(
    _admin: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if let Some(tz) = &body.time_zone {
        time::parse_time_zone(tz).map_err(|m| ApiError::invalid(format!("time_zone: {m}")))?;
    }
    let mut tenant = state.store.create_tenant(&body.name).await?;
    if let Some(tz) = body.time_zone {
        state.store.set_tenant_time_zone(&tenant.id, &tz).await?;
        tenant.time_zone = tz;
    }
    let key = state.store.create_api_key(&Principal::Tenant(tenant.id.clone())).await?;
    Ok((StatusCode::CREATED, Json(json!({"tenant": tenant, "api_key": key}))))
}

async fn list(_admin: AdminAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"items": state.store.list_tenants().await?})))
}

async fn fetch_own(TenantAuth(tenant): TenantAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let t = state.store.get_tenant(&tenant).await?.ok_or(ApiError::NotFound("tenant"))?;
    Ok(Json(json!(t)))
}

/// Body of `PATCH /v1/tenant`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub time_zone: String,
}

async fn patch_own(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PatchTenant>,
) -> Result<Json<Value>, ApiError> {
    time::parse_time_zone(&body.time_zone).map_err(|m| ApiError::invalid(format!("time_zone: {m}")))?;
    state.store.set_tenant_time_zone(&tenant, &body.time_zone).await?;
    state.node.changed(Change::TimeZone { tenant: tenant.clone() });
    fetch_own(TenantAuth(tenant), State(state)).await
}
