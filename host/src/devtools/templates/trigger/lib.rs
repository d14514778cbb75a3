//! A trigger: enrolls the contact when an event of a configured kind arrives.
//!
//! `{"event_kind": "demo_requested"}` starts the workflow on every demo
//! request; `{"event_kind": "page_viewed", "min_count": 3}` only on the third
//! page view within the last 30 days (the history the trigger declares it
//! reads, which includes the event itself).

use cairn_sdk::prelude::*;
use serde::Deserialize;

/// Days of history the trigger reads for `min_count`.
const WINDOW_DAYS: u32 = 30;
/// At most this many events of history per call.
const MAX_EVENTS: u32 = 200;

/// The install's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The event kind that enrolls, e.g. `demo_requested`.
    pub event_kind: String,
    /// Enroll only once the contact has this many such events in the window.
    #[serde(default = "one")]
    pub min_count: u32,
}

fn one() -> u32 {
    1
}

/// The plugin.
pub struct EventTrigger;

impl Plugin for EventTrigger {
    type Config = Config;

    fn describe() -> Description {
        Description::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
            .summary("Enroll contacts when an event of a kind arrives")
            .kind(Kind::Trigger)
            .reads(InputQuery { event_window_days: WINDOW_DAYS, max_events: MAX_EVENTS, ..InputQuery::default() })
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "additionalProperties": false,
                "required": ["event_kind"],
                "properties": {
                    "event_kind": {"description": "The event kind that enrolls.", "type": "string", "minLength": 1},
                    "min_count": {
                        "description": "Enroll on the Nth such event within 30 days.",
                        "type": "integer", "minimum": 1, "maximum": MAX_EVENTS, "default": 1
                    }
                }
            }))
    }
}

impl Trigger for EventTrigger {
    fn on_event(
        _ctx: &Context,
        config: &Config,
        contact: &Contact,
        event: &Event,
        history: &[Event],
    ) -> Result<Vec<Enrollment>, PluginError> {
        if event.kind != config.event_kind {
            return Ok(Vec::new());
        }
        // The host includes the event in `history`; count it once even when
        // a caller does not.
        let earlier = history
            .iter()
            .filter(|e| e.kind == config.event_kind && e.id != event.id)
            .count();
        let count = earlier + 1;
        if count < config.min_count as usize {
            return Ok(Vec::new());
        }
        let reason = if config.min_count > 1 {
            format!("{} #{count} within {WINDOW_DAYS} days", event.kind)
        } else {
            event.kind.clone()
        };
        Ok(vec![Enrollment {
            contact_id: contact.id.clone(),
            reason,
        }])
    }
}

cairn_sdk::register_plugin!(EventTrigger: trigger);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testkit::{self, TestHost};
    use serde_json::json;

    #[test]
    fn enrolls_on_the_configured_kind() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let event = Event::new("e1", "c1", "demo_requested", host.now);
        let enrolled = testkit::run_trigger::<EventTrigger>(
            &host,
            json!({"event_kind": "demo_requested"}),
            event,
        )
        .unwrap();
        assert_eq!(enrolled.len(), 1);
        assert_eq!(enrolled[0].contact_id, "c1");
    }

    #[test]
    fn other_kinds_enroll_nobody() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let event = Event::new("e1", "c1", "page_viewed", host.now);
        let enrolled = testkit::run_trigger::<EventTrigger>(
            &host,
            json!({"event_kind": "demo_requested"}),
            event,
        )
        .unwrap();
        assert!(enrolled.is_empty());
    }

    #[test]
    fn min_count_waits_for_the_nth_event() {
        let now = TestHost::new().now;
        let config = json!({"event_kind": "page_viewed", "min_count": 3});
        let host = TestHost::new()
            .with_contact(Contact::new("c1"))
            .with_event(Event::new("e1", "c1", "page_viewed", now - DAY_MS));
        let second = Event::new("e2", "c1", "page_viewed", now - 1000);
        assert!(
            testkit::run_trigger::<EventTrigger>(&host, config.clone(), second)
                .unwrap()
                .is_empty()
        );
        let third = Event::new("e3", "c1", "page_viewed", now);
        let enrolled = testkit::run_trigger::<EventTrigger>(&host, config, third).unwrap();
        assert_eq!(enrolled[0].reason, "page_viewed #3 within 30 days");
    }
}
