//! The plugin registry: uploaded versions, installs, and the live table of
//! loaded installs the pipeline calls.
//!
//! ## Layout
//! - this file: [`Registry`] (upload, install, load at start, lookups) and
//!   the copy-on-write install table behind an `ArcSwap`, so a reload is a
//!   pointer swap and readers never wait.
//! - [`config`]: config validation against a plugin's JSON Schema, with
//!   field-level messages.
//! - [`lifecycle`]: changing an install's version (health check, atomic
//!   swap, history), auto-upgrade on upload, probation and automatic rollback.
//! - [`stats`]: per-install call counters and latency for `/metrics`.

pub mod config;
pub mod lifecycle;
pub mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::runtime::grants::Grants;
use crate::runtime::{CallScope, Description, Kind, LoadError, LoadedPlugin, Runtime};
use crate::store::{self, Store, StoreError};

pub use stats::InstallStats;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The component was refused.
    #[error(transparent)]
    Refused(#[from] LoadError),
    /// The config does not match the plugin's schema.
    #[error("the config does not match the plugin's schema")]
    InvalidConfig(Vec<config::ConfigError>),
    /// A grant is unknown or was not asked for.
    #[error("{0}")]
    InvalidGrant(String),
    /// The version asked for belongs to another plugin than the install's.
    #[error("{0}")]
    OtherPlugin(String),
    /// The new version failed its health check; the install kept its version.
    #[error("{0}")]
    HealthCheck(String),
    /// No such plugin version or install for this tenant.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An install ready to call: its row, its loaded plugin, parsed grants.
pub struct ActiveInstall {
    /// The stored install.
    pub install: store::Install,
    /// The compiled plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// Parsed grants.
    pub grants: Arc<Grants>,
    /// The config as JSON text, passed to every call.
    pub config_text: String,
    /// Call counters.
    pub stats: Arc<InstallStats>,
}

impl ActiveInstall {
    /// The install id.
    pub fn id(&self) -> &str {
        &self.install.id
    }
    /// Whether the plugin implements `kind`.
    pub fn is(&self, kind: Kind) -> bool {
        self.plugin.description.has(kind)
    }

    /// What a call of this install may reach: its own tenant and grants,
    /// at business time `now` (not a test).
    pub fn scope(&self, store: &Store, runtime: &Runtime, now: i64) -> CallScope {
        CallScope {
            tenant_id: self.install.tenant_id.clone(),
            install_id: self.install.id.clone(),
            grants: self.grants.clone(),
            store: store.clone(),
            egress: runtime.egress.clone(),
            test_mode: false,
            now,
            test_contact: None,
        }
    }
}

/// The live table: installs by id and, per tenant, by kind.
#[derive(Default)]
pub struct InstallTable {
    by_id: HashMap<String, Arc<ActiveInstall>>,
    by_tenant: HashMap<String, TenantInstalls>,
}

/// One tenant's enabled installs, by kind, in install order.
#[derive(Default, Clone)]
pub struct TenantInstalls {
    /// Scorers.
    pub scorers: Vec<Arc<ActiveInstall>>,
    /// Triggers.
    pub triggers: Vec<Arc<ActiveInstall>>,
}

impl InstallTable {
    fn build(installs: impl IntoIterator<Item = Arc<ActiveInstall>>) -> InstallTable {
        let mut table = InstallTable::default();
        let mut all: Vec<Arc<ActiveInstall>> = installs.into_iter().collect();
        all.sort_by(|a, b| (a.install.created_at, &a.install.id).cmp(&(b.install.created_at, &b.install.id)));
        for active in all {
            if active.install.enabled {
                let tenant = table.by_tenant.entry(active.install.tenant_id.clone()).or_default();
                if active.is(Kind::Scorer) {
                    tenant.scorers.push(active.clone());
                }
                if active.is(Kind::Trigger) {
                    tenant.triggers.push(active.clone());
                }
            }
            table.by_id.insert(active.install.id.clone(), active);
        }
        table
    }
}

/// Plugins, installs and the live table.
pub struct Registry {
    runtime: Arc<Runtime>,
    store: Store,
    /// Loaded plugins by content hash: one compilation per hash, shared by
    /// every install of it.
    plugins: Mutex<HashMap<String, Arc<LoadedPlugin>>>,
    table: ArcSwap<InstallTable>,
    /// Serialises table rebuilds so two concurrent installs cannot lose one
    /// another's update.
    write_lock: tokio::sync::Mutex<()>,
    /// Versions on probation after an upgrade, by install.
    probations: lifecycle::Probations,
    /// How many (kept equal to `probations.len()`): lets every call skip the lock.
    probations_open: std::sync::atomic::AtomicUsize,
    /// Bumped after every rebuild caused by a change made in this process,
    /// so other nodes can be told ([`crate::cluster`]).
    changes: tokio::sync::watch::Sender<u64>,
}

/// What an upload produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Uploaded {
    /// The stored version.
    pub version: store::PluginVersion,
    /// Its description.
    pub description: Description,
    /// What happened to the tenant's installs that follow this plugin.
    pub upgrades: Vec<lifecycle::AutoUpgrade>,
    /// The WIT packages the component was built against.
    pub wit: Vec<&'static str>,
    /// False when these exact bytes were already stored under this version.
    pub created: bool,
}

