//! Per-install call counters for `/metrics`: lock-free atomics updated on
//! the hot path, failures counted by cause.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::runtime::FailureCause;

/// Counters of one install.
#[derive(Debug, Default)]
pub struct InstallStats {
    /// Successful calls.
    pub ok: AtomicU64,
    /// Failed calls by cause, indexed as [`CAUSES`].
    pub failed: [AtomicU64; 10],
    /// Total wall-clock time of all calls, µs.
    pub total_us: AtomicU64,
    /// Total fuel used.
    pub fuel: AtomicU64,
}

/// Failure causes in the order of [`InstallStats::failed`].
pub const CAUSES: [FailureCause; 10] = [
    FailureCause::Deadline,
    FailureCause::Fuel,
    FailureCause::Memory,
    FailureCause::StackOverflow,
    FailureCause::Trap,
    FailureCause::Plugin,
    FailureCause::OutputTooLarge,
    FailureCause::InvalidOutput,
    FailureCause::Unsupported,
    FailureCause::Unavailable,
];

impl InstallStats {
    /// Count a successful call.
    pub fn record_ok(&self, duration_us: u64, fuel: u64) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(duration_us, Ordering::Relaxed);
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
    }

    /// Count a failed call.
    pub fn record_failure(&self, cause: FailureCause, duration_us: u64, fuel: u64) {
        if let Some(i) = CAUSES.iter().position(|c| *c == cause) {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
        self.total_us.fetch_add(duration_us, Ordering::Relaxed);
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
    }

    /// A JSON snapshot for the API.
    pub fn snapshot(&self) -> serde_json::Value {
        let failed: serde_json::Map<String, serde_json::Value> = CAUSES
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str().to_string(), self.failed[i].load(Ordering::Relaxed).into()))
            .collect();
        serde_json::json!({
            "ok": self.ok.load(Ordering::Relaxed),
            "failed": failed,
            "total_us": self.total_us.load(Ordering::Relaxed),
            "fuel": self.fuel.load(Ordering::Relaxed),
        })
    }
}
