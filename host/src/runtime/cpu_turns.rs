//! CPU turns: plugin calls that run long share the CPU by tenant.
//!
//! Almost every plugin call ends well within one epoch tick
//! ([`super::engine::EPOCH_TICK`], 2 ms) and never meets this module. A
//! call that ran wasm through a whole tick (see [`LONG_CALL_GAP`] and
//! [`LONG_CALL_FUEL`]) is *long*, and then, at every such tick, it waits
//! for a **turn** before it runs on: one of its tenant's turns and one of
//! the process's, handed out first come, first served, each lasting one
//! tick. So:
//!
//! - a tenant's runaway calls, however many run at once (up to its call
//!   slots), take turns with each other on [`CpuTurns::per_tenant`] turns:
//!   sixteen spinning calls use one core's worth, not every core;
//! - long calls of all tenants together hold at most the process's turns,
//!   one fewer than the cores: there is always a core for the server's own
//!   work (HTTP, the database, short plugin calls), whose tasks are not
//!   queued on the workers behind dozens of spinning plugins;
//! - a waiting call is parked, not spinning, and its deadline keeps
//!   running (wall-clock): a runaway call ends at its deadline as before,
//!   having used less CPU.
//!
//! Why not only the per-tenant call slots: they bound how many calls a
//! tenant runs at once, not how much CPU those calls take. Measured with
//! `cairn bench --noisy-only`: with another tenant's 16 runaway calls
//! spinning on a 2-core machine, a well-behaved tenant's p99 was 8–15 times
//! its p99 alone.
//!
//! A tenant with a call in the last [`BURNT_LATELY`] that was long at
//! [`TICKS_TO_BURN`] ticks has *burnt CPU lately*
//! ([`CpuTurns::burnt_lately`]): its plugin calls run on the background
//! runtime, at the lowest priority (`super::background`).
//!
//! A turn lasts one tick even when the call leaves wasm meanwhile (a long
//! call that then waits in a host call, e.g. for an HTTP answer, gives its
//! turn back when the tick is over; it does not keep it while it waits).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// Tokio's: it follows paused time in tests.
use tokio::time::Instant;

use super::engine::EPOCH_TICK;

/// Fuel a call that ran through a tick (see [`LONG_CALL_GAP`]) must have
/// burnt in it to be long, unless it burnt none at all: a tight loop that
/// calls nothing keeps its count in a register, so the store's count does
/// not move between ticks. Seen in a trace of `cairn bench --noisy-only`
/// (2-core VM): most calls a tick fell in had burnt under 5,000; the demo
/// tenant's calls up to about 33,000 by their first tick; the runaway
/// guests from about 100,000 (the memory hog, slowed by page faults) to
/// 8 million per tick.
///
/// Wall time alone would not do: a short call a tick happened to fall in,
/// or one back from a host call that waited past a tick (for the database,
/// say), would count as long, wait for a CPU turn behind runaway calls,
/// and put its tenant's calls at the lowest priority.
pub const LONG_CALL_FUEL: u64 = 20_000;

/// A call ran through the tick before this one when it went on running,
/// after the previous tick or its turn, at most this long ago; a call's
/// first tick never finds it long. One and a half ticks: the ticker thread
/// oversleeps a little.
pub const LONG_CALL_GAP: Duration = Duration::from_micros(EPOCH_TICK.as_micros() as u64 * 3 / 2);

/// Whether a call an epoch tick found running is long: it went on running
/// `since_resumed` ago (after the previous tick or its last turn; `None` on
/// its first tick) and burnt `fuel_burnt` since the previous tick (see
/// [`LONG_CALL_GAP`] and [`LONG_CALL_FUEL`]).
pub fn is_long(since_resumed: Option<Duration>, fuel_burnt: u64) -> bool {
    let ran_through = since_resumed.is_some_and(|gap| gap <= LONG_CALL_GAP);
    ran_through && (fuel_burnt == 0 || fuel_burnt >= LONG_CALL_FUEL)
}

/// How many ticks a call must be long at before its tenant counts as
/// having burnt CPU lately. One is not enough evidence: a well-behaved
/// call the OS preempted in the middle of its wasm, on a busy 2-core
/// machine, runs through a tick on the clock, and a scorer over a contact
/// with many events burns 100,000 fuel in the slice it got, as much as the
/// memory hog in a tick. Seen in `cairn bench --noisy-only` (the log line
/// below names the tenant): tenant B's scorer was found long once, in one
/// round of four, and its calls then spent 10 s at the lowest priority
/// beside A's runaway plugins: B's p99 in that round 33 ms against 11–14 ms
/// in the others. A runaway call is long at every tick, so it reaches three
/// within 6 ms; a preempted call would have to be found long at three
/// ticks in a row.
pub const TICKS_TO_BURN: u32 = 3;

