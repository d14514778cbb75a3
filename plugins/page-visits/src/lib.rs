//! # page-visits: "viewed the pricing page 3 times in 7 days"
//!
//! A trigger for the classic buying signal: a contact that keeps coming back
//! to one page. It enrolls the contact at the moment of the crossing, on the
//! view that makes the count reach `times`, and not on every later view:
//! a workflow that creates a "call now" task should create it once, not once
//! per page load. When old views slide out of the window and new ones bring
//! the count back up to `times`, the trigger fires again; whether that
//! re-enrolls the contact is the workflow's re-enrollment setting.
//!
//! ## Layout
//! - `Config`: the page, the count and the window.
//! - `PageVisits`: the plugin; all logic is in `on_event`.

use cairn_sdk::prelude::*;
use serde::Deserialize;

/// The event kind this trigger listens to.
const PAGE_VIEWED: &str = "page_viewed";

/// The event property holding the page address.
const URL: &str = "url";

/// Upper bounds of the settings. A window longer than the history the
/// trigger reads (90 days) would silently undercount; a count above 100
/// cannot be reached within the 500 events it reads per call in practice.
const MAX_TIMES: u32 = 100;
const MAX_WINDOW_DAYS: u32 = 90;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Views count when their `url` contains this text.
    url_contains: String,
    /// Enroll on the view that makes the count reach exactly this.
    times: u32,
    /// Count views at most this many days before the current one.
    within_days: u32,
}

impl Config {
    fn validate(&self) -> Result<(), PluginError> {
        let bad = |m: String| Err(PluginError::permanent(format!("invalid config: {m}")));
        if self.url_contains.is_empty() {
            return bad("url_contains is empty; it would match every page".into());
        }
        if !(1..=MAX_TIMES).contains(&self.times) {
            return bad(format!("times must be between 1 and {MAX_TIMES}, got {}", self.times));
        }
        if !(1..=MAX_WINDOW_DAYS).contains(&self.within_days) {
            return bad(format!("within_days must be between 1 and {MAX_WINDOW_DAYS}, got {}", self.within_days));
        }
        Ok(())
    }
}

struct PageVisits;

impl Plugin for PageVisits {
    type Config = Config;

    fn describe() -> Description {
        Description::new("page-visits", env!("CARGO_PKG_VERSION"))
            .summary("Enroll a contact when it has viewed a page N times within D days")
            .kind(Kind::Trigger)
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "Page visits",
                "type": "object",
                "additionalProperties": false,
                "required": ["url_contains", "times", "within_days"],
                "properties": {
                    "url_contains": {
                        "description": "Count page views whose URL contains this text, e.g. /pricing.",
                        "type": "string",
                        "minLength": 1
                    },
                    "times": {
                        "description": "Enroll on the view that makes the count reach this number.",
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_TIMES
                    },
                    "within_days": {
                        "description": "Count views in this many days up to the current one.",
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_WINDOW_DAYS
                    }
                }
            }))
            .reads(InputQuery {
                contact_properties: Vec::new(),
                event_kinds: vec![PAGE_VIEWED.into()],
                event_window_days: MAX_WINDOW_DAYS,
                max_events: 500,
            })
    }
}

fn url_matches(event: &Event, needle: &str) -> bool {
    event.kind == PAGE_VIEWED && event.properties.get(URL).and_then(Value::as_text).is_some_and(|u| u.contains(needle))
}

impl Trigger for PageVisits {
    fn on_event(
        _ctx: &Context,
        config: &Config,
        _contact: &Contact,
        event: &Event,
        history: &[Event],
    ) -> Result<Vec<Enrollment>, PluginError> {
        config.validate()?;
        if !url_matches(event, &config.url_contains) {
            return Ok(Vec::new());
        }
        let since = event.occurred_at.saturating_sub(i64::from(config.within_days) * DAY_MS);
        // Views after this one do not count: when events arrive out of order,
        // each view is judged by what had happened by its own time. The
        // current event counts once whether or not the host put it in the
        // history (it may fall outside `max_events` on a busy contact).
        let earlier = history
            .iter()
            .filter(|e| e.id != event.id)
            .filter(|e| e.occurred_at >= since && e.occurred_at <= event.occurred_at)
            .filter(|e| url_matches(e, &config.url_contains))
            .count();
        let count = earlier + 1;
        if count != config.times as usize {
            return Ok(Vec::new());
        }
        let noun = if config.times == 1 { "time" } else { "times" };
        let days = if config.within_days == 1 { "day" } else { "days" };
        Ok(vec![Enrollment {
            contact_id: event.contact_id.clone(),
            reason: format!("viewed {} {} {noun} in {} {days}", config.url_contains, config.times, config.within_days),
        }])
    }
}

