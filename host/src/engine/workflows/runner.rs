//! Advancing one run: goals first, then steps from the cursor until the run
//! must wait or ends.
//!
//! Progress is saved after every action step (and at every wait or end), in
//! one transaction with the records of the steps since the last save, so a
//! crash repeats at most the action that was running and the decisions
//! before it. Action steps carry the idempotency key `run:<run id>:<step
//! id>`, the same on every attempt, so the plugin can tell a repeat.
//!
//! Failures: an action error the plugin (or host) marks retryable waits
//! `backoff × 2^(attempt-1)` (a durable timer like any delay) and tries
//! again, up to the workflow's `max_attempts`; any other error, or the last
//! attempt, fails the run with the error. A failed run can be retried from
//! the failed step (`POST /v1/runs/{id}/retry`).
//!
//! Every attempt of an action step is an invocation record too (kind
//! `execute` or `send`, ok or not, with its input for replay), saved in the
//! same transaction as the step's record, which names it (`invocation_id`).
//! Its id is the `invocation-id` the plugin saw.

use std::sync::Arc;

use serde_json::{Value as Json, json};

use super::condition::{self, Events, Facts};
use super::definition::{self, Step};
use super::direct::Place;
use super::program::Program;
use super::{Workflows, time};
use crate::engine::actions::{self, ActionCall};
use crate::runtime::{CallError, CallScope, FailureCause};
use crate::store::{self, Contact, Event, InvocationRecord, Run, RunProgress, RunStep, StoreError};

/// Statuses a run ends in.
pub const COMPLETED: &str = "completed";
/// The run failed (see its error).
pub const FAILED: &str = "failed";
/// A goal was met.
pub const EXITED: &str = "exited";
/// The contact was deleted, or the version vanished.
pub const CANCELLED: &str = "cancelled";
/// Waiting for `wake_at`.
pub const WAITING: &str = "waiting";

/// Longest wait between retries: a week, so a long outage does not push a
/// retry months out.
const MAX_BACKOFF_MS: i64 = 7 * time::DAY_MS;

/// What a step did.
enum Outcome {
    /// Go on to this step (None: the run is complete).
    Next(Option<String>),
    /// Wait until this time, then run the same step again.
    Wait(i64),
    /// The run failed.
    Fail(Json),
}

impl Workflows {
    /// Advance `run` as far as it goes now.
    pub async fn advance(self: &Arc<Self>, run: Run) -> Result<(), StoreError> {
        self.advance_with(run, None, None).await
    }