impl Registry {
    /// An empty registry.
    pub fn new(runtime: Arc<Runtime>, store: Store) -> Registry {
        Registry {
            runtime,
            store,
            plugins: Mutex::new(HashMap::new()),
            table: ArcSwap::from_pointee(InstallTable::default()),
            write_lock: tokio::sync::Mutex::new(()),
            probations: Default::default(),
            probations_open: Default::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Notified after each rebuild of the live table that a change made in
    /// this process caused (not after [`Registry::rebuild`] alone).
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    fn cached(&self, hash: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins.lock().ok().and_then(|m| m.get(hash).cloned())
    }

    pub(crate) async fn load_bytes(&self, bytes: Vec<u8>) -> Result<Arc<LoadedPlugin>, LoadError> {
        let hash = crate::runtime::content_hash(&bytes);
        if let Some(p) = self.cached(&hash) {
            return Ok(p);
        }
        let plugin = self.runtime.load(Arc::new(bytes)).await?;
        if let Ok(mut m) = self.plugins.lock() {
            m.insert(hash, plugin.clone());
        }
        Ok(plugin)
    }

    pub(crate) async fn load_hash(&self, hash: &str) -> Result<Arc<LoadedPlugin>, RegistryError> {
        if let Some(p) = self.cached(hash) {
            return Ok(p);
        }
        let bytes = self.store.plugin_bytes(hash).await?.ok_or(RegistryError::NotFound("plugin bytes"))?;
        Ok(self.load_bytes(bytes).await?)
    }

    /// Compile the stored component `hash` into the on-disk compile cache
    /// without keeping it in memory (another node uploaded it; an install
    /// that moves to it later loads it from the cache in milliseconds).
    pub async fn warm(&self, hash: &str) -> Result<(), RegistryError> {
        if self.cached(hash).is_some() {
            return Ok(());
        }
        let bytes = self.store.plugin_bytes(hash).await?.ok_or(RegistryError::NotFound("plugin bytes"))?;
        self.runtime.load(Arc::new(bytes)).await?;
        Ok(())
    }

    /// Check and store a component. `tenant` is `None` for the prebuilt catalog.
    pub async fn upload(&self, tenant: Option<&str>, bytes: Vec<u8>) -> Result<Uploaded, RegistryError> {
        let plugin = self.load_bytes(bytes.clone()).await?;
        let d = &plugin.description;
        let description_json =
            serde_json::to_string(d).map_err(|e| StoreError::Invalid(format!("description: {e}")))?;
        let existing = self.store.find_plugin_version(tenant, &d.name, &d.version).await?;
        let created = !existing.is_some_and(|v| v.hash == plugin.hash && v.tenant_id.as_deref() == tenant);
        let version =
            self.store.put_plugin_version(tenant, &d.name, &d.version, &plugin.hash, &bytes, &description_json).await?;
        let upgrades = match tenant {
            Some(t) => self.auto_upgrade(t, &version).await,
            None => Vec::new(),
        };
        Ok(Uploaded { version, description: d.clone(), upgrades, wit: plugin.wit_packages(), created })
    }

    /// The description of a stored version.
    pub fn description_of(version: &store::PluginVersion) -> Option<Description> {
        serde_json::from_str(&version.description_json).ok()
    }

    /// Install a version for a tenant with a config and grants.
    pub async fn install(
        &self,
        tenant: &str,
        plugin_version_id: &str,
        config: serde_json::Value,
        grants: Vec<String>,
        auto_upgrade: bool,
    ) -> Result<store::Install, RegistryError> {
        let version = self
            .store
            .get_plugin_version(Some(tenant), plugin_version_id)
            .await?
            .ok_or(RegistryError::NotFound("plugin version"))?;
        let plugin = self.load_hash(&version.hash).await?;
        config::validate(&plugin.description.config_schema, &config).map_err(RegistryError::InvalidConfig)?;
        check_grants(&plugin.description, &grants)?;
        let new = store::NewInstall {
            plugin_version_id: version.id.clone(),
            config,
            grants,
            enabled: None,
            auto_upgrade: Some(auto_upgrade),
        };
        let install = self.store.create_install(tenant, new).await?;
        self.refresh().await?;
        Ok(install)
    }

    /// Change an install's version, config, grants, enabled flag or
    /// auto-upgrade.
    ///
    /// A new `plugin_version_id` upgrades (or rolls back) the install
    /// through [`lifecycle`]: the version must be of the same plugin, is
    /// loaded, health-checked and its schema and requests checked against
    /// the config and grants (the new ones, or else the current ones) before
    /// anything changes; a version that cannot run this install is refused
    /// with the reason and the old version stays. Calls already running
    /// finish on the version they started with.
    pub async fn update_install(
        &self,
        tenant: &str,
        install_id: &str,
        patch: store::InstallPatch,
    ) -> Result<store::Install, RegistryError> {
        let current = self.store.get_install(tenant, install_id).await?.ok_or(RegistryError::NotFound("install"))?;
        if let Some(target) = patch.plugin_version_id.as_deref().filter(|v| *v != current.plugin_version_id) {
            let version = self
                .store
                .get_plugin_version(Some(tenant), target)
                .await?
                .ok_or(RegistryError::NotFound("plugin version"))?;
            return self.change_version(&current, &version, patch, "upgraded", None).await;
        }
        let plugin = self.load_hash(&current.plugin_hash).await?;
        if let Some(config) = &patch.config {
            config::validate(&plugin.description.config_schema, config).map_err(RegistryError::InvalidConfig)?;
        }
        if let Some(grants) = &patch.grants {
            check_grants(&plugin.description, grants)?;
        }
        let patched =
            self.store.patch_install(tenant, install_id, patch).await?.ok_or(RegistryError::NotFound("install"))?;
        self.refresh().await?;
        Ok(patched)
    }

    /// Put install `install_id` back on `version_id`, or, without one, on
    /// the version it ran before its latest change: one call to undo an
    /// upgrade.
    pub async fn roll_back_install(
        &self,
        tenant: &str,
        install_id: &str,
        version_id: Option<&str>,
    ) -> Result<store::Install, RegistryError> {
        let current = self.store.get_install(tenant, install_id).await?.ok_or(RegistryError::NotFound("install"))?;
        let target = match version_id {
            Some(v) => v.to_string(),
            None => self
                .store
                .install_history(tenant, install_id, 100)
                .await?
                .into_iter()
                .filter(|c| c.action != "refused" && c.to_version_id.as_deref() == Some(&current.plugin_version_id))
                .find_map(|c| c.from_version_id)
                .ok_or(RegistryError::NotFound("earlier version of this install"))?,
        };
        let version = self
            .store
            .get_plugin_version(Some(tenant), &target)
            .await?
            .ok_or(RegistryError::NotFound("plugin version"))?;
        let patch = store::InstallPatch::default();
        self.change_version(&current, &version, patch, "rolled-back", Some("rolled back by request".into())).await
    }

    /// Remove an install.
    pub async fn remove_install(&self, tenant: &str, install_id: &str) -> Result<bool, RegistryError> {
        let removed = self.store.delete_install(tenant, install_id).await?;
        self.refresh().await?;
        Ok(removed)
    }

    /// Rebuild the live table after a change made in this process, and tell
    /// whoever follows the changes (the other nodes of a cluster).
    pub async fn refresh(&self) -> Result<(), RegistryError> {
        self.rebuild().await?;
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Rebuild the live table from the store (at start, and when another
    /// node changed installs). Plugins already loaded are reused by hash, so
    /// this compiles only new code.
    pub async fn rebuild(&self) -> Result<(), RegistryError> {
        let _guard = self.write_lock.lock().await;
        let installs = self.store.list_all_enabled_installs().await?;
        let old = self.table.load_full();
        let mut active = Vec::with_capacity(installs.len());
        for install in installs {
            let version =
                match self.store.get_plugin_version(Some(&install.tenant_id), &install.plugin_version_id).await? {
                    Some(v) => v,
                    None => continue,
                };
            let plugin = match self.load_hash(&version.hash).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(install = %install.id, "could not load plugin {}: {e}", version.name);
                    continue;
                }
            };
            let grants = match Grants::parse(&install.grants) {
                Ok(g) => Arc::new(g),
                Err(e) => {
                    tracing::error!(install = %install.id, "bad grants: {e}");
                    continue;
                }
            };
            // Keep counters across rebuilds of the same install.
            let stats = old.by_id.get(&install.id).map(|a| a.stats.clone()).unwrap_or_default();
            let config_text = install.config.to_string();
            active.push(Arc::new(ActiveInstall { install, plugin, grants, config_text, stats }));
        }
        self.table.store(Arc::new(InstallTable::build(active)));
        Ok(())
    }

    /// An install by id, if it belongs to `tenant`.
    pub fn get(&self, tenant: &str, install_id: &str) -> Option<Arc<ActiveInstall>> {
        self.table.load().by_id.get(install_id).filter(|a| a.install.tenant_id == tenant).cloned()
    }

    /// A tenant's enabled installs by kind.
    pub fn tenant(&self, tenant: &str) -> TenantInstalls {
        self.table.load().by_tenant.get(tenant).cloned().unwrap_or_default()
    }

    /// Every loaded install (for `/metrics`).
    pub fn all(&self) -> Vec<Arc<ActiveInstall>> {
        self.table.load().by_id.values().cloned().collect()
    }

    /// Count a successful call of `active`.
    pub fn record_ok(&self, active: &ActiveInstall, stats: &crate::runtime::CallStats) {
        active.stats.record_ok(stats.duration_us, stats.fuel_used);
        // A success never tips a probation over; it only counts.
        let _ = self.probation_verdict(active, None);
    }

    /// Count a failed call of `active`; after [`Limits::breaker_failures`]
    /// failures in a row the circuit breaker disables the install, with the
    /// reason stored for the admin (`GET /v1/installs/{id}`), until an admin
    /// enables it again.
    ///
    /// [`Limits::breaker_failures`]: crate::runtime::Limits::breaker_failures
    pub async fn record_failure(&self, active: &ActiveInstall, error: &crate::runtime::CallError) {
        let in_a_row = active.stats.record_failure(error.cause, error.stats.duration_us, error.stats.fuel_used);
        if error.cause != crate::runtime::FailureCause::Unavailable
            && let Some(probation) = self.probation_verdict(active, Some(error))
        {
            self.roll_back(active, probation, error).await;
            return;
        }
        let threshold = u64::from(self.runtime.limits().breaker_failures);
        // Exactly at the threshold: concurrent failures past it trip nothing twice.
        if threshold == 0 || in_a_row != threshold {
            return;
        }
        let message: String = error.message.chars().take(300).collect();
        let reason =
            format!("circuit breaker: {in_a_row} failed calls in a row; the last: {}: {message}", error.cause.as_str());
        match self.store.trip_install(&active.install.tenant_id, active.id(), &reason).await {
            Ok(true) => {
                tracing::warn!(install = %active.id(), "install disabled: {reason}");
                if let Err(e) = self.refresh().await {
                    tracing::warn!("reloading installs after the breaker tripped failed: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(install = %active.id(), "could not disable an install: {e}"),
        }
    }

    /// Drop compiled plugins no install uses (after start-up, the catalog's
    /// unused plugins): each holds its code and instance template in memory.
    /// A later install loads it again from the on-disk compile cache.
    pub fn forget_unused(&self) {
        if let Ok(mut m) = self.plugins.lock() {
            // The cache's own reference is the only one left for those.
            m.retain(|_, plugin| Arc::strong_count(plugin) > 1);
        }
    }

    /// Loaded plugins (distinct compiled components held in memory).
    pub fn loaded_plugin_count(&self) -> usize {
        self.plugins.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Every grant must be well-formed and asked for by the plugin. An
/// `http:*` request means "hosts chosen at install": any concrete host may
/// be granted then, never a wildcard.
pub(crate) fn check_grants(description: &Description, grants: &[String]) -> Result<(), RegistryError> {
    Grants::parse(grants).map_err(|e| RegistryError::InvalidGrant(e.to_string()))?;
    let asks_any_host = description.capabilities.iter().any(|c| c == "http:*");
    for grant in grants {
        let asked =
            description.capabilities.iter().any(|c| c == grant) || (grant.starts_with("http:") && asks_any_host);
        if !asked {
            return Err(RegistryError::InvalidGrant(format!(
                "`{grant}` was not asked for by {} (it asks for: {})",
                description.name,
                if description.capabilities.is_empty() {
                    "nothing".into()
                } else {
                    description.capabilities.join(", ")
                }
            )));
        }
    }
    Ok(())
}
