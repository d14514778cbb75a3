//! The event pipeline: what happens after an event is durable.
//!
//! Work goes in **lanes, one per tenant**. A round finds the tenants with
//! queued events and, for each whose lane is not running, starts its lane
//! as a task of its own, which claims a batch of that tenant's events
//! (oldest first). A lane reads the batch's contacts and their histories in a few
//! queries (the union of what the tenant's scorers and triggers declared
//! they read), then handles each contact once, concurrently, in event order:
//! 1. the tenant's scorers run (once per contact per batch) and the new score
//!    is kept for the batch's write;
//! 2. a score that crosses a lifecycle threshold (e.g. MQL at 50) moves the
//!    contact's stage and emits a `lifecycle_stage_changed` event, which goes
//!    through the pipeline like any other;
//! 3. the tenant's active workflows whose trigger the events match enroll
//!    the contact: built-in triggers (event, property change, score
//!    crossing) natively, plugin triggers in wasm. Suppression is checked
//!    here, on the contact as the batch will write it.
//!
//! Then a transaction records last activity, scores, score history, stage
//! changes with their `lifecycle_stage_changed` events, the enrollments
//! (with the store's enrollment rules), and marks the lane's events
//! processed, each contact's together: a run never starts from the score
//! before the event that enrolled it. (On SQLite a big lane commits in
//! several transactions of whole contacts, so that no commit holds the one
//! writer long: see [`COMMIT_ROWS_SQLITE`].) A crash in between re-runs
//! what was not committed after restart: scoring is idempotent, a stage
//! only moves forward, and enrollments are keyed by the event that caused
//! them. A lane that fails gives its events back to the queue. The
//! workflow runner then does the runs' steps; after the commits, runs
//! waiting on a goal the new events met are woken.
//!
//! Why lanes: a tenant whose plugins run to their deadlines (16 calls at a
//! time, 500 ms each, by default) holds only its own lane. One shared round
//! would hold every tenant's events until the slowest tenant's contacts were
//! done, and the measured cost was total: with another tenant's runaway
//! scorers flooding the queue, a well-behaved tenant's events were not
//! processed at all within a minute (`cairn bench --noisy-only`). While a
//! tenant's lane runs, its further events wait in the queue and are claimed
//! when the lane ends, so each tenant's events are still handled in order
//! and a contact (which belongs to one tenant) is never handled by two
//! lanes at once. That holds across nodes too: on PostgreSQL a claim takes
//! a tenant's lane only while none of its events is leased (see
//! `Store::claim_tenant_events`), so with several nodes on one database a
//! tenant's events go to one node at a time, in order, and to another when
//! that node's lease runs out. A SQLite file is served by one process, so
//! there a lane reads its events and leases nothing
//! (`Store::take_lane_events`): one write fewer per lane. Finding tenants
//! and claiming read the queue by tenant
//! (`Store::tenants_with_queued_events`, `Store::take_lane_events`): a
//! tenant's backlog, however long, costs the other tenants' claims nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::engine::actions;
use crate::engine::automation::{AutomationCache, TenantAutomation};
use crate::engine::workflows::direct::HandedRun;
use crate::engine::workflows::runner::WAITING;
use crate::engine::workflows::{ActiveWorkflow, Workflows, enroll};
use crate::registry::{ActiveInstall, Registry, TenantInstalls};
use crate::runtime::invoke::ProjectedInput;
use crate::runtime::recorded::RecordedCall;
use crate::runtime::{CallError, CallScope};
use crate::store::{
    self, Backend, ContactUpdate, EnrollOutcome, Event, History, StageChange, Store, StoreError, Value,
};

