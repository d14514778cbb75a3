//! Evaluating conditions (if/else steps, goals, suppression, schedule
//! segments) against a contact.
//!
//! Everything but `event` conditions is answered from the contact record in
//! memory. `event` conditions read the contact's events since the run
//! enrolled (or within a window), from the store, or from a list the caller
//! supplies (a dry run on an inline sample contact).

use std::cmp::Ordering;
use std::future::Future;
use std::pin::Pin;

use super::definition::{Condition, Op};
use super::time;
use crate::engine::pipeline::STAGES;
use crate::store::{Contact, Event, Properties, Store, StoreError, Value};

/// Most events one `event` condition reads: enough for any sensible
/// `min_count`, bounded so a chatty contact cannot make a check expensive.
const MAX_EVENTS_READ: i64 = 1000;

/// Where `event` conditions find events.
#[derive(Clone, Debug)]
pub enum Events<'a> {
    /// The contact's events in the store.
    Store(&'a Store),
    /// Exactly these events (a dry run on a sample contact).
    List(&'a [Event]),
}

/// What a condition is evaluated against.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// The contact, as it is now.
    pub contact: &'a Contact,
    /// Business time now, epoch ms.
    pub now: i64,
    /// When the run enrolled; `event` conditions without `within` look from
    /// here (from the beginning when there is no run yet).
    pub enrolled_at: Option<i64>,
    /// The events.
    pub events: Events<'a>,
}

/// Whether `condition` holds.
pub fn holds<'a>(
    condition: &'a Condition,
    facts: &'a Facts<'a>,
) -> Pin<Box<dyn Future<Output = Result<bool, StoreError>> + Send + 'a>> {
    Box::pin(async move {
        let contact = facts.contact;
        Ok(match condition {
            Condition::Property { name, op, value } => compare(field(contact, name).as_ref(), *op, value.as_ref()),
            Condition::Tag { tag } => contact.tags.iter().any(|t| t == tag),
            Condition::Score { op, value } => {
                compare(Some(&Value::Number(contact.score)), *op, Some(&Value::Number(*value)))
            }
            Condition::Stage { is, at_least } => {
                let rank = |s: &str| STAGES.iter().position(|x| *x == s);
                match (is, at_least) {
                    (Some(s), _) => contact.lifecycle_stage == *s,
                    (None, Some(s)) => {
                        matches!((rank(&contact.lifecycle_stage), rank(s)), (Some(c), Some(t)) if c >= t)
                    }
                    (None, None) => false,
                }
            }
            Condition::Event { kind, filter, within, min_count } => {
                let since = match within {
                    Some(w) => facts.now - time::parse_duration(w).unwrap_or(0),
                    None => facts.enrolled_at.unwrap_or(0),
                };
                count_events(facts, kind, filter, since).await? >= i64::from(*min_count)
            }
            Condition::Inactive { days } => {
                let last = contact.last_activity_at.unwrap_or(contact.created_at);
                last < facts.now - i64::from(*days) * time::DAY_MS
            }
            Condition::All { of } => {
                for c in of {
                    if !holds(c, facts).await? {
                        return Ok(false);
                    }
                }
                true
            }
            Condition::Any { of } => {
                for c in of {
                    if holds(c, facts).await? {
                        return Ok(true);
                    }
                }
                false
            }
            Condition::Not { condition } => !holds(condition, facts).await?,
        })
    })
}

async fn count_events(facts: &Facts<'_>, kind: &str, filter: &Properties, since: i64) -> Result<i64, StoreError> {
    let matches = |e: &Event| {
        e.kind == kind
            && e.occurred_at >= since
            && filter.iter().all(|(name, expected)| e.properties.get(name) == Some(expected))
    };
    Ok(match facts.events {
        Events::List(list) => list.iter().filter(|e| matches(e)).count() as i64,
        Events::Store(store) => {
            let c = facts.contact;
            if filter.is_empty() {
                store.count_events(&c.tenant_id, &c.id, kind, since).await?
            } else {
                let kinds = [kind.to_string()];
                let events = store.recent_events(&c.tenant_id, &c.id, &kinds, since, MAX_EVENTS_READ).await?;
                events.iter().filter(|e| matches(e)).count() as i64
            }
        }
    })
}

/// A contact's field or property by name; core fields by their names.
pub fn field(c: &Contact, name: &str) -> Option<Value> {
    let text = |t: &Option<String>| t.clone().map(Value::Text);
    match name {
        "email" => text(&c.email),
        "phone" => text(&c.phone),
        "first_name" => text(&c.first_name),
        "last_name" => text(&c.last_name),
        "owner" => text(&c.owner),
        "lifecycle_stage" => Some(Value::Text(c.lifecycle_stage.clone())),
        "score" => Some(Value::Number(c.score)),
        "tags" => Some(Value::TextList(c.tags.clone())),
        "company_id" => text(&c.company_id),
        "created_at" => Some(Value::Timestamp(c.created_at)),
        "last_activity_at" => c.last_activity_at.map(Value::Timestamp),
        _ => c.properties.get(name).filter(|v| **v != Value::Null).cloned(),
    }
}

