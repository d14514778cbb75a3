//! Durable multi-step workflows: the heart of the automation.
//!
//! A workflow is a versioned JSON definition (see [`definition`]): a trigger,
//! enrollment rules, goals and steps. When its trigger fires for a contact,
//! the contact enrolls: the store records a *run* with a cursor (the next
//! step's id) and a due time. The runner claims due runs and advances each
//! until it must wait (a delay, or a retry backoff) or ends. Everything a run
//! needs to continue is in the store, so a run waiting five days survives any
//! number of restarts and fires on time after one; a run always finishes on
//! the version it enrolled on.
//!
//! ## Layout
//! - [`definition`]: the JSON document, parsing, and checks that need only it.
//! - [`validate`]: checks against the tenant's installs (exists, right kind,
//!   step config valid for the plugin's schema).
//! - [`program`]: a definition compiled to "step id → what comes next".
//! - [`condition`]: evaluating conditions on a contact.
//! - [`time`]: calendar arithmetic for delays and schedules, in the tenant's
//!   time zone.
//! - [`enroll`]: trigger matching for the pipeline, schedules, enrollment.
//! - [`runner`]: advancing a run: steps, retries with backoff, goals.
//! - [`dry_run`]: walking a definition on a sample contact in test mode.
//! - [`direct`]: runs the pipeline enrolls, handed to the runner in memory.
//! - this file: [`Workflows`], the service (caches, loop, counters).
//!
//! ## Lanes
//! The runner advances runs in lanes, one per tenant, like the pipeline
//! (see `engine::pipeline`): a round claims due runs of the tenants whose
//! lane is not running, and each tenant's share becomes a lane of its own,
//! [`CONCURRENT_RUNS`] at a time. The loop does not wait for the lanes: a
//! tenant whose actions run to their deadlines (or wait for the tenant's
//! plugin-call slots) holds only its own lane, while the next round claims
//! the other tenants' runs. One shared round with one concurrency limit
//! would let such a tenant hold every tenant's steps. Runs the pipeline
//! enrolls skip the claim and the lanes: it hands them over in memory
//! ([`direct`]), bounded per tenant the same way.

pub mod condition;
pub mod definition;
pub mod direct;
pub mod dry_run;
pub mod enroll;
pub mod program;
pub mod runner;
pub mod time;
pub mod validate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::engine::pipeline::{Lane, TenantLanes, log_panic};
use crate::registry::Registry;
use crate::store::{DueClaim, Run, Store, StoreError};
use program::Program;

/// Runs claimed per round (across the tenants it starts lanes for).
const CLAIM: i64 = 256;
/// How often the runner looks for due schedules on the system clock.
const SCHEDULE_LOOK_EVERY: Duration = Duration::from_millis(250);
/// Runs of one lane (one tenant) advanced concurrently.
const CONCURRENT_RUNS: usize = 16;
/// Lanes running at once: bounds the runner's runs in flight (and plugin
/// calls: the engine's instance pool holds 256); up to `MAX_LANES - 1`
/// tenants stuck at their actions' deadlines leave a lane for the others.
const MAX_LANES: usize = 8;
/// How long the tenant's active workflows are trusted without an
/// invalidation (another process may have activated one).
const ACTIVE_TTL: Duration = Duration::from_secs(1);
/// How long a tenant's time zone is cached.
const ZONE_TTL: Duration = Duration::from_secs(30);
/// Compiled versions kept in memory; versions are immutable, so the cache
/// is only bounded, never invalidated.
const MAX_PROGRAMS: usize = 10_000;

/// One active workflow of a tenant.
#[derive(Debug)]
pub struct ActiveWorkflow {
    /// Workflow id.
    pub id: String,
    /// The active version.
    pub version: i64,
    /// Its compiled definition.
    pub program: Arc<Program>,
}

