//! `/v1/contacts`: create, get, patch, delete, list with filters and a
//! cursor, and `/v1/contacts/{id}/timeline`.
//!
//! Every lookup is scoped to the caller's tenant: another tenant's id is a
//! 404, exactly like an id that does not exist.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::TenantAuth;
use crate::api::error::{ApiError, ApiJson};
use crate::store::{Contact, ContactFilter, ContactPatch, NewContact};

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/contacts", get(list).post(create))
        .route("/v1/contacts/{id}", get(fetch).patch(patch).delete(remove))
        .route("/v1/contacts/{id}/timeline", get(timeline))
}

async fn create(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewContact>,
) -> Result<(StatusCode, Json<Contact>), ApiError> {
    let contact = state.store.create_contact(&tenant, body).await?;
    // `contact_created` is in the event log now.
    state.pipeline.poke();
    Ok((StatusCode::CREATED, Json(contact)))
}

async fn fetch(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Contact>, ApiError> {
    state.store.get_contact(&tenant, &id).await?.map(Json).ok_or(ApiError::NotFound("contact"))
}

async fn patch(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ContactPatch>,
) -> Result<Json<Contact>, ApiError> {
    let contact = state.store.patch_contact(&tenant, &id, body).await?.ok_or(ApiError::NotFound("contact"))?;
    // Changed properties are `property_changed` events now.
    state.pipeline.poke();
    Ok(Json(contact))
}

async fn remove(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_contact(&tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("contact"))
    }
}

/// Query of `GET /v1/contacts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Exact email.
    pub email: Option<String>,
    /// Has this tag.
    pub tag: Option<String>,
    /// In this lifecycle stage.
    pub lifecycle_stage: Option<String>,
    /// Owned by.
    pub owner: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size (1-1000, default 100).
    pub limit: Option<u32>,
}

async fn list(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = ContactFilter { email: q.email, tag: q.tag, lifecycle_stage: q.lifecycle_stage, owner: q.owner };
    let page = state.store.list_contacts(&tenant, &filter, q.cursor.as_deref(), q.limit.unwrap_or(100)).await?;
    Ok(Json(json!(page)))
}

/// Query of the timeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// Most entries (default 100).
    pub limit: Option<u32>,
}

async fn timeline(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<TimelineQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if state.store.get_contact(&tenant, &id).await?.is_none() {
        return Err(ApiError::NotFound("contact"));
    }
    let entries = state.store.timeline(&tenant, &id, q.limit.unwrap_or(100).min(1000)).await?;
    Ok(Json(json!({"items": entries})))
}
