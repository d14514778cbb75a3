//! On-disk cache of compiled components, keyed by content hash and engine.
//!
//! Compiling a 50 KB component takes ~30 ms; loading its precompiled native
//! code ~70 µs. The key includes the engine's compatibility hash (wasmtime
//! version and every codegen-relevant setting: fuel, epochs...), so a cache
//! written by another build or configuration is never loaded: it is simply a
//! miss, and the entry is rewritten.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of `<content-hash>-<engine-hash>.cwasm` files.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

/// Where a component came from, for metrics and the startup log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded precompiled code from disk.
    Hit,
    /// Compiled now (and stored when the cache has a directory).
    Compiled,
}

impl CompileCache {
    /// A cache in `dir`, or a cache that always compiles when `dir` is `None`.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        if let Some(d) = &dir
            && let Err(e) = std::fs::create_dir_all(d)
        {
            tracing::warn!("compile cache {} unusable ({e}); compiling in memory only", d.display());
            return CompileCache { dir: None, engine_key: format!("{:016x}", hasher.finish()) };
        }
        CompileCache { dir, engine_key: format!("{:016x}", hasher.finish()) }
    }

    fn path_for(&self, dir: &Path, content_hash: &str) -> PathBuf {
        dir.join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for `bytes` (whose sha256 is `content_hash`).
    pub fn load(&self, engine: &Engine, content_hash: &str, bytes: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        if let Some(dir) = &self.dir {
            let path = self.path_for(dir, content_hash);
            if path.is_file() {
                match deserialize(engine, &path) {
                    Ok(component) => return Ok((component, CacheOutcome::Hit)),
                    Err(e) => tracing::warn!("discarding unreadable cache entry {}: {e}", path.display()),
                }
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(dir) = &self.dir {
            self.store(dir, content_hash, &component);
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, dir: &Path, content_hash: &str, component: &Component) {
        let path = self.path_for(dir, content_hash);
        let result = component.serialize().map_err(|e| anyhow::anyhow!("{e}")).and_then(|bytes| {
            // Write to a name no other writer uses, then rename: a concurrent
            // reader never sees half a file, and two writers of the same
            // component never interleave.
            let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!("could not cache compiled component {content_hash}: {e}");
        }
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: the file was written by `CompileCache::store` of a compatible
    // engine (the engine hash is part of the name) into a directory owned by
    // this server; wasmtime checks its header and version before use.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|e| anyhow::anyhow!("{e}"))
}
