//! Calling an action or channel install for a contact: the one place that
//! turns a workflow step into a plugin call.
//!
//! An action install gets `execute(contact, trigger event, idempotency key)`;
//! a channel install gets `send(message)` with the step's subject and body,
//! templated from the contact. The step's `config` is merged over the
//! install's (top-level keys), so one install serves many steps.
//!
//! A call is built as data first ([`prepare`]: a [`RecordedCall`]) and the
//! plugin is called *from* that data ([`call`]), so the input the invocation
//! record keeps for replay is, by construction, exactly what the plugin was
//! given.

use serde_json::Value as Json;

use crate::registry::ActiveInstall;
use crate::runtime::invoke::Called;
use crate::runtime::recorded::{RecordedCall, RecordedContact, RecordedEvent, parse_config};
use crate::runtime::{CallError, CallScope, Kind, Runtime};
use crate::store::{self, Event, InvocationRecord, Properties, Value};

/// What a step asks of the install.
#[derive(Debug, Default, Clone)]
pub struct ActionCall<'a> {
    /// The step's config, merged over the install's.
    pub config: Option<&'a serde_json::Value>,
    /// For a channel: subject and body templates.
    pub subject: Option<&'a str>,
    /// Body template.
    pub body: Option<&'a str>,
    /// The key the plugin may deduplicate by (the same on every retry).
    pub idempotency_key: &'a str,
}

/// The call `step` makes of `active` for `contact`: `execute` for an action
/// install given no message, `send` (subject and body rendered) otherwise.
pub fn prepare(
    active: &ActiveInstall,
    contact: &store::Contact,
    event: Option<&Event>,
    step: &ActionCall<'_>,
) -> RecordedCall {
    let config = parse_config(&merged_config(&active.config_text, step.config));
    // Actions see the whole contact (they declare no projection).
    let recorded_contact = RecordedContact::from_store(contact, None);
    if active.is(Kind::Action) && step.subject.is_none() && step.body.is_none() {
        return RecordedCall::Execute {
            config,
            contact: recorded_contact,
            trigger_event: event.map(RecordedEvent::from_store),
            idempotency_key: step.idempotency_key.to_string(),
        };
    }
    let mut properties = Properties::new();
    if let Some(e) = event {
        properties.insert("trigger_event_kind".into(), Value::Text(e.kind.clone()));
    }
    RecordedCall::Send {
        config,
        contact: recorded_contact,
        subject: step.subject.map(|s| render(s, contact)),
        body: step.body.map(|b| render(b, contact)).unwrap_or_default(),
        properties,
        idempotency_key: step.idempotency_key.to_string(),
    }
}

/// Make `prepared` (from [`prepare`]) against `active` as invocation
/// `invocation_id`: the id the plugin sees in its call context, and the id
/// the caller records the call under. The output is the plugin's, as JSON;
/// a `send` adds the rendered subject to the receipt.
pub async fn call(
    runtime: &Runtime,
    active: &ActiveInstall,
    scope: CallScope,
    prepared: &RecordedCall,
    invocation_id: &str,
) -> Result<Called<Json>, CallError> {
    let mut called = runtime.call_recorded(&active.plugin, scope, prepared, invocation_id).await?;
    if let (RecordedCall::Send { subject: Some(subject), .. }, Json::Object(out)) = (prepared, &mut called.value) {
        out.insert("subject".into(), Json::String(subject.clone()));
    }
    Ok(called)
}

/// The invocation record of `call`, made of `active` as invocation `id` at
/// business time `at`: outcome, fuel and time, the output as JSON, the
/// input (the call itself) for replay, and the plugin version that ran.
/// The contact is the call's; callers add the event that caused it.
pub fn invocation_record<T: serde::Serialize>(
    active: &ActiveInstall,
    id: String,
    call: &RecordedCall,
    outcome: Result<&Called<T>, &CallError>,
    at: i64,
) -> InvocationRecord {
    let (ok, error_cause, error_message, stats, output_json) = match outcome {
        Ok(c) => (true, None, None, &c.stats, serde_json::to_string(&c.value).ok()),
        Err(e) => (false, Some(e.cause.as_str().to_string()), Some(e.message.clone()), &e.stats, None),
    };
    let idempotency_key = match call {
        RecordedCall::Execute { idempotency_key, .. } | RecordedCall::Send { idempotency_key, .. } => {
            Some(idempotency_key.clone())
        }
        _ => None,
    };
    InvocationRecord {
        id,
        tenant_id: active.install.tenant_id.clone(),
        install_id: active.install.id.clone(),
        kind: call.export().to_string(),
        contact_id: call.contact().map(|c| c.id.clone()),
        event_id: None,
        ok,
        error_cause,
        error_message,
        fuel_used: Some(stats.fuel_used as i64),
        duration_us: stats.duration_us as i64,
        idempotency_key,
        output_json,
        at,
        plugin_version_id: Some(active.install.plugin_version_id.clone()),
        // Serializing plain data cannot fail; were it to, the call is still
        // recorded, without its input.
        input_json: serde_json::to_string(call).ok(),
        input_status: None,
    }
}

/// The install's config with the step's top-level keys laid over it.
pub fn merged_config(install_config: &str, step: Option<&serde_json::Value>) -> String {
    let Some(serde_json::Value::Object(over)) = step else { return install_config.to_string() };
    let mut base = match serde_json::from_str::<serde_json::Value>(install_config) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    for (k, v) in over {
        base.insert(k.clone(), v.clone());
    }
    serde_json::Value::Object(base).to_string()
}

/// Replace `{{name}}` with the contact's field or property (empty when
/// unset). Unknown or unclosed braces are kept as written.
pub fn render(template: &str, contact: &store::Contact) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        match crate::engine::workflows::condition::field(contact, name) {
            Some(Value::Text(t)) => out.push_str(&t),
            Some(Value::Number(n)) => out.push_str(&n.to_string()),
            Some(Value::Bool(b)) => out.push_str(&b.to_string()),
            Some(Value::TextList(l)) => out.push_str(&l.join(", ")),
            Some(Value::Timestamp(t)) => out.push_str(&t.to_string()),
            Some(Value::Null) | None => {}
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_config_overrides_top_level_keys_of_the_install_config() {
        let merged =
            merged_config(r#"{"title":"x","due_in_hours":24}"#, Some(&serde_json::json!({"title": "Call now"})));
        let v: serde_json::Value = serde_json::from_str(&merged).unwrap_or_default();
        assert_eq!(v, serde_json::json!({"title": "Call now", "due_in_hours": 24}));
        assert_eq!(merged_config("{}", None), "{}");
    }

    #[test]
    fn templates_fill_fields_and_properties() {
        let contact = store::Contact {
            id: "c".into(),
            tenant_id: "t".into(),
            email: None,
            phone: None,
            first_name: Some("Ada".into()),
            last_name: None,
            owner: None,
            lifecycle_stage: "lead".into(),
            score: 0.0,
            tags: vec![],
            properties: [("plan".to_string(), Value::Text("pro".into()))].into(),
            company_id: None,
            created_at: 0,
            updated_at: 0,
            last_activity_at: None,
        };
        assert_eq!(render("Hi {{ first_name }}, {{plan}}{{missing}} {{oops", &contact), "Hi Ada, pro {{oops");
    }
}