/// Counters for `/metrics` and the benchmark.
#[derive(Debug, Default)]
pub struct WorkflowStats {
    /// Contacts enrolled.
    pub enrolled: AtomicU64,
    /// Enrollments refused by enrollment rules.
    pub enroll_refused: AtomicU64,
    /// Steps that completed.
    pub steps_ok: AtomicU64,
    /// Step attempts that failed (retried or not).
    pub steps_failed: AtomicU64,
    /// Runs that reached their end.
    pub runs_completed: AtomicU64,
    /// Runs that failed.
    pub runs_failed: AtomicU64,
    /// Runs ended early by a goal.
    pub goals_met: AtomicU64,
}

/// A tenant's active workflows, and when they were read.
type ActiveEntry = (Instant, Arc<Vec<Arc<ActiveWorkflow>>>);

/// The workflow service.
pub struct Workflows {
    store: Store,
    registry: Arc<Registry>,
    clock: Clock,
    wake: Notify,
    /// The pipeline's wake-up: a step that changed the contact wrote
    /// `property_changed` events for it.
    committed: Arc<Notify>,
    active: Mutex<HashMap<String, ActiveEntry>>,
    programs: Mutex<HashMap<(String, i64), Arc<Program>>>,
    zones: Mutex<HashMap<String, (Instant, jiff::tz::TimeZone)>>,
    /// Tenants whose lane is running in this process.
    lanes: TenantLanes,
    /// Runs the pipeline handed over.
    direct: direct::Direct,
    /// Counters.
    pub stats: WorkflowStats,
}

impl Workflows {
    /// The service over `store`, calling plugins through `registry`;
    /// `committed` wakes the pipeline after steps that may have written events.
    pub fn new(store: Store, registry: Arc<Registry>, clock: Clock, committed: Arc<Notify>) -> Arc<Workflows> {
        Arc::new(Workflows {
            store,
            registry,
            clock,
            wake: Notify::new(),
            committed,
            active: Mutex::new(HashMap::new()),
            programs: Mutex::new(HashMap::new()),
            zones: Mutex::new(HashMap::new()),
            lanes: TenantLanes::default(),
            direct: direct::Direct::default(),
            stats: WorkflowStats::default(),
        })
    }

    /// The clock runs and delays use.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Wake the loop (new runs, a retried run, an advanced clock).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Forget the tenant's active workflows (after activating or archiving).
    pub fn invalidate(&self, tenant: &str) {
        if let Ok(mut m) = self.active.lock() {
            m.remove(tenant);
        }
    }

    /// Forget the tenant's time zone (after it changed).
    pub fn invalidate_zone(&self, tenant: &str) {
        if let Ok(mut m) = self.zones.lock() {
            m.remove(tenant);
        }
    }

    /// The tenant's active workflows, compiled, from memory when fresh.
    pub async fn active(&self, tenant: &str) -> Result<Arc<Vec<Arc<ActiveWorkflow>>>, StoreError> {
        if let Some((at, entry)) = self.active.lock().ok().and_then(|m| m.get(tenant).cloned())
            && at.elapsed() < ACTIVE_TTL
        {
            return Ok(entry);
        }
        let mut list = Vec::new();
        for (workflow, version) in self.store.active_workflows(tenant).await? {
            match self.compile(&workflow.id, &version) {
                Some(program) => {
                    list.push(Arc::new(ActiveWorkflow { id: workflow.id, version: version.version, program }))
                }
                None => tracing::warn!(workflow = %workflow.id, "active version no longer parses; skipped"),
            }
        }
        let entry = Arc::new(list);
        if let Ok(mut m) = self.active.lock() {
            m.insert(tenant.to_string(), (Instant::now(), entry.clone()));
        }
        Ok(entry)
    }