    /// [`Workflows::advance`], given the run's trigger event when the caller
    /// has it (the pipeline's lane read it, `engine::workflows::direct`): one
    /// read fewer. Another event than the run's trigger is not used. A
    /// handed-over run's `place` is vacated before the round's last save.
    pub(crate) async fn advance_with(
        self: &Arc<Self>,
        mut run: Run,
        known: Option<Event>,
        place: Option<&Place>,
    ) -> Result<(), StoreError> {
        // The round's plugin calls are over: its place may go to the next run.
        let vacate = || {
            if let Some(place) = place {
                place.vacate();
            }
        };
        let tenant = run.tenant_id.clone();
        let Some(program) = self.program(&tenant, &run.workflow_id, run.version).await? else {
            return self.finish(&run, CANCELLED, Some("the workflow version is gone")).await;
        };
        let Some(mut contact) = self.store.get_contact(&tenant, &run.contact_id).await? else {
            return self.finish(&run, CANCELLED, Some("the contact was deleted")).await;
        };
        if let Some(goal) = self.goal_met(&program, &contact, &run).await? {
            return self.exit_on_goal(&run, &goal).await;
        }
        let trigger_event = match (&run.trigger_event_id, known) {
            (Some(id), Some(event)) if event.id == *id => Some(event),
            (Some(id), _) => self.store.get_event(&tenant, id).await?,
            (None, _) => None,
        };
        // Records of decision steps (if, split, a delay's end) wait here and
        // are saved with the next action, wait or end: repeating them after a
        // crash is harmless, while every action's outcome is saved before the
        // run goes on. One write transaction per action instead of per step.
        let mut pending: Vec<RunStep> = Vec::new();
        // The plugin call of the action step being saved (at most one: every
        // action is followed by a save).
        let mut calls: Vec<InvocationRecord> = Vec::new();
        // Every step runs at most once per run, so this bounds the loop even
        // if a stored cursor were somehow inconsistent.
        for _ in 0..=definition::MAX_STEPS {
            let Some(step_id) = run.cursor.clone() else {
                return self.finish(&run, COMPLETED, None).await;
            };
            let Some(node) = program.node(&step_id) else {
                let error = json!({"message": format!("step `{step_id}` is not in version {}", run.version)});
                self.count(&self.stats.runs_failed);
                return self.save(&run, FAILED, None, Some(error), None, &pending, &calls, false).await;
            };
            let now = self.clock.now();
            let started = std::time::Instant::now();
            let mut record = RunStep {
                id: store::new_id(),
                run_id: run.id.clone(),
                workflow_id: run.workflow_id.clone(),
                contact_id: run.contact_id.clone(),
                step_id: step_id.clone(),
                kind: node.step.kind().to_string(),
                status: "ok".into(),
                attempts: run.attempts + 1,
                input: None,
                output: None,
                error: None,
                started_at: now,
                finished_at: Some(now),
                duration_us: 0,
                fuel_used: None,
                invocation_id: None,
            };
            record.input = step_input(&node.step);
            let outcome = match &node.step {
                Step::Delay { .. } => self.delay(&mut run, &program, &step_id, now, &mut record).await,
                Step::If { condition, .. } => {
                    let facts = Facts {
                        contact: &contact,
                        now,
                        enrolled_at: Some(run.enrolled_at),
                        events: Events::Store(&self.store),
                    };
                    let holds = condition::holds(condition, &facts).await?;
                    let (then_first, else_first) = node.branches.clone().unwrap_or_default();
                    record.output = Some(json!({"branch": if holds { "then" } else { "else" }}));
                    Outcome::Next(if holds { then_first } else { else_first })
                }
                Step::Split { variants, .. } => {
                    let chosen = pick_variant(&variants.iter().map(|v| v.weight).collect::<Vec<_>>());
                    let name = variants.get(chosen).map(|v| v.name.clone()).unwrap_or_default();
                    if let Some(map) = run.variants.as_object_mut() {
                        map.insert(step_id.clone(), Json::String(name.clone()));
                    }
                    record.output = Some(json!({"variant": name}));
                    Outcome::Next(node.variants.get(chosen).cloned().flatten())
                }
                Step::Action { install_id, config, message, .. } => {
                    let key = format!("run:{}:{}", run.id, step_id);
                    let call = ActionCall {
                        config: config.as_ref(),
                        subject: message.as_ref().and_then(|m| m.subject.as_deref()),
                        body: message.as_ref().map(|m| m.body.as_str()),
                        idempotency_key: &key,
                    };
                    record.input = Some(
                        json!({"install_id": install_id, "config": config, "message": message, "idempotency_key": key}),
                    );
                    let outcome = self
                        .action(
                            &run,
                            &program,
                            install_id,
                            &contact,
                            trigger_event.as_ref(),
                            &call,
                            &mut record,
                            &mut calls,
                        )
                        .await;
                    // Only an install that may write can have changed the
                    // contact (owner, tags, …); later conditions and
                    // templates must see that, and its changes are events.
                    let wrote = self.registry.get(&tenant, install_id).is_some_and(|a| a.grants.store_write);
                    if matches!(outcome, Outcome::Next(_)) && wrote {
                        self.committed.notify_one();
                        if let Some(fresh) = self.store.get_contact(&tenant, &run.contact_id).await? {
                            contact = fresh;
                        }
                    }
                    outcome
                }
            };
            record.duration_us = started.elapsed().as_micros() as i64;
            // A step ends now, not when it began (an action's call may take
            // its whole deadline).
            record.finished_at = Some(self.clock.now());
            match outcome {
                Outcome::Next(next) => {
                    self.count(&self.stats.steps_ok);
                    let acted = record.kind == "action";
                    pending.push(record);
                    run.cursor = next;
                    run.attempts = 0;
                    let status = if run.cursor.is_some() { WAITING } else { COMPLETED };
                    if status == COMPLETED {
                        vacate();
                    }
                    if acted || status == COMPLETED {
                        self.save(&run, status, Some(now), None, None, &pending, &calls, status == WAITING).await?;
                        pending.clear();
                        calls.clear();
                    }
                    if status == COMPLETED {
                        self.count(&self.stats.runs_completed);
                        return Ok(());
                    }
                }
                Outcome::Wait(until) => {
                    if record.status == "retrying" {
                        run.attempts = record.attempts;
                    }
                    pending.push(record);
                    vacate();
                    return self.save(&run, WAITING, Some(until), None, None, &pending, &calls, false).await;
                }
                Outcome::Fail(error) => {
                    run.attempts = record.attempts;
                    self.count(&self.stats.runs_failed);
                    pending.push(record);
                    vacate();
                    return self.save(&run, FAILED, None, Some(error), None, &pending, &calls, false).await;
                }
            }
        }
        let error = json!({"message": "the run did not finish within the step limit"});
        self.count(&self.stats.runs_failed);
        self.save(&run, FAILED, None, Some(error), None, &pending, &calls, false).await
    }

