//! Runs the pipeline enrolls go straight to this process's runner.
//!
//! Otherwise a run the pipeline's commit enrolls waits for the runner to
//! claim it: the runner's next round, a claim (on SQLite one more turn at
//! the one writer, where a noisy tenant's writes are ahead of it), and,
//! when the tenant's runner lane is busy, the end of that whole lane, which
//! ends only when its slowest run is saved. In `cairn bench --noisy-only`
//! that was a third of the well-behaved tenant's slowest events' time.
//!
//! So while the runner's loop runs in this process, the pipeline asks
//! [`Workflows::may_hand_over`] before it commits a tenant's batch; when
//! yes, the commit inserts the runs it enrolls already leased
//! (`Store::finish_batch_leasing`), and [`Workflows::hand_over`] starts
//! them at once, up to [`HANDED_AT_ONCE`] per tenant, the rest queued in
//! memory. No claim takes a leased run, and a save between two steps keeps
//! the lease (`Store::save_run_progress`), so a run is advanced by one
//! worker at a time, here as in the lanes. Should the process die, the
//! leases are released at the next start (or run out, with several nodes)
//! and the runner claims the runs like any other.
//!
//! A run gives its place up once it has made its last plugin call of the
//! round, before its last save (the run completes, waits or fails): the
//! saves queue at SQLite's one writer, and a place held through them made
//! a well-behaved tenant's next runs wait for its earlier runs' saves. In
//! `cairn bench --noisy-only`, with the writer crowded by another tenant's
//! flood, a tenant's run saves waited up to 220 ms, its 16 places filled
//! with runs that had already sent their webhooks, and its next runs
//! waited up to 345 ms for a place (their webhooks that much later). The
//! place bounds how many of a tenant's runs call plugins at once, which
//! the save does not; a run saving still counts toward [`TENANT_MAX`].
//!
//! Bounded: a tenant has at most [`TENANT_MAX`] runs handed over and not
//! yet finished, all tenants [`TOTAL_MAX`]. Beyond, runs are enrolled
//! unleased and claimed by the runner's lanes as before: a tenant whose
//! actions hang fills its own share and no one else's, and nothing queues
//! in memory without bound. A queued run that waited half its lease is
//! left to the claims rather than risk advancing it beside one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::Workflows;
use crate::store::{Event, Run};

/// A run handed over, with its trigger event when the pipeline's lane had
/// it: the runner then need not read it again.
pub struct HandedRun {
    /// The run, enrolled leased.
    pub run: Run,
    /// Its trigger event, as the lane read it (marked processed: the commit
    /// that enrolled the run processed it).
    pub trigger: Option<Event>,
}

/// Handed-over runs of one tenant advanced at once (the tenant's runner
/// lane has as many of its own).
pub const HANDED_AT_ONCE: usize = 16;
/// Runs of one tenant handed over and not yet finished, at most.
pub const TENANT_MAX: usize = 64;
/// Runs of all tenants handed over and not yet finished, at most.
pub const TOTAL_MAX: usize = 512;

/// The handed-over runs of this process.
#[derive(Default)]
pub(crate) struct Direct {
    /// The runner's loop runs: only then are runs handed over (a test that
    /// drives the runner by hand sees every run go through its claims).
    live: AtomicBool,
    state: Mutex<State>,
    /// The runs being advanced, aborted when the loop stops.
    tasks: Mutex<JoinSet<()>>,
}

/// Who is handed what: the bookkeeping, apart from the tasks.
#[derive(Default)]
struct State {
    tenants: HashMap<String, Handed>,
    /// Runs handed over and not yet finished, of every tenant.
    total: usize,
}

/// One tenant's handed-over runs.
#[derive(Default)]
struct Handed {
    /// Waiting for one of the tenant's [`HANDED_AT_ONCE`] places, with when
    /// they were handed over.
    queued: VecDeque<(Instant, HandedRun)>,
    /// Being advanced, in one of the tenant's places.
    running: usize,
    /// Out of their place, saving their last step (see the module docs).
    saving: usize,
}

