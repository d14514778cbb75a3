//! Which contacts enroll in which workflows, and enrolling them.
//!
//! The pipeline asks [`match_events`] which of the tenant's active
//! workflows a contact's batch of events triggers (built-in triggers are
//! evaluated natively; plugin triggers are called by the pipeline, which
//! already holds the contact's history). Schedules fire from the runner's
//! loop. Either way the result is a [`Candidate`] with an *enrollment key*
//! derived from what caused it (`event:<event id>`, `score:<event id>`,
//! `trigger:<install>:<event id>:<contact id>`,
//! `schedule:<time>:<contact id>`), so processing the same events twice, or
//! firing the same schedule twice, after a crash, never enrolls twice: the
//! store refuses a key it has seen for the workflow.
//!
//! Enrollment rules are checked in the store, in one transaction with the
//! insert: no two in-flight runs of one workflow for one contact; no second
//! run unless `reenroll`; not sooner than `min_interval`; and never more
//! than `max_per_day` in 24 hours, which stops a workflow whose own actions
//! re-trigger it.

use std::sync::Arc;

use super::condition::{self, Events, Facts};
use super::definition::{self, Trigger};
use super::{ActiveWorkflow, Workflows, time};
use crate::store::{Contact, ContactFilter, EnrollOutcome, Enrollment, Event, StoreError, Value};

/// Contacts read per page when a schedule fires.
const SEGMENT_PAGE: u32 = 500;
/// Schedules fired per round.
const SCHEDULES_PER_ROUND: i64 = 16;

/// A reason for a contact to enroll in a workflow.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The workflow.
    pub workflow: Arc<ActiveWorkflow>,
    /// What caused it; the store enrolls once per key.
    pub key: String,
    /// The event that triggered it, handed to the run's action steps.
    pub trigger_event_id: Option<String>,
}

/// The workflows a contact's events trigger. `score` is the batch's score
/// change (before, after), when there was one.
pub fn match_events(workflows: &[Arc<ActiveWorkflow>], events: &[Event], score: Option<(f64, f64)>) -> Vec<Candidate> {
    let mut out = Vec::new();
    for wf in workflows {
        match &wf.program.definition.trigger {
            Trigger::Event { kind, filter } => {
                for e in events.iter().filter(|e| &e.kind == kind) {
                    if filter.iter().all(|(name, expected)| e.properties.get(name) == Some(expected)) {
                        out.push(candidate(wf, format!("event:{}", e.id), Some(&e.id)));
                    }
                }
            }
            Trigger::PropertyChanged { name, to, crosses_above, crosses_below } => {
                for e in events {
                    let Some((from, now)) = property_change(e, name) else { continue };
                    let fires = match (to, crosses_above, crosses_below) {
                        (Some(to), _, _) => condition::compare(now, definition::Op::Eq, Some(to)),
                        (_, Some(n), _) => number(from).is_none_or(|f| f < *n) && number(now).is_some_and(|t| t >= *n),
                        (_, _, Some(n)) => number(from).is_some_and(|f| f >= *n) && number(now).is_none_or(|t| t < *n),
                        _ => true,
                    };
                    if fires {
                        out.push(candidate(wf, format!("event:{}", e.id), Some(&e.id)));
                    }
                }
            }
            Trigger::Score { crosses_above, crosses_below } => {
                let (Some((before, after)), Some(last)) = (score, events.last()) else { continue };
                let fires = match (crosses_above, crosses_below) {
                    (Some(n), _) => before < *n && after >= *n,
                    (_, Some(n)) => before >= *n && after < *n,
                    _ => false,
                };
                if fires {
                    out.push(candidate(wf, format!("score:{}", last.id), Some(&last.id)));
                }
            }
            Trigger::Schedule { .. } | Trigger::Plugin { .. } => {}
        }
    }
    out
}

/// The workflows that trigger install `install_id` starts.
pub fn plugin_triggered(workflows: &[Arc<ActiveWorkflow>], install_id: &str) -> Vec<Arc<ActiveWorkflow>> {
    workflows
        .iter()
        .filter(|wf| matches!(&wf.program.definition.trigger, Trigger::Plugin { install_id: i } if i == install_id))
        .cloned()
        .collect()
}

/// A candidate for `wf`.
pub fn candidate(wf: &Arc<ActiveWorkflow>, key: String, event: Option<&String>) -> Candidate {
    Candidate { workflow: wf.clone(), key, trigger_event_id: event.cloned() }
}

