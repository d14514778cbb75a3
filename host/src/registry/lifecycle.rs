//! Changing the version an install runs without downtime, and undoing a
//! change that went wrong.
//!
//! Every change goes the same way: the target version is compiled off the
//! hot path (or found compiled), its `describe()` checked at load and its
//! optional `cairn:health` self-test run, the install's config and grants
//! re-validated against it; only then is the store row changed and the
//! live table swapped (one pointer swap: calls already running finish on
//! the old version, the next call uses the new one, no event waits). A
//! version that fails its health check never runs; the refusal is kept in
//! the install's history with the checks.
//!
//! An upgrade then starts a probation: if the new version's calls fail at
//! more than [`Limits::rollback_failure_percent`] after
//! [`Limits::rollback_min_calls`] calls within [`Limits::probation`], the
//! install goes back to the version it replaced, and the history says why.
//! Probation lives in this process's memory: a restart ends it early
//! (the circuit breaker still guards the install).
//!
//! [`Limits::rollback_failure_percent`]: crate::runtime::Limits::rollback_failure_percent
//! [`Limits::rollback_min_calls`]: crate::runtime::Limits::rollback_min_calls
//! [`Limits::probation`]: crate::runtime::Limits::probation

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Instant;

use crate::registry::{ActiveInstall, Registry, RegistryError, check_grants, config};
use crate::runtime::{CallError, LoadedPlugin, SelfCheck};
use crate::store::{self, InstallChange, PluginVersion};

/// What happened to one auto-upgrade install when a version was uploaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AutoUpgrade {
    /// The install.
    pub install_id: String,
    /// Whether it now runs the uploaded version.
    pub upgraded: bool,
    /// Why not, when it was not.
    pub reason: Option<String>,
}

/// What a reload from source did (`cairn serve --watch`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceReload {
    /// The plugin's name.
    pub name: String,
    /// The development version stored for this build.
    pub version: String,
    /// Each install of the plugin, moved or not.
    pub installs: Vec<AutoUpgrade>,
}

/// A version on probation in an install.
#[derive(Debug, Clone)]
pub(crate) struct Probation {
    version_id: String,
    version: String,
    previous_version_id: String,
    previous_version: String,
    until: Instant,
    ok: u64,
    failed: u64,
}

/// Probations by install id.
pub(crate) type Probations = std::sync::Mutex<HashMap<String, Probation>>;

/// Whether version string `a` is newer than `b`: semantic versions compare
/// as such; anything else falls back to the upload order.
pub fn is_newer(a: &PluginVersion, b: &PluginVersion) -> bool {
    match (semver::Version::parse(&a.version), semver::Version::parse(&b.version)) {
        (Ok(x), Ok(y)) => x.cmp(&y) == Ordering::Greater,
        _ => (a.created_at, &a.id) > (b.created_at, &b.id),
    }
}

/// The checks that failed, as one line for a history reason.
fn failed_checks(checks: &[SelfCheck]) -> Option<String> {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| if c.detail.is_empty() { c.name.clone() } else { format!("{}: {}", c.name, c.detail) })
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

impl Registry {
    /// The health check a version passes before it runs in an install:
    /// `describe()` (already checked when it was loaded) and its self-test,
    /// when it has one. `Err` carries the reason and the checks.
    pub async fn health_check(
        &self,
        plugin: &LoadedPlugin,
    ) -> Result<Option<Vec<SelfCheck>>, (String, Option<Vec<SelfCheck>>)> {
        match self.runtime.self_test(plugin).await {
            Ok(None) => Ok(None),
            Ok(Some(checks)) => match failed_checks(&checks) {
                None => Ok(Some(checks)),
                Some(failed) => Err((format!("self-test failed: {failed}"), Some(checks))),
            },
            Err(e) => Err((format!("self-test did not run: {}: {}", e.cause.as_str(), e.message), None)),
        }
    }