impl Handed {
    fn count(&self) -> usize {
        self.queued.len() + self.running + self.saving
    }
}

impl State {
    /// Whether `tenant` and everyone are below their bounds.
    fn admits(&self, tenant: &str) -> bool {
        self.total < TOTAL_MAX && self.tenants.get(tenant).is_none_or(|h| h.count() < TENANT_MAX)
    }

    /// Queue `runs`; returns their tenants.
    fn queue(&mut self, runs: Vec<HandedRun>, now: Instant) -> Vec<String> {
        let mut tenants: Vec<String> = Vec::new();
        self.total += runs.len();
        for handed in runs {
            let tenant = &handed.run.tenant_id;
            if !tenants.contains(tenant) {
                tenants.push(tenant.clone());
            }
            self.tenants.entry(tenant.clone()).or_default().queued.push_back((now, handed));
        }
        tenants
    }

    /// Take `tenant`'s queued runs into its free places, dropping those
    /// queued longer than `stale_after`; returns the runs to start and how
    /// many were dropped.
    fn start(&mut self, tenant: &str, stale_after: Duration) -> (Vec<HandedRun>, usize) {
        let (mut start, mut stale) = (Vec::new(), 0);
        let Some(handed) = self.tenants.get_mut(tenant) else { return (start, stale) };
        while handed.running < HANDED_AT_ONCE {
            let Some((at, run)) = handed.queued.pop_front() else { break };
            if at.elapsed() > stale_after {
                stale += 1;
                continue;
            }
            handed.running += 1;
            start.push(run);
        }
        if handed.count() == 0 {
            self.tenants.remove(tenant);
        }
        self.total = self.total.saturating_sub(stale);
        (start, stale)
    }

    /// One of `tenant`'s runs left its place but goes on (saving); whether
    /// the tenant has more queued.
    fn vacated(&mut self, tenant: &str) -> bool {
        let Some(handed) = self.tenants.get_mut(tenant) else { return false };
        handed.running = handed.running.saturating_sub(1);
        handed.saving += 1;
        !handed.queued.is_empty()
    }

    /// One of `tenant`'s runs finished, in its place or after leaving it
    /// (`vacated`); whether the tenant has more queued.
    fn finished(&mut self, tenant: &str, vacated: bool) -> bool {
        self.total = self.total.saturating_sub(1);
        let Some(handed) = self.tenants.get_mut(tenant) else { return false };
        if vacated {
            handed.saving = handed.saving.saturating_sub(1);
        } else {
            handed.running = handed.running.saturating_sub(1);
        }
        let more = !handed.queued.is_empty();
        if handed.count() == 0 {
            self.tenants.remove(tenant);
        }
        more
    }
}

/// Marks the loop live while it runs; when it stops (aborted with the
/// server), handing over stops and the runs in progress are aborted (their
/// leases are released at the next start).
pub(crate) struct LiveGuard(Arc<Workflows>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.direct.live.store(false, Ordering::SeqCst);
        if let Ok(mut tasks) = self.0.direct.tasks.lock() {
            tasks.abort_all();
        }
    }
}

/// One handed-over run's place: given up early by [`Place::vacate`] (its
/// last save ahead), ended however its task ends (saved, failed, panicked,
/// aborted); either starts the tenant's next.
pub(crate) struct Place {
    workflows: Arc<Workflows>,
    tenant: String,
    vacated: AtomicBool,
}

impl Place {
    /// The run makes no more plugin calls this round: its place goes to the
    /// tenant's next queued run while it saves (see the module docs).
    pub(crate) fn vacate(&self) {
        if self.vacated.swap(true, Ordering::SeqCst) {
            return;
        }
        let more = self.workflows.direct.state.lock().is_ok_and(|mut state| state.vacated(&self.tenant));
        self.start_next(more);
    }