    /// A delay: the first visit computes its end in the tenant's zone and
    /// waits; a visit at or after the end moves on.
    async fn delay(&self, run: &mut Run, program: &Program, step_id: &str, now: i64, record: &mut RunStep) -> Outcome {
        let state = run.state.as_object().cloned().unwrap_or_default();
        let pending = state.get("delay_step").and_then(Json::as_str) == Some(step_id);
        let until = state.get("delay_until").and_then(Json::as_i64);
        if let (true, Some(until)) = (pending, until) {
            if now >= until {
                run.state = json!({});
                record.output = Some(json!({"waited_until": until}));
                return Outcome::Next(program.node(step_id).and_then(|n| n.next.clone()));
            }
            record.status = "waiting".into();
            return Outcome::Wait(until);
        }
        let spec = match program.node(step_id).map(|n| definition::delay_of(&n.step)) {
            Some(Ok(spec)) => spec,
            _ => return Outcome::Fail(json!({"message": format!("step `{step_id}` is not a valid delay")})),
        };
        let zone = self.zone(&run.tenant_id).await;
        let until = time::delay_end(now, &spec, &zone);
        record.output = Some(json!({"until": until, "until_local": time::format_local(until, &zone)}));
        if until <= now {
            return Outcome::Next(program.node(step_id).and_then(|n| n.next.clone()));
        }
        run.state = json!({"delay_step": step_id, "delay_until": until});
        record.status = "waiting".into();
        Outcome::Wait(until)
    }

