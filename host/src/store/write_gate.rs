//! SQLite's one writer, shared fairly between tenants.
//!
//! SQLite admits one writer at a time. Writers of this process queue here
//! instead of in SQLite's busy handler, which sleeps in growing steps (up to
//! 100 ms) and lets a waiter starve. The queue is not first come, first
//! served: a tenant whose plugins and floods keep the writer busy (a
//! 1,000-event lane commit, sixteen run saves at once) would then make
//! every other tenant's small writes wait behind all of its queued ones.
//! Instead the next turn goes, in this order:
//! 1. to the **intake**'s shared group commit, which carries the new events
//!    of interactive requests (a `POST /v1/events` waits on it); it asks for
//!    one turn at a time, so it cannot starve the others, who get at least
//!    every other turn. A tenant that posts big batches back to back does
//!    not ride in it: its events commit as its own writes, below (see
//!    `engine::intake`);
//! 2. to the waiting writer whose **tenant has held the writer least**:
//!    start-time fair queuing over the time each tenant's turns lasted
//!    (work that belongs to no tenant, such as the runner's claims, queues
//!    as one more "tenant"). A tenant that used the writer for 60 ms waits
//!    until the others have used as much; one that has just arrived starts
//!    level with the last turn granted, with no credit saved up while idle.
//!    Within a tenant, first come, first served.
//!
//! So a well-behaved tenant's write waits for the turn in progress and not
//! for the queue a noisy neighbour built behind it (`cairn bench
//! --noisy-only`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

/// Who a write is for: where it queues at the [`WriteGate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer<'a> {
    /// The intake's shared group commit (light tenants' new events).
    Intake,
    /// Work of one tenant.
    Tenant(&'a str),
    /// Work of no one tenant (background claims, administration).
    Shared,
}

impl Writer<'_> {
    /// The fair queue's key ([`Writer::Intake`] has none: it goes first).
    fn key(self) -> Option<String> {
        match self {
            Writer::Intake => None,
            Writer::Tenant(t) => Some(format!("t:{t}")),
            Writer::Shared => Some(String::new()),
        }
    }
}

/// A writer that starts this long after its turn was handed to it is
/// logged (debug): the writer stood idle while its task waited for a
/// worker thread.
const WAKE_LAG: std::time::Duration = std::time::Duration::from_millis(2);

/// Above this many remembered tenants, those with no time held beyond the
/// last grant (who would start level anyway) are forgotten.
const REMEMBERED: usize = 256;

/// The queue of this process's SQLite writers (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct WriteGate {
    state: Mutex<State>,
    /// How many writers gave up on the write lock after the busy timeout
    /// (see `Store::write_gate_for`).
    lock_timeouts: AtomicU64,
    /// Turns handed out so far.
    turns: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// A writer holds the turn.
    held: bool,
    /// The intake's waiting commit (one at a time, in practice).
    intake: VecDeque<oneshot::Sender<Instant>>,
    /// Waiting writers by key, each queue first come, first served.
    waiting: HashMap<String, VecDeque<oneshot::Sender<Instant>>>,
    /// Each key's virtual time: where its next turn starts, in µs of
    /// writer time. Missing means level with `floor`.
    used: HashMap<String, u64>,
    /// The virtual start of the last turn granted.
    floor: u64,
}

impl State {
    fn tag(&self, key: &str) -> u64 {
        self.used.get(key).copied().unwrap_or(0).max(self.floor)
    }

    /// Hand the turn to the next waiter (see the module docs), or mark it
    /// free. A waiter that gave up (its receiver is gone) is skipped.
    fn grant_next(&mut self) {
        while let Some(next) = self.next_waiter() {
            if next.send(Instant::now()).is_ok() {
                return;
            }
        }
        self.held = false;
    }

    fn next_waiter(&mut self) -> Option<oneshot::Sender<Instant>> {
        if let Some(intake) = self.intake.pop_front() {
            return Some(intake);
        }
        let key = self.waiting.keys().min_by_key(|k| (self.tag(k), k.as_str()))?.clone();
        self.floor = self.tag(&key);
        let queue = self.waiting.get_mut(&key)?;
        let next = queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(&key);
        }
        next
    }

    /// Charge `key` for a turn of `held_us`.
    fn charge(&mut self, key: &str, held_us: u64) {
        let tag = self.tag(key);
        self.used.insert(key.to_string(), tag.saturating_add(held_us));
        if self.used.len() > REMEMBERED {
            let floor = self.floor;
            self.used.retain(|_, v| *v > floor);
        }
    }
}

/// One writer's turn, held until dropped; dropping it hands the turn on.
#[derive(Debug)]
pub(crate) struct Turn {
    gate: Arc<WriteGate>,
    key: Option<String>,
    since: Instant,
}

impl Turn {
    /// When the turn was granted.
    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    /// Whose turn it is: the fair queue's key (`t:<tenant>`, empty for
    /// shared work, `intake` for the intake).
    pub(crate) fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("intake")
    }

    /// The gate this turn came from.
    pub(crate) fn gate(&self) -> &WriteGate {
        &self.gate
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let held_us = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut state = self.gate.lock();
        if let Some(key) = &self.key {
            state.charge(key, held_us);
        }
        state.grant_next();
    }
}