/// Events one lane claims (one tenant's batch).
const BATCH: i64 = 1024;
/// Contacts handled concurrently within a lane.
const CONCURRENT_CONTACTS: usize = 16;
/// Lanes running at once. With [`CONCURRENT_CONTACTS`] each, this bounds the
/// pipeline's plugin calls in flight (the engine's instance pool holds 256)
/// and the claimed events held in memory; up to `MAX_LANES - 1` tenants
/// stuck at their plugins' deadlines still leave a lane for the others.
const MAX_LANES: usize = 8;
/// Tenants one scan looks at: more than [`MAX_LANES`], so the running lanes'
/// tenants (skipped) cannot hide the idle ones.
const SCAN_TENANTS: i64 = 64;
/// Rows (events marked processed, contacts updated, runs enrolled) one
/// commit of a lane writes at most on SQLite. Its one writer is taken in
/// turns that cannot be cut short, so another tenant's write waits for
/// the turn in progress to end: a 1,000-event lane's single commit held
/// it for up to 9 ms (`cairn bench --noisy-only`, the waiting and burning
/// phases). On PostgreSQL tenants do not wait for each other's commits:
/// there a lane commits once.
const COMMIT_ROWS_SQLITE: usize = 256;
/// Stage order: a score crossing only ever moves a contact forward.
pub const STAGES: [&str; 6] = ["subscriber", "lead", "mql", "sql", "opportunity", "customer"];

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Events processed.
    pub events: AtomicU64,
    /// Score changes stored.
    pub scores_changed: AtomicU64,
    /// Lifecycle stage changes from thresholds.
    pub stage_changes: AtomicU64,
    /// From accepted to processed, per event.
    pub latency: crate::engine::latency::EventLatency,
}

/// The pipeline.
pub struct Pipeline {
    store: Store,
    registry: Arc<Registry>,
    clock: Clock,
    committed: Arc<Notify>,
    automation: AutomationCache,
    workflows: Arc<Workflows>,
    /// Tenants whose lane is running in this process: their events are not
    /// claimed until it ends.
    lanes: TenantLanes,
    /// The last tenant a scan looked at: the next scan starts after it, so
    /// with more tenants queued than lanes free each gets its turn.
    cursor: Mutex<String>,
    /// Counters.
    pub stats: PipelineStats,
}

/// The tenants whose lane is running in this process (the pipeline and the
/// workflow runner each keep their own).
#[derive(Debug, Default, Clone)]
pub(crate) struct TenantLanes(Arc<Mutex<HashSet<String>>>);

impl TenantLanes {
    /// Mark `tenant`'s lane running; `None` when it already is.
    pub(crate) fn start(&self, tenant: &str) -> Option<Lane> {
        let mut running = self.0.lock().ok()?;
        running.insert(tenant.to_string()).then(|| Lane { lanes: self.0.clone(), tenant: tenant.to_string() })
    }

    /// The tenants whose lane is running.
    pub(crate) fn running(&self) -> Vec<String> {
        self.0.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
    }
}

/// A tenant's running lane: unmarks the tenant when dropped, however the
/// lane ends (done, failed, aborted, panicked).
pub(crate) struct Lane {
    lanes: Arc<Mutex<HashSet<String>>>,
    tenant: String,
}

impl Lane {
    /// The lane's tenant.
    pub(crate) fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Ok(mut running) = self.lanes.lock() {
            running.remove(&self.tenant);
        }
    }
}