/// How long after its last long call a tenant counts as having burnt CPU
/// lately: long enough to cover the pauses of a runaway plugin's retries
/// (its calls end at their deadline and come back), short enough that a
/// tenant whose plugin was fixed runs at normal priority again soon.
pub const BURNT_LATELY: Duration = Duration::from_secs(10);

/// How many long calls of all tenants run at once on a machine with
/// `cores` cores: one fewer than the cores, at least one.
pub fn process_turns(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// The process's and the tenants' turns.
#[derive(Debug)]
pub struct CpuTurns {
    process: Arc<Semaphore>,
    per_tenant: usize,
    tenants: Mutex<HashMap<String, Arc<TenantTurns>>>,
}

/// One tenant's turns, and when one of its calls last ran long.
#[derive(Debug)]
struct TenantTurns {
    /// The tenant's id, for the log.
    id: String,
    turns: Arc<Semaphore>,
    last_long: Mutex<Option<Instant>>,
    /// Calls of the tenant run on the background runtime, since the start.
    background_calls: AtomicU64,
}

impl TenantTurns {
    fn burnt_lately(&self) -> bool {
        let last = *self.last_long.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last.is_some_and(|at| at.elapsed() < BURNT_LATELY)
    }
}

impl CpuTurns {
    /// Turns for a machine with `cores` cores: `cores - 1` for the process
    /// (at least one), half of those per tenant (at least one).
    pub fn for_cores(cores: usize) -> CpuTurns {
        let process = process_turns(cores);
        CpuTurns {
            process: Arc::new(Semaphore::new(process)),
            per_tenant: (process / 2).max(1),
            tenants: Mutex::default(),
        }
    }

    /// Turns for this machine ([`std::thread::available_parallelism`]).
    pub fn for_this_machine() -> CpuTurns {
        CpuTurns::for_cores(std::thread::available_parallelism().map(usize::from).unwrap_or(1))
    }

    /// How many long calls of one tenant run at once.
    pub fn per_tenant(&self) -> usize {
        self.per_tenant
    }

    /// A call's place in the turns, for a call of `tenant`.
    pub fn for_call(&self, tenant: &str) -> CallTurns {
        let tenant = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match tenants.get(tenant) {
                Some(found) => found.clone(),
                None => tenants
                    .entry(tenant.to_string())
                    .or_insert_with(|| {
                        Arc::new(TenantTurns {
                            id: tenant.to_string(),
                            turns: Arc::new(Semaphore::new(self.per_tenant)),
                            last_long: Mutex::default(),
                            background_calls: AtomicU64::new(0),
                        })
                    })
                    .clone(),
            }
        };
        CallTurns { tenant, process: self.process.clone(), turn: Mutex::default(), long_ticks: AtomicU32::new(0) }
    }

    /// Whether a call of `tenant` ran long (past an epoch tick in wasm)
    /// within the last [`BURNT_LATELY`].
    pub fn burnt_lately(&self, tenant: &str) -> bool {
        let tenants = self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tenants.get(tenant).is_some_and(|t| t.burnt_lately())
    }

    /// How many of `tenant`'s calls ran on the background runtime (see
    /// [`CallTurns::ran_in_background`]).
    pub fn background_calls(&self, tenant: &str) -> u64 {
        let tenants = self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tenants.get(tenant).map_or(0, |t| t.background_calls.load(Ordering::Relaxed))
    }
}

/// Both permits of one turn.
type Turn = Arc<Mutex<Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>>>;

/// One call's turns: the one it holds, if any, and where it queues for the
/// next. Dropped with the call, which gives its turn back.
#[derive(Debug)]
pub struct CallTurns {
    tenant: Arc<TenantTurns>,
    process: Arc<Semaphore>,
    /// The turn held now; the timer that ends it after one tick holds it too.
    turn: Mutex<Turn>,
    /// Ticks this call was long at so far.
    long_ticks: AtomicU32,
}

impl CallTurns {
    /// Whether this call's tenant burnt CPU lately ([`CpuTurns::burnt_lately`]).
    pub fn tenant_burnt_lately(&self) -> bool {
        self.tenant.burnt_lately()
    }

    /// Count this call as run on the background runtime.
    pub fn ran_in_background(&self) {
        self.tenant.background_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// At an epoch tick that found the call long: give back the turn held,
    /// then (in the future returned, which wasmtime awaits before running
    /// the guest on) wait for the next one and yield to the other tasks.
    /// From its [`TICKS_TO_BURN`]th long tick on, the call marks its tenant
    /// as having burnt CPU lately.
    pub fn next_turn(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let previous = std::mem::take(&mut *self.turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        release(&previous);
        let next = self.turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if self.long_ticks.fetch_add(1, Ordering::Relaxed) + 1 >= TICKS_TO_BURN {
            self.mark_burnt();
        }
        let (tenant, process) = (self.tenant.turns.clone(), self.process.clone());
        Box::pin(async move {
            // The tenant's turn first: a tenant queues for the process's
            // turns with one call at a time, so tenants alternate there.
            if let (Ok(t), Ok(p)) = (tenant.acquire_owned().await, process.acquire_owned().await.map_err(|_| ())) {
                *next.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((t, p));
                let ending = next.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(EPOCH_TICK).await;
                    release(&ending);
                });
            }
            tokio::task::yield_now().await;
        })
    }

