//! Conversions between store types and the WIT types plugins see, including
//! the input projection: a plugin that declared `reads` gets only those
//! properties, so a call does not pay for copying data it never looks at.

use crate::runtime::bindings::types as wit;
use crate::store::{self, Properties, Value};

/// A store value as a WIT value. Non-finite numbers never reach a plugin.
pub fn value_to_wit(v: &Value) -> wit::Value {
    match v {
        Value::Null => wit::Value::Null,
        Value::Bool(b) => wit::Value::Boolean(*b),
        Value::Number(n) if n.is_finite() => wit::Value::Number(*n),
        Value::Number(_) => wit::Value::Null,
        Value::Text(s) => wit::Value::Text(s.clone()),
        Value::TextList(l) => wit::Value::TextList(l.clone()),
        Value::Timestamp(t) => wit::Value::Timestamp(*t),
    }
}

/// A WIT value as a store value (non-finite numbers become null).
pub fn value_from_wit(v: wit::Value) -> Value {
    match v {
        wit::Value::Null => Value::Null,
        wit::Value::Boolean(b) => Value::Bool(b),
        wit::Value::Number(n) if n.is_finite() => Value::Number(n),
        wit::Value::Number(_) => Value::Null,
        wit::Value::Text(s) => Value::Text(s),
        wit::Value::TextList(l) => Value::TextList(l),
        wit::Value::Timestamp(t) => Value::Timestamp(t),
    }
}

/// Properties as WIT, keeping only `only` when given.
pub fn properties_to_wit(props: &Properties, only: Option<&[String]>) -> Vec<wit::Property> {
    match only {
        None => props.iter().map(|(k, v)| wit::Property { name: k.clone(), value: value_to_wit(v) }).collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| props.get(n).map(|v| wit::Property { name: n.clone(), value: value_to_wit(v) }))
            .collect(),
    }
}

/// WIT properties as a store map (a later duplicate name wins).
pub fn properties_from_wit(props: Vec<wit::Property>) -> Properties {
    props.into_iter().map(|p| (p.name, value_from_wit(p.value))).collect()
}

/// A contact as WIT; `only` limits the custom properties copied.
pub fn contact_to_wit(c: &store::Contact, only: Option<&[String]>) -> wit::Contact {
    wit::Contact {
        id: c.id.clone(),
        email: c.email.clone(),
        phone: c.phone.clone(),
        first_name: c.first_name.clone(),
        last_name: c.last_name.clone(),
        owner: c.owner.clone(),
        lifecycle_stage: c.lifecycle_stage.clone(),
        score: c.score,
        tags: c.tags.clone(),
        properties: properties_to_wit(&c.properties, only),
    }
}

/// An event as WIT.
pub fn event_to_wit(e: &store::Event) -> wit::Event {
    wit::Event {
        id: e.id.clone(),
        contact_id: e.contact_id.clone(),
        kind: e.kind.clone(),
        occurred_at: e.occurred_at,
        properties: properties_to_wit(&e.properties, None),
    }
}
