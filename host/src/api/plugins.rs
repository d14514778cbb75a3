//! `POST /v1/plugins` (body: the `.wasm` component) and `GET /v1/plugins`.
//!
//! An upload is compiled, its imports and exports checked and `describe()`
//! called before anything is stored; a refusal says which import or export
//! is wrong. A tenant's upload is private to it; the admin key uploads to the
//! global catalog every tenant can install from.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::{AnyAuth, TenantAuth};
use crate::api::error::ApiError;
use crate::cluster::Change;
use crate::registry::{Registry, RegistryError};
use crate::store::{PluginVersion, Principal};

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/plugins", get(list).post(upload)).route("/v1/plugins/{id}", get(fetch))
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Refused(refusal) => ApiError::invalid(format!("plugin refused: {refusal}")),
            RegistryError::InvalidConfig(errors) => ApiError::Unprocessable {
                message: format!(
                    "the config does not match the plugin's schema: {}",
                    errors
                        .iter()
                        .map(|e| format!("{} {}", if e.field.is_empty() { "/" } else { &e.field }, e.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                details: errors
                    .into_iter()
                    .map(|e| crate::api::error::FieldError { field: e.field, message: e.message })
                    .collect(),
            },
            RegistryError::InvalidGrant(m) | RegistryError::OtherPlugin(m) | RegistryError::HealthCheck(m) => {
                ApiError::invalid(m)
            }
            RegistryError::NotFound(what) => ApiError::NotFound(what),
            RegistryError::Store(s) => ApiError::from(s),
        }
    }
}

/// A version as the API shows it: the row plus its parsed description.
pub fn version_json(v: &PluginVersion) -> Value {
    json!({
        "id": v.id,
        "name": v.name,
        "version": v.version,
        "hash": v.hash,
        "size": v.size,
        "scope": if v.tenant_id.is_some() { "tenant" } else { "catalog" },
        "created_at": v.created_at,
        "description": Registry::description_of(v),
    })
}

async fn upload(
    AnyAuth(who): AnyAuth,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("the body must be the plugin's .wasm component".into()));
    }
    let tenant = match &who {
        Principal::Admin => None,
        Principal::Tenant(t) => Some(t.as_str()),
    };
    let uploaded = state.registry.upload(tenant, body.to_vec()).await?;
    if uploaded.created {
        // The other nodes compile it now, so an upgrade to it later only
        // swaps their install tables.
        state.node.changed(Change::Plugin { hash: uploaded.version.hash.clone() });
    }
    let mut json = version_json(&uploaded.version);
    // Installs that follow this plugin (auto-upgrade): which moved, which
    // stayed and why (a failed health check).
    json["upgrades"] = json!(uploaded.upgrades);
    json["wit"] = json!(uploaded.wit);
    let status = if uploaded.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json)))
}

async fn list(TenantAuth(tenant): TenantAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let versions = state.store.list_plugin_versions(Some(&tenant)).await?;
    Ok(Json(json!({"items": versions.iter().map(version_json).collect::<Vec<_>>()})))
}

async fn fetch(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = state.store.get_plugin_version(Some(&tenant), &id).await?.ok_or(ApiError::NotFound("plugin version"))?;
    Ok(Json(version_json(&v)))
}
