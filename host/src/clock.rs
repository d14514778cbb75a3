//! Business time: the system clock in production, a manual one in tests and
//! the demo, so week-long journeys run in milliseconds.
//!
//! One [`Clock`] is shared by the store (the times it writes: `created_at`,
//! `updated_at`, event times, ...) and the engine (delays, schedules), so a
//! test that moves a manual clock sees one consistent time everywhere.
//! Leases that guard claimed work are *not* business time: they are about
//! whether a process is still alive, and always use the system clock
//! ([`crate::store::now_ms`]).
//!
//! A manual clock can be waited on ([`Clock::changed`]): a runner sleeping
//! until the next timer wakes as soon as a test moves time forward, instead of
//! polling.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

/// A source of "now" in epoch milliseconds.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// Wall-clock time.
    #[default]
    System,
    /// Time that moves only when told to.
    Manual(Arc<ManualTime>),
}

/// The state of a manual clock: the time, and who to wake when it moves.
#[derive(Debug, Default)]
pub struct ManualTime {
    now: AtomicI64,
    moved: Notify,
}

impl ManualTime {
    fn store(&self, ms: i64) {
        self.now.store(ms, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

impl Clock {
    /// A manual clock starting at `start_ms`.
    pub fn manual(start_ms: i64) -> Clock {
        Clock::Manual(Arc::new(ManualTime { now: AtomicI64::new(start_ms), moved: Notify::new() }))
    }

    /// Now, epoch ms.
    pub fn now(&self) -> i64 {
        match self {
            Clock::System => crate::store::now_ms(),
            Clock::Manual(t) => t.now.load(Ordering::SeqCst),
        }
    }

    /// Move a manual clock forward by `ms` (no effect on the system clock),
    /// waking everyone waiting in [`Clock::changed`].
    pub fn advance(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.now.fetch_add(ms, Ordering::SeqCst);
            t.moved.notify_waiters();
        }
    }

    /// Set a manual clock to `ms` (no effect on the system clock), waking
    /// everyone waiting in [`Clock::changed`].
    pub fn set(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.store(ms);
        }
    }

    /// Completes when a manual clock is next moved by [`Clock::advance`] or
    /// [`Clock::set`]; never completes for the system clock (whose time moves
    /// by itself: sleep instead).
    ///
    /// The wait begins when this is called, not when the future is first
    /// polled, so a move between the call and the first poll is not missed.
    pub fn changed(&self) -> impl Future<Output = ()> + Send + '_ {
        let notified = match self {
            Clock::System => None,
            Clock::Manual(t) => Some(t.moved.notified()),
        };
        async move {
            match notified {
                Some(n) => n.await,
                None => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = Clock::manual(1_000);
        assert_eq!(clock.now(), 1_000);
        clock.advance(500);
        assert_eq!(clock.now(), 1_500);
        clock.set(10);
        assert_eq!(clock.now(), 10);
        // Clones share the time.
        let other = clock.clone();
        other.advance(5);
        assert_eq!(clock.now(), 15);
    }

    #[test]
    fn the_system_clock_ignores_advance_and_set() {
        let clock = Clock::System;
        let before = clock.now();
        clock.advance(86_400_000);
        clock.set(0);
        assert!(clock.now() >= before && clock.now() < before + 60_000);
    }

    #[tokio::test]
    async fn waiters_wake_when_a_manual_clock_moves() {
        let clock = Clock::manual(0);
        let waiting = clock.changed();
        // Moved after the call but before the first poll: still seen.
        clock.advance(1);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken by advance");

        let c = clock.clone();
        let waiter = tokio::spawn(async move { c.changed().await });
        // The waiter may not have started waiting yet: keep moving time.
        for _ in 0..500 {
            if waiter.is_finished() {
                break;
            }
            clock.set(42);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(waiter.is_finished(), "woken by set");
    }

    #[tokio::test]
    async fn the_system_clock_never_reports_a_change() {
        let r = tokio::time::timeout(Duration::from_millis(20), Clock::System.changed()).await;
        assert!(r.is_err());
    }
}