    /// Mark the call's tenant as having burnt CPU lately; log it when it
    /// had not.
    fn mark_burnt(&self) {
        let had = self.tenant.burnt_lately();
        *self.tenant.last_long.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
        if !had {
            // Its calls move to the lowest priority: worth knowing when the
            // tenant's latency jumps.
            tracing::info!(
                tenant = %self.tenant.id,
                "a plugin call burnt CPU through {TICKS_TO_BURN} epoch ticks: the tenant's calls run at the lowest priority for {} s",
                BURNT_LATELY.as_secs()
            );
        }
    }
}

impl Drop for CallTurns {
    fn drop(&mut self) {
        release(&self.turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    }
}

fn release(turn: &Turn) {
    drop(turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_call_that_ran_wasm_through_a_whole_tick_is_long() {
        let tick = EPOCH_TICK;
        // A tight loop: through the tick, its fuel count in a register.
        assert!(is_long(Some(tick), 0));
        // Busy wasm that calls out now and then: the count moves a lot.
        assert!(is_long(Some(tick), LONG_CALL_FUEL));
        assert!(is_long(Some(LONG_CALL_GAP), 8_000_000));
        // Its first tick: it may have started just before it.
        assert!(!is_long(None, 8_000_000));
        // Back from a host call or a turn that waited past the tick.
        assert!(!is_long(Some(LONG_CALL_GAP + Duration::from_micros(1)), 0));
        assert!(!is_long(Some(tick * 5), 8_000_000));
        // Through the tick on the clock but hardly running: the OS had it
        // preempted, which is no reason to slow its tenant down.
        assert!(!is_long(Some(tick), 1));
        assert!(!is_long(Some(tick), LONG_CALL_FUEL - 1));
    }

    #[test]
    fn a_small_machine_keeps_a_core_for_the_server() {
        let two = CpuTurns::for_cores(2);
        assert_eq!(two.process.available_permits(), 1);
        assert_eq!(two.per_tenant(), 1);
        let one = CpuTurns::for_cores(1);
        assert_eq!(one.process.available_permits(), 1);
        let eight = CpuTurns::for_cores(8);
        assert_eq!(eight.process.available_permits(), 7);
        assert_eq!(eight.per_tenant(), 3);
    }

    // Paused time: a turn's one-tick timer cannot end it mid-test on a slow machine.
    #[tokio::test(start_paused = true)]
    async fn a_tenants_long_calls_take_turns_and_give_them_back() {
        let turns = CpuTurns::for_cores(8);
        let calls: Vec<CallTurns> = (0..4).map(|_| turns.for_call("a")).collect();
        for call in &calls[..3] {
            call.next_turn().await;
        }
        // The tenant's three turns are held: the fourth call waits.
        let mut fourth = calls[3].next_turn();
        assert!(futures_poll_once(&mut fourth).await.is_none(), "a fourth call of the tenant waits");
        // Another tenant is not held up by it.
        turns.for_call("b").next_turn().await;
        // A call that moves on to its next turn gives its turn back.
        let _next = calls[0].next_turn();
        fourth.await;
        assert_eq!(turns.process.available_permits(), 7 - 3, "the three calls of `a` holding a turn");
        // Dropped calls give back what they hold.
        drop(calls);
        assert_eq!(turns.process.available_permits(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_whose_call_ran_long_has_burnt_cpu_for_a_while() {
        let turns = CpuTurns::for_cores(2);
        let call = turns.for_call("a");
        assert!(!turns.burnt_lately("a"), "a call that never reached a tick");
        for tick in 1..TICKS_TO_BURN {
            call.next_turn().await;
            assert!(!turns.burnt_lately("a"), "long at {tick} ticks: not yet evidence");
        }
        // Another call's long ticks do not add up with these.
        turns.for_call("a").next_turn().await;
        assert!(!turns.burnt_lately("a"));
        call.next_turn().await;
        assert!(turns.burnt_lately("a"), "long at {TICKS_TO_BURN} ticks");
        assert!(!turns.burnt_lately("b"), "another tenant");
        tokio::time::advance(BURNT_LATELY).await;
        assert!(!turns.burnt_lately("a"), "no long call for a while");
    }

    /// Poll once: `Some` when the future finished.
    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
