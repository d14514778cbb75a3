//! The HTTP API (axum): JSON over HTTP, bearer keys, one module per resource.
//!
//! ## Layout
//! - [`error`]: `ApiError` (status + `{"error": {"code", "message"}}`) and
//!   `ApiJson`, a JSON extractor whose rejections are `ApiError`s.
//! - [`auth`]: `TenantAuth` / `AdminAuth` extractors over hashed keys.
//! - one module per resource: [`tenants`], [`contacts`], [`crm`] (companies,
//!   deals, tasks), [`events`], [`plugins`], [`installs`], [`workflows`]
//!   (definitions, versions, dry runs), [`runs`], [`automation`] (lifecycle
//!   thresholds), [`system`] (health, metrics, OpenAPI).
//!
//! [`app`] builds the router from an [`AppState`], so tests call it without
//! a socket and the server binds it to one.

pub mod auth;
pub mod automation;
pub mod contacts;
pub mod crm;
pub mod error;
pub mod events;
pub mod installs;
pub mod lifecycle;
pub mod openapi;
pub mod plain_errors;
pub mod plugins;
pub mod rate_limit;
pub mod runs;
pub mod system;
pub mod tenants;
pub mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use crate::engine::workflows::Workflows;
use crate::engine::{Intake, Pipeline};
use crate::registry::Registry;
use crate::store::Store;

/// Largest JSON body (a batch of 1000 events with properties fits).
pub const MAX_JSON_BODY: usize = 4 << 20;
/// Largest plugin upload.
pub const MAX_PLUGIN_BODY: usize = 16 << 20;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The customer store.
    pub store: Store,
    /// Plugins and installs.
    pub registry: Arc<Registry>,
    /// Durable event intake (group commit).
    pub intake: Intake,
    /// The event pipeline.
    pub pipeline: Arc<Pipeline>,
    /// The workflow service.
    pub workflows: Arc<Workflows>,
    /// Key lookups.
    pub auth: Arc<auth::AuthCache>,
    /// Events per second per tenant.
    pub rate_limit: Arc<rate_limit::TenantRateLimiter>,
    /// This process in the cluster: changes other nodes must hear of go
    /// through it.
    pub node: Arc<crate::cluster::Node>,
}

/// The API router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(system::routes())
        .merge(tenants::routes())
        .merge(contacts::routes())
        .merge(crm::routes())
        .merge(events::routes())
        .merge(installs::routes())
        .merge(lifecycle::routes())
        .merge(automation::routes())
        .merge(workflows::routes())
        .merge(runs::routes())
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        // Uploads get their own, larger limit.
        .merge(plugins::routes().layer(DefaultBodyLimit::max(MAX_PLUGIN_BODY)))
        .fallback(|| async { error::ApiError::NotFound("route") })
        // Outermost: axum's own plain-text rejections become JSON errors.
        .layer(axum::middleware::map_response(plain_errors::as_json))
        .with_state(state)
}
