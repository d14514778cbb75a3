//! The engine's clock: the system clock in production, a manual one in
//! tests and the demo, so week-long journeys run in milliseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of "now" in epoch milliseconds.
#[derive(Clone, Debug)]
pub enum Clock {
    /// Wall-clock time.
    System,
    /// Time that moves only when told to.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `start_ms`.
    pub fn manual(start_ms: i64) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    /// Now, epoch ms.
    pub fn now(&self) -> i64 {
        match self {
            Clock::System => crate::store::now_ms(),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Move a manual clock forward (no effect on the system clock).
    pub fn advance(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(ms, Ordering::Relaxed);
        }
    }
}