/// `actual op expected`; a missing value only satisfies `ne` and `not_exists`.
pub fn compare(actual: Option<&Value>, op: Op, expected: Option<&Value>) -> bool {
    match op {
        Op::Exists => return actual.is_some(),
        Op::NotExists => return actual.is_none(),
        _ => {}
    }
    let (Some(actual), Some(expected)) = (actual, expected) else { return op == Op::Ne };
    match op {
        Op::Eq => equal(actual, expected),
        Op::Ne => !equal(actual, expected),
        Op::Gt => order(actual, expected) == Some(Ordering::Greater),
        Op::Gte => matches!(order(actual, expected), Some(Ordering::Greater | Ordering::Equal)),
        Op::Lt => order(actual, expected) == Some(Ordering::Less),
        Op::Lte => matches!(order(actual, expected), Some(Ordering::Less | Ordering::Equal)),
        Op::Contains => match (actual, expected) {
            (Value::Text(a), Value::Text(e)) => a.to_lowercase().contains(&e.to_lowercase()),
            (Value::TextList(a), Value::Text(e)) => a.iter().any(|x| x == e),
            _ => false,
        },
        Op::In => match (actual, expected) {
            (Value::Text(a), Value::TextList(list)) => list.iter().any(|x| x == a),
            _ => false,
        },
        Op::Exists | Op::NotExists => false,
    }
}

/// Equality; text compares case-insensitively (a builder writing "de" means
/// "DE" too), numbers exactly.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Text(a), Value::Text(b)) => a.eq_ignore_ascii_case(b),
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.partial_cmp(b),
        (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
        (Value::Timestamp(a), Value::Number(b)) => (*a as f64).partial_cmp(b),
        (Value::Text(a), Value::Text(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn contact() -> Contact {
        Contact {
            id: "c1".into(),
            tenant_id: "t1".into(),
            email: Some("ada@example.com".into()),
            phone: None,
            first_name: Some("Ada".into()),
            last_name: None,
            owner: None,
            lifecycle_stage: "mql".into(),
            score: 42.0,
            tags: vec!["vip".into()],
            properties: BTreeMap::from([("country".into(), Value::Text("DE".into()))]),
            company_id: None,
            created_at: 0,
            updated_at: 0,
            last_activity_at: Some(10 * time::DAY_MS),
        }
    }

    fn event(kind: &str, at: i64, props: &[(&str, &str)]) -> Event {
        Event {
            id: format!("e{at}"),
            contact_id: "c1".into(),
            kind: kind.into(),
            occurred_at: at,
            properties: props.iter().map(|(k, v)| (k.to_string(), Value::Text(v.to_string()))).collect(),
            received_at: at,
            processed: true,
        }
    }

    async fn check(json: serde_json::Value, events: &[Event], enrolled_at: Option<i64>) -> bool {
        let condition: Condition = serde_json::from_value(json).unwrap();
        let c = contact();
        let facts = Facts { contact: &c, now: 100 * time::DAY_MS, enrolled_at, events: Events::List(events) };
        holds(&condition, &facts).await.unwrap()
    }

    #[tokio::test]
    async fn properties_tags_score_and_stage_are_read_from_the_contact() {
        use serde_json::json;
        assert!(check(json!({"type": "property", "name": "country", "op": "eq", "value": "de"}), &[], None).await);
        assert!(
            check(json!({"type": "property", "name": "country", "op": "in", "value": ["FR", "DE"]}), &[], None).await
        );
        assert!(check(json!({"type": "property", "name": "region", "op": "not_exists"}), &[], None).await);
        assert!(!check(json!({"type": "property", "name": "region", "op": "eq", "value": "x"}), &[], None).await);
        assert!(
            check(json!({"type": "property", "name": "email", "op": "contains", "value": "EXAMPLE"}), &[], None).await
        );
        assert!(check(json!({"type": "tag", "tag": "vip"}), &[], None).await);
        assert!(check(json!({"type": "score", "op": "gte", "value": 42}), &[], None).await);
        assert!(!check(json!({"type": "score", "op": "gt", "value": 42}), &[], None).await);
        assert!(check(json!({"type": "stage", "at_least": "lead"}), &[], None).await);
        assert!(!check(json!({"type": "stage", "at_least": "sql"}), &[], None).await);
        assert!(check(json!({"type": "stage", "is": "mql"}), &[], None).await);
    }

    #[tokio::test]
    async fn event_conditions_count_since_enrollment_or_within_a_window() {
        use serde_json::json;
        let day = time::DAY_MS;
        let events = [event("email_clicked", 50 * day, &[("link", "pricing")]), event("email_clicked", 99 * day, &[])];
        let clicked = json!({"type": "event", "kind": "email_clicked"});
        assert!(check(clicked.clone(), &events, Some(60 * day)).await);
        assert!(!check(clicked, &events, Some(99 * day + 1)).await);
        let twice = json!({"type": "event", "kind": "email_clicked", "min_count": 2});
        assert!(check(twice.clone(), &events, Some(0)).await);
        assert!(!check(twice, &events, Some(60 * day)).await);
        let pricing = json!({"type": "event", "kind": "email_clicked", "where": {"link": "pricing"}, "within": "7d"});
        assert!(!check(pricing, &events, None).await);
    }

    #[tokio::test]
    async fn inactivity_and_combinators() {
        use serde_json::json;
        assert!(check(json!({"type": "inactive", "days": 89}), &[], None).await);
        assert!(!check(json!({"type": "inactive", "days": 91}), &[], None).await);
        let both = json!({"type": "all", "of": [{"type": "tag", "tag": "vip"}, {"type": "not", "condition": {"type": "tag", "tag": "vip"}}]});
        assert!(!check(both, &[], None).await);
        let either = json!({"type": "any", "of": [{"type": "tag", "tag": "nope"}, {"type": "tag", "tag": "vip"}]});
        assert!(check(either, &[], None).await);
    }
}
