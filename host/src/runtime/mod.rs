//! The sandboxed plugin runtime: one wasmtime engine, components compiled
//! once per content hash, a fresh instance per call, limits on every call.
//!
//! ## Layout
//! - [`engine`]: the `Engine` configuration and the epoch ticker thread.
//! - [`cache`]: compiled components on disk, keyed by content + engine hash.
//! - [`limits`]: per-call limits and the memory limiter.
//! - [`bindings`]: the host side of the WIT contract.
//! - [`host`]: per-call state and the host imports (store, state, log, http).
//! - [`grants`], [`egress`]: capabilities and the outbound HTTP policy.
//! - [`description`]: the validated `describe()` result.
//! - [`convert`]: store types to WIT types, with input projection.
//! - [`invoke`]: one call: instantiate, run under limits, classify failures.
//!
//! Loading ([`Runtime::load`]) is where a component is refused: not a
//! component, an import Cairn does not provide (filesystem, sockets...), a
//! missing export for a kind it claims, or a `describe()` that fails or lies.

pub mod background;
pub mod bindings;
pub mod cache;
pub mod convert;
pub mod cpu_turns;
pub mod description;
pub mod egress;
pub mod engine;
pub mod grants;
pub mod host;
pub mod invoke;
pub mod limits;
pub mod recorded;

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};

pub use cache::CacheOutcome;
pub use description::{Description, Kind};
pub use host::{CallScope, HostState};
pub use invoke::{CallError, CallStats, FailureCause, SelfCheck};
pub use limits::Limits;

use bindings::guest;

/// Runtime settings an operator may change.
#[derive(Debug, Clone, Default)]
pub struct RuntimeSettings {
    /// Engine-wide settings.
    pub engine: engine::EngineSettings,
    /// Default per-call limits.
    pub limits: Limits,
    /// Where compiled components are cached (`None`: memory only).
    pub cache_dir: Option<PathBuf>,
    /// Let plugins reach loopback and private addresses (development, demo).
    pub allow_private_network: bool,
}

/// Why a component was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    NotAComponent(String),
    /// The component imports something Cairn does not provide.
    #[error(
        "the component imports `{0}`, which Cairn does not provide (plugins get no filesystem, sockets or environment; they use cairn:plugin imports)"
    )]
    DisallowedImport(String),
    /// A required export is missing.
    #[error("the component does not export `{0}`")]
    MissingExport(String),
    /// `describe()` failed.
    #[error("describe() failed: {0}")]
    DescribeFailed(String),
    /// `describe()` returned something invalid.
    #[error("{0}")]
    InvalidDescription(String),
}

/// Interfaces a plugin may import. Rust guests import a few `wasi:cli`,
/// `wasi:io`, `wasi:clocks` and `wasi:random` interfaces even when unused;
/// they are linked with a deny-all context.
const ALLOWED_IMPORT_PREFIXES: [&str; 5] = ["cairn:plugin/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:cli/"];

/// A compiled, checked component, ready to instantiate.
pub struct LoadedPlugin {
    /// sha256 of the component bytes, hex.
    pub hash: String,
    /// What `describe()` said.
    pub description: Description,
    /// Whether the code came from the compile cache.
    pub cache: CacheOutcome,
    pre: InstancePre<HostState>,
    scorer: Option<guest::scorer::GuestIndices>,
    action: Option<guest::action::GuestIndices>,
    trigger: Option<guest::trigger::GuestIndices>,
    channel: Option<guest::channel::GuestIndices>,
    self_test: Option<bindings::health::self_test::GuestIndices>,
}

impl LoadedPlugin {
    /// Whether the component exports the optional `cairn:health` self-test.
    pub fn has_self_test(&self) -> bool {
        self.self_test.is_some()
    }

    /// The WIT packages the component was built against, as its exports name
    /// them: `cairn:plugin@0.1.0`, plus `cairn:health@0.1.0` with a self-test.
    pub fn wit_packages(&self) -> Vec<&'static str> {
        let mut packages = vec!["cairn:plugin@0.1.0"];
        if self.has_self_test() {
            packages.push("cairn:health@0.1.0");
        }
        packages
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("hash", &self.hash).field("name", &self.description.name).finish()
    }
}

/// The runtime: engine, linker, compile cache, ticker, egress.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: cache::CompileCache,
    limits: Limits,
    /// Outbound HTTP client and policy, shared by every call.
    pub egress: egress::Egress,
    /// Call slots per tenant ([`Limits::tenant_concurrent_calls`]).
    tenant_slots: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Where tenants' long calls take turns at the CPU.
    cpu_turns: cpu_turns::CpuTurns,
    _ticker: engine::EpochTicker,
}