    /// An action step: call the install (its invocation record goes to
    /// `calls`); on failure, retry or fail.
    #[allow(clippy::too_many_arguments)]
    async fn action(
        &self,
        run: &Run,
        program: &Program,
        install_id: &str,
        contact: &Contact,
        trigger_event: Option<&store::Event>,
        call: &ActionCall<'_>,
        record: &mut RunStep,
        calls: &mut Vec<InvocationRecord>,
    ) -> Outcome {
        let next = program.node(&record.step_id).and_then(|n| n.next.clone());
        let result = match self.registry.get(&run.tenant_id, install_id) {
            None => Err(self.unavailable_install(&run.tenant_id, install_id).await),
            Some(active) if !active.install.enabled => {
                Err(step_error("disabled", format!("install `{install_id}` is disabled"), false))
            }
            Some(active) => {
                let scope = self.scope(&active, false);
                let prepared = actions::prepare(&active, contact, trigger_event, call);
                let invocation_id = store::new_id();
                let outcome = actions::call(self.registry.runtime(), &active, scope, &prepared, &invocation_id).await;
                match &outcome {
                    Ok(called) => self.registry.record_ok(&active, &called.stats),
                    Err(e) => self.registry.record_failure(&active, e).await,
                }
                let mut invocation = actions::invocation_record(
                    &active,
                    invocation_id.clone(),
                    &prepared,
                    outcome.as_ref(),
                    self.clock.now(),
                );
                invocation.event_id = run.trigger_event_id.clone();
                calls.push(invocation);
                record.invocation_id = Some(invocation_id);
                outcome.map_err(|e| {
                    record.fuel_used = Some(e.stats.fuel_used as i64);
                    let retryable = e.retryable;
                    (call_error_json(&e), retryable)
                })
            }
        };
        match result {
            Ok(called) => {
                record.fuel_used = Some(called.stats.fuel_used as i64);
                record.output = Some(called.value);
                Outcome::Next(next)
            }
            Err((error, retryable)) => {
                self.count(&self.stats.steps_failed);
                record.error = Some(error.clone());
                let policy = &program.definition.retry;
                let attempt = record.attempts;
                if retryable && attempt < i64::from(policy.max_attempts) {
                    let base = time::parse_duration(&policy.backoff).unwrap_or(30_000);
                    let wait = base.saturating_mul(1 << (attempt - 1).clamp(0, 20)).min(MAX_BACKOFF_MS);
                    record.status = "retrying".into();
                    tracing::info!(run = %run.id, step = %record.step_id, attempt, %error, "step failed, retrying in {wait} ms");
                    Outcome::Wait(record.started_at + wait)
                } else {
                    record.status = "failed".into();
                    Outcome::Fail(json!({"step": record.step_id, "attempts": attempt, "error": error}))
                }
            }
        }
    }

    /// Why an install a step names is not in the registry, as a step error
    /// `(error, retryable)`. The registry loads enabled installs only, so a
    /// disabled install is missing there too: the store tells "disabled"
    /// (the tenant can enable it and retry the run) from "not installed".
    pub(crate) async fn unavailable_install(&self, tenant: &str, install_id: &str) -> (Json, bool) {
        match self.store.get_install(tenant, install_id).await {
            Ok(Some(install)) if !install.enabled => {
                step_error("disabled", format!("install `{install_id}` ({}) is disabled", install.plugin_name), false)
            }
            Ok(_) => step_error("not-installed", format!("install `{install_id}` is not installed"), false),
            // Not knowing is not "not installed": try again later. The
            // database's words go to the log, not into the run's record.
            Err(e) => {
                tracing::warn!(install = %install_id, "looking up an install failed: {e}");
                step_error("store", format!("install `{install_id}` could not be looked up"), true)
            }
        }
    }

    pub(crate) fn scope(&self, active: &crate::registry::ActiveInstall, test_mode: bool) -> CallScope {
        CallScope { test_mode, ..active.scope(&self.store, self.registry.runtime(), self.clock.now()) }
    }

    /// The first goal of the run's version that `contact` meets.
    pub(crate) async fn goal_met(
        &self,
        program: &Program,
        contact: &Contact,
        run: &Run,
    ) -> Result<Option<String>, StoreError> {
        let facts = Facts {
            contact,
            now: self.clock.now(),
            enrolled_at: Some(run.enrolled_at),
            events: Events::Store(&self.store),
        };
        for goal in &program.definition.goals {
            if condition::holds(&goal.condition, &facts).await? {
                return Ok(Some(goal.id.clone()));
            }
        }
        Ok(None)
    }

    /// Goals are checked whenever a run wakes; this makes a waiting run
    /// wake *now* when new events of its contact met one of its goals (e.g.
    /// "a deal was created" during a five-day delay), so it ends at once
    /// instead of when its timer fires. The runner does the ending: it holds
    /// the run's claim, so nothing races with a step in progress.
    pub async fn check_goals(&self, tenant: &str, contact_ids: &[String]) -> Result<(), StoreError> {
        let runs = self.store.in_flight_runs(tenant, contact_ids).await?;
        let now = self.clock.now();
        let mut woke = false;
        for run in runs.iter().filter(|r| r.wake_at.is_some_and(|w| w > now)) {
            let Some(program) = self.program(tenant, &run.workflow_id, run.version).await? else { continue };
            if program.definition.goals.is_empty() {
                continue;
            }
            let Some(contact) = self.store.get_contact(tenant, &run.contact_id).await? else { continue };
            if self.goal_met(&program, &contact, run).await?.is_some() {
                woke |= self.store.wake_run(tenant, &run.id, now).await?;
            }
        }
        if woke {
            self.wake();
        }
        Ok(())
    }

