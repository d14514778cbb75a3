//! `/v1/rules` (single-step automations: trigger → action) and
//! `/v1/thresholds` (score thresholds that move the lifecycle stage).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::TenantAuth;
use crate::api::error::{ApiError, ApiJson};
use crate::engine::pipeline::STAGES;
use crate::runtime::Kind;
use crate::store::{NewRule, Properties};

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/rules", get(list_rules).post(create_rule))
        .route("/v1/rules/{id}", get(get_rule).patch(patch_rule).delete(delete_rule))
        .route("/v1/thresholds", get(list_thresholds))
        .route("/v1/thresholds/{stage}", put(set_threshold).delete(delete_threshold))
}

/// What starts a rule.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum RuleTrigger {
    /// A trigger plugin install.
    Plugin {
        /// The install.
        install_id: String,
    },
    /// A built-in matcher: an event kind and property values.
    Event {
        /// The event kind, e.g. `lifecycle_stage_changed`.
        event_kind: String,
        /// Properties the event must have, e.g. `{"to": "mql"}`.
        #[serde(default, rename = "where")]
        filter: Properties,
    },
}

/// Body of `POST /v1/rules`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    /// Display name.
    pub name: String,
    /// What starts it.
    pub trigger: RuleTrigger,
    /// The action (or channel) install to run.
    pub action_install_id: String,
    /// Enabled on creation (default true).
    pub enabled: Option<bool>,
}

async fn create_rule(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateRule>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let action = state.registry.get(&tenant, &body.action_install_id).ok_or_else(|| {
        ApiError::invalid(format!("action_install_id: install `{}` does not exist", body.action_install_id))
    })?;
    if !action.is(Kind::Action) && !action.is(Kind::Channel) {
        return Err(ApiError::invalid("action_install_id: that install is not an action or a channel"));
    }
    let (trigger_install_id, event_kind, event_filter) = match body.trigger {
        RuleTrigger::Plugin { install_id } => {
            let trigger = state.registry.get(&tenant, &install_id).ok_or_else(|| {
                ApiError::invalid(format!("trigger.install_id: install `{install_id}` does not exist"))
            })?;
            if !trigger.is(Kind::Trigger) {
                return Err(ApiError::invalid("trigger.install_id: that install is not a trigger"));
            }
            (Some(install_id), None, Properties::new())
        }
        RuleTrigger::Event { event_kind, filter } => {
            if event_kind.is_empty() || event_kind.len() > 100 {
                return Err(ApiError::invalid("trigger.event_kind: 1 to 100 characters"));
            }
            (None, Some(event_kind), filter)
        }
    };
    let rule = state
        .store
        .create_rule(
            &tenant,
            NewRule {
                name: body.name,
                trigger_install_id,
                event_kind,
                event_filter,
                action_install_id: body.action_install_id,
                enabled: body.enabled,
            },
        )
        .await?;
    state.pipeline.automation().invalidate(&tenant);
    Ok((StatusCode::CREATED, Json(json!(rule))))
}

async fn list_rules(TenantAuth(tenant): TenantAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"items": state.store.list_rules(&tenant).await?})))
}

async fn get_rule(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.store.get_rule(&tenant, &id).await?.map(|r| Json(json!(r))).ok_or(ApiError::NotFound("rule"))
}

/// Body of `PATCH /v1/rules/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRule {
    /// Enable or disable.
    pub enabled: bool,
}

async fn patch_rule(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchRule>,
) -> Result<Json<Value>, ApiError> {
    state.pipeline.automation().invalidate(&tenant);
    if !state.store.set_rule_enabled(&tenant, &id, body.enabled).await? {
        return Err(ApiError::NotFound("rule"));
    }
    get_rule(TenantAuth(tenant), State(state), Path(id)).await
}

async fn delete_rule(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.pipeline.automation().invalidate(&tenant);
    if state.store.delete_rule(&tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("rule"))
    }
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
    state.pipeline.automation().invalidate(&tenant);
    Ok(Json(json!(threshold)))
}

async fn delete_threshold(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(stage): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.pipeline.automation().invalidate(&tenant);
    if state.store.delete_lifecycle_threshold(&tenant, &stage).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("threshold"))
    }
}
