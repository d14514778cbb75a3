//! `/v1/workflows`: versioned workflow definitions, activation, archiving
//! and dry runs.
//!
//! Saving a definition (create, or a new version with `PUT`) checks the
//! document and the installs it names; every problem comes back at once in
//! `error.details`, each with a JSON pointer to the step and field. A saved
//! version is a draft until activated; activating version N archives the
//! version that was active, and runs already in flight finish on the version
//! they enrolled on. `?activate=true` on create or `PUT` saves and activates
//! in one call.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::TenantAuth;
use crate::api::error::{ApiError, ApiJson, FieldError};
use crate::cluster::Change;
use crate::engine::workflows::definition::{self, Definition, Problem, Trigger};
use crate::engine::workflows::dry_run::{DryRunError, DryRunRequest};
use crate::engine::workflows::{time, validate};
use crate::store::Workflow;

/// Largest definition: a workflow is a plan, not data.
pub const MAX_DEFINITION_BYTES: usize = 256 << 10;

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/workflows", get(list).post(create))
        .route("/v1/workflows/{id}", get(fetch).put(new_version))
        .route("/v1/workflows/{id}/versions/{version}", get(fetch_version))
        .route("/v1/workflows/{id}/activate", post(activate))
        .route("/v1/workflows/{id}/archive", post(archive))
        .route("/v1/workflows/{id}/test", post(dry_run))
}

/// `?activate=true`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveQuery {
    /// Activate the saved version at once.
    #[serde(default)]
    pub activate: bool,
}

/// Parse and check `body` for `tenant`; a 422 listing every problem.
async fn checked(state: &AppState, tenant: &str, body: &Value) -> Result<Definition, ApiError> {
    let size = body.to_string().len();
    if size > MAX_DEFINITION_BYTES {
        return Err(ApiError::TooLarge(format!("the definition is {size} bytes; the limit is {MAX_DEFINITION_BYTES}")));
    }
    let disabled: HashMap<String, String> = state
        .store
        .list_installs(tenant)
        .await?
        .into_iter()
        .filter(|i| !i.enabled)
        .map(|i| (i.id, i.plugin_name))
        .collect();
    // The install checks run even when the document has problems of its
    // own, so every problem comes back at once.
    definition::parse_and(body, |d| validate::against_installs(d, &state.registry, tenant, &disabled)).map_err(refused)
}

fn refused(problems: Vec<Problem>) -> ApiError {
    let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
    let more = match problems.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more problems, see details)", n - 1),
    };
    ApiError::Unprocessable {
        message: format!("the workflow definition is invalid: {first}{more}"),
        details: problems.into_iter().map(|p| FieldError { field: p.pointer, message: p.message }).collect(),
    }
}

async fn create(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Query(q): Query<SaveQuery>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let definition = checked(&state, &tenant, &body).await?;
    let (workflow, version) = state.store.create_workflow(&tenant, &definition.name, &json!(definition)).await?;
    let workflow =
        if q.activate { activate_version(&state, &tenant, &workflow.id, version.version).await? } else { workflow };
    Ok((StatusCode::CREATED, Json(json!({"workflow": workflow, "version": version}))))
}

async fn new_version(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<SaveQuery>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let definition = checked(&state, &tenant, &body).await?;
    let version = state
        .store
        .add_workflow_version(&tenant, &id, &definition.name, &json!(definition))
        .await?
        .ok_or(ApiError::NotFound("workflow"))?;
    let workflow = if q.activate {
        activate_version(&state, &tenant, &id, version.version).await?
    } else {
        state.store.get_workflow(&tenant, &id).await?.ok_or(ApiError::NotFound("workflow"))?
    };
    Ok((StatusCode::CREATED, Json(json!({"workflow": workflow, "version": version}))))
}

async fn list(TenantAuth(tenant): TenantAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"items": state.store.list_workflows(&tenant).await?})))
}

async fn fetch(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let workflow = state.store.get_workflow(&tenant, &id).await?.ok_or(ApiError::NotFound("workflow"))?;
    let versions = state.store.list_workflow_versions(&tenant, &id).await?;
    let current = workflow.active_version.unwrap_or(workflow.latest_version);
    let definition = versions.iter().find(|v| v.version == current).map(|v| v.definition.clone());
    let summary: Vec<Value> = versions
        .iter()
        .map(|v| json!({"version": v.version, "status": v.status, "created_at": v.created_at}))
        .collect();
    let runs = state.store.count_runs_by_status(&tenant, &id).await?;
    Ok(Json(json!({"workflow": workflow, "definition": definition, "versions": summary, "runs": runs})))
}

async fn fetch_version(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path((id, version)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    let v = state.store.get_workflow_version(&tenant, &id, version).await?.ok_or(ApiError::NotFound("version"))?;
    Ok(Json(json!(v)))
}

/// Body of `POST /v1/workflows/{id}/activate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    /// The version (default: the latest).
    #[serde(default)]
    pub version: Option<i64>,
}

async fn activate(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // The body is optional: none means "the latest version".
    let body: ActivateBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActivateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let workflow = state.store.get_workflow(&tenant, &id).await?.ok_or(ApiError::NotFound("workflow"))?;
    let version = body.version.unwrap_or(workflow.latest_version);
    Ok(Json(json!({"workflow": activate_version(&state, &tenant, &id, version).await?})))
}

/// Activate `version` after checking its installs again (one may have been
/// removed since it was saved); a schedule trigger gets its first firing.
async fn activate_version(state: &AppState, tenant: &str, id: &str, version: i64) -> Result<Workflow, ApiError> {
    let v = state.store.get_workflow_version(tenant, id, version).await?.ok_or(ApiError::NotFound("version"))?;
    let definition = checked(state, tenant, &v.definition).await?;
    let next_fire_at = match &definition.trigger {
        Trigger::Schedule { .. } => {
            let spec = definition::schedule_of(&definition.trigger).map_err(|p| refused(vec![p]))?;
            let zone = state.workflows.zone(tenant).await;
            Some(time::next_fire(state.workflows.clock().now(), &spec, &zone))
        }
        _ => None,
    };
    let workflow = state
        .store
        .activate_workflow_version(tenant, id, version, next_fire_at)
        .await?
        .ok_or(ApiError::NotFound("version"))?;
    state.node.changed(Change::Workflows { tenant: tenant.to_string() });
    Ok(workflow)
}

async fn archive(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let workflow = state.store.archive_workflow(&tenant, &id).await?.ok_or(ApiError::NotFound("workflow"))?;
    state.node.changed(Change::Workflows { tenant: tenant.clone() });
    Ok(Json(json!({"workflow": workflow})))
}

async fn dry_run(
    TenantAuth(tenant): TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DryRunRequest>,
) -> Result<Json<Value>, ApiError> {
    let workflow = state.store.get_workflow(&tenant, &id).await?.ok_or(ApiError::NotFound("workflow"))?;
    let version = body.version.or(workflow.active_version).unwrap_or(workflow.latest_version);
    let program = state.workflows.program(&tenant, &id, version).await?.ok_or(ApiError::NotFound("version"))?;
    match state.workflows.dry_run(&tenant, version, &program, &body).await {
        Ok(result) => Ok(Json(json!(result))),
        Err(DryRunError::Invalid(m)) => Err(ApiError::invalid(m)),
        Err(DryRunError::UnknownContact(_)) => Err(ApiError::NotFound("contact")),
        Err(DryRunError::Store(e)) => Err(e.into()),
    }
}
