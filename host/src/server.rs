//! Wiring: open the store (and, on SQLite, become the file's one serving
//! process), build the runtime and registry, load the catalog and installs,
//! start intake, pipeline and workflow runner and the retention of recorded
//! plugin-call inputs, join the other nodes on PostgreSQL, serve HTTP.
//!
//! [`start`] is what `cairn serve`, `cairn demo`, the end-to-end tests and
//! the benchmark all use, so they exercise the same server;
//! [`start_with_retention`] is the same with another input retention.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;

use crate::api::{self, AppState};
use crate::cluster::Node;
use crate::engine::workflows::Workflows;
use crate::engine::{Clock, Intake, Pipeline};
use crate::registry::Registry;
use crate::runtime::{Runtime, RuntimeSettings};
use crate::store::{Principal, SqliteOwner, Store, StoreError};

/// How long recorded plugin-call inputs are kept by default: a week is long
/// enough to notice a failure and replay it, short enough that the customer
/// data copied into every call's record does not pile up.
pub const DEFAULT_INPUT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the server erases inputs past their retention by default. An
/// input outlives its retention by at most this much.
pub const DEFAULT_EXPIRY_EVERY: Duration = Duration::from_secs(10 * 60);

/// How long the server keeps the inputs of recorded plugin calls (what
/// `GET /v1/invocations/{id}` serves for replay), and how often it erases
/// older ones. Kept apart from [`ServerConfig`] so code that spells out a
/// whole `ServerConfig` keeps compiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputRetention {
    /// Inputs of calls older than this (business time: the store's clock)
    /// are erased; the records stay.
    pub keep: Duration,
    /// Real time between two passes (one runs at start, and one whenever a
    /// manual clock moves).
    pub every: Duration,
}

impl Default for InputRetention {
    fn default() -> Self {
        InputRetention { keep: DEFAULT_INPUT_RETENTION, every: DEFAULT_EXPIRY_EVERY }
    }
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Database URL: a SQLite path/URL or `postgres://...`.
    pub database_url: String,
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Runtime settings (limits, compile cache directory...).
    pub runtime: RuntimeSettings,
    /// The engine's clock.
    pub clock: Clock,
    /// An admin key to register (from `CAIRN_ADMIN_KEY`); when `None` and the
    /// store has no admin key yet, one is generated and returned once.
    pub admin_key: Option<String>,
    /// Run the pipeline and the workflow runner in the background (tests may
    /// drive them by hand).
    pub run_pipeline: bool,
}

impl ServerConfig {
    /// Defaults for a data directory: `cairn.db` and `compiled/` inside it.
    pub fn in_dir(dir: PathBuf) -> ServerConfig {
        ServerConfig {
            database_url: format!("sqlite://{}", dir.join("cairn.db").display()),
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            runtime: RuntimeSettings { cache_dir: Some(dir.join("compiled")), ..RuntimeSettings::default() },
            clock: Clock::System,
            admin_key: None,
            run_pipeline: true,
        }
    }
}

/// A running server.
pub struct Server {
    /// The bound address.
    pub addr: SocketAddr,
    /// Shared state (tests reach the store and pipeline through it).
    pub state: AppState,
    /// The admin key generated at this start, if one was.
    pub generated_admin_key: Option<String>,
    /// How long start-up took.
    pub startup: std::time::Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Held while serving a SQLite file, so a second server is refused.
    _sqlite_owner: Option<SqliteOwner>,
}

impl Server {
    /// The base URL, e.g. `http://127.0.0.1:7700`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop serving and stop the pipeline.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.state.store.close().await;
    }
}

/// Start a server (inputs of recorded calls kept for
/// [`DEFAULT_INPUT_RETENTION`]).
pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
    start_with_retention(config, InputRetention::default()).await
}

/// Start a server that keeps inputs of recorded plugin calls as `retention`
/// says (`cairn serve --invocation-retention-hours`).
pub async fn start_with_retention(config: ServerConfig, retention: InputRetention) -> anyhow::Result<Server> {
    let began = Instant::now();
    let store = Store::open(&config.database_url).await.with_context(|| "opening the database")?;
    let sqlite_owner = store.take_ownership().await?;
    // One clock for everything the store stamps and the engine schedules.
    let store = store.with_clock(config.clock.clone()).with_claim_lease(config.runtime.limits.claim_lease);
    let runtime = Arc::new(Runtime::new(config.runtime.clone())?);
    let registry = Arc::new(Registry::new(runtime, store.clone()));

    for (name, bytes) in crate::catalog::PREBUILT {
        registry.upload(None, bytes.to_vec()).await.with_context(|| format!("loading prebuilt plugin {name}"))?;
    }
    registry.rebuild().await.context("loading installs")?;
    registry.forget_unused();

    let generated_admin_key = match &config.admin_key {
        Some(key) => {
            store.register_api_key(&Principal::Admin, key).await.context("registering CAIRN_ADMIN_KEY")?;
            None
        }
        None if !store.admin_key_exists().await? => Some(store.create_api_key(&Principal::Admin).await?),
        None => None,
    };

    let committed = Arc::new(Notify::new());
    let intake = Intake::start(store.clone(), committed.clone());
    let workflows = Workflows::new(store.clone(), registry.clone(), config.clock.clone(), committed.clone());
    let pipeline = Pipeline::new(store.clone(), registry.clone(), config.clock.clone(), committed, workflows.clone());
    let mut tasks = Vec::new();
    if config.run_pipeline {
        tasks.push(tokio::spawn(pipeline.clone().run()));
        tasks.push(tokio::spawn(workflows.clone().run()));
        tasks.push(tokio::spawn(expire_inputs_loop(store.clone(), retention)));
    }
    let rate_limit = Arc::new(crate::api::rate_limit::TenantRateLimiter::new(
        config.runtime.limits.tenant_events_per_sec,
        crate::api::events::MAX_BATCH,
    ));
    let mut node = Node::new(registry.clone(), workflows.clone(), pipeline.clone());
    tasks.extend(Node::join(&mut node, &store, &config.database_url).await.context("joining the cluster")?);
    let node = Arc::new(node);
    let state = AppState { store, registry, intake, pipeline, workflows, auth: Arc::default(), rate_limit, node };
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let app = api::app(state.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("server stopped: {e}");
        }
    }));
    Ok(Server { addr, state, generated_admin_key, startup: began.elapsed(), tasks, _sqlite_owner: sqlite_owner })
}

/// Erase the inputs of recorded calls older than `keep` by the store's
/// clock; returns how many were erased. What the server's retention task
/// runs on each pass.
pub async fn expire_invocation_inputs(store: &Store, keep: Duration) -> Result<u64, StoreError> {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    store.expire_invocation_inputs(store.now().saturating_sub(keep_ms)).await
}

/// The retention task: a pass at start, then every `retention.every`, and
/// whenever a manual clock moves (a test or the demo jumping days ahead
/// sees inputs expire as they would have in real time).
async fn expire_inputs_loop(store: Store, retention: InputRetention) {
    let clock = store.clock().clone();
    loop {
        // Registered before the pass, so a move during it is not missed.
        let moved = clock.changed();
        match expire_invocation_inputs(&store, retention.keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("erased the inputs of {n} recorded plugin calls past their retention"),
            // Not fatal: the next pass erases what this one could not.
            Err(e) => tracing::warn!("erasing expired plugin-call inputs failed: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.every) => {}
            _ = moved => {}
        }
    }
}