    /// Move `current` to `version`: load, check, swap, record, and (for an
    /// upgrade) start a probation. `action` names the change in the history
    /// (`upgraded`, `auto-upgraded`, `rolled-back`, `auto-rolled-back`).
    /// A rollback to a version that ran before skips the self-test: it is
    /// how the install gets back to safety.
    pub(crate) async fn change_version(
        &self,
        current: &store::Install,
        version: &PluginVersion,
        patch: store::InstallPatch,
        action: &str,
        reason: Option<String>,
    ) -> Result<store::Install, RegistryError> {
        let tenant = current.tenant_id.as_str();
        if version.name != current.plugin_name {
            return Err(RegistryError::OtherPlugin(format!(
                "plugin_version_id: `{}` is a version of {}, not of {}: install that plugin instead",
                version.id, version.name, current.plugin_name
            )));
        }
        let plugin = self.load_hash(&version.hash).await?;
        let config = patch.config.as_ref().unwrap_or(&current.config);
        config::validate(&plugin.description.config_schema, config).map_err(RegistryError::InvalidConfig)?;
        check_grants(&plugin.description, patch.grants.as_ref().unwrap_or(&current.grants))?;
        let from = self.store.get_plugin_version(Some(tenant), &current.plugin_version_id).await?;
        let upgrade = from.as_ref().is_none_or(|from| is_newer(version, from));
        let automatic_rollback = action == "auto-rolled-back";
        let checks = if automatic_rollback {
            None
        } else {
            match self.health_check(&plugin).await {
                Ok(checks) => checks,
                Err((why, checks)) => {
                    self.record_change(current, version, "refused", Some(why.clone()), checks).await;
                    tracing::warn!(install = %current.id, version = %version.version, "upgrade refused: {why}");
                    return Err(RegistryError::HealthCheck(format!(
                        "{} {} failed its health check, the install stays on {}: {why}",
                        version.name, version.version, current.plugin_version
                    )));
                }
            }
        };
        let patch = store::InstallPatch { plugin_version_id: Some(version.id.clone()), ..patch };
        let patched =
            self.store.patch_install(tenant, &current.id, patch).await?.ok_or(RegistryError::NotFound("install"))?;
        let action = match action {
            "upgraded" if !upgrade => "rolled-back",
            other => other,
        };
        self.record_change(current, version, action, reason, checks).await;
        tracing::info!(install = %current.id, from = %current.plugin_version, to = %version.version, "{action}: install now runs {} {}", version.name, version.version);
        if let Ok(mut probations) = self.probations.lock() {
            probations.remove(&current.id);
            if (upgrade || action == "reloaded") && !automatic_rollback {
                probations.insert(
                    current.id.clone(),
                    Probation {
                        version_id: version.id.clone(),
                        version: version.version.clone(),
                        previous_version_id: current.plugin_version_id.clone(),
                        previous_version: current.plugin_version.clone(),
                        until: Instant::now() + self.runtime.limits().probation,
                        ok: 0,
                        failed: 0,
                    },
                );
            }
            self.probations_open.store(probations.len(), std::sync::atomic::Ordering::Relaxed);
        }
        self.refresh().await?;
        if let Some(active) = self.get(tenant, &current.id) {
            // The new version starts with a clean run of failures.
            active.stats.reset_consecutive_failures();
        }
        Ok(patched)
    }

    async fn record_change(
        &self,
        current: &store::Install,
        to: &PluginVersion,
        action: &str,
        reason: Option<String>,
        checks: Option<Vec<SelfCheck>>,
    ) {
        let change = InstallChange {
            id: store::new_id(),
            tenant_id: current.tenant_id.clone(),
            install_id: current.id.clone(),
            action: action.to_string(),
            from_version_id: Some(current.plugin_version_id.clone()),
            to_version_id: Some(to.id.clone()),
            from_version: Some(current.plugin_version.clone()),
            to_version: Some(to.version.clone()),
            reason,
            checks: checks.and_then(|c| serde_json::to_value(c).ok()),
            at: self.store.now(),
        };
        if let Err(e) = self.store.record_install_change(&change).await {
            tracing::warn!(install = %current.id, "could not record an install change: {e}");
        }
    }

