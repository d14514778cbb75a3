//! Single-step rules: a trigger (a plugin trigger install, or a built-in
//! event matcher) and one action install. Matching is native; execution goes
//! through the runtime with retries for errors the plugin marks retryable.

use std::time::Duration;

use crate::registry::ActiveInstall;
use crate::runtime::bindings::guest;
use crate::runtime::invoke::Called;
use crate::runtime::{CallError, CallScope, Kind, Runtime, convert};
use crate::store::{self, Event, Properties};

/// Attempts per action (the first try plus retries).
pub const ATTEMPTS: u32 = 3;
/// Backoff before the first retry; doubles each time.
const BACKOFF: Duration = Duration::from_millis(100);

/// Whether a built-in rule matches `event`: same kind, and every filter
/// property equal to the event's.
pub fn event_matches(rule: &store::Rule, event: &Event) -> bool {
    match &rule.event_kind {
        Some(kind) if kind == &event.kind => {
            rule.event_filter.iter().all(|(name, expected)| event.properties.get(name) == Some(expected))
        }
        _ => false,
    }
}

/// Run `active`'s action (or, for a channel-only plugin, its `send`) for
/// `contact`, retrying retryable failures with exponential backoff.
pub async fn execute_with_retries(
    runtime: &Runtime,
    active: &ActiveInstall,
    scope: CallScope,
    contact: &store::Contact,
    event: Option<&Event>,
    idempotency_key: &str,
) -> Result<Called<Properties>, CallError> {
    let mut delay = BACKOFF;
    let mut attempt = 1;
    loop {
        let result = execute_once(runtime, active, scope.clone(), contact, event, idempotency_key).await;
        match result {
            Err(e) if e.retryable && attempt < ATTEMPTS => {
                tracing::info!(install = %active.id(), attempt, "retryable failure, retrying: {}", e.message);
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn execute_once(
    runtime: &Runtime,
    active: &ActiveInstall,
    scope: CallScope,
    contact: &store::Contact,
    event: Option<&Event>,
    idempotency_key: &str,
) -> Result<Called<Properties>, CallError> {
    let invocation = store::new_id();
    let wit_contact = convert::contact_to_wit(contact, None);
    if active.is(Kind::Action) {
        let input = guest::action::ActionInput {
            contact: wit_contact,
            trigger_event: event.map(convert::event_to_wit),
            idempotency_key: idempotency_key.to_string(),
        };
        return runtime.execute(&active.plugin, scope, &active.config_text, &input, &invocation).await;
    }
    let mut properties = Vec::new();
    if let Some(e) = event {
        properties.push(crate::runtime::bindings::types::Property {
            name: "trigger_event_kind".into(),
            value: crate::runtime::bindings::types::Value::Text(e.kind.clone()),
        });
    }
    let message = guest::channel::Message {
        contact: wit_contact,
        subject: None,
        body: String::new(),
        properties,
        idempotency_key: idempotency_key.to_string(),
    };
    let called = runtime.send(&active.plugin, scope, &active.config_text, &message, &invocation).await?;
    let mut out = Properties::new();
    out.insert("provider_id".into(), store::Value::Text(called.value.provider_id));
    out.insert("status".into(), store::Value::Text(called.value.status));
    Ok(Called { value: out, stats: called.stats })
}
