//! A dry run: walk a workflow version on one contact, now, with delays
//! skipped and every plugin called in test mode (the plugin is told it is a
//! test; the host keeps none of its store writes and sends no HTTP), and
//! report the path taken. Nothing is recorded: no run, no step, no event.
//!
//! The contact is an existing one (read, never changed) or an inline sample
//! that exists only for the walk; sample events stand in for the contact's
//! history in `event` conditions.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::condition::{self, Events, Facts};
use super::definition::{self, Step};
use super::program::Program;
use super::runner::pick_variant;
use super::{Workflows, time};
use crate::engine::actions::{self, ActionCall};
use crate::store::{self, Contact, Event, NewContact, Properties, StoreError};

/// Id an inline sample contact gets.
pub const SAMPLE_CONTACT_ID: &str = "sample-contact";

/// An event a sample contact "had" since enrolling.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleEvent {
    /// Kind.
    pub kind: String,
    /// Properties.
    #[serde(default)]
    pub properties: Properties,
}

/// What to walk and on whom.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// Version (default: the active one, else the latest).
    #[serde(default)]
    pub version: Option<i64>,
    /// An existing contact.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// Or an inline sample.
    #[serde(default)]
    pub contact: Option<NewContact>,
    /// Events of the inline sample.
    #[serde(default)]
    pub events: Vec<SampleEvent>,
    /// Force the variant of every split by name (default: by weight).
    #[serde(default)]
    pub variant: Option<String>,
}

/// One step of the path.
#[derive(Clone, Debug, Serialize)]
pub struct PathStep {
    /// Step id.
    pub step_id: String,
    /// Step type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What happened (branch, variant, the plugin's output, the skipped wait).
    pub result: Json,
    /// The error, when the step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Json>,
    /// Time in the plugin, µs (action steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// Fuel used (action steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel_used: Option<u64>,
}

/// The walk's result.
#[derive(Clone, Debug, Serialize)]
pub struct DryRun {
    /// Version walked.
    pub version: i64,
    /// The contact (the sample's id for an inline one).
    pub contact_id: String,
    /// `completed`, `failed` or `exited` (a goal was met).
    pub outcome: &'static str,
    /// The goal that ended it, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    /// Whether the contact would be suppressed by the enrollment rules.
    pub suppressed: bool,
    /// The steps taken, in order.
    pub path: Vec<PathStep>,
}