    /// After an upload of `version` by `tenant`: move every install of the
    /// tenant that follows this plugin and runs an older version to it,
    /// each through the health check.
    pub(crate) async fn auto_upgrade(&self, tenant: &str, version: &PluginVersion) -> Vec<AutoUpgrade> {
        let installs = match self.store.auto_upgrade_installs(tenant, &version.name).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("listing auto-upgrade installs failed: {e}");
                return Vec::new();
            }
        };
        let mut outcomes = Vec::new();
        for install in installs {
            let Ok(Some(running)) = self.store.get_plugin_version(Some(tenant), &install.plugin_version_id).await
            else {
                continue;
            };
            if !is_newer(version, &running) {
                continue;
            }
            let reason = Some(format!("auto-upgrade: {} {} was uploaded", version.name, version.version));
            let outcome =
                self.change_version(&install, version, store::InstallPatch::default(), "auto-upgraded", reason).await;
            outcomes.push(AutoUpgrade {
                install_id: install.id.clone(),
                upgraded: outcome.is_ok(),
                reason: outcome.err().map(|e| e.to_string()),
            });
        }
        outcomes
    }

    /// Store a component rebuilt from source as catalog version
    /// `<describe version>-dev.<ms>` and move every enabled install of that
    /// plugin, in every tenant, to it through the health check (history
    /// action `reloaded`). A build identical to what an install runs leaves
    /// that install alone.
    pub async fn reload_from_source(&self, bytes: Vec<u8>) -> Result<SourceReload, RegistryError> {
        let plugin = self.load_bytes(bytes.clone()).await?;
        let d = &plugin.description;
        let dev_version = format!("{}-dev.{}", d.version, store::now_ms());
        let description_json =
            serde_json::to_string(d).map_err(|e| store::StoreError::Invalid(format!("description: {e}")))?;
        let version =
            self.store.put_plugin_version(None, &d.name, &dev_version, &plugin.hash, &bytes, &description_json).await?;
        let mut installs = Vec::new();
        for install in self.store.list_all_enabled_installs().await? {
            if install.plugin_name != d.name || install.plugin_hash == plugin.hash {
                continue;
            }
            let reason = Some("rebuilt from source (serve --watch)".to_string());
            let outcome =
                self.change_version(&install, &version, store::InstallPatch::default(), "reloaded", reason).await;
            installs.push(AutoUpgrade {
                install_id: install.id.clone(),
                upgraded: outcome.is_ok(),
                reason: outcome.err().map(|e| e.to_string()),
            });
        }
        Ok(SourceReload { name: d.name.clone(), version: dev_version, installs })
    }

    /// Count a call of `active` against its probation, if it is on one.
    /// Returns the reason to roll back when this call tipped the failure
    /// rate over the limit (the probation then ends, so one rollback only).
    pub(crate) fn probation_verdict(&self, active: &ActiveInstall, error: Option<&CallError>) -> Option<Probation> {
        // Every call passes here; almost always nothing is on probation.
        if self.probations_open.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return None;
        }
        let limits = self.runtime.limits();
        let mut probations = self.probations.lock().ok()?;
        let p = probations.get_mut(active.id())?;
        if p.until <= Instant::now() {
            probations.remove(active.id());
            self.probations_open.store(probations.len(), std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        // A call that started on the old version and finished after the
        // swap says nothing about the new one.
        if active.install.plugin_version_id != p.version_id {
            return None;
        }
        if error.is_some() {
            p.failed += 1;
        } else {
            p.ok += 1;
        }
        let calls = p.ok + p.failed;
        let percent = u64::from(limits.rollback_failure_percent);
        let over = percent > 0 && calls >= u64::from(limits.rollback_min_calls) && p.failed * 100 > percent * calls;
        if !over {
            return None;
        }
        let ended = probations.remove(active.id());
        self.probations_open.store(probations.len(), std::sync::atomic::Ordering::Relaxed);
        ended
    }

    /// Roll `active` back to the version its probation replaced.
    pub(crate) async fn roll_back(&self, active: &ActiveInstall, probation: Probation, last: &CallError) {
        let tenant = &active.install.tenant_id;
        let message: String = last.message.chars().take(300).collect();
        let reason = format!(
            "{} {} failed {} of {} calls in its first {} s (last: {}: {message}); back on {}",
            active.install.plugin_name,
            probation.version,
            probation.failed,
            probation.ok + probation.failed,
            self.runtime.limits().probation.as_secs(),
            last.cause.as_str(),
            probation.previous_version,
        );
        let outcome = async {
            let current =
                self.store.get_install(tenant, active.id()).await?.ok_or(RegistryError::NotFound("install"))?;
            let previous = self
                .store
                .get_plugin_version(Some(tenant), &probation.previous_version_id)
                .await?
                .ok_or(RegistryError::NotFound("plugin version"))?;
            self.change_version(
                &current,
                &previous,
                store::InstallPatch::default(),
                "auto-rolled-back",
                Some(reason.clone()),
            )
            .await
        }
        .await;
        match outcome {
            Ok(_) => tracing::warn!(install = %active.id(), "rolled back automatically: {reason}"),
            Err(e) => tracing::error!(install = %active.id(), "automatic rollback failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str, at: i64) -> PluginVersion {
        PluginVersion {
            id: format!("id-{v}"),
            tenant_id: None,
            name: "p".into(),
            version: v.into(),
            hash: String::new(),
            size: 0,
            description_json: String::new(),
            created_at: at,
        }
    }

    #[test]
    fn semantic_versions_compare_as_such_and_others_by_upload_order() {
        assert!(is_newer(&version("1.10.0", 1), &version("1.9.0", 2)));
        assert!(!is_newer(&version("1.0.0", 5), &version("2.0.0", 1)));
        assert!(is_newer(&version("2.0.0", 1), &version("2.0.0-beta.1", 2)));
        assert!(is_newer(&version("nightly", 3), &version("weekly", 2)));
    }

    #[test]
    fn only_failed_checks_make_a_reason() {
        let ok = SelfCheck { name: "a".into(), passed: true, detail: String::new() };
        let bad = SelfCheck { name: "b".into(), passed: false, detail: "expected 2, got 3".into() };
        assert_eq!(failed_checks(std::slice::from_ref(&ok)), None);
        assert_eq!(failed_checks(&[ok, bad]).as_deref(), Some("b: expected 2, got 3"));
    }
}
