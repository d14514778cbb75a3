//! How long events wait between being accepted (`202`) and processed: a
//! histogram at millisecond resolution up to ten seconds, lock-free, one
//! atomic add per event. The benchmark reads percentiles from it (the p99
//! during a hot swap against steady state); `/metrics` exports them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Whole milliseconds kept exactly; slower events share the last bucket.
const MAX_MS: usize = 10_000;

/// Event latencies, one bucket per millisecond.
#[derive(Debug)]
pub struct EventLatency {
    buckets: Box<[AtomicU64]>,
}

impl Default for EventLatency {
    fn default() -> Self {
        EventLatency { buckets: (0..=MAX_MS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl EventLatency {
    /// Count one event that waited `ms` milliseconds.
    pub fn record(&self, ms: i64) {
        let i = usize::try_from(ms.max(0)).unwrap_or(MAX_MS).min(MAX_MS);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events counted so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The latency, ms, that fraction `q` of the events stayed within
    /// (`None` before any event). Exact to the millisecond below 10 s.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        Some(MAX_MS as u64)
    }

    /// Forget everything counted (between benchmark phases).
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_exact_to_the_millisecond() {
        let l = EventLatency::default();
        assert_eq!(l.quantile_ms(0.99), None);
        for ms in 1..=100 {
            l.record(ms);
        }
        l.record(-5);
        l.record(60_000);
        assert_eq!(l.count(), 102);
        assert_eq!(l.quantile_ms(0.5), Some(50));
        assert_eq!(l.quantile_ms(1.0), Some(10_000));
        l.reset();
        assert_eq!(l.count(), 0);
    }
}
