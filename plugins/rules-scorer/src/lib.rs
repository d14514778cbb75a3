//! # rules-scorer: a lead score from points per event and per contact field
//!
//! The scorer most tenants start with: "+10 for every pricing page view, at
//! most 5 times; +15 if the job title contains VP; never above 100". Points
//! can fade with age (`half_life_days`) so a burst of interest last quarter
//! does not keep a lead hot forever.
//!
//! ## Layout
//! - [`Config`] and its rule types: the install's settings, read from JSON.
//! - [`score_events`]: the whole scoring logic as a pure function. It is
//!   public so Cairn's benchmark can run the very same code natively and
//!   compare it with the WebAssembly call (this crate is also an `rlib` for
//!   that reason).
//! - [`RulesScorer`]: the plugin itself, a thin wrapper that validates the
//!   config and calls [`score_events`].

use cairn_sdk::prelude::*;
use serde::Deserialize;

/// How many days of events the scorer asks for. A rule older than a quarter
/// says little about intent today, and a bounded window keeps every call's
/// input (and so its cost) bounded.
const WINDOW_DAYS: u32 = 90;

/// At most this many events per call: an active contact can have thousands,
/// and copying them all into the sandbox would cost more than scoring them.
const MAX_EVENTS: u32 = 500;

/// Custom contact properties the host includes for contact rules. The
/// description is static (it cannot depend on an install's config), so this is
/// a fixed list of the fields lead-scoring rules are usually written against.
const CONTACT_PROPERTIES: [&str; 5] = ["job_title", "industry", "company_size", "country", "region"];

/// The install's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Points per matching event.
    pub rules: Vec<EventRule>,
    /// Days after which an event is worth half its points; `None`: no decay.
    #[serde(default)]
    pub half_life_days: Option<f64>,
    /// Points for contact field matches.
    #[serde(default)]
    pub contact_rules: Vec<ContactRule>,
    /// The score never goes above this.
    #[serde(default)]
    pub max_score: Option<f64>,
}

/// Points for each event of a kind, optionally only when one of its
/// properties contains some text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    /// The event kind, e.g. `page_viewed`.
    pub event_kind: String,
    /// Points per matching event (negative to penalise, e.g. unsubscribes).
    pub points: f64,
    /// The event property to look at, e.g. `url`. Alone, the rule needs the
    /// property to be present; with `contains`, to contain that text.
    #[serde(default)]
    pub property: Option<String>,
    /// Text the property must contain (case-sensitive). Needs `property`.
    #[serde(default)]
    pub contains: Option<String>,
    /// Count at most this many matching events (the most recent ones).
    #[serde(default)]
    pub max_times: Option<u32>,
}

/// Points when a contact field contains some text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactRule {
    /// A core field (`email`, `first_name`, `last_name`, `owner`,
    /// `lifecycle_stage`, `phone`, `tags`) or a custom property the host
    /// sends (see the scorer's `reads`).
    pub property: String,
    /// Text the field must contain (case-sensitive).
    pub contains: String,
    /// Points when it does.
    pub points: f64,
}

impl Config {
    /// Checks what the JSON Schema cannot say or what a host might not have
    /// enforced, so a bad install fails with a sentence instead of scoring 0.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(h) = self.half_life_days
            && !(h.is_finite() && h > 0.0)
        {
            return Err(format!("half_life_days must be a positive number of days, got {h}"));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.event_kind.is_empty() {
                return Err(format!("rules[{i}].event_kind is empty"));
            }
            if !rule.points.is_finite() {
                return Err(format!("rules[{i}].points is not a finite number"));
            }
            if rule.contains.is_some() && rule.property.is_none() {
                return Err(format!("rules[{i}] has `contains` but no `property` to look in"));
            }
        }
        for (i, rule) in self.contact_rules.iter().enumerate() {
            if !rule.points.is_finite() {
                return Err(format!("contact_rules[{i}].points is not a finite number"));
            }
        }
        if let Some(m) = self.max_score
            && !m.is_finite()
        {
            return Err("max_score is not a finite number".into());
        }
        Ok(())
    }
}

