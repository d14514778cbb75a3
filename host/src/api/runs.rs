//! `/v1/runs`: workflow runs, each with every step's input, output, error,
//! attempts, duration and fuel; and retrying a failed run from the step
//! that failed.

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::TenantAuth;
use crate::api::error::ApiError;
use crate::store::RunFilter;

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/runs", get(list))
        .route("/v1/runs/{id}", get(fetch))
        .route("/v1/runs/{id}/retry", post(retry))
}

/// Runs per page when the query names no `limit` (the default of every list).
const DEFAULT_PAGE: u32 = 100;

/// Query of `GET /v1/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only runs of this workflow.
    pub workflow_id: Option<String>,
    /// Only runs of this contact.
    pub contact_id: Option<String>,
    /// Only runs in this status (`waiting`, `completed`, `failed`, `exited`, `cancelled`).
    pub status: Option<String>,
    /// From `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size (default and maximum as for every list).
    pub limit: Option<u32>,
}

async fn list(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = RunFilter { workflow_id: q.workflow_id, contact_id: q.contact_id, status: q.status };
    // Without `limit`, a full default page (as every other list), not the
    // one run that the store's clamp makes of 0.
    let page = state.store.list_runs(&tenant, &filter, q.cursor.as_deref(), q.limit.unwrap_or(DEFAULT_PAGE)).await?;
    Ok(Json(json!(page)))
}

async fn fetch(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (run, steps) = state.store.get_run(&tenant, &id).await?.ok_or(ApiError::NotFound("run"))?;
    let mut body = json!(run);
    body["steps"] = json!(steps);
    Ok(Json(body))
}

async fn retry(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let now = state.workflows.clock().now();
    let run = state.store.retry_run(&tenant, &id, now).await?.ok_or(ApiError::NotFound("run"))?;
    state.workflows.wake();
    Ok(Json(json!(run)))
}