    /// Start the tenant's next queued runs, if `more` are queued; not while
    /// the loop stops (its tasks are being aborted) or a panic unwinds.
    fn start_next(&self, more: bool) {
        if more && self.workflows.direct.live.load(Ordering::SeqCst) && !std::thread::panicking() {
            self.workflows.start_handed(&self.tenant);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let vacated = *self.vacated.get_mut();
        let Ok(more) = self.workflows.direct.state.lock().map(|mut state| state.finished(&self.tenant, vacated)) else {
            return;
        };
        self.start_next(more);
    }
}

impl Workflows {
    /// Mark the runner's loop live in this process until the guard drops.
    pub(crate) fn go_live(self: &Arc<Self>) -> LiveGuard {
        self.direct.live.store(true, Ordering::SeqCst);
        LiveGuard(self.clone())
    }

    /// Whether the runs `tenant`'s next commit enrolls may be handed over
    /// (and so be enrolled leased): the runner's loop runs here and the
    /// tenant's and everyone's handed runs are below their bounds. A commit
    /// may overshoot the bound by its own runs: it is checked once before.
    pub fn may_hand_over(&self, tenant: &str) -> bool {
        if !self.direct.live.load(Ordering::SeqCst) {
            return false;
        }
        self.direct.state.lock().is_ok_and(|state| state.admits(tenant))
    }

    /// Advance `runs`, enrolled leased after [`Workflows::may_hand_over`]
    /// said yes, in this process: at once while their tenant has places,
    /// queued otherwise.
    pub fn hand_over(self: &Arc<Self>, runs: Vec<HandedRun>) {
        if runs.is_empty() {
            return;
        }
        if !self.direct.live.load(Ordering::SeqCst) {
            // The loop stopped meanwhile: the leases are released at the
            // next start.
            tracing::debug!(runs = runs.len(), "runner stopped; handed-over runs left to their leases");
            return;
        }
        let tenants = match self.direct.state.lock() {
            Ok(mut state) => state.queue(runs, Instant::now()),
            Err(_) => return,
        };
        for tenant in tenants {
            self.start_handed(&tenant);
        }
    }

    /// Start `tenant`'s queued runs while it has places.
    fn start_handed(self: &Arc<Self>, tenant: &str) {
        let stale_after = Duration::from_millis(u64::try_from(self.store.claim_lease_ms() / 2).unwrap_or(0));
        let Ok((start, stale)) = self.direct.state.lock().map(|mut state| state.start(tenant, stale_after)) else {
            return;
        };
        if stale > 0 {
            tracing::warn!(
                tenant,
                runs = stale,
                "handed-over runs waited half their lease; left to the runner's claims"
            );
        }
        if start.is_empty() {
            return;
        }
        let Ok(mut tasks) = self.direct.tasks.lock() else { return };
        while tasks.try_join_next().is_some() {}
        for HandedRun { run, trigger } in start {
            let place = Place { workflows: self.clone(), tenant: tenant.to_string(), vacated: AtomicBool::new(false) };
            tasks.spawn(async move {
                let id = run.id.clone();
                if let Err(e) = place.workflows.advance_with(run, trigger, Some(&place)).await {
                    // The lease runs out and the run is claimed again.
                    tracing::warn!(run = %id, "advancing a handed-over run failed: {e}");
                }
                drop(place);
            });
        }
    }
}

#[cfg(test)]
mod saving_runs;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(tenant: &str, n: usize) -> Run {
        Run {
            id: format!("{tenant}-{n}"),
            tenant_id: tenant.into(),
            workflow_id: "w".into(),
            version: 1,
            contact_id: format!("c{n}"),
            status: "waiting".into(),
            cursor: Some("s1".into()),
            wake_at: Some(0),
            attempts: 0,
            variants: json!({}),
            state: json!({}),
            trigger_event_id: None,
            enrollment_key: format!("k{n}"),
            error: None,
            exit_reason: None,
            enrolled_at: 0,
            updated_at: 0,
            finished_at: None,
        }
    }