/// sha256 hex of component bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Runtime {
    /// Build the engine, the linker and the ticker.
    pub fn new(settings: RuntimeSettings) -> anyhow::Result<Runtime> {
        let engine = engine::build_engine(&settings.engine)?;
        let mut linker = Linker::<HostState>::new(&engine);
        link_wasi(&mut linker)?;
        bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("linking cairn imports: {e}"))?;
        let cache = cache::CompileCache::new(&engine, settings.cache_dir.clone());
        let ticker = engine::EpochTicker::start(engine.clone());
        Ok(Runtime {
            engine,
            linker,
            cache,
            limits: settings.limits,
            egress: egress::Egress::new(settings.allow_private_network)?,
            tenant_slots: Default::default(),
            cpu_turns: cpu_turns::CpuTurns::for_this_machine(),
            _ticker: ticker,
        })
    }

    /// How long calls share the CPU, and which tenants burnt it lately.
    pub fn cpu_turns(&self) -> &cpu_turns::CpuTurns {
        &self.cpu_turns
    }

    /// The default per-call limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `tenant`'s call slots (`None`: no per-tenant limit).
    pub(crate) fn tenant_slots(&self, tenant: &str) -> Option<Arc<tokio::sync::Semaphore>> {
        let n = self.limits.tenant_concurrent_calls as usize;
        if n == 0 {
            return None;
        }
        let mut slots = self.tenant_slots.lock().ok()?;
        // Every call passes here: look up before allocating a key.
        if let Some(found) = slots.get(tenant) {
            return Some(found.clone());
        }
        Some(slots.entry(tenant.to_string()).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(n))).clone())
    }

    /// Compile (or load from cache), check imports and exports, and call
    /// `describe()`. Compilation runs on a blocking thread, off the hot path.
    pub async fn load(&self, bytes: Arc<Vec<u8>>) -> Result<Arc<LoadedPlugin>, LoadError> {
        let hash = content_hash(&bytes);
        let (engine, cache, h) = (self.engine.clone(), self.cache.clone(), hash.clone());
        let (component, outcome) = tokio::task::spawn_blocking(move || {
            if !is_component(&bytes) {
                return Err(LoadError::NotAComponent(
                    "the bytes are not a component (core modules must be wrapped: build for wasm32-wasip2)".into(),
                ));
            }
            cache.load(&engine, &h, &bytes).map_err(|e| LoadError::NotAComponent(format!("{e:#}")))
        })
        .await
        .map_err(|e| LoadError::NotAComponent(format!("compilation task failed: {e}")))??;
        self.prepare(hash, component, outcome).await
    }

    async fn prepare(
        &self,
        hash: String,
        component: Component,
        cache: CacheOutcome,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        check_imports(&self.engine, &component)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::DisallowedImport(format!("{e}")))?;
        let meta = guest::meta::GuestIndices::new(&pre)
            .map_err(|_| LoadError::MissingExport("cairn:plugin/meta@0.1.0".into()))?;
        let description = invoke::describe(self, &pre, &meta).await?;
        let missing = |kind: Kind| {
            LoadError::MissingExport(format!("{} (describe() lists the {kind:?} kind)", kind.export_name()))
        };
        let mut plugin = LoadedPlugin {
            hash,
            cache,
            scorer: None,
            action: None,
            trigger: None,
            channel: None,
            self_test: bindings::health::self_test::GuestIndices::new(&pre).ok(),
            description: description.clone(),
            pre: pre.clone(),
        };
        for kind in description.kinds.iter().copied() {
            match kind {
                Kind::Scorer => {
                    plugin.scorer = Some(guest::scorer::GuestIndices::new(&pre).map_err(|_| missing(kind))?)
                }
                Kind::Action => {
                    plugin.action = Some(guest::action::GuestIndices::new(&pre).map_err(|_| missing(kind))?)
                }
                Kind::Trigger => {
                    plugin.trigger = Some(guest::trigger::GuestIndices::new(&pre).map_err(|_| missing(kind))?)
                }
                Kind::Channel => {
                    plugin.channel = Some(guest::channel::GuestIndices::new(&pre).map_err(|_| missing(kind))?)
                }
            }
        }
        Ok(Arc::new(plugin))
    }
}

/// A component starts with the wasm magic and the component layer/version
/// (`0d 00 01 00`); a core module has version `01 00 00 00`.
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[0..4] == b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

/// Refuse imports outside the allowed interfaces, naming every one of them.
fn check_imports(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let refused: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| !ALLOWED_IMPORT_PREFIXES.iter().any(|p| name.starts_with(p)))
        .collect();
    if refused.is_empty() { Ok(()) } else { Err(LoadError::DisallowedImport(refused.join("`, `"))) }
}

/// Link the WASI interfaces a Rust guest needs, with a deny-all context, and
/// nothing else: no `wasi:filesystem`, no `wasi:sockets`. Real implementations
/// rather than trapping stubs, so newer compatible WASI versions resolve
/// (NOTES-wasmtime.md: stubs break shared resource types).
fn link_wasi(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    use wasmtime_wasi::WasiView;
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

    struct Io;
    impl wasmtime::component::HasData for Io {
        type Data<'a> = &'a mut wasmtime::component::ResourceTable;
    }
    let wrap = |e: wasmtime::Error| anyhow::anyhow!("linking WASI: {e}");
    let l = linker;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<HostState, Io>(l, |t| t.ctx().table).map_err(wrap)?;
    wasmtime_wasi_io::bindings::wasi::io::poll::add_to_linker::<HostState, Io>(l, |t| t.ctx().table).map_err(wrap)?;
    wasmtime_wasi_io::bindings::wasi::io::streams::add_to_linker::<HostState, Io>(l, |t| t.ctx().table)
        .map_err(wrap)?;
    clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks).map_err(wrap)?;
    clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks).map_err(wrap)?;
    random::random::add_to_linker::<HostState, WasiRandom>(l, HostState::random).map_err(wrap)?;
    random::insecure::add_to_linker::<HostState, WasiRandom>(l, HostState::random).map_err(wrap)?;
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, HostState::random).map_err(wrap)?;
    cli::exit::add_to_linker::<HostState, WasiCli>(l, HostState::cli).map_err(wrap)?;
    cli::environment::add_to_linker::<HostState, WasiCli>(l, HostState::cli).map_err(wrap)?;
    cli::stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli).map_err(wrap)?;
    cli::stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli).map_err(wrap)?;
    cli::stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli).map_err(wrap)?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, HostState::cli).map_err(wrap)?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, HostState::cli).map_err(wrap)?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli).map_err(wrap)?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli).map_err(wrap)?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli).map_err(wrap)?;
    Ok(())
}
