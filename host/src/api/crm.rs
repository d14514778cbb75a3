//! `/v1/companies`, `/v1/deals`, `/v1/tasks`: the rest of the CRM records.
//! Same shape as contacts: create, get, patch, delete, list with a cursor;
//! every id is looked up inside the caller's tenant only.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::TenantAuth;
use crate::api::error::{ApiError, ApiJson};
use crate::store::{CompanyPatch, DealFilter, DealPatch, NewCompany, NewDeal, NewTask, TaskFilter, TaskPatch};

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/companies", get(list_companies).post(create_company))
        .route("/v1/companies/{id}", get(get_company).patch(patch_company).delete(delete_company))
        .route("/v1/deals", get(list_deals).post(create_deal))
        .route("/v1/deals/{id}", get(get_deal).patch(patch_deal).delete(delete_deal))
        .route("/v1/tasks", get(list_tasks).post(create_task))
        .route("/v1/tasks/{id}", get(get_task).patch(patch_task).delete(delete_task))
}

/// Query of the list routes (filters apply where the resource has them).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Deals: in this stage.
    pub stage: Option<String>,
    /// Deals and tasks: about this contact.
    pub contact_id: Option<String>,
    /// Deals: with this company.
    pub company_id: Option<String>,
    /// Tasks: `open` or `done`.
    pub status: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size (1-1000, default 100).
    pub limit: Option<u32>,
}

type Listed = Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>;

fn query(q: Listed) -> Result<ListQuery, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn created<T: serde::Serialize>(value: T) -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(json!(value)))
}

fn found<T: serde::Serialize>(value: Option<T>, what: &'static str) -> Result<Json<Value>, ApiError> {
    value.map(|v| Json(json!(v))).ok_or(ApiError::NotFound(what))
}

fn deleted(done: bool, what: &'static str) -> Result<StatusCode, ApiError> {
    if done { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::NotFound(what)) }
}

// ---- companies ----

async fn create_company(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<NewCompany>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Ok(created(s.store.create_company(&t, body).await?))
}

async fn get_company(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    found(s.store.get_company(&t, &id).await?, "company")
}

async fn patch_company(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CompanyPatch>,
) -> Result<Json<Value>, ApiError> {
    found(s.store.patch_company(&t, &id, body).await?, "company")
}

async fn delete_company(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    deleted(s.store.delete_company(&t, &id).await?, "company")
}

async fn list_companies(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    q: Listed,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    Ok(Json(json!(s.store.list_companies(&t, q.cursor.as_deref(), q.limit.unwrap_or(100)).await?)))
}

// ---- deals ----

async fn create_deal(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<NewDeal>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Ok(created(s.store.create_deal(&t, body).await?))
}

async fn get_deal(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    found(s.store.get_deal(&t, &id).await?, "deal")
}

async fn patch_deal(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DealPatch>,
) -> Result<Json<Value>, ApiError> {
    found(s.store.patch_deal(&t, &id, body).await?, "deal")
}

async fn delete_deal(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    deleted(s.store.delete_deal(&t, &id).await?, "deal")
}

async fn list_deals(TenantAuth(t): TenantAuth, State(s): State<AppState>, q: Listed) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let filter = DealFilter { stage: q.stage, contact_id: q.contact_id, company_id: q.company_id };
    Ok(Json(json!(s.store.list_deals(&t, &filter, q.cursor.as_deref(), q.limit.unwrap_or(100)).await?)))
}

// ---- tasks ----

async fn create_task(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<NewTask>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    match s.store.create_task(&t, body, "api").await? {
        Some((task, true)) => Ok(created(task)),
        Some((task, false)) => Ok((StatusCode::OK, Json(json!(task)))),
        None => Err(ApiError::invalid("the task's contact does not exist")),
    }
}

async fn get_task(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    found(s.store.get_task(&t, &id).await?, "task")
}

async fn patch_task(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TaskPatch>,
) -> Result<Json<Value>, ApiError> {
    found(s.store.patch_task(&t, &id, body).await?, "task")
}

async fn delete_task(
    TenantAuth(t): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    deleted(s.store.delete_task(&t, &id).await?, "task")
}

async fn list_tasks(TenantAuth(t): TenantAuth, State(s): State<AppState>, q: Listed) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let filter = TaskFilter { contact_id: q.contact_id, status: q.status };
    Ok(Json(json!(s.store.list_tasks(&t, &filter, q.cursor.as_deref(), q.limit.unwrap_or(100)).await?)))
}