impl Pipeline {
    /// A pipeline woken by `committed`, enrolling contacts in `workflows`.
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        clock: Clock,
        committed: Arc<Notify>,
        workflows: Arc<Workflows>,
    ) -> Arc<Pipeline> {
        let automation = AutomationCache::new(store.clone());
        let stats = PipelineStats::default();
        Arc::new(Pipeline {
            store,
            registry,
            clock,
            committed,
            automation,
            workflows,
            lanes: TenantLanes::default(),
            cursor: Mutex::new(String::new()),
            stats,
        })
    }

    /// Lifecycle thresholds by tenant (the API invalidates entries it changes).
    pub fn automation(&self) -> &AutomationCache {
        &self.automation
    }

    /// Wake the pipeline: events were written outside intake (contact
    /// changes through the API).
    pub fn poke(&self) {
        self.committed.notify_one();
    }

    /// The clock the pipeline uses.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Run until the task is aborted: start a lane for every tenant with
    /// queued events whose lane is not running (up to [`MAX_LANES`] at once),
    /// then sleep until the next commit, the end of a lane that had events
    /// (its tenant may have more), or a second (to pick up work left by a
    /// crash). Each lane takes its tenant's events itself: a slow claim
    /// holds up only its own tenant, not the claims of the tenants after it
    /// in the scan. Lanes are children of this task: aborting it aborts
    /// them, and their events go back to the queue (on PostgreSQL when
    /// their lease runs out; SQLite leases none).
    pub async fn run(self: Arc<Self>) {
        let mut lanes: JoinSet<bool> = JoinSet::new();
        loop {
            while let Some(ended) = lanes.try_join_next() {
                lane_ended(ended);
            }
            let free = MAX_LANES.saturating_sub(lanes.len());
            match self.take_lanes(free).await {
                Ok((taken, more)) if !taken.is_empty() => {
                    for lane in taken {
                        lanes.spawn(self.clone().claim_and_run_lane(lane));
                    }
                    // Look again when the scan stopped at its limit: there
                    // may be tenants after it. (Not otherwise: a scan per
                    // lane more, for nothing, on every lane of a steady load.)
                    if more {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("pipeline round failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            // A lane that claimed nothing (another node holds its tenant's
            // events) is no reason to look again at once.
            let second = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(second);
            loop {
                tokio::select! {
                    _ = self.committed.notified() => break,
                    Some(ended) = lanes.join_next(), if !lanes.is_empty() => {
                        if lane_ended(ended) {
                            break;
                        }
                    }
                    _ = &mut second => break,
                }
            }
        }
    }

    /// Claim `lane`'s events and process them; whether there were any.
    async fn claim_and_run_lane(self: Arc<Self>, lane: Lane) -> bool {
        match self.store.take_lane_events(lane.tenant(), BATCH).await {
            Ok(events) if events.is_empty() => false,
            // Logged and given back inside; nothing to add.
            Ok(events) => {
                let _ = self.run_lane(lane, events).await;
                true
            }
            Err(e) => {
                tracing::warn!(tenant = %lane.tenant(), "claiming events failed, retrying: {e}");
                // The lane stays taken meanwhile: no claim of it sooner.
                tokio::time::sleep(Duration::from_millis(200)).await;
                true
            }
        }
    }

    /// One round, to its end: claim a batch for every tenant with queued
    /// events whose lane is not running, run those lanes concurrently and
    /// wait for them; returns how many events they processed (tests, the
    /// demo, the benchmark). The first lane's error, if any, after all ended.
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut lanes = JoinSet::new();
        for (lane, events) in self.claim(MAX_LANES).await? {
            lanes.spawn(self.clone().run_lane(lane, events));
        }
        let (mut total, mut failed) = (0, None);
        while let Some(ended) = lanes.join_next().await {
            match ended {
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(e) => tracing::error!("a pipeline lane panicked: {e}"),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Claim a batch for up to `free` tenants with queued events whose lane
    /// is not running, in turn from where the last claim stopped; each
    /// comes with its lane, marked running.
    async fn claim(self: &Arc<Self>, free: usize) -> Result<Vec<(Lane, Vec<Event>)>, StoreError> {
        let mut claimed = Vec::new();
        for lane in self.take_lanes(free).await?.0 {
            // Dropping the lane when nothing was claimed unmarks the tenant.
            match self.store.take_lane_events(lane.tenant(), BATCH).await {
                Ok(events) if events.is_empty() => {}
                Ok(events) => claimed.push((lane, events)),
                // Start what was claimed: leased events wait for their lanes.
                Err(e) if !claimed.is_empty() => {
                    tracing::warn!(tenant = %lane.tenant(), "claiming events failed: {e}");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(claimed)
    }

    /// Take the lanes of up to `free` tenants with queued events whose lane
    /// is not running, in turn from where the last scan stopped; each is
    /// marked running until dropped. Also says whether the scan stopped at
    /// its limit (more tenants may be queued than it saw).
    async fn take_lanes(&self, free: usize) -> Result<(Vec<Lane>, bool), StoreError> {
        let mut taken = Vec::new();
        if free == 0 {
            return Ok((taken, false));
        }
        let after = self.cursor.lock().map(|c| c.clone()).unwrap_or_default();
        let mut tenants = self.store.tenants_with_queued_events("", SCAN_TENANTS).await?;
        let more = tenants.len() as i64 >= SCAN_TENANTS;
        if more && !after.is_empty() {
            // More tenants queued than one scan holds: go on from the cursor,
            // then wrap around to the first ones.
            let first = std::mem::take(&mut tenants);
            tenants = self.store.tenants_with_queued_events(&after, SCAN_TENANTS).await?;
            let seen: HashSet<String> = tenants.iter().cloned().collect();
            tenants.extend(first.into_iter().filter(|t| !seen.contains(t)));
        } else {
            // The whole set: those after the cursor first.
            let split = tenants.partition_point(|t| t.as_str() <= after.as_str());
            tenants.rotate_left(split);
        }
        for tenant in tenants {
            if taken.len() >= free {
                break;
            }
            let Some(lane) = self.lanes.start(&tenant) else { continue };
            if let Ok(mut cursor) = self.cursor.lock() {
                cursor.clone_from(&tenant);
            }
            taken.push(lane);
        }
        Ok((taken, more))
    }

    /// Run one tenant's lane over its claimed `events`; on failure give
    /// them back to the queue (before the lane is unmarked, so the next
    /// claim takes them again, in order).
    async fn run_lane(self: Arc<Self>, lane: Lane, events: Vec<Event>) -> Result<usize, StoreError> {
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let outcome = self.process_lane(lane.tenant(), events).await;
        if let Err(e) = &outcome {
            tracing::warn!(tenant = %lane.tenant(), "pipeline lane failed, its events go back to the queue: {e}");
            if let Err(e) = self.store.release_events(&ids).await {
                tracing::warn!(tenant = %lane.tenant(), "giving events back failed (their lease will run out): {e}");
            }
        }
        drop(lane);
        outcome
    }

    /// Process one tenant's claimed events and commit the result; returns
    /// how many there were.
    async fn process_lane(self: &Arc<Self>, tenant: &str, claimed: Vec<Event>) -> Result<usize, StoreError> {
        let started = std::time::Instant::now();
        let ids: Vec<String> = claimed.iter().map(|e| e.id.clone()).collect();
        let received: Vec<i64> = claimed.iter().map(|e| e.received_at).collect();
        let mut by_contact: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for event in claimed {
            by_contact.entry(event.contact_id.clone()).or_default().push(event);
        }
        let ids_by_contact: HashMap<String, Vec<String>> =
            by_contact.iter().map(|(c, events)| (c.clone(), events.iter().map(|e| e.id.clone()).collect())).collect();
        // The runs the commits hand over get their trigger events from here.
        let hand_over = self.workflows.may_hand_over(tenant);
        let triggers: HashMap<String, Event> = if hand_over {
            by_contact.values().flatten().map(|e| (e.id.clone(), Event { processed: true, ..e.clone() })).collect()
        } else {
            HashMap::new()
        };
        let updates = self.process_tenant(tenant, by_contact).await?;
        let processed_in = started.elapsed();
        // Goals read the contact as written (score, stage), after the commits.
        let touched: Vec<String> = updates.iter().map(|u| u.contact_id.clone()).collect();
        let staged = updates.iter().any(|u| u.stage_change.is_some());
        let rows = match self.store.backend() {
            Backend::Sqlite => COMMIT_ROWS_SQLITE,
            Backend::Postgres => usize::MAX,
        };
        // Each commit lands its contacts' activity, scores, enrollments and
        // "processed" together. The runs it enrolls go straight to the
        // runner when it takes them (`engine::workflows::direct`), else it
        // claims them.
        for (updates, ids) in commits(updates, ids_by_contact, rows) {
            let decided = self.store.finish_batch_leasing(&updates, &ids, hand_over).await?;
            let outcomes = decided.iter().map(|(e, o)| (e, o.as_ref()));
            if !hand_over {
                self.workflows.record_outcomes(outcomes);
                continue;
            }
            self.workflows.count_outcomes(outcomes);
            // The runs enrolled waiting are the ones born leased.
            let leased = decided.into_iter().filter_map(|(_, outcome)| match outcome {
                Some(EnrollOutcome::Enrolled(run)) if run.status == WAITING => {
                    // One event may enroll in several workflows.
                    let trigger = run.trigger_event_id.as_ref().and_then(|id| triggers.get(id).cloned());
                    Some(HandedRun { run, trigger })
                }
                _ => None,
            });
            self.workflows.hand_over(leased.collect());
        }
        if !touched.is_empty()
            && let Err(e) = self.workflows.check_goals(tenant, &touched).await
        {
            // Not fatal: every goal is checked again when its run wakes.
            tracing::warn!(tenant, "checking workflow goals failed: {e}");
        }
        if staged {
            // The lifecycle events just committed are work for the next round.
            self.committed.notify_one();
        }
        tracing::debug!(
            tenant,
            events = ids.len(),
            process_us = processed_in.as_micros() as u64,
            write_us = (started.elapsed() - processed_in).as_micros() as u64,
            "pipeline lane"
        );
        self.stats.events.fetch_add(ids.len() as u64, Ordering::Relaxed);
        let now = self.clock.now();
        for at in received {
            self.stats.latency.record(now - at);
        }
        Ok(ids.len())
    }

    /// Read the tenant's contacts and their histories in a few queries, then
    /// handle contacts concurrently.
    async fn process_tenant(
        self: &Arc<Self>,
        tenant: &str,
        by_contact: BTreeMap<String, Vec<Event>>,
    ) -> Result<Vec<ContactUpdate>, StoreError> {
        let started = std::time::Instant::now();
        let contact_ids: Vec<String> = by_contact.keys().cloned().collect();
        let installs = self.registry.tenant(tenant);
        // The contacts and the history the installs declared, in one read.
        let wanted = history_query(installs.scorers.iter().chain(&installs.triggers));
        let history = wanted.as_ref().map(|(days, kinds, max)| History {
            kinds,
            since: self.clock.now() - i64::from(*days) * 86_400_000,
            limit_each: i64::from(*max),
        });
        let (mut contacts, mut histories) = self.store.lane_reads(tenant, &contact_ids, history).await?;
        let automation = self.automation.get(tenant).await?;
        tracing::debug!(contacts = contact_ids.len(), read_us = started.elapsed().as_micros() as u64, "pipeline reads");
        let mut tasks = JoinSet::new();
        let mut updates = Vec::with_capacity(by_contact.len());
        for (contact_id, events) in by_contact {
            // Deleted since the event was accepted: nothing to do.
            let Some(contact) = contacts.remove(&contact_id) else { continue };
            let history = histories.remove(&contact_id).unwrap_or_default();
            while tasks.len() >= CONCURRENT_CONTACTS {
                if let Some(done) = tasks.join_next().await {
                    collect(done, &mut updates);
                }
            }
            let (me, tenant, installs, automation) =
                (self.clone(), tenant.to_string(), installs.clone(), automation.clone());
            tasks.spawn(
                async move { me.process_contact(&tenant, contact, events, history, &installs, &automation).await },
            );
        }
        while let Some(done) = tasks.join_next().await {
            collect(done, &mut updates);
        }
        Ok(updates)
    }

    /// Process until nothing is left (tests, the demo, the benchmark).
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

    fn scope(&self, active: &ActiveInstall) -> CallScope {
        active.scope(&self.store, self.registry.runtime(), self.clock.now())
    }

    /// Count and record a failed scorer or trigger call, with its input
    /// (`call`, built only now: successful calls, the hot path, are counted
    /// but not recorded) under the invocation id the plugin saw.
    async fn record_failure(
        &self,
        active: &ActiveInstall,
        invocation: String,
        call: &RecordedCall,
        event: Option<&Event>,
        error: &CallError,
    ) {
        self.registry.record_failure(active, error).await;
        let kind = call.export();
        tracing::info!(install = %active.install.id, kind, cause = error.cause.as_str(), "plugin call failed: {}", error.message);
        let mut record = actions::invocation_record::<()>(active, invocation, call, Err(error), self.clock.now());
        record.event_id = event.map(|e| e.id.clone());
        if let Err(e) = self.store.record_invocation(&record).await {
            tracing::warn!("could not record a failed invocation: {e}");
        }
    }

    async fn process_contact(
        &self,
        tenant: &str,
        contact: store::Contact,
        events: Vec<Event>,
        history: Vec<Event>,
        installs: &TenantInstalls,
        automation: &TenantAutomation,
    ) -> Result<ContactUpdate, StoreError> {
        let mut update = ContactUpdate {
            tenant_id: tenant.to_string(),
            contact_id: contact.id.clone(),
            last_activity_at: events.iter().map(|e| e.occurred_at).max(),
            score: None,
            stage_change: None,
            enrollments: Vec::new(),
        };
        let (contact, score, stage) = self.score(tenant, contact, &installs.scorers, &history, automation).await?;
        let score_change = score.as_ref().map(|(before, after, _)| (*before, *after));
        update.score = score;
        update.stage_change = stage;
        update.enrollments =
            self.enrollments(tenant, &contact, &events, score_change, &installs.triggers, &history).await?;
        Ok(update)
    }

    /// Run the scorers; the first scorer install sets the contact's score,
    /// later ones set a property named by [`score_property`] (e.g. `health_score`).
    async fn score(
        &self,
        tenant: &str,
        mut contact: store::Contact,
        scorers: &[Arc<ActiveInstall>],
        history: &[Event],
        automation: &TenantAutomation,
    ) -> Result<(store::Contact, Option<(f64, f64, Vec<String>)>, Option<StageChange>), StoreError> {
        let mut new_score = None;
        let mut stage_change = None;
        for (i, active) in scorers.iter().enumerate() {
            let since = self.clock.now() - i64::from(active.plugin.description.reads.event_window_days) * 86_400_000;
            let events: Vec<Event> = history.iter().filter(|e| e.occurred_at >= since).cloned().collect();
            let input = ProjectedInput::build(&active.plugin, &contact, &events);
            let invocation = store::new_id();
            let result = self
                .registry
                .runtime()
                .score(&active.plugin, self.scope(active), &active.config_text, input, &invocation)
                .await;
            match result {
                Ok(called) => {
                    self.registry.record_ok(active, &called.stats);
                    let value = (called.value.value * 100.0).round() / 100.0;
                    if i == 0 {
                        if (value - contact.score).abs() > f64::EPSILON {
                            let before = contact.score;
                            // Written with the batch (`finish_batch`).
                            new_score = Some((before, value, called.value.reasons.clone()));
                            self.stats.scores_changed.fetch_add(1, Ordering::Relaxed);
                            contact.score = value;
                            stage_change = self.cross_thresholds(&mut contact, before, automation).await?;
                        }
                    } else {
                        let name = score_property(&active.plugin.description.name);
                        if contact.properties.get(&name) != Some(&Value::Number(value)) {
                            let props = BTreeMap::from([(name.clone(), Value::Number(value))]);
                            self.store.set_properties(tenant, &contact.id, &props).await?;
                            contact.properties.insert(name, Value::Number(value));
                            // The change is a `property_changed` event: work
                            // for a later round (e.g. a health-score trigger).
                            self.committed.notify_one();
                        }
                    }
                }
                Err(e) => {
                    let call = RecordedCall::score(&active.config_text, &contact, &events, &active.plugin);
                    self.record_failure(active, invocation, &call, None, &e).await;
                }
            }
        }
        Ok((contact, new_score, stage_change))
    }

    /// Move the stage forward when the new score reaches a threshold the old
    /// one did not, and emit `lifecycle_stage_changed`.
    async fn cross_thresholds(
        &self,
        contact: &mut store::Contact,
        before: f64,
        automation: &TenantAutomation,
    ) -> Result<Option<StageChange>, StoreError> {
        let thresholds = &automation.thresholds;
        let rank = |s: &str| STAGES.iter().position(|x| *x == s);
        let current = rank(&contact.lifecycle_stage);
        let target = thresholds
            .iter()
            .filter(|t| contact.score >= t.min_score && before < t.min_score)
            .filter(|t| match (rank(&t.stage), current) {
                (Some(new), Some(cur)) => new > cur,
                _ => false,
            })
            .max_by(|a, b| rank(&a.stage).cmp(&rank(&b.stage)));
        let Some(target) = target else { return Ok(None) };
        let from = std::mem::replace(&mut contact.lifecycle_stage, target.stage.clone());
        self.stats.stage_changes.fetch_add(1, Ordering::Relaxed);
        let properties = BTreeMap::from([
            ("from".to_string(), Value::Text(from)),
            ("to".to_string(), Value::Text(target.stage.clone())),
            ("score".to_string(), Value::Number(contact.score)),
            ("threshold".to_string(), Value::Number(target.min_score)),
        ]);
        // Written with the batch, in the same transaction as the score that
        // caused it: nobody sees the new stage without the new score.
        Ok(Some(StageChange { stage: target.stage.clone(), properties, at: self.clock.now() }))
    }

    /// The enrollments the contact's events cause in the tenant's active
    /// workflows: built-in triggers natively, plugin triggers through their
    /// install (which may name other contacts of the tenant). They are
    /// recorded with the batch.
    async fn enrollments(
        &self,
        tenant: &str,
        contact: &store::Contact,
        events: &[Event],
        score: Option<(f64, f64)>,
        triggers: &[Arc<ActiveInstall>],
        history: &[Event],
    ) -> Result<Vec<store::Enrollment>, StoreError> {
        let active = self.workflows.active(tenant).await?;
        if active.is_empty() {
            return Ok(Vec::new());
        }
        let candidates = enroll::match_events(&active, events, score);
        let mut out = self.workflows.enrollments(tenant, contact, &candidates).await?;
        for install in triggers {
            let listening = enroll::plugin_triggered(&active, install.id());
            if listening.is_empty() {
                continue;
            }
            for event in events {
                out.extend(self.plugin_trigger(tenant, contact, event, install, history, &listening).await?);
            }
        }
        Ok(out)
    }

    /// Ask a trigger install whom `event` enrolls; enroll them in the
    /// workflows that listen to it.
    async fn plugin_trigger(
        &self,
        tenant: &str,
        contact: &store::Contact,
        event: &Event,
        install: &Arc<ActiveInstall>,
        history: &[Event],
        listening: &[Arc<ActiveWorkflow>],
    ) -> Result<Vec<store::Enrollment>, StoreError> {
        let input = ProjectedInput::build(&install.plugin, contact, history);
        let invocation = store::new_id();
        let result = self
            .registry
            .runtime()
            .on_event(&install.plugin, self.scope(install), &install.config_text, input, event, &invocation)
            .await;
        let enrollments = match result {
            Ok(called) => {
                self.registry.record_ok(install, &called.stats);
                called.value
            }
            Err(e) => {
                let call = RecordedCall::on_event(&install.config_text, contact, event, history, &install.plugin);
                self.record_failure(install, invocation, &call, Some(event), &e).await;
                return Ok(Vec::new());
            }
        };
        let mut out = Vec::new();
        for enrollment in enrollments {
            // A trigger may only enroll contacts of its own tenant.
            let target = if enrollment.contact_id == contact.id {
                Some(contact.clone())
            } else {
                self.store.get_contact(tenant, &enrollment.contact_id).await?
            };
            let Some(target) = target else {
                tracing::info!(install = %install.id(), "trigger enrolled an unknown contact; ignored");
                continue;
            };
            // Keys are unique per workflow: one event may enroll several contacts.
            let key = format!("trigger:{}:{}:{}", install.id(), event.id, target.id);
            let candidates: Vec<_> =
                listening.iter().map(|wf| enroll::candidate(wf, key.clone(), Some(&event.id))).collect();
            out.extend(self.workflows.enrollments(tenant, &target, &candidates).await?);
        }
        Ok(out)
    }
}

/// The property a second (third, …) scorer writes: `health-scorer` →
/// `health_score`, `churn-model` → `churn_model_score`.
pub fn score_property(plugin: &str) -> String {
    let stem = plugin.strip_suffix("-scorer").unwrap_or(plugin);
    format!("{}_score", stem.replace('-', "_"))
}

/// A pipeline lane ended: whether it had events (a panic is logged and
/// counts as having had them).
fn lane_ended(ended: Result<bool, tokio::task::JoinError>) -> bool {
    match ended {
        Ok(had_events) => had_events,
        Err(e) => {
            log_panic(Err(e));
            true
        }
    }
}

/// Log a lane that panicked (its tenant was unmarked as it unwound).
pub(crate) fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!("a lane panicked: {e}");
    }
}

/// A lane's results in commits of about `rows` rows each (see
/// [`COMMIT_ROWS_SQLITE`]), each whole contacts: a contact's activity,
/// score, stage, enrollments and the marks of its events go in one
/// commit, so what a run starts from is never older than the event that
/// enrolled it. (An enrollment a trigger plugin made for another contact
/// goes with the contact whose events caused it.) The events of contacts
/// with no update (deleted meanwhile) go with the first commit. A crash
/// between two commits leaves the later contacts' events unprocessed, to
/// be handled again: as for a crash before a single commit, scoring is
/// idempotent, a stage only moves forward and enrollments are keyed by
/// their event.
fn commits(
    updates: Vec<ContactUpdate>,
    mut ids_by_contact: HashMap<String, Vec<String>>,
    rows: usize,
) -> Vec<(Vec<ContactUpdate>, Vec<String>)> {
    let mut commits: Vec<(Vec<ContactUpdate>, Vec<String>)> = Vec::new();
    let mut size = 0;
    for update in updates {
        let ids = ids_by_contact.remove(&update.contact_id).unwrap_or_default();
        let weight = 1 + update.enrollments.len() + ids.len();
        match commits.last_mut() {
            Some((u, i)) if size + weight <= rows => {
                u.push(update);
                i.extend(ids);
                size += weight;
            }
            _ => {
                commits.push((vec![update], ids));
                size = weight;
            }
        }
    }
    let orphans: Vec<String> = ids_by_contact.into_values().flatten().collect();
    if !orphans.is_empty() {
        match commits.first_mut() {
            Some((_, ids)) => ids.extend(orphans),
            None => commits.push((Vec::new(), orphans)),
        }
    }
    commits
}

/// Keep a finished contact's update; a contact that failed is logged and
/// its batch still completes (its events are not retried forever).
fn collect(done: Result<Result<ContactUpdate, StoreError>, tokio::task::JoinError>, updates: &mut Vec<ContactUpdate>) {
    match done {
        Ok(Ok(update)) => updates.push(update),
        Ok(Err(e)) => tracing::warn!("processing a contact's events failed: {e}"),
        Err(e) => tracing::error!("a pipeline task panicked: {e}"),
    }
}

/// One history read that covers what every scorer and trigger of the tenant
/// declared: (window in days, kinds or empty for all, most events). Each call
/// then gets its own projection.
fn history_query<'a>(installs: impl Iterator<Item = &'a Arc<ActiveInstall>>) -> Option<(u32, Vec<String>, u32)> {
    let (mut days, mut max, mut kinds, mut all_kinds) = (0u32, 0u32, Vec::<String>::new(), false);
    for a in installs {
        let r = &a.plugin.description.reads;
        if r.event_window_days == 0 {
            continue;
        }
        days = days.max(r.event_window_days);
        max = max.max(r.max_events);
        if r.event_kinds.is_empty() {
            all_kinds = true;
        }
        kinds.extend(r.event_kinds.iter().cloned());
    }
    if days == 0 {
        return None;
    }
    if all_kinds {
        kinds.clear();
    }
    kinds.sort();
    kinds.dedup();
    Some((days, kinds, max.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(contact: &str) -> ContactUpdate {
        ContactUpdate {
            tenant_id: "t".into(),
            contact_id: contact.into(),
            last_activity_at: None,
            score: None,
            stage_change: None,
            enrollments: Vec::new(),
        }
    }

    /// Events `<contact>-0`, `<contact>-1`, … of each (contact, count).
    fn events(of: &[(&str, usize)]) -> HashMap<String, Vec<String>> {
        of.iter().map(|(c, n)| (c.to_string(), (0..*n).map(|i| format!("{c}-{i}")).collect())).collect()
    }

    fn shape(commits: &[(Vec<ContactUpdate>, Vec<String>)]) -> Vec<(Vec<String>, usize)> {
        commits.iter().map(|(u, ids)| (u.iter().map(|u| u.contact_id.clone()).collect(), ids.len())).collect()
    }

    #[test]
    fn a_lane_commits_whole_contacts_in_bounded_commits() {
        let ids = events(&[("c1", 3), ("c2", 2), ("c3", 9), ("gone", 2)]);
        let done = commits(vec![update("c1"), update("c2"), update("c3")], ids, 8);
        // c1 (1 + 3 rows) and c2 (1 + 2) fit in 8; c3 (1 + 9) is too big for
        // any commit and goes alone; the deleted contact's events go first.
        assert_eq!(shape(&done), [(vec!["c1".into(), "c2".into()], 7), (vec!["c3".into()], 9)]);
        let (_, first) = &done[0];
        assert!(first.contains(&"gone-1".to_string()) && first.contains(&"c2-1".to_string()));
        assert!(done[1].1.iter().all(|id| id.starts_with("c3-")), "a contact's events go with its update");

        // Unbounded (PostgreSQL): one commit.
        let one = commits(vec![update("c1"), update("c3")], events(&[("c1", 3), ("c3", 9)]), usize::MAX);
        assert_eq!(shape(&one), [(vec!["c1".into(), "c3".into()], 12)]);
        // Only deleted contacts' events: one commit that marks them.
        assert_eq!(shape(&commits(Vec::new(), events(&[("gone", 2)]), 8)), [(Vec::<String>::new(), 2)]);
    }
}