    pub(crate) async fn exit_on_goal(&self, run: &Run, goal: &str) -> Result<(), StoreError> {
        self.count(&self.stats.goals_met);
        self.finish(run, EXITED, Some(&format!("goal:{goal}"))).await
    }

    /// End `run` without a step of its own (completed, cancelled, exited).
    async fn finish(&self, run: &Run, status: &str, reason: Option<&str>) -> Result<(), StoreError> {
        self.save(run, status, None, None, reason, &[], &[], false).await
    }

    /// Save where `run` got to with the step records and plugin calls since
    /// the last save, in one transaction. With `going_on` (an action's
    /// outcome saved, the next step next) the run keeps its lease: no
    /// claim may take it while this worker still advances it.
    #[allow(clippy::too_many_arguments)]
    async fn save(
        &self,
        run: &Run,
        status: &str,
        wake_at: Option<i64>,
        error: Option<Json>,
        exit_reason: Option<&str>,
        steps: &[RunStep],
        calls: &[InvocationRecord],
        going_on: bool,
    ) -> Result<(), StoreError> {
        let waiting = status == WAITING;
        let progress = RunProgress {
            run_id: run.id.clone(),
            tenant_id: run.tenant_id.clone(),
            status: status.to_string(),
            cursor: if waiting { run.cursor.clone() } else { run.cursor.clone().filter(|_| status == FAILED) },
            wake_at: if waiting { wake_at } else { None },
            attempts: if waiting || status == FAILED { run.attempts } else { 0 },
            variants: run.variants.clone(),
            state: run.state.clone(),
            error,
            exit_reason: exit_reason.map(str::to_string),
            at: self.clock.now(),
        };
        self.store.save_run_progress(&progress, steps, calls, going_on).await?;
        Ok(())
    }
}

/// What a step was asked to do, for its record (an action's input is its
/// call, filled in where it is made).
fn step_input(step: &Step) -> Option<Json> {
    match step {
        Step::Action { .. } => None,
        Step::Delay { duration, business_days, until, weekdays_only, .. } => Some(
            json!({"duration": duration, "business_days": business_days, "until": until, "weekdays_only": weekdays_only}),
        ),
        Step::If { condition, .. } => Some(json!({"condition": condition})),
        Step::Split { variants, .. } => Some(json!({
            "variants": variants.iter().map(|v| json!({"name": v.name, "weight": v.weight})).collect::<Vec<_>>()
        })),
    }
}

fn step_error(cause: &str, message: String, retryable: bool) -> (Json, bool) {
    (json!({"cause": cause, "message": message, "retryable": retryable}), retryable)
}

fn call_error_json(e: &CallError) -> Json {
    let cause = match e.cause {
        FailureCause::Plugin => "plugin",
        other => other.as_str(),
    };
    json!({"cause": cause, "message": e.message, "retryable": e.retryable})
}

/// A variant index by weight.
pub fn pick_variant(weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return 0;
    }
    let mut roll = rand::random_range(0..total);
    for (i, w) in weights.iter().enumerate() {
        if roll < u64::from(*w) {
            return i;
        }
        roll -= u64::from(*w);
    }
    weights.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_picked_in_proportion_to_their_weights() {
        let mut counts = [0u32; 2];
        for _ in 0..10_000 {
            counts[pick_variant(&[1, 3])] += 1;
        }
        // 2500 expected for the first; far outside chance if the weights were ignored.
        assert!((2000..3000).contains(&counts[0]), "{counts:?}");
        assert_eq!(pick_variant(&[0, 0]), 0);
        assert_eq!(pick_variant(&[5]), 0);
    }
}
