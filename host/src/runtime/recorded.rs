//! A plugin call as data: what an export was given, kept with the
//! invocation record so it can be fetched and replayed against another
//! build (`cairn plugin replay`), and the format of the fixtures `cairn
//! plugin test` runs.
//!
//! The shapes are the API's (a contact as `GET /v1/contacts/{id}` shows it,
//! events as the timeline shows them), not the WIT records, so a developer
//! can write a fixture by hand or save a fetched invocation as one. Every
//! field but the ones an export cannot do without has a default.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::runtime::bindings::{guest, types as wit};
use crate::runtime::invoke::{Called, ProjectedInput};
use crate::runtime::{CallError, CallScope, LoadedPlugin, Runtime, convert};
use crate::store::{self, Properties};

/// One call of one export, with everything it was given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "export", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RecordedCall {
    /// `scorer.score`.
    Score {
        /// The install's config.
        #[serde(default = "empty_object")]
        config: Json,
        /// The contact, as projected for the plugin.
        #[serde(default)]
        contact: RecordedContact,
        /// Its events, newest first.
        #[serde(default)]
        events: Vec<RecordedEvent>,
    },
    /// `trigger.on-event`.
    OnEvent {
        /// The install's config.
        #[serde(default = "empty_object")]
        config: Json,
        /// The contact the event is about.
        #[serde(default)]
        contact: RecordedContact,
        /// The event offered.
        event: RecordedEvent,
        /// Earlier events, newest first.
        #[serde(default)]
        history: Vec<RecordedEvent>,
    },
    /// `action.execute`.
    Execute {
        /// The install's config with the step's laid over it.
        #[serde(default = "empty_object")]
        config: Json,
        /// The contact.
        #[serde(default)]
        contact: RecordedContact,
        /// The event that started the run, if any.
        #[serde(default)]
        trigger_event: Option<RecordedEvent>,
        /// The step's idempotency key.
        #[serde(default = "fixture_key")]
        idempotency_key: String,
    },
    /// `channel.send`.
    Send {
        /// The install's config with the step's laid over it.
        #[serde(default = "empty_object")]
        config: Json,
        /// The recipient.
        #[serde(default)]
        contact: RecordedContact,
        /// The rendered subject.
        #[serde(default)]
        subject: Option<String>,
        /// The rendered body.
        #[serde(default)]
        body: String,
        /// Extra message properties.
        #[serde(default)]
        properties: Properties,
        /// The step's idempotency key.
        #[serde(default = "fixture_key")]
        idempotency_key: String,
    },
    /// `channel.parse-inbound`.
    ParseInbound {
        /// The install's config.
        #[serde(default = "empty_object")]
        config: Json,
        /// The callback path after `/inbound`.
        #[serde(default)]
        path: String,
        /// The request headers.
        #[serde(default)]
        headers: Vec<(String, String)>,
        /// The request body (UTF-8; other bytes are replaced).
        #[serde(default)]
        body: String,
    },
}

fn empty_object() -> Json {
    Json::Object(serde_json::Map::new())
}

fn fixture_key() -> String {
    "fixture:1".to_string()
}

/// A contact as a call saw it. Only `id` matters to most plugins; the rest
/// default to empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordedContact {
    /// Contact id.
    pub id: String,
    /// Email.
    pub email: Option<String>,
    /// Phone.
    pub phone: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Owner.
    pub owner: Option<String>,
    /// Lifecycle stage (`lead` when left out).
    pub lifecycle_stage: Option<String>,
    /// Score.
    pub score: f64,
    /// Tags.
    pub tags: Vec<String>,
    /// Custom properties.
    pub properties: Properties,
}

/// An event as a call saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordedEvent {
    /// Event id.
    pub id: String,
    /// The contact (the call's contact when left out).
    pub contact_id: String,
    /// What happened.
    pub kind: String,
    /// When, epoch ms.
    pub occurred_at: i64,
    /// Details.
    pub properties: Properties,
}

impl RecordedContact {
    /// The contact `plugin` would be given: custom properties cut to the
    /// ones it declared in `reads` (`None`: all).
    pub fn from_store(c: &store::Contact, only: Option<&[String]>) -> RecordedContact {
        let properties = match only {
            None => c.properties.clone(),
            Some(names) => names.iter().filter_map(|n| c.properties.get(n).map(|v| (n.clone(), v.clone()))).collect(),
        };
        RecordedContact {
            id: c.id.clone(),
            email: c.email.clone(),
            phone: c.phone.clone(),
            first_name: c.first_name.clone(),
            last_name: c.last_name.clone(),
            owner: c.owner.clone(),
            lifecycle_stage: Some(c.lifecycle_stage.clone()),
            score: c.score,
            tags: c.tags.clone(),
            properties,
        }
    }

