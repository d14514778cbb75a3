//! `cairn serve --watch <dir>`: rebuild plugins from source when it
//! changes and hot-reload them into every install that runs them.
//!
//! The directory is a plugin crate or holds plugin crates (one level down,
//! as `cairn plugin new` makes them). Their sources (`Cargo.toml`, `src/`)
//! are polled: polling needs no platform watcher, sees edits made through
//! any editor or mount, and a half-second delay is nothing next to a build.
//! A changed crate is built for wasm32-wasip2 (`cairn plugin build`), and
//! the component goes through the same door as any upgrade
//! ([`Registry::reload_from_source`]): loaded, health-checked, swapped in
//! atomically, recorded in each install's history. A build or health check
//! that fails leaves the running version in place and says why in the log.
//!
//! Each build is stored as its own catalog version, `<version>-dev.<ms>`,
//! because versions are immutable: the database grows by one version per
//! rebuild, which suits a development server, not production.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::registry::Registry;

/// The plugin crates under `dir`: `dir` itself when it is one, else its
/// sub-folders that are.
pub fn plugin_crates(dir: &Path) -> Vec<PathBuf> {
    if dir.join("Cargo.toml").is_file() {
        return vec![dir.to_path_buf()];
    }
    let mut crates: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.join("Cargo.toml").is_file()).collect()
        })
        .unwrap_or_default();
    crates.sort();
    crates
}

/// What a crate's sources look like now: the newest change and how many
/// files there are (a deleted file changes the count, not the time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    newest: SystemTime,
    files: usize,
}

/// The fingerprint of `crate_dir`'s `Cargo.toml` and everything under `src/`.
pub fn fingerprint(crate_dir: &Path) -> Fingerprint {
    let mut fp = Fingerprint { newest: SystemTime::UNIX_EPOCH, files: 0 };
    let mut pending = vec![crate_dir.join("Cargo.toml"), crate_dir.join("src")];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
            }
            continue;
        }
        fp.files += 1;
        if let Ok(modified) = meta.modified() {
            fp.newest = fp.newest.max(modified);
        }
    }
    fp
}

/// Build `crate_dir` and reload what it produced; logs the outcome.
async fn rebuild(registry: &Registry, crate_dir: &Path, offline: bool) {
    let dir = crate_dir.to_path_buf();
    let built = tokio::task::spawn_blocking(move || crate::devtools::build::build(&dir, offline)).await;
    let built = match built {
        Ok(Ok(built)) => built,
        Ok(Err(e)) => {
            tracing::warn!(crate_dir = %crate_dir.display(), "build failed, the running version stays: {e:#}");
            return;
        }
        Err(e) => {
            tracing::warn!("build task failed: {e}");
            return;
        }
    };
    let bytes = match tokio::fs::read(&built.wasm).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(wasm = %built.wasm.display(), "reading the build failed: {e}");
            return;
        }
    };
    match registry.reload_from_source(bytes).await {
        Ok(reload) => {
            for outcome in &reload.installs {
                match &outcome.reason {
                    None => {
                        tracing::info!(install = %outcome.install_id, "hot-reloaded {} {}", reload.name, reload.version)
                    }
                    Some(why) => tracing::warn!(install = %outcome.install_id, "not reloaded: {why}"),
                }
            }
            tracing::info!(
                "{} {} built from {} ({} installs reloaded)",
                reload.name,
                reload.version,
                crate_dir.display(),
                reload.installs.iter().filter(|o| o.upgraded).count()
            );
        }
        Err(e) => {
            tracing::warn!(crate_dir = %crate_dir.display(), "the build was refused, the running version stays: {e}")
        }
    }
}

/// Watch `dir` every `every` until the task is aborted: build each crate
/// once at start, then again whenever its sources change.
pub fn spawn(dir: PathBuf, registry: Arc<Registry>, every: Duration, offline: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: HashMap<PathBuf, Fingerprint> = HashMap::new();
        loop {
            for crate_dir in plugin_crates(&dir) {
                let now = fingerprint(&crate_dir);
                if seen.get(&crate_dir) != Some(&now) {
                    seen.insert(crate_dir.clone(), now);
                    rebuild(&registry, &crate_dir, offline).await;
                }
            }
            tokio::time::sleep(every).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crate_is_found_itself_or_one_level_down_and_its_fingerprint_moves_with_its_sources() {
        let root = std::env::temp_dir().join(format!("cairn-watch-{}-{}", std::process::id(), crate::store::now_ms()));
        let a = root.join("a");
        std::fs::create_dir_all(a.join("src")).unwrap_or_default();
        std::fs::create_dir_all(root.join("not-a-crate")).unwrap_or_default();
        std::fs::write(a.join("Cargo.toml"), "[package]").unwrap_or_default();
        std::fs::write(a.join("src/lib.rs"), "").unwrap_or_default();
        assert_eq!(plugin_crates(&root), vec![a.clone()]);
        assert_eq!(plugin_crates(&a), vec![a.clone()]);
        let before = fingerprint(&a);
        assert_eq!(before.files, 2);
        std::fs::write(a.join("src/more.rs"), "").unwrap_or_default();
        assert_ne!(fingerprint(&a), before);
        let _ = std::fs::remove_dir_all(root);
    }
}
