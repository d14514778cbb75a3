//! The one `wasmtime::Engine` of the process and its epoch ticker.
//!
//! Configuration choices, each measured in NOTES-wasmtime.md:
//! - pooling allocator: a fresh instance per call costs microseconds, not
//!   an `mmap` per memory;
//! - `linear_memory_keep_resident` with `pagemap_scan` where the kernel has
//!   it: dirtied pages are reset without `madvise` storms;
//! - fuel on (deterministic instruction budgets), epochs on (wall-clock
//!   deadlines that cost nothing on the hot path);
//! - the epoch ticker is a plain OS thread, so a busy tokio runtime cannot
//!   delay a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; the granularity of every deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Settings of the engine that an operator may change.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Instances that may be live at once (concurrent calls across all tenants).
    pub max_instances: u32,
    /// Largest linear memory any instance may have (per-call caps are lower or equal).
    pub max_memory_bytes: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { max_instances: 256, max_memory_bytes: 64 << 20 }
    }
}

/// Build the engine.
pub fn build_engine(settings: &EngineSettings) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(settings.max_instances)
        .total_core_instances(settings.max_instances * 4)
        .total_memories(settings.max_instances * 2)
        .total_tables(settings.max_instances * 4)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_core_instances_per_component(16)
        .max_memory_size(settings.max_memory_bytes)
        .max_unused_warm_slots(32)
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        // Guests get a 512 KiB native stack budget: deep enough for real
        // plugins, and a runaway recursion traps quickly.
        .max_wasm_stack(512 << 10)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| anyhow::anyhow!("configuring the wasm engine: {e}"))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    /// Start the ticker thread.
    pub fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("cairn-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("could not start the epoch ticker: {e}"));
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