/// A writer waiting for its turn. If it stops waiting (its future is
/// dropped) after the turn was handed to it, the turn is handed on.
struct Waiting {
    gate: Arc<WriteGate>,
    granted: oneshot::Receiver<Instant>,
    taken: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        self.granted.close();
        if self.granted.try_recv().is_ok() {
            self.gate.lock().grant_next();
        }
    }
}

impl WriteGate {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement: a panic elsewhere
        // while it was locked leaves nothing half done.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait for `writer`'s turn (see the module docs).
    pub(crate) async fn turn(self: &Arc<Self>, writer: Writer<'_>) -> Turn {
        self.turns.fetch_add(1, Ordering::Relaxed);
        let key = writer.key();
        let granted = {
            let mut state = self.lock();
            if !state.held {
                state.held = true;
                return Turn { gate: self.clone(), key, since: Instant::now() };
            }
            let (tx, rx) = oneshot::channel();
            match &key {
                None => state.intake.push_back(tx),
                Some(k) => state.waiting.entry(k.clone()).or_default().push_back(tx),
            }
            rx
        };
        let mut waiting = Waiting { gate: self.clone(), granted, taken: false };
        // The sender lives in the gate, which `waiting` keeps alive, and is
        // only dropped unsent when this receiver is gone: the wait ends in
        // a grant.
        let granted = (&mut waiting.granted).await;
        waiting.taken = true;
        let now = Instant::now();
        // The turn is this writer's from the moment it was handed over,
        // though the task may run a little later: nobody else writes
        // meanwhile, so that time counts as held.
        let since = granted.unwrap_or(now);
        let lag = now.saturating_duration_since(since);
        if lag >= WAKE_LAG {
            tracing::debug!(lag_us = lag.as_micros() as u64, "SQLite write turn handed over late");
        }
        Turn { gate: self.clone(), key, since }
    }

    /// How many turns were asked for so far (granted, or waited for).
    #[cfg(test)]
    pub(crate) fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }

    /// How many writers gave up on SQLite's lock so far.
    pub(crate) fn lock_timeouts(&self) -> u64 {
        self.lock_timeouts.load(Ordering::Acquire)
    }

    /// A writer gave up on SQLite's lock after the whole busy timeout.
    pub(crate) fn note_lock_timeout(&self) {
        self.lock_timeouts.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::time::Duration;

    /// Queue `writer` behind the current holder; its name goes into `order`
    /// when it gets the turn, which it holds for `hold`.
    fn queue(
        gate: &Arc<WriteGate>,
        writer: Writer<'static>,
        name: &'static str,
        hold: Duration,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> tokio::task::JoinHandle<()> {
        let (gate, order) = (gate.clone(), order.clone());
        tokio::spawn(async move {
            let _turn = gate.turn(writer).await;
            order.lock().unwrap().push(name);
            tokio::time::sleep(hold).await;
        })
    }

    /// Let spawned tasks run until they wait.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_light_tenant_goes_before_a_heavy_tenants_queue() {
        let gate = Arc::new(WriteGate::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        // A has already held the writer for a long turn.
        drop(queue(&gate, Writer::Tenant("a"), "a0", Duration::from_millis(60), &order).await);
        let first = gate.turn(Writer::Tenant("a")).await;
        let mut tasks = Vec::new();
        for name in ["a1", "a2", "a3"] {
            tasks.push(queue(&gate, Writer::Tenant("a"), name, Duration::from_millis(5), &order));
            settle().await;
        }
        tasks.push(queue(&gate, Writer::Tenant("b"), "b1", Duration::from_millis(1), &order));
        settle().await;
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a0", "b1", "a1", "a2", "a3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_intake_goes_first_and_every_waiter_gets_its_turn() {
        let gate = Arc::new(WriteGate::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = gate.turn(Writer::Shared).await;
        let mut tasks = vec![
            queue(&gate, Writer::Tenant("a"), "a", Duration::from_millis(1), &order),
            queue(&gate, Writer::Shared, "shared", Duration::from_millis(1), &order),
        ];
        settle().await;
        tasks.push(queue(&gate, Writer::Intake, "intake", Duration::from_millis(1), &order));
        settle().await;
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order[0], "intake");
        assert_eq!(order.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_hands_its_turn_on() {
        let gate = Arc::new(WriteGate::default());
        let first = gate.turn(Writer::Tenant("a")).await;
        // Granted while nobody polls it, then dropped: the turn must move on.
        let mut abandoned = Box::pin(gate.turn(Writer::Tenant("b")));
        assert!(futures_poll_once(abandoned.as_mut()).await.is_none());
        let next = tokio::spawn({
            let gate = gate.clone();
            async move { drop(gate.turn(Writer::Tenant("c")).await) }
        });
        settle().await;
        drop(first);
        drop(abandoned);
        tokio::time::timeout(Duration::from_secs(1), next).await.expect("the turn was lost").unwrap();
        assert!(!gate.lock().held);
    }

    /// Poll `f` once: its output if it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}
