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
        .route("/v1/installs/{id}/inbound", axum::routing::post(inbound))
}

/// A provider callback for a channel install (`POST /v1/installs/{id}/inbound`,
/// body as the provider sent it). The plugin turns it into events; the host
/// resolves each event's contact inside the caller's tenant only, so a
/// callback naming another tenant's contact id is rejected, never recorded.
async fn inbound(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let active = state.registry.get(&tenant, &id).ok_or(ApiError::NotFound("install"))?;
    if !active.is(crate::runtime::Kind::Channel) {
        return Err(ApiError::invalid("this install is not a channel"));
    }
    let request = crate::runtime::bindings::guest::channel::InboundRequest {
        path: String::new(),
        headers: headers
            .iter()
            .filter(|(k, _)| *k != axum::http::header::AUTHORIZATION)
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
            .collect(),
        body: body.to_vec(),
    };
    let scope = active.scope(&state.store, state.registry.runtime(), state.pipeline.clock().now());
    let invocation = crate::store::new_id();
    let parsed = state
        .registry
        .runtime()
        .parse_inbound(&active.plugin, scope, &active.config_text, &request, &invocation)
        .await
        .map_err(|e| ApiError::invalid(format!("the channel could not parse the callback: {}", e.message)))?;
    let mut events = Vec::new();
    let mut rejected = 0;
    for e in parsed.value {
        let mut properties = crate::runtime::convert::properties_from_wit(e.properties);
        properties.insert("channel".into(), crate::store::Value::Text(active.plugin.description.name.clone()));
        // By id: it must be a contact of this tenant. By email: found or
        // created inside this tenant by the store.
        let (contact_id, email) = match (e.contact_id, e.email) {
            (Some(cid), _) => match state.store.get_contact(&tenant, &cid).await? {
                Some(c) => (Some(c.id), None),
                None => {
                    rejected += 1;
                    continue;
                }
            },
            (None, Some(email)) => (None, Some(email)),
            (None, None) => {
                rejected += 1;
                continue;
            }
        };
        events.push(crate::store::NewEvent {
            contact_id,
            email,
            kind: e.kind,
            occurred_at: None,
            properties,
            idempotency_key: None,
        });
    }
    let accepted = if events.is_empty() {
        0
    } else {
        state.intake.submit(&tenant, events).await.map_err(crate::api::events::intake_error)?.len()
    };
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": accepted, "rejected": rejected}))))
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
    /// Run another version of the same plugin (upgrade or rollback).
    pub plugin_version_id: Option<String>,
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
        // Set when the circuit breaker disabled it; cleared when enabled.
        "disabled_reason": install.disabled_reason,
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
    let patch = crate::store::InstallPatch {
        plugin_version_id: body.plugin_version_id,
        config: body.config,
        grants: body.grants,
        enabled: body.enabled,
    };
    let install = state.registry.update_install(&tenant, &id, patch).await?;
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