/// (from, to) when `e` records a change of property `name`.
fn property_change<'e>(e: &'e Event, name: &str) -> Option<(Option<&'e Value>, Option<&'e Value>)> {
    let relevant = match e.kind.as_str() {
        "property_changed" => e.properties.get("name") == Some(&Value::Text(name.to_string())),
        "lifecycle_stage_changed" => name == "lifecycle_stage",
        _ => false,
    };
    let present = |v: Option<&'e Value>| v.filter(|v| **v != Value::Null);
    relevant.then(|| (present(e.properties.get("from")), present(e.properties.get("to"))))
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v {
        Some(Value::Number(n)) => Some(*n),
        _ => None,
    }
}

impl Workflows {
    /// Enroll `contact` for each candidate that passes its workflow's
    /// suppression condition and enrollment rules. Returns how many enrolled.
    pub async fn enroll(&self, tenant: &str, contact: &Contact, candidates: &[Candidate]) -> Result<usize, StoreError> {
        let requests = self.enrollments(tenant, contact, candidates).await?;
        if requests.is_empty() {
            return Ok(0);
        }
        let outcomes = self.store.enroll(&requests).await?;
        Ok(self.record_outcomes(requests.iter().zip(outcomes.iter().map(Some))))
    }

    /// The enrollment requests for `contact`: every candidate whose
    /// workflow's `suppress_if` does not hold for the contact as given (the
    /// pipeline passes it as its batch will write it). The store applies the
    /// remaining rules when it records them.
    pub async fn enrollments(
        &self,
        tenant: &str,
        contact: &Contact,
        candidates: &[Candidate],
    ) -> Result<Vec<Enrollment>, StoreError> {
        let now = self.clock.now();
        let facts = Facts { contact, now, enrolled_at: None, events: Events::Store(&self.store) };
        let mut requests = Vec::with_capacity(candidates.len());
        for c in candidates {
            let rules = &c.workflow.program.definition.enrollment;
            if let Some(suppress) = &rules.suppress_if
                && condition::holds(suppress, &facts).await?
            {
                self.count(&self.stats.enroll_refused);
                continue;
            }
            requests.push(Enrollment {
                tenant_id: tenant.to_string(),
                workflow_id: c.workflow.id.clone(),
                version: c.workflow.version,
                contact_id: contact.id.clone(),
                first_step: c.workflow.program.first.clone(),
                trigger_event_id: c.trigger_event_id.clone(),
                enrollment_key: c.key.clone(),
                reenroll: rules.reenroll,
                min_interval_ms: rules.min_interval.as_deref().and_then(|i| time::parse_duration(i).ok()),
                max_per_day: i64::from(rules.max_per_day.unwrap_or(definition::DEFAULT_MAX_ENROLLMENTS_PER_DAY)),
                at: now,
            });
        }
        Ok(requests)
    }

