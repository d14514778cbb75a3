//! Wiring: open the store, build the runtime and registry, load the
//! catalog and installs, start intake, pipeline and workflow runner, serve
//! HTTP.
//!
//! [`start`] is what `cairn serve`, `cairn demo`, the end-to-end tests and
//! the benchmark all use, so they exercise the same server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::Notify;

use crate::api::{self, AppState};
use crate::engine::workflows::Workflows;
use crate::engine::{Clock, Intake, Pipeline};
use crate::registry::Registry;
use crate::runtime::{Runtime, RuntimeSettings};
use crate::store::{Principal, Store};

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

/// Start a server.
pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
    let began = Instant::now();
    let store = Store::open(&config.database_url).await.with_context(|| "opening the database")?;
    // One clock for everything the store stamps and the engine schedules.
    let store = store.with_clock(config.clock.clone());
    let runtime = Arc::new(Runtime::new(config.runtime.clone())?);
    let registry = Arc::new(Registry::new(runtime, store.clone()));

    for (name, bytes) in crate::catalog::PREBUILT {
        registry.upload(None, bytes.to_vec()).await.with_context(|| format!("loading prebuilt plugin {name}"))?;
    }
    registry.refresh().await.context("loading installs")?;
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
    }
    let state = AppState { store, registry, intake, pipeline, workflows, auth: Arc::default() };
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let app = api::app(state.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("server stopped: {e}");
        }
    }));
    Ok(Server { addr, state, generated_admin_key, startup: began.elapsed(), tasks })
}
