//! `POST /v1/events`: one event, or `{"events": [...]}` (up to 1000).
//! Answers `202 Accepted` only after the events are committed (group commit
//! through [`crate::engine::Intake`]); the pipeline processes them after.
//!
//! `GET /v1/events?contact_id=...`: a contact's recent events.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::TenantAuth;
use crate::api::error::{ApiError, ApiJson};
use crate::engine::IntakeError;
use crate::store::NewEvent;

/// Most events per request: bounds one transaction and one request's memory.
pub const MAX_BATCH: usize = 1000;

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/events", post(ingest).get(list))
}

fn parse_event(value: Value, at: Option<usize>) -> Result<NewEvent, ApiError> {
    serde_json::from_value(value).map_err(|e| match at {
        Some(i) => ApiError::invalid(format!("events[{i}]: {e}")),
        None => ApiError::invalid(format!("event: {e}")),
    })
}

async fn ingest(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let events = match body {
        Value::Object(mut map) if map.contains_key("events") => {
            if map.len() != 1 {
                return Err(ApiError::invalid("a batch body has exactly one field, `events`"));
            }
            let Some(Value::Array(items)) = map.remove("events") else {
                return Err(ApiError::invalid("`events` must be an array"));
            };
            if items.is_empty() || items.len() > MAX_BATCH {
                return Err(ApiError::invalid(format!("a batch holds 1 to {MAX_BATCH} events, not {}", items.len())));
            }
            items.into_iter().enumerate().map(|(i, v)| parse_event(v, Some(i))).collect::<Result<Vec<_>, _>>()?
        }
        value @ Value::Object(_) => vec![parse_event(value, None)?],
        _ => return Err(ApiError::invalid("expected an event object or {\"events\": [...]}")),
    };
    state.rate_limit.admit(&tenant, events.len()).await?;
    let stored = state.intake.submit(&tenant, events).await.map_err(intake_error)?;
    let ids: Vec<&str> = stored.iter().map(|e| e.id.as_str()).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": ids.len(), "ids": ids}))))
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The contact.
    pub contact_id: String,
    /// Only this kind.
    pub kind: Option<String>,
    /// Most events (default 100, at most 1000).
    pub limit: Option<u32>,
}

async fn list(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if state.store.get_contact(&tenant, &q.contact_id).await?.is_none() {
        return Err(ApiError::NotFound("contact"));
    }
    let kinds: Vec<String> = q.kind.into_iter().collect();
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
    let events = state.store.recent_events(&tenant, &q.contact_id, &kinds, 0, limit).await?;
    Ok(Json(json!({"items": events})))
}

/// An intake failure as an API error: the store's own errors keep their
/// meaning (422 for an unknown contact), the rest is "retry later".
pub fn intake_error(e: IntakeError) -> ApiError {
    match e {
        IntakeError::Store(s) => ApiError::from(s),
        IntakeError::Unavailable(_) | IntakeError::Overloaded => ApiError::Unavailable,
    }
}