/// Scores `contact` from `events` at time `now` (epoch ms).
///
/// Each event rule sums its points over matching events, each multiplied by
/// `0.5^(age_days / half_life_days)` when decay is on (events stamped in the
/// future count as age 0, so clock skew never inflates a score). With
/// `max_times`, only the most recent matching events count. Contact rules add
/// their points once. The total is clamped to `max_score` and rounded to two
/// decimals; each contributing rule gives one reason line.
///
/// Expects a config that passed [`Config::validate`]; a rule with `contains`
/// but no `property` matches nothing.
pub fn score_events(config: &Config, contact: &Contact, events: &[Event], now: Timestamp) -> Score {
    let mut total = 0.0;
    let mut reasons = Vec::new();
    // Reused across rules: one allocation per call, not per rule.
    let mut matched: Vec<Timestamp> = Vec::new();

    for rule in &config.rules {
        matched.clear();
        matched.extend(events.iter().filter(|e| event_matches(rule, e)).map(|e| e.occurred_at));
        if matched.is_empty() {
            continue;
        }
        if let Some(cap) = rule.max_times {
            let cap = cap as usize;
            if matched.len() > cap {
                // The host sends events newest first, but sorting keeps the
                // "most recent count" promise even if a caller does not.
                matched.sort_unstable_by_key(|&at| std::cmp::Reverse(at));
                matched.truncate(cap);
            }
        }
        let points: f64 = matched.iter().map(|&at| rule.points * decay(config.half_life_days, now, at)).sum();
        total += points;
        reasons.push(format!("{} {}{} ({}x)", signed(points), rule.event_kind, rule_filter(rule), matched.len()));
    }

    for rule in &config.contact_rules {
        if contact_field_contains(contact, &rule.property, &rule.contains) {
            total += rule.points;
            reasons.push(format!("{} {}~{}", signed(rule.points), rule.property, rule.contains));
        }
    }

    if let Some(max) = config.max_score
        && total > max
    {
        total = max;
        reasons.push(format!("capped at {}", plain(max)));
    }

    Score { value: round2(total), reasons }
}

fn event_matches(rule: &EventRule, event: &Event) -> bool {
    if event.kind != rule.event_kind {
        return false;
    }
    match (&rule.property, &rule.contains) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(name), None) => event.properties.get(name).is_some_and(|v| *v != Value::Null),
        (Some(name), Some(needle)) => event.properties.get(name).is_some_and(|v| value_contains(v, needle)),
    }
}

/// Text-like values match by substring, lists when any item does; numbers and
/// booleans by their written form, so `"contains": "2"` works on a quantity.
fn value_contains(value: &Value, needle: &str) -> bool {
    match value {
        Value::Null => false,
        Value::Text(s) => s.contains(needle),
        Value::TextList(items) => items.iter().any(|i| i.contains(needle)),
        Value::Bool(b) => (if *b { "true" } else { "false" }).contains(needle),
        Value::Number(n) => n.to_string().contains(needle),
        Value::Timestamp(t) => t.to_string().contains(needle),
    }
}

fn contact_field_contains(contact: &Contact, field: &str, needle: &str) -> bool {
    let core = match field {
        "email" => contact.email.as_deref(),
        "phone" => contact.phone.as_deref(),
        "first_name" => contact.first_name.as_deref(),
        "last_name" => contact.last_name.as_deref(),
        "owner" => contact.owner.as_deref(),
        "lifecycle_stage" => Some(contact.lifecycle_stage.as_str()),
        "tags" => return contact.tags.iter().any(|t| t.contains(needle)),
        _ => return contact.properties.get(field).is_some_and(|v| value_contains(v, needle)),
    };
    core.is_some_and(|s| s.contains(needle))
}

fn decay(half_life_days: Option<f64>, now: Timestamp, at: Timestamp) -> f64 {
    match half_life_days {
        None => 1.0,
        Some(half_life) => {
            let age_days = (now.saturating_sub(at)).max(0) as f64 / DAY_MS as f64;
            0.5_f64.powf(age_days / half_life)
        }
    }
}

