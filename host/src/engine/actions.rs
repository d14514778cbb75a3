//! Calling an action or channel install for a contact: the one place that
//! turns a workflow step into a plugin call.
//!
//! An action install gets `execute(contact, trigger event, idempotency key)`;
//! a channel install gets `send(message)` with the step's subject and body,
//! templated from the contact. The step's `config` is merged over the
//! install's (top-level keys), so one install serves many steps.

use crate::registry::ActiveInstall;
use crate::runtime::bindings::{guest, types};
use crate::runtime::invoke::Called;
use crate::runtime::{CallError, CallScope, Kind, Runtime, convert};
use crate::store::{self, Event, Properties, Value};

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

/// Call `active` once for `contact`.
pub async fn call(
    runtime: &Runtime,
    active: &ActiveInstall,
    scope: CallScope,
    contact: &store::Contact,
    event: Option<&Event>,
    step: &ActionCall<'_>,
) -> Result<Called<Properties>, CallError> {
    let invocation = store::new_id();
    let config = merged_config(&active.config_text, step.config);
    let wit_contact = convert::contact_to_wit(contact, None);
    if active.is(Kind::Action) && step.subject.is_none() && step.body.is_none() {
        let input = guest::action::ActionInput {
            contact: wit_contact,
            trigger_event: event.map(convert::event_to_wit),
            idempotency_key: step.idempotency_key.to_string(),
        };
        return runtime.execute(&active.plugin, scope, &config, &input, &invocation).await;
    }
    let mut properties = Vec::new();
    if let Some(e) = event {
        properties
            .push(types::Property { name: "trigger_event_kind".into(), value: types::Value::Text(e.kind.clone()) });
    }
    let message = guest::channel::Message {
        contact: wit_contact,
        subject: step.subject.map(|s| render(s, contact)),
        body: step.body.map(|b| render(b, contact)).unwrap_or_default(),
        properties,
        idempotency_key: step.idempotency_key.to_string(),
    };
    let called = runtime.send(&active.plugin, scope, &config, &message, &invocation).await?;
    let mut out = Properties::new();
    out.insert("provider_id".into(), Value::Text(called.value.provider_id));
    out.insert("status".into(), Value::Text(called.value.status));
    if let Some(subject) = &message.subject {
        out.insert("subject".into(), Value::Text(subject.clone()));
    }
    Ok(Called { value: out, stats: called.stats })
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