cairn_sdk::register_plugin!(PageVisits: trigger);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testkit::{self, TestHost};
    use serde_json::json;

    fn config() -> serde_json::Value {
        json!({"url_contains": "/pricing", "times": 3, "within_days": 7})
    }

    fn view(id: &str, url: &str, at: Timestamp) -> Event {
        Event::new(id, "c1", PAGE_VIEWED, at).with_property(URL, url)
    }

    #[test]
    fn fires_exactly_once_at_the_third_view() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let now = host.now;
        let fired: Vec<usize> = (0..5)
            .map(|i| {
                let at = now - (5 - i) * DAY_MS;
                testkit::run_trigger::<PageVisits>(&host, config(), view(&format!("v{i}"), "/pricing?plan=pro", at))
                    .expect("runs")
                    .len()
            })
            .collect();
        assert_eq!(fired, vec![0, 0, 1, 0, 0]);
    }

    #[test]
    fn the_enrollment_names_the_contact_and_the_reason() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let now = host.now;
        testkit::run_trigger::<PageVisits>(&host, config(), view("v1", "/pricing", now - 2000)).expect("runs");
        testkit::run_trigger::<PageVisits>(&host, config(), view("v2", "/pricing", now - 1000)).expect("runs");
        let enrolled = testkit::run_trigger::<PageVisits>(&host, config(), view("v3", "/pricing", now)).expect("runs");
        assert_eq!(
            enrolled,
            vec![Enrollment { contact_id: "c1".into(), reason: "viewed /pricing 3 times in 7 days".into() }]
        );
    }

    #[test]
    fn views_outside_the_window_or_of_other_pages_do_not_count() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let now = host.now;
        let host = host
            .with_event(view("old", "/pricing", now - 8 * DAY_MS))
            .with_event(view("blog", "/blog", now - DAY_MS))
            .with_event(Event::new("form", "c1", "form_submitted", now - DAY_MS).with_property(URL, "/pricing"));
        let first = testkit::run_trigger::<PageVisits>(&host, config(), view("v1", "/pricing", now - 1000));
        assert_eq!(first.expect("runs"), vec![]);
        let second = testkit::run_trigger::<PageVisits>(&host, config(), view("v2", "/pricing", now));
        assert_eq!(second.expect("runs"), vec![], "only 2 views of /pricing within 7 days");
        let third = testkit::run_trigger::<PageVisits>(&host, config(), view("v3", "/pricing", now + 1000));
        assert_eq!(third.expect("runs").len(), 1);
    }

    #[test]
    fn other_events_never_enroll() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let now = host.now;
        let host = host.with_event(view("a", "/pricing", now - 2000)).with_event(view("b", "/pricing", now - 1000));
        let other = Event::new("x", "c1", "email_opened", now).with_property(URL, "/pricing");
        assert_eq!(testkit::run_trigger::<PageVisits>(&host, config(), other).expect("runs"), vec![]);
        let no_url = Event::new("y", "c1", PAGE_VIEWED, now);
        assert_eq!(testkit::run_trigger::<PageVisits>(&host, config(), no_url).expect("runs"), vec![]);
    }

    #[test]
    fn once_means_the_first_view() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let now = host.now;
        let once = json!({"url_contains": "/demo", "times": 1, "within_days": 1});
        let first = testkit::run_trigger::<PageVisits>(&host, once.clone(), view("d1", "/demo", now)).expect("runs");
        assert_eq!(first[0].reason, "viewed /demo 1 time in 1 day");
        let again = testkit::run_trigger::<PageVisits>(&host, once, view("d2", "/demo", now + 1)).expect("runs");
        assert!(again.is_empty());
    }

    #[test]
    fn out_of_range_settings_are_permanent_errors() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let now = host.now;
        for bad in [
            json!({"url_contains": "/pricing", "times": 0, "within_days": 7}),
            json!({"url_contains": "/pricing", "times": 3, "within_days": 91}),
            json!({"url_contains": "", "times": 3, "within_days": 7}),
            json!({"url_contains": "/pricing", "times": 3}),
            json!({"url_contains": "/pricing", "times": -1, "within_days": 7}),
        ] {
            let err = testkit::run_trigger::<PageVisits>(&host, bad.clone(), view("v", "/pricing", now))
                .expect_err("rejects the config");
            assert!(!err.retryable, "{bad}");
            assert!(err.message.starts_with("invalid config"), "{}", err.message);
        }
    }

    #[test]
    fn describe_reads_only_page_views() {
        let d = PageVisits::describe();
        assert_eq!(d.kinds, vec![Kind::Trigger]);
        assert_eq!(d.reads.event_kinds, vec!["page_viewed".to_string()]);
        assert_eq!(d.reads.event_window_days, 90);
        assert_eq!(d.config_schema["required"], json!(["url_contains", "times", "within_days"]));
        assert_eq!(d.config_schema["additionalProperties"], json!(false));
    }
}
