//! Per-install call statistics for `/metrics`, `GET /v1/installs/{id}` and
//! the circuit breaker: lock-free atomics updated on the hot path, failures
//! counted by cause, latencies in a fixed log-scale histogram (percentiles
//! are read from it, accurate to the bucket), and the run of consecutive
//! failures the breaker watches.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::runtime::FailureCause;

/// Upper bounds of the latency buckets, µs; a last bucket takes the rest.
/// Log-scale from 50 µs (a small plugin call) to 2 s (past any deadline).
pub const LATENCY_BOUNDS_US: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 2_000_000];

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
    /// Calls by latency, bucketed by [`LATENCY_BOUNDS_US`] (+ overflow).
    pub latency: [AtomicU64; 15],
    /// Failures since the last success (what the breaker counts).
    pub consecutive_failures: AtomicU64,
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
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.record_usage(duration_us, fuel);
    }

    /// Start the run of failures in a row again (a new version swapped in).
    pub fn reset_consecutive_failures(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Count a failed call; returns the failures in a row so far. The host's
    /// own trouble (`unavailable`: the store is down) is not the plugin's and
    /// neither adds to nor resets the run.
    pub fn record_failure(&self, cause: FailureCause, duration_us: u64, fuel: u64) -> u64 {
        if let Some(i) = CAUSES.iter().position(|c| *c == cause) {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
        self.record_usage(duration_us, fuel);
        if cause == FailureCause::Unavailable {
            return self.consecutive_failures.load(Ordering::Relaxed);
        }
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn record_usage(&self, duration_us: u64, fuel: u64) {
        self.total_us.fetch_add(duration_us, Ordering::Relaxed);
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
        let bucket = LATENCY_BOUNDS_US.iter().position(|b| duration_us <= *b).unwrap_or(LATENCY_BOUNDS_US.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls per latency bucket, a consistent-enough copy.
    pub fn latency_counts(&self) -> [u64; 15] {
        std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed))
    }

    /// The latency under which a share `q` (0..1) of calls finished: the
    /// upper bound of the bucket holding that call (`None` without calls;
    /// `u64::MAX` when it is in the overflow bucket).
    pub fn latency_quantile_us(&self, q: f64) -> Option<u64> {
        let counts = self.latency_counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }

    /// A JSON snapshot for the API.
    pub fn snapshot(&self) -> serde_json::Value {
        let failed: serde_json::Map<String, serde_json::Value> = CAUSES
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str().to_string(), self.failed[i].load(Ordering::Relaxed).into()))
            .collect();
        let calls =
            self.ok.load(Ordering::Relaxed) + self.failed.iter().map(|f| f.load(Ordering::Relaxed)).sum::<u64>();
        let fuel = self.fuel.load(Ordering::Relaxed);
        serde_json::json!({
            "ok": self.ok.load(Ordering::Relaxed),
            "failed": failed,
            "consecutive_failures": self.consecutive_failures.load(Ordering::Relaxed),
            "total_us": self.total_us.load(Ordering::Relaxed),
            "fuel": fuel,
            "fuel_per_call": fuel.checked_div(calls).unwrap_or(0),
            // Upper bounds of the histogram buckets the percentiles fall in.
            "latency_us": {
                "p50": self.latency_quantile_us(0.50),
                "p95": self.latency_quantile_us(0.95),
                "p99": self.latency_quantile_us(0.99),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_bucket_holding_the_call() {
        let s = InstallStats::default();
        assert_eq!(s.latency_quantile_us(0.5), None);
        for _ in 0..98 {
            s.record_ok(80, 1);
        }
        s.record_ok(3_000, 1);
        s.record_failure(FailureCause::Deadline, 600_000, 1);
        assert_eq!(s.latency_quantile_us(0.50), Some(100));
        assert_eq!(s.latency_quantile_us(0.99), Some(5_000));
        assert_eq!(s.latency_quantile_us(1.0), Some(2_000_000));
    }

    #[test]
    fn a_success_ends_a_run_of_failures_and_host_trouble_does_not_count() {
        let s = InstallStats::default();
        assert_eq!(s.record_failure(FailureCause::Trap, 1, 1), 1);
        assert_eq!(s.record_failure(FailureCause::Fuel, 1, 1), 2);
        assert_eq!(s.record_failure(FailureCause::Unavailable, 1, 1), 2);
        s.record_ok(1, 1);
        assert_eq!(s.record_failure(FailureCause::Trap, 1, 1), 1);
    }
}