    fn runs(tenant: &str, n: usize) -> Vec<HandedRun> {
        (0..n).map(|i| HandedRun { run: run(tenant, i), trigger: None }).collect()
    }

    const FRESH: Duration = Duration::from_secs(60);

    #[test]
    fn a_tenant_runs_its_places_worth_at_once_and_the_rest_as_places_free() {
        let mut state = State::default();
        assert_eq!(state.queue(runs("a", HANDED_AT_ONCE + 2), Instant::now()), ["a"]);
        let (started, stale) = state.start("a", FRESH);
        assert_eq!((started.len(), stale), (HANDED_AT_ONCE, 0));
        assert!(state.start("a", FRESH).0.is_empty(), "no place free");
        assert!(state.finished("a", false), "two still queued");
        assert_eq!(state.start("a", FRESH).0.iter().map(|h| h.run.id.as_str()).collect::<Vec<_>>(), ["a-16"]);
        for _ in 0..HANDED_AT_ONCE {
            state.finished("a", false);
        }
        assert_eq!(state.start("a", FRESH).0.len(), 1);
        assert!(!state.finished("a", false));
        assert!(state.tenants.is_empty() && state.total == 0, "nothing left behind");
    }

    #[test]
    fn a_run_saving_gives_its_place_to_the_next_and_still_counts_toward_the_bound() {
        let mut state = State::default();
        state.queue(runs("a", HANDED_AT_ONCE + 1), Instant::now());
        assert_eq!(state.start("a", FRESH).0.len(), HANDED_AT_ONCE);
        assert!(state.vacated("a"), "one still queued");
        assert_eq!(state.start("a", FRESH).0.iter().map(|h| h.run.id.as_str()).collect::<Vec<_>>(), ["a-16"]);
        assert_eq!(state.tenants["a"].count(), HANDED_AT_ONCE + 1, "the saving run still counts");
        assert!(!state.finished("a", true));
        assert_eq!((state.tenants["a"].running, state.tenants["a"].saving), (HANDED_AT_ONCE, 0));
        for _ in 0..HANDED_AT_ONCE {
            state.finished("a", false);
        }
        assert!(state.tenants.is_empty() && state.total == 0, "nothing left behind");
    }

    #[test]
    fn a_tenant_past_its_bound_is_refused_and_others_are_not_until_the_total_is_reached() {
        let mut state = State::default();
        state.queue(runs("a", TENANT_MAX - 1), Instant::now());
        assert!(state.admits("a"));
        state.queue(runs("a", 1), Instant::now());
        assert!(!state.admits("a"), "a has its share");
        assert!(state.admits("b"));
        // Running runs count as much as queued ones.
        state.start("a", FRESH);
        assert!(!state.admits("a"));
        let mut filled = TENANT_MAX;
        let mut n = 0;
        while filled < TOTAL_MAX {
            state.queue(runs(&format!("t{n}"), TENANT_MAX.min(TOTAL_MAX - filled)), Instant::now());
            filled += TENANT_MAX.min(TOTAL_MAX - filled);
            n += 1;
        }
        assert!(!state.admits("b"), "everyone's bound reached");
        state.finished("a", false);
        assert!(state.admits("b") && state.admits("a"));
    }

    #[test]
    fn a_run_queued_past_half_its_lease_is_left_to_the_claims() {
        let mut state = State::default();
        let long_ago = Instant::now() - Duration::from_secs(40);
        state.queue(runs("a", 2), long_ago);
        let (started, stale) = state.start("a", Duration::from_secs(30));
        assert_eq!((started.len(), stale), (0, 2));
        assert!(state.tenants.is_empty() && state.total == 0);
    }
}