fn rule_filter(rule: &EventRule) -> String {
    match (&rule.property, &rule.contains) {
        (Some(p), Some(c)) => format!(" {p}~{c}"),
        (Some(p), None) => format!(" {p}"),
        _ => String::new(),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A number as people write it: `30`, `24.5`, `7.07`.
fn plain(x: f64) -> String {
    let r = round2(x);
    // `-0` after rounding a tiny negative reads as a bug in a reason line.
    if r == 0.0 { "0".into() } else { format!("{r}") }
}

fn signed(x: f64) -> String {
    let p = plain(x);
    if p.starts_with('-') { p } else { format!("+{p}") }
}

/// The plugin: validates the install's config and runs [`score_events`].
pub struct RulesScorer;

impl Plugin for RulesScorer {
    type Config = Config;

    fn describe() -> Description {
        let number = serde_json::json!({"type": "number"});
        Description::new("rules-scorer", env!("CARGO_PKG_VERSION"))
            .summary("Lead score from points per event and contact field, with optional time decay and a cap")
            .kind(Kind::Scorer)
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "Rules scorer",
                "type": "object",
                "additionalProperties": false,
                "required": ["rules"],
                "properties": {
                    "rules": {
                        "description": "Points per matching event.",
                        "type": "array",
                        "maxItems": 100,
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["event_kind", "points"],
                            "properties": {
                                "event_kind": {"type": "string", "minLength": 1, "description": "Event kind, e.g. page_viewed."},
                                "points": number.clone(),
                                "property": {"type": "string", "minLength": 1, "description": "Event property to look at, e.g. url."},
                                "contains": {"type": "string", "description": "Only events whose property contains this text (case-sensitive)."},
                                "max_times": {"type": "integer", "minimum": 1, "description": "Count at most this many (most recent) events."}
                            },
                            "dependentRequired": {"contains": ["property"]}
                        }
                    },
                    "half_life_days": {
                        "description": "An event's points halve every this many days; absent: no decay.",
                        "type": "number",
                        "exclusiveMinimum": 0
                    },
                    "contact_rules": {
                        "description": "Points when a contact field contains some text.",
                        "type": "array",
                        "maxItems": 100,
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["property", "contains", "points"],
                            "properties": {
                                "property": {"type": "string", "minLength": 1},
                                "contains": {"type": "string"},
                                "points": number
                            }
                        }
                    },
                    "max_score": {"type": "number", "description": "The score never goes above this."}
                }
            }))
            .reads(InputQuery {
                contact_properties: CONTACT_PROPERTIES.iter().map(|p| p.to_string()).collect(),
                // Empty means every kind: the rules name kinds per install,
                // and the description cannot depend on the install.
                event_kinds: Vec::new(),
                event_window_days: WINDOW_DAYS,
                max_events: MAX_EVENTS,
            })
    }
}

impl Scorer for RulesScorer {
    fn score(ctx: &Context, config: &Config, contact: &Contact, events: &[Event]) -> Result<Score, PluginError> {
        config.validate().map_err(|e| PluginError::permanent(format!("invalid config: {e}")))?;
        let score = score_events(config, contact, events, ctx.now);
        if !score.value.is_finite() {
            return Err(PluginError::permanent("the rules add up to a number too large to be a score"));
        }
        Ok(score)
    }
}

