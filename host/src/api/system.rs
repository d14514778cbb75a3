//! `GET /healthz`, `GET /metrics` (Prometheus text), `GET /openapi.json`.
//!
//! `/metrics` answers without a key with the aggregate series; the per-install
//! series (labelled with install ids and plugin names) go to the admin key for
//! every install and to a tenant's key for its own: found leaking to anyone
//! by the isolation suite (`tests/isolation.rs`).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::registry::stats::{CAUSES, LATENCY_BOUNDS_US};
use crate::store::Principal;

/// Routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(crate::api::openapi::document()) }))
}

/// 200 when the store answers, 503 otherwise.
async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ping().await.map_err(|_| ApiError::Unavailable)?;
    Ok(Json(serde_json::json!({"status": "ok", "backend": state.store.backend()})))
}

/// Whose per-install series a `/metrics` request may see: the admin key
/// sees every install, a tenant's key its own, no key none (the aggregate
/// series only). Install ids and plugin names are the tenant's business.
async fn metrics_scope(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Option<Principal>, ApiError> {
    if !headers.contains_key(axum::http::header::AUTHORIZATION) {
        return Ok(None);
    }
    let key = crate::api::auth::bearer_key(headers)?;
    state.auth.principal(&state.store, key).await?.map(Some).ok_or(ApiError::Unauthorized)
}

/// Prometheus text exposition.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Result<impl IntoResponse, ApiError> {
    let scope = metrics_scope(&state, &headers).await?;
    let mut out = String::new();
    let p = &state.pipeline.stats;
    let _ = writeln!(out, "# HELP cairn_events_processed_total Events the pipeline finished.");
    let _ = writeln!(out, "# TYPE cairn_events_processed_total counter");
    let _ = writeln!(out, "cairn_events_processed_total {}", p.events.load(Ordering::Relaxed));
    let _ = writeln!(out, "# TYPE cairn_scores_changed_total counter");
    let _ = writeln!(out, "cairn_scores_changed_total {}", p.scores_changed.load(Ordering::Relaxed));
    let _ = writeln!(out, "# TYPE cairn_stage_changes_total counter");
    let _ = writeln!(out, "cairn_stage_changes_total {}", p.stage_changes.load(Ordering::Relaxed));
    let w = &state.workflows.stats;
    let _ = writeln!(out, "# HELP cairn_workflow_enrollments_total Contacts enrolled in workflows.");
    let _ = writeln!(out, "# TYPE cairn_workflow_enrollments_total counter");
    let _ = writeln!(out, "cairn_workflow_enrollments_total {}", w.enrolled.load(Ordering::Relaxed));
    let _ = writeln!(out, "cairn_workflow_enrollments_refused_total {}", w.enroll_refused.load(Ordering::Relaxed));
    let _ = writeln!(out, "# TYPE cairn_workflow_steps_total counter");
    let _ = writeln!(out, "cairn_workflow_steps_total{{result=\"ok\"}} {}", w.steps_ok.load(Ordering::Relaxed));
    let _ = writeln!(out, "cairn_workflow_steps_total{{result=\"failed\"}} {}", w.steps_failed.load(Ordering::Relaxed));
    let _ = writeln!(out, "# TYPE cairn_workflow_runs_finished_total counter");
    for (status, n) in [("completed", &w.runs_completed), ("failed", &w.runs_failed), ("exited", &w.goals_met)] {
        let _ =
            writeln!(out, "cairn_workflow_runs_finished_total{{status=\"{status}\"}} {}", n.load(Ordering::Relaxed));
    }
    let _ = writeln!(out, "# TYPE cairn_plugins_loaded gauge");
    let _ = writeln!(out, "cairn_plugins_loaded {}", state.registry.loaded_plugin_count());
    let _ = writeln!(out, "# HELP cairn_plugin_calls_total Plugin calls by install and result.");
    let _ = writeln!(out, "# TYPE cairn_plugin_calls_total counter");
    let mut installs: Vec<_> = state
        .registry
        .all()
        .into_iter()
        .filter(|a| match &scope {
            Some(Principal::Admin) => true,
            Some(Principal::Tenant(t)) => &a.install.tenant_id == t,
            None => false,
        })
        .collect();
    installs.sort_by(|a, b| a.id().cmp(b.id()));
    for a in &installs {
        let (id, plugin) = (a.id(), &a.plugin.description.name);
        let s = &a.stats;
        let _ = writeln!(
            out,
            "cairn_plugin_calls_total{{install=\"{id}\",plugin=\"{plugin}\",result=\"ok\"}} {}",
            s.ok.load(Ordering::Relaxed)
        );
        for (i, cause) in CAUSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "cairn_plugin_calls_total{{install=\"{id}\",plugin=\"{plugin}\",result=\"{}\"}} {}",
                cause.as_str(),
                s.failed[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "cairn_plugin_call_seconds_total{{install=\"{id}\",plugin=\"{plugin}\"}} {}",
            s.total_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "cairn_plugin_fuel_total{{install=\"{id}\",plugin=\"{plugin}\"}} {}",
            s.fuel.load(Ordering::Relaxed)
        );
        // A Prometheus histogram: cumulative counts per upper bound.
        let counts = s.latency_counts();
        let mut cumulative = 0;
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            let le = LATENCY_BOUNDS_US.get(i).map_or("+Inf".to_string(), |us| (*us as f64 / 1e6).to_string());
            let _ = writeln!(
                out,
                "cairn_plugin_call_duration_seconds_bucket{{install=\"{id}\",plugin=\"{plugin}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "cairn_plugin_call_duration_seconds_count{{install=\"{id}\",plugin=\"{plugin}\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "cairn_plugin_consecutive_failures{{install=\"{id}\",plugin=\"{plugin}\"}} {}",
            s.consecutive_failures.load(Ordering::Relaxed)
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