    /// Count what the store decided and wake the runner for new runs.
    /// Returns how many enrolled.
    pub fn record_outcomes<'a>(
        &self,
        decided: impl Iterator<Item = (&'a Enrollment, Option<&'a EnrollOutcome>)>,
    ) -> usize {
        let enrolled = self.count_outcomes(decided);
        if enrolled > 0 {
            self.wake();
        }
        enrolled
    }

    /// Count what the store decided; how many enrolled.
    pub fn count_outcomes<'a>(
        &self,
        decided: impl Iterator<Item = (&'a Enrollment, Option<&'a EnrollOutcome>)>,
    ) -> usize {
        let mut enrolled = 0;
        for (request, outcome) in decided {
            match outcome {
                Some(EnrollOutcome::Enrolled(_)) => enrolled += 1,
                Some(EnrollOutcome::Duplicate) | None => {}
                Some(refused) => {
                    self.count(&self.stats.enroll_refused);
                    tracing::debug!(workflow = %request.workflow_id, contact = %request.contact_id, "not enrolled: {refused:?}");
                }
            }
        }
        self.stats.enrolled.fetch_add(enrolled as u64, std::sync::atomic::Ordering::Relaxed);
        enrolled
    }

    /// Fire the schedules that are due: every contact in the segment
    /// enrolls; the next firing is set from now in the tenant's zone.
    pub(crate) async fn fire_schedules(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let due = self.store.claim_due_schedules(now, SCHEDULES_PER_ROUND).await?;
        for (tenant, workflow) in &due {
            let fired_at = workflow.next_fire_at.unwrap_or(now);
            let program = match workflow.active_version {
                Some(v) => self.program(tenant, &workflow.id, v).await?,
                None => None,
            };
            let Some(program) = program else {
                self.store.set_next_fire(tenant, &workflow.id, None).await?;
                continue;
            };
            let Trigger::Schedule { segment, .. } = &program.definition.trigger else {
                self.store.set_next_fire(tenant, &workflow.id, None).await?;
                continue;
            };
            let active = Arc::new(ActiveWorkflow {
                id: workflow.id.clone(),
                version: workflow.active_version.unwrap_or_default(),
                program: program.clone(),
            });
            let mut cursor: Option<String> = None;
            let mut enrolled = 0;
            loop {
                let page = self
                    .store
                    .list_contacts(tenant, &ContactFilter::default(), cursor.as_deref(), SEGMENT_PAGE)
                    .await?;
                for contact in &page.items {
                    let facts = Facts { contact, now, enrolled_at: None, events: Events::Store(&self.store) };
                    if condition::holds(segment, &facts).await? {
                        // Keys are unique per workflow, not per contact: the
                        // key names the contact, or only the first would enroll.
                        let key = format!("schedule:{fired_at}:{}", contact.id);
                        enrolled += self.enroll(tenant, contact, &[candidate(&active, key, None)]).await?;
                    }
                }
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            let next = match definition::schedule_of(&program.definition.trigger) {
                Ok(spec) => Some(time::next_fire(now, &spec, &self.zone(tenant).await)),
                Err(_) => None,
            };
            tracing::info!(workflow = %workflow.id, enrolled, next_fire_at = ?next, "schedule fired");
            self.store.set_next_fire(tenant, &workflow.id, next).await?;
        }
        Ok(due.len())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::workflows::program::Program;

    fn workflow(trigger: serde_json::Value) -> Arc<ActiveWorkflow> {
        let d = definition::parse(&json!({
            "name": "w", "trigger": trigger, "steps": [{"id": "a", "type": "delay", "duration": "1d"}]
        }))
        .unwrap();
        Arc::new(ActiveWorkflow { id: "w1".into(), version: 1, program: Arc::new(Program::compile(d)) })
    }

    fn event(id: &str, kind: &str, props: serde_json::Value) -> Event {
        Event {
            id: id.into(),
            contact_id: "c".into(),
            kind: kind.into(),
            occurred_at: 0,
            properties: serde_json::from_value(props).unwrap(),
            received_at: 0,
            processed: false,
        }
    }

    #[test]
    fn event_triggers_match_kind_and_filter_once_per_event() {
        let wf = workflow(json!({"type": "event", "kind": "page_viewed", "where": {"url": "/pricing"}}));
        let events = [
            event("e1", "page_viewed", json!({"url": "/pricing"})),
            event("e2", "page_viewed", json!({"url": "/blog"})),
            event("e3", "email_opened", json!({})),
        ];
        let c = match_events(&[wf], &events, None);
        assert_eq!(c.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["event:e1"]);
    }

    #[test]
    fn property_triggers_fire_on_the_change_they_name() {
        let to_mql = workflow(json!({"type": "property_changed", "name": "lifecycle_stage", "to": "mql"}));
        let drop = workflow(json!({"type": "property_changed", "name": "health", "crosses_below": 40}));
        let events = [
            event("e1", "lifecycle_stage_changed", json!({"from": "lead", "to": "mql"})),
            event("e2", "property_changed", json!({"name": "health", "from": 55, "to": 30})),
            event("e3", "property_changed", json!({"name": "health", "from": 30, "to": 20})),
        ];
        assert_eq!(match_events(&[to_mql], &events, None).len(), 1);
        let c = match_events(&[drop], &events, None);
        assert_eq!(c.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["event:e2"]);
    }

    #[test]
    fn score_triggers_fire_on_the_crossing_only() {
        let wf = workflow(json!({"type": "score", "crosses_above": 50}));
        let events = [event("e1", "email_clicked", json!({}))];
        assert_eq!(match_events(std::slice::from_ref(&wf), &events, Some((40.0, 55.0))).len(), 1);
        assert!(match_events(std::slice::from_ref(&wf), &events, Some((55.0, 60.0))).is_empty());
        assert!(match_events(&[wf], &events, None).is_empty());
    }
}