/// Why a dry run could not start.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    /// Bad request (named field).
    #[error("{0}")]
    Invalid(String),
    /// The contact does not exist.
    #[error("contact `{0}` does not exist")]
    UnknownContact(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The sample is treated as enrolled now: `event` conditions see every
/// sample event (or, for a stored contact, its events from now on).
fn facts<'a>(contact: &'a Contact, now: i64, events: &Events<'a>) -> Facts<'a> {
    Facts { contact, now, enrolled_at: Some(now), events: events.clone() }
}

impl Workflows {
    /// Walk `program` (version `version`) on the request's contact.
    pub async fn dry_run(
        self: &Arc<Self>,
        tenant: &str,
        version: i64,
        program: &Program,
        request: &DryRunRequest,
    ) -> Result<DryRun, DryRunError> {
        let now = self.clock.now();
        let (contact, sample_events) = self.sample(tenant, request, now).await?;
        let events = match &sample_events {
            Some(list) => Events::List(list),
            None => Events::Store(&self.store),
        };
        let mut result = DryRun {
            version,
            contact_id: contact.id.clone(),
            outcome: "completed",
            goal: None,
            suppressed: false,
            path: Vec::new(),
        };
        if let Some(suppress) = &program.definition.enrollment.suppress_if {
            result.suppressed = condition::holds(suppress, &facts(&contact, now, &events)).await?;
        }
        let mut cursor = program.first.clone();
        while let Some(step_id) = cursor.take() {
            for goal in &program.definition.goals {
                if condition::holds(&goal.condition, &facts(&contact, now, &events)).await? {
                    result.outcome = "exited";
                    result.goal = Some(goal.id.clone());
                    return Ok(result);
                }
            }
            let Some(node) = program.node(&step_id) else { break };
            let mut step = PathStep {
                step_id: step_id.clone(),
                kind: node.step.kind(),
                result: Json::Null,
                error: None,
                duration_us: None,
                fuel_used: None,
            };
            cursor = node.next.clone();
            match &node.step {
                Step::Delay { .. } => {
                    let zone = self.zone(tenant).await;
                    let until = definition::delay_of(&node.step).map(|spec| time::delay_end(now, &spec, &zone)).ok();
                    step.result = json!({"skipped": true, "would_wait_until": until,
                        "would_wait_until_local": until.map(|u| time::format_local(u, &zone))});
                }
                Step::If { condition, .. } => {
                    let holds = condition::holds(condition, &facts(&contact, now, &events)).await?;
                    let (then_first, else_first) = node.branches.clone().unwrap_or_default();
                    cursor = if holds { then_first } else { else_first };
                    step.result = json!({"branch": if holds { "then" } else { "else" }});
                }
                Step::Split { variants, .. } => {
                    let forced =
                        request.variant.as_ref().and_then(|name| variants.iter().position(|v| &v.name == name));
                    let chosen =
                        forced.unwrap_or_else(|| pick_variant(&variants.iter().map(|v| v.weight).collect::<Vec<_>>()));
                    cursor = node.variants.get(chosen).cloned().flatten();
                    step.result = json!({"variant": variants.get(chosen).map(|v| v.name.as_str())});
                }
                Step::Action { install_id, config, message, .. } => {
                    let key = format!("dry-run:{step_id}");
                    let call = ActionCall {
                        config: config.as_ref(),
                        subject: message.as_ref().and_then(|m| m.subject.as_deref()),
                        body: message.as_ref().map(|m| m.body.as_str()),
                        idempotency_key: &key,
                    };
                    match self.registry.get(tenant, install_id) {
                        None => step.error = Some(self.unavailable_install(tenant, install_id).await.0),
                        Some(active) if !active.install.enabled => {
                            step.error = Some(
                                json!({"cause": "disabled", "message": format!("install `{install_id}` is disabled")}),
                            )
                        }
                        Some(active) => {
                            let mut scope = self.scope(&active, true);
                            if sample_events.is_some() {
                                scope.test_contact = Some(contact.id.clone());
                            }
                            // A dry run is not recorded: a throwaway invocation id.
                            let prepared = actions::prepare(&active, &contact, None, &call);
                            let invocation_id = store::new_id();
                            let runtime = self.registry.runtime();
                            match actions::call(runtime, &active, scope, &prepared, &invocation_id).await {
                                Ok(called) => {
                                    step.result = called.value;
                                    step.duration_us = Some(called.stats.duration_us);
                                    step.fuel_used = Some(called.stats.fuel_used);
                                }
                                Err(e) => {
                                    step.error = Some(
                                        json!({"cause": e.cause.as_str(), "message": e.message, "retryable": e.retryable}),
                                    );
                                    step.duration_us = Some(e.stats.duration_us);
                                    step.fuel_used = Some(e.stats.fuel_used);
                                }
                            }
                        }
                    }
                    if step.error.is_some() {
                        result.outcome = "failed";
                        result.path.push(step);
                        return Ok(result);
                    }
                }
            }
            result.path.push(step);
        }
        Ok(result)
    }

    /// The contact to walk on, and the sample's events (None: read the store).
    async fn sample(
        &self,
        tenant: &str,
        request: &DryRunRequest,
        now: i64,
    ) -> Result<(Contact, Option<Vec<Event>>), DryRunError> {
        match (&request.contact_id, &request.contact) {
            (Some(id), None) => match self.store.get_contact(tenant, id).await? {
                Some(c) => Ok((c, None)),
                None => Err(DryRunError::UnknownContact(id.clone())),
            },
            (None, Some(new)) => {
                let contact = Contact {
                    id: SAMPLE_CONTACT_ID.into(),
                    tenant_id: tenant.into(),
                    email: new.email.clone(),
                    phone: new.phone.clone(),
                    first_name: new.first_name.clone(),
                    last_name: new.last_name.clone(),
                    owner: new.owner.clone(),
                    lifecycle_stage: new.lifecycle_stage.clone().unwrap_or_else(|| store::DEFAULT_STAGE.to_string()),
                    score: new.score.unwrap_or(0.0),
                    tags: new.tags.clone(),
                    properties: new.properties.clone(),
                    company_id: new.company_id.clone(),
                    created_at: now,
                    updated_at: now,
                    last_activity_at: None,
                };
                let events = request
                    .events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| Event {
                        id: format!("sample-event-{i}"),
                        contact_id: SAMPLE_CONTACT_ID.into(),
                        kind: e.kind.clone(),
                        occurred_at: now,
                        properties: e.properties.clone(),
                        received_at: now,
                        processed: true,
                    })
                    .collect();
                Ok((contact, Some(events)))
            }
            _ => Err(DryRunError::Invalid("give exactly one of `contact_id` and `contact`".into())),
        }
    }
}