cairn_sdk::register_plugin!(RulesScorer: scorer);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testkit::{self, TestHost};
    use serde_json::json;

    fn view(id: &str, url: &str, at: Timestamp) -> Event {
        Event::new(id, "c1", "page_viewed", at).with_property("url", url)
    }

    #[test]
    fn counts_matching_events_up_to_max_times() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let now = host.now;
        let host = host
            .with_event(view("e1", "/pricing", now - 1000))
            .with_event(view("e2", "/pricing?plan=pro", now - 2000))
            .with_event(view("e3", "/pricing", now - 3000))
            .with_event(view("e4", "/pricing", now - 4000))
            .with_event(view("e5", "/blog", now - 5000))
            .with_event(Event::new("e6", "c1", "form_submitted", now - 6000));
        let config = json!({"rules": [
            {"event_kind": "page_viewed", "points": 10, "property": "url", "contains": "/pricing", "max_times": 3},
            {"event_kind": "form_submitted", "points": 25},
            {"event_kind": "email_opened", "points": 1}
        ]});
        let score = testkit::run_scorer::<RulesScorer>(&host, config, "c1").expect("scores");
        assert_eq!(score.value, 55.0);
        assert_eq!(score.reasons, vec!["+30 page_viewed url~/pricing (3x)", "+25 form_submitted (1x)"]);
    }

    #[test]
    fn points_halve_every_half_life() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let now = host.now;
        let host = host
            .with_event(view("fresh", "/pricing", now))
            .with_event(view("month", "/pricing", now - 30 * DAY_MS))
            .with_event(view("two-months", "/pricing", now - 60 * DAY_MS))
            .with_event(view("future", "/pricing", now + DAY_MS));
        let config = json!({"half_life_days": 30, "rules": [{"event_kind": "page_viewed", "points": 10}]});
        let score = testkit::run_scorer::<RulesScorer>(&host, config, "c1").expect("scores");
        // 10 (now) + 10 (future: never more than full value) + 5 + 2.5
        assert_eq!(score.value, 27.5);

        let config: Config = serde_json::from_value(
            json!({"half_life_days": 7, "rules": [{"event_kind": "page_viewed", "points": 10}]}),
        )
        .expect("config");
        let ten_days = [view("e", "/x", now - 10 * DAY_MS)];
        let score = score_events(&config, &Contact::new("c1"), &ten_days, now);
        // 10 * 0.5^(10/7) = 3.71498...
        assert_eq!(score.value, 3.71);
        assert_eq!(score.reasons, vec!["+3.71 page_viewed (1x)"]);
    }

    #[test]
    fn max_times_keeps_the_most_recent_events_under_decay() {
        let now = 1_000 * DAY_MS;
        let config: Config = serde_json::from_value(json!({
            "half_life_days": 10,
            "rules": [{"event_kind": "page_viewed", "points": 8, "max_times": 1}]
        }))
        .expect("config");
        // Deliberately oldest first: the newest (age 0) must be the one counted.
        let events = [view("old", "/", now - 10 * DAY_MS), view("new", "/", now)];
        assert_eq!(score_events(&config, &Contact::new("c1"), &events, now).value, 8.0);
    }

    #[test]
    fn contact_rules_add_points_and_max_score_clamps() {
        let contact = Contact::new("c1").with_property("job_title", "Senior VP Sales").with_property("country", "DE");
        let host = TestHost::new().with_contact(contact);
        let now = host.now;
        let host = (0..10).fold(host, |h, i| h.with_event(view(&format!("e{i}"), "/pricing", now - i * 1000)));
        let config = json!({
            "rules": [{"event_kind": "page_viewed", "points": 10}],
            "contact_rules": [
                {"property": "job_title", "contains": "VP", "points": 15},
                {"property": "country", "contains": "US", "points": 50},
                {"property": "lifecycle_stage", "contains": "lead", "points": -5}
            ],
            "max_score": 100
        });
        let score = testkit::run_scorer::<RulesScorer>(&host, config, "c1").expect("scores");
        assert_eq!(score.value, 100.0);
        assert_eq!(
            score.reasons,
            vec!["+100 page_viewed (10x)", "+15 job_title~VP", "-5 lifecycle_stage~lead", "capped at 100"]
        );
    }

    #[test]
    fn the_plugin_and_the_pure_function_agree() {
        let contact = Contact::new("c1").with_property("industry", "SaaS");
        let host = TestHost::new().with_contact(contact.clone());
        let now = host.now;
        let host = (0..40).fold(host, |h, i| {
            let url = if i % 3 == 0 { "/pricing" } else { "/docs" };
            h.with_event(view(&format!("e{i}"), url, now - i * DAY_MS))
        });
        let config = json!({
            "half_life_days": 14,
            "rules": [
                {"event_kind": "page_viewed", "points": 10, "property": "url", "contains": "/pricing", "max_times": 5},
                {"event_kind": "page_viewed", "points": 1}
            ],
            "contact_rules": [{"property": "industry", "contains": "SaaS", "points": 5}]
        });
        let via_plugin = testkit::run_scorer::<RulesScorer>(&host, config.clone(), "c1").expect("scores");
        let events = cairn_sdk::Host::recent_events(&host, "c1", &[], now - 90 * DAY_MS, 500).expect("events");
        let config: Config = serde_json::from_value(config).expect("config");
        assert_eq!(via_plugin, score_events(&config, &contact, &events, now));
        assert_eq!(via_plugin.reasons.len(), 3);
    }

    #[test]
    fn a_bad_config_is_a_permanent_error_with_a_reason() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let err =
            testkit::run_scorer::<RulesScorer>(&host, json!({"rules": [], "bogus": 1}), "c1").expect_err("rejects");
        assert!(!err.retryable);
        assert!(err.message.contains("bogus"), "{}", err.message);

        let config = json!({"rules": [{"event_kind": "page_viewed", "points": 1, "contains": "/x"}]});
        let err = testkit::run_scorer::<RulesScorer>(&host, config, "c1").expect_err("rejects");
        assert!(err.message.contains("no `property`"), "{}", err.message);

        let config = json!({"rules": [], "half_life_days": 0});
        let err = testkit::run_scorer::<RulesScorer>(&host, config, "c1").expect_err("rejects");
        assert!(err.message.contains("half_life_days"), "{}", err.message);
    }

    #[test]
    fn a_sum_beyond_f64_is_an_error_not_infinity() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let now = host.now;
        let host = host.with_event(view("a", "/", now)).with_event(view("b", "/", now));
        let config = json!({"rules": [{"event_kind": "page_viewed", "points": 1.0e308}]});
        let err = testkit::run_scorer::<RulesScorer>(&host, config, "c1").expect_err("rejects");
        assert!(!err.retryable);
    }

    #[test]
    fn describe_declares_schema_and_reads() {
        let d = RulesScorer::describe();
        assert_eq!(d.kinds, vec![Kind::Scorer]);
        assert_eq!(d.config_schema["additionalProperties"], json!(false));
        assert_eq!(d.config_schema["required"], json!(["rules"]));
        assert_eq!(d.reads.event_window_days, 90);
        assert_eq!(d.reads.max_events, 500);
        assert!(d.reads.event_kinds.is_empty());
        assert!(d.reads.contact_properties.contains(&"job_title".to_string()));
        assert!(d.capabilities.is_empty());
    }
}