    /// As a store contact of `tenant` (times unknown: zero).
    pub fn to_store(&self, tenant: &str) -> store::Contact {
        store::Contact {
            id: self.id.clone(),
            tenant_id: tenant.to_string(),
            email: self.email.clone(),
            phone: self.phone.clone(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            owner: self.owner.clone(),
            lifecycle_stage: self.lifecycle_stage.clone().unwrap_or_else(|| "lead".to_string()),
            score: self.score,
            tags: self.tags.clone(),
            properties: self.properties.clone(),
            company_id: None,
            created_at: 0,
            updated_at: 0,
            last_activity_at: None,
        }
    }

    fn to_wit(&self) -> wit::Contact {
        convert::contact_to_wit(&self.to_store(""), None)
    }
}

impl RecordedEvent {
    /// An event as recorded.
    pub fn from_store(e: &store::Event) -> RecordedEvent {
        RecordedEvent {
            id: e.id.clone(),
            contact_id: e.contact_id.clone(),
            kind: e.kind.clone(),
            occurred_at: e.occurred_at,
            properties: e.properties.clone(),
        }
    }

    fn to_wit(&self, contact_id: &str) -> wit::Event {
        wit::Event {
            id: self.id.clone(),
            contact_id: if self.contact_id.is_empty() { contact_id.to_string() } else { self.contact_id.clone() },
            kind: self.kind.clone(),
            occurred_at: self.occurred_at,
            properties: convert::properties_to_wit(&self.properties, None),
        }
    }
}

impl RecordedCall {
    /// The export's name as recorded (`score`, `on-event`, `execute`, `send`,
    /// `parse-inbound`).
    pub fn export(&self) -> &'static str {
        match self {
            RecordedCall::Score { .. } => "score",
            RecordedCall::OnEvent { .. } => "on-event",
            RecordedCall::Execute { .. } => "execute",
            RecordedCall::Send { .. } => "send",
            RecordedCall::ParseInbound { .. } => "parse-inbound",
        }
    }

    /// The contact the call was about, if any.
    pub fn contact(&self) -> Option<&RecordedContact> {
        match self {
            RecordedCall::Score { contact, .. }
            | RecordedCall::OnEvent { contact, .. }
            | RecordedCall::Execute { contact, .. }
            | RecordedCall::Send { contact, .. } => Some(contact),
            RecordedCall::ParseInbound { .. } => None,
        }
    }

    /// A scorer call as the pipeline makes it: `input` already projected.
    pub fn score(config: &str, contact: &store::Contact, events: &[store::Event], plugin: &LoadedPlugin) -> Self {
        let reads = &plugin.description.reads;
        RecordedCall::Score {
            config: parse_config(config),
            contact: RecordedContact::from_store(contact, Some(&reads.contact_properties)),
            events: projected_events(events, plugin).map(RecordedEvent::from_store).collect(),
        }
    }

    /// A trigger call as the pipeline makes it.
    pub fn on_event(
        config: &str,
        contact: &store::Contact,
        event: &store::Event,
        history: &[store::Event],
        plugin: &LoadedPlugin,
    ) -> Self {
        let reads = &plugin.description.reads;
        RecordedCall::OnEvent {
            config: parse_config(config),
            contact: RecordedContact::from_store(contact, Some(&reads.contact_properties)),
            event: RecordedEvent::from_store(event),
            history: projected_events(history, plugin).map(RecordedEvent::from_store).collect(),
        }
    }
}

fn projected_events<'a>(events: &'a [store::Event], plugin: &LoadedPlugin) -> impl Iterator<Item = &'a store::Event> {
    let reads = &plugin.description.reads;
    events
        .iter()
        .filter(|e| reads.event_kinds.is_empty() || reads.event_kinds.contains(&e.kind))
        .take(reads.max_events as usize)
}

/// Config text as JSON (text that is not JSON is kept as a string).
pub fn parse_config(config: &str) -> Json {
    serde_json::from_str(config).unwrap_or_else(|_| Json::String(config.to_string()))
}