    /// Version `version` of `workflow`, compiled (cached: versions never change).
    pub async fn program(
        &self,
        tenant: &str,
        workflow: &str,
        version: i64,
    ) -> Result<Option<Arc<Program>>, StoreError> {
        if let Some(p) = self.programs.lock().ok().and_then(|m| m.get(&(workflow.to_string(), version)).cloned()) {
            return Ok(Some(p));
        }
        let Some(v) = self.store.get_workflow_version(tenant, workflow, version).await? else { return Ok(None) };
        Ok(self.compile(workflow, &v))
    }

    fn compile(&self, workflow: &str, v: &crate::store::WorkflowVersion) -> Option<Arc<Program>> {
        let key = (workflow.to_string(), v.version);
        if let Some(p) = self.programs.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Some(p);
        }
        let program = Arc::new(Program::compile(definition::parse(&v.definition).ok()?));
        if let Ok(mut m) = self.programs.lock() {
            if m.len() >= MAX_PROGRAMS {
                m.clear();
            }
            m.insert(key, program.clone());
        }
        Some(program)
    }

    /// The tenant's time zone (UTC when unknown or unreadable).
    pub async fn zone(&self, tenant: &str) -> jiff::tz::TimeZone {
        if let Some((at, tz)) = self.zones.lock().ok().and_then(|m| m.get(tenant).cloned())
            && at.elapsed() < ZONE_TTL
        {
            return tz;
        }
        let name = match self.store.get_tenant(tenant).await {
            Ok(Some(t)) => t.time_zone,
            _ => "UTC".to_string(),
        };
        let tz = time::parse_time_zone(&name).unwrap_or(jiff::tz::TimeZone::UTC);
        if let Ok(mut m) = self.zones.lock() {
            m.insert(tenant.to_string(), (Instant::now(), tz.clone()));
        }
        tz
    }

    /// Run until the task is aborted: fire due schedules, start lanes for
    /// due runs; when there is nothing to start, sleep until the next run is
    /// due (at most a second, to see work another process added), a
    /// wake-up, a manual clock moving, or a lane's end. Lanes are children
    /// of this task: aborting it aborts them (their runs' leases run out
    /// and they are claimed again).
    pub async fn run(self: Arc<Self>) {
        // While the loop runs, the pipeline hands it new runs directly.
        let _live = self.go_live();
        let mut lanes: JoinSet<()> = JoinSet::new();
        let mut schedules_checked: Option<Instant> = None;
        loop {
            while let Some(ended) = lanes.try_join_next() {
                log_panic(ended);
            }
            // The runner goes round after every enrollment and every lane's
            // end, hundreds of times a second under load; schedules fire on
            // minutes, so on the system clock one look at them per
            // SCHEDULE_LOOK_EVERY is enough (a manual clock looks every round:
            // tests move it and expect what is due to fire).
            let look = !matches!(self.clock, Clock::System)
                || schedules_checked.is_none_or(|at| at.elapsed() >= SCHEDULE_LOOK_EVERY);
            if look {
                schedules_checked = Some(Instant::now());
            }
            match self.start_lanes(&mut lanes, look).await {
                Ok((0, next_wake_at)) => self.idle(&mut lanes, next_wake_at).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("workflow round failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Sleep until a run may be due, a wake-up, the clock moving or a
    /// lane's end. `next_wake_at`: the next run due as the round's claim
    /// just read it (`Some`), or unknown (`None`: read it here).
    async fn idle(&self, lanes: &mut JoinSet<()>, next_wake_at: Option<Option<i64>>) {
        let full = lanes.len() >= MAX_LANES;
        let mut wait = Duration::from_secs(1);
        // With every lane taken nothing can start before one ends; otherwise
        // the next run due that a new lane could take.
        if !full && matches!(self.clock, Clock::System) {
            let due = match next_wake_at {
                Some(known) => Ok(known),
                None => self.store.next_wake_at_except(&self.lanes.running()).await,
            };
            if let Ok(Some(due)) = due {
                let ms = (due - self.clock.now()).clamp(0, 1000);
                wait = Duration::from_millis(ms as u64);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.wake.notified() => {}
            _ = self.clock.changed() => {}
            Some(ended) = lanes.join_next(), if !lanes.is_empty() => log_panic(ended),
        }
    }

    /// Fire due schedules, then claim due runs of the tenants whose lane is
    /// not running and start a lane (in `lanes`) for each such tenant, while
    /// lanes are free. Returns how many runs and schedules it started.
    ///
    /// With `schedules` false the schedules are not looked at. Also returns
    /// the next run due as the claim read it, when it read it (see
    /// [`crate::store::DueClaim`]).
    async fn start_lanes(
        self: &Arc<Self>,
        lanes: &mut JoinSet<()>,
        schedules: bool,
    ) -> Result<(usize, Option<Option<i64>>), StoreError> {
        let fired = if schedules { self.fire_schedules().await? } else { 0 };
        let free = MAX_LANES.saturating_sub(lanes.len());
        let mut started = 0;
        let (claimed, next_wake_at) = self.claim(free).await?;
        for (lane, runs) in claimed {
            started += runs.len();
            lanes.spawn(self.clone().run_lane(lane, runs));
        }
        Ok((started + fired, next_wake_at))
    }

    /// One round, to its end: due schedules, then a claim of due runs, in
    /// lanes, waited for. Returns how many runs and schedules it handled.
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut lanes = JoinSet::new();
        let (n, _) = self.start_lanes(&mut lanes, true).await?;
        while let Some(ended) = lanes.join_next().await {
            log_panic(ended);
        }
        Ok(n)
    }

    /// Claim due runs, earliest first, of the tenants whose lane is not
    /// running, for up to `free` of them; each tenant's runs come with its
    /// lane, marked running. Runs of tenants beyond `free` go back (the
    /// next round claims them).
    ///
    /// Also returns the next run due, when the claim read it on the way.
    async fn claim(&self, free: usize) -> Result<(Vec<(Lane, Vec<Run>)>, Option<Option<i64>>), StoreError> {
        if free == 0 {
            return Ok((Vec::new(), None));
        }
        let now = self.clock.now();
        let DueClaim { runs, next_wake_at } =
            self.store.claim_due_runs_looking_ahead(now, CLAIM, &self.lanes.running()).await?;
        let mut by_tenant: Vec<(Lane, Vec<Run>)> = Vec::new();
        let mut back = Vec::new();
        for run in runs {
            if let Some((_, mine)) = by_tenant.iter_mut().find(|(lane, _)| lane.tenant() == run.tenant_id) {
                mine.push(run);
                continue;
            }
            match (by_tenant.len() < free).then(|| self.lanes.start(&run.tenant_id)).flatten() {
                Some(lane) => by_tenant.push((lane, vec![run])),
                // No lane free, or (another caller's round) already running.
                None => back.push(run.id),
            }
        }
        if !back.is_empty()
            && let Err(e) = self.store.release_runs(&back).await
        {
            // Not fatal: their leases run out and they are claimed then.
            tracing::warn!("giving back runs for later failed: {e}");
        }
        Ok((by_tenant, next_wake_at))
    }

    /// Advance one tenant's claimed runs, [`CONCURRENT_RUNS`] at a time;
    /// the tenant's lane ends when the last is saved.
    async fn run_lane(self: Arc<Self>, lane: Lane, runs: Vec<Run>) {
        let mut tasks = JoinSet::new();
        for run in runs {
            while tasks.len() >= CONCURRENT_RUNS {
                tasks.join_next().await;
            }
            let me = self.clone();
            tasks.spawn(async move {
                let id = run.id.clone();
                if let Err(e) = me.advance(run).await {
                    // The lease runs out and the run is claimed again.
                    tracing::warn!(run = %id, "advancing a run failed: {e}");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        drop(lane);
    }

    /// Advance until nothing is due at the current time (tests, the demo,
    /// the benchmark).
    pub async fn drain(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.run_once().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
