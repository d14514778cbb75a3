//! `/v1/installs`: install a plugin version for the tenant with a config
//! (validated against the plugin's JSON Schema, field by field) and the
//! capabilities the admin grants; change config, grants or enabled; remove.
//! `/v1/invocations`: the recorded plugin calls (failures with their cause,
//! every workflow action attempt, channel callbacks), and
//! `/v1/invocations/{id}`: one call with its input, a `RecordedCall` that
//! `cairn plugin replay` runs against another build.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::TenantAuth;
use crate::api::error::{ApiError, ApiJson};
use crate::engine::actions::invocation_record;
use crate::runtime::bindings::guest::channel::InboundEvent;
use crate::runtime::invoke::Called;
use crate::runtime::recorded::{RecordedCall, parse_config};
use crate::store::{InputStatus, Install, InvocationFilter};

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/installs", get(list).post(create))
        .route("/v1/installs/{id}", get(fetch).patch(patch).delete(remove))
        .route("/v1/invocations", get(invocations))
        .route("/v1/invocations/{id}", get(invocation))
        .route("/v1/installs/{id}/inbound", axum::routing::post(inbound))
}

/// A provider callback for a channel install (`POST /v1/installs/{id}/inbound`,
/// body as the provider sent it). The plugin turns it into events; the host
/// resolves each event's contact inside the caller's tenant only, so a
/// callback naming another tenant's contact id is rejected, never recorded.
///
/// The `parse-inbound` call is recorded, ok or not, with its input (headers
/// without `Authorization`: the tenant's key is no input of the plugin's),
/// so a callback the plugin could not parse can be replayed. It is not
/// counted toward the install's circuit breaker: a provider sending junk
/// must not disable the channel's outbound sends.
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
    state.rate_limit.admit(&tenant, 1).await?;
    let request = crate::runtime::bindings::guest::channel::InboundRequest {
        path: String::new(),
        headers: headers
            .iter()
            .filter(|(k, _)| *k != axum::http::header::AUTHORIZATION)
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
            .collect(),
        body: body.to_vec(),
    };
    let recorded = RecordedCall::ParseInbound {
        config: parse_config(&active.config_text),
        path: request.path.clone(),
        headers: request.headers.clone(),
        body: String::from_utf8_lossy(&request.body).into_owned(),
    };
    let scope = active.scope(&state.store, state.registry.runtime(), state.pipeline.clock().now());
    let invocation = crate::store::new_id();
    let result =
        state.registry.runtime().parse_inbound(&active.plugin, scope, &active.config_text, request, &invocation).await;
    let summary = match &result {
        Ok(called) => Ok(Called { value: parsed_json(&called.value), stats: called.stats.clone() }),
        Err(e) => Err(e),
    };
    let record = invocation_record(
        &active,
        invocation,
        &recorded,
        summary.as_ref().map_err(|e| *e),
        state.pipeline.clock().now(),
    );
    if let Err(e) = state.store.record_invocation(&record).await {
        // The callback itself still counts; only its record is missing.
        tracing::warn!(install = %active.install.id, "could not record a parse-inbound call: {e}");
    }
    let parsed =
        result.map_err(|e| ApiError::invalid(format!("the channel could not parse the callback: {}", e.message)))?;
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
    // The first event was paid for before the parse.
    state.rate_limit.admit(&tenant, events.len().saturating_sub(1)).await?;
    let accepted = if events.is_empty() {
        0
    } else {
        state.intake.submit(&tenant, events).await.map_err(crate::api::events::intake_error)?.len()
    };
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": accepted, "rejected": rejected}))))
}

/// The events a `parse-inbound` call returned, as its record's output.
fn parsed_json(events: &[InboundEvent]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| {
                json!({
                    "contact_id": e.contact_id,
                    "email": e.email,
                    "kind": e.kind,
                    "properties": crate::runtime::convert::properties_from_wit(e.properties.clone()),
                })
            })
            .collect(),
    )
}

/// Query of `GET /v1/invocations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationQuery {
    /// Only this install's calls.
    pub install_id: Option<String>,
    /// Only calls about this contact.
    pub contact_id: Option<String>,
    /// Only successes (`true`) or failures (`false`).
    pub ok: Option<bool>,
    /// Most records (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// Recorded plugin calls, newest first, without their inputs (up to 256 KiB
/// each; `GET /v1/invocations/{id}` has it).
async fn invocations(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    query: Result<axum::extract::Query<InvocationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = InvocationFilter { install_id: q.install_id, contact_id: q.contact_id, ok: q.ok };
    let items = state.store.list_invocations_where(&tenant, &filter, limit).await?;
    Ok(Json(json!({"items": items})))
}

/// One recorded call of the tenant's, with its input: the record's fields,
/// `input` (a `RecordedCall` document, or null when none is kept),
/// `input_expired` (erased by the retention) and `input_dropped` (larger
/// than the cap, never kept). Another tenant's id is a 404 like an unknown
/// one.
async fn invocation(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state.store.get_invocation(&tenant, &id).await?.ok_or(ApiError::NotFound("invocation"))?;
    let input = match record.input_json.as_deref().map(serde_json::from_str::<Value>).transpose() {
        Ok(input) => input,
        Err(e) => {
            // The host wrote it; unreadable means damaged, not the caller's fault.
            tracing::warn!(invocation = %record.id, "a recorded input is not JSON: {e}");
            None
        }
    };
    let mut body = json!(record);
    body["input"] = input.unwrap_or(Value::Null);
    body["input_expired"] = json!(record.input_status == Some(InputStatus::Expired));
    body["input_dropped"] = json!(record.input_status == Some(InputStatus::TooLarge));
    Ok(Json(body))
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
    /// Replace the version when a newer one of the plugin is uploaded
    /// (after its health check). Default false: upgrades are explicit.
    #[serde(default)]
    pub auto_upgrade: bool,
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
    /// Follow new uploads of the plugin, or stop.
    pub auto_upgrade: Option<bool>,
}

fn install_json(state: &AppState, install: &Install) -> Value {
    let active = state.registry.get(&install.tenant_id, &install.id);
    let stats = active.as_ref().map(|a| a.stats.snapshot());
    // What this node has loaded: equal to `plugin_version_id` once a change
    // made on another node has reached this one (null while disabled).
    let running = active.as_ref().map(|a| a.install.plugin_version_id.clone());
    json!({
        "id": install.id,
        "plugin_version_id": install.plugin_version_id,
        "plugin": install.plugin_name,
        "config": install.config,
        "grants": install.grants,
        "enabled": install.enabled,
        // Set when the circuit breaker disabled it; cleared when enabled.
        "disabled_reason": install.disabled_reason,
        "auto_upgrade": install.auto_upgrade,
        "plugin_version": install.plugin_version,
        "created_at": install.created_at,
        "stats": stats,
        "running_version_id": running,
    })
}

async fn create(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateInstall>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let install =
        state.registry.install(&tenant, &body.plugin_version_id, body.config, body.grants, body.auto_upgrade).await?;
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
        auto_upgrade: body.auto_upgrade,
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