fn config_text(config: &Json) -> String {
    match config {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn properties_json(props: Vec<wit::Property>) -> Json {
    serde_json::to_value(convert::properties_from_wit(props)).unwrap_or(Json::Null)
}

impl Runtime {
    /// Make `call` against `plugin` under the runtime's limits, and give its
    /// result as JSON: what `cairn plugin test` and `cairn plugin replay`
    /// print, and what a fixture's `expect` is compared with.
    pub async fn call_recorded(
        &self,
        plugin: &LoadedPlugin,
        scope: CallScope,
        call: &RecordedCall,
        invocation_id: &str,
    ) -> Result<Called<Json>, CallError> {
        fn json<T>(called: Called<T>, f: impl FnOnce(T) -> Json) -> Called<Json> {
            Called { value: f(called.value), stats: called.stats }
        }
        match call {
            RecordedCall::Score { config, contact, events } => {
                let input = ProjectedInput {
                    contact: contact.to_wit(),
                    events: events.iter().map(|e| e.to_wit(&contact.id)).collect(),
                };
                let called = self.score(plugin, scope, &config_text(config), input, invocation_id).await?;
                Ok(json(called, |s| serde_json::json!({"score": s.value, "reasons": s.reasons})))
            }
            RecordedCall::OnEvent { config, contact, event, history } => {
                let input = ProjectedInput {
                    contact: contact.to_wit(),
                    events: history.iter().map(|e| e.to_wit(&contact.id)).collect(),
                };
                let event = store::Event {
                    id: event.id.clone(),
                    contact_id: if event.contact_id.is_empty() { contact.id.clone() } else { event.contact_id.clone() },
                    kind: event.kind.clone(),
                    occurred_at: event.occurred_at,
                    properties: event.properties.clone(),
                    received_at: event.occurred_at,
                    processed: false,
                };
                let called = self.on_event(plugin, scope, &config_text(config), input, &event, invocation_id).await?;
                Ok(json(called, |enrollments| {
                    Json::Array(
                        enrollments
                            .into_iter()
                            .map(|e| serde_json::json!({"contact_id": e.contact_id, "reason": e.reason}))
                            .collect(),
                    )
                }))
            }
            RecordedCall::Execute { config, contact, trigger_event, idempotency_key } => {
                let input = guest::action::ActionInput {
                    contact: contact.to_wit(),
                    trigger_event: trigger_event.as_ref().map(|e| e.to_wit(&contact.id)),
                    idempotency_key: idempotency_key.clone(),
                };
                let called = self.execute(plugin, scope, &config_text(config), input, invocation_id).await?;
                Ok(json(called, |props| serde_json::to_value(props).unwrap_or(Json::Null)))
            }
            RecordedCall::Send { config, contact, subject, body, properties, idempotency_key } => {
                let message = guest::channel::Message {
                    contact: contact.to_wit(),
                    subject: subject.clone(),
                    body: body.clone(),
                    properties: convert::properties_to_wit(properties, None),
                    idempotency_key: idempotency_key.clone(),
                };
                let called = self.send(plugin, scope, &config_text(config), message, invocation_id).await?;
                Ok(json(called, |r| serde_json::json!({"provider_id": r.provider_id, "status": r.status})))
            }
            RecordedCall::ParseInbound { config, path, headers, body } => {
                let request = guest::channel::InboundRequest {
                    path: path.clone(),
                    headers: headers.clone(),
                    body: body.clone().into_bytes(),
                };
                let called = self.parse_inbound(plugin, scope, &config_text(config), request, invocation_id).await?;
                Ok(json(called, |events| {
                    Json::Array(
                        events
                            .into_iter()
                            .map(|e| {
                                serde_json::json!({
                                    "contact_id": e.contact_id,
                                    "email": e.email,
                                    "kind": e.kind,
                                    "properties": properties_json(e.properties),
                                })
                            })
                            .collect(),
                    )
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_written_fixture_needs_only_what_the_export_cannot_do_without() {
        let call: RecordedCall = serde_json::from_value(serde_json::json!({
            "export": "score",
            "contact": {"id": "c1", "properties": {"country": "DE"}},
            "events": [{"kind": "email_opened"}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let RecordedCall::Score { config, contact, events } = &call else { panic!("{call:?}") };
        assert_eq!(config, &empty_object());
        assert_eq!(contact.to_store("t").lifecycle_stage, "lead");
        assert_eq!(events[0].to_wit("c1").contact_id, "c1");
        let back: RecordedCall =
            serde_json::from_value(serde_json::to_value(&call).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, call);
    }

    #[test]
    fn an_unknown_field_or_export_is_refused_by_name() {
        let e = serde_json::from_value::<RecordedCall>(serde_json::json!({"export": "score", "contcat": {}}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("contcat"), "{e}");
        let e = serde_json::from_value::<RecordedCall>(serde_json::json!({"export": "explode"}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("explode"), "{e}");
    }
}
