//! `POST /v1/tenants` (admin): create a tenant and its first API key.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::AdminAuth;
use crate::api::error::{ApiError, ApiJson};
use crate::store::Principal;

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/tenants", post(create).get(list))
}

/// Body of `POST /v1/tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Display name.
    pub name: String,
}

async fn create(
    _admin: AdminAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = state.store.create_tenant(&body.name).await?;
    let key = state.store.create_api_key(&Principal::Tenant(tenant.id.clone())).await?;
    Ok((StatusCode::CREATED, Json(json!({"tenant": tenant, "api_key": key}))))
}

async fn list(_admin: AdminAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"items": state.store.list_tenants().await?})))
}
