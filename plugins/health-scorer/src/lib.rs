//! # health-scorer: a customer health score
//!
//! Where a lead score adds up interest from nothing, a customer's health
//! starts healthy and is pulled down by trouble: support tickets, failed
//! payments, a dropped seat count; usage (log-ins, features used) pulls it
//! back up. The score is `base + Σ points` over the recent window, clamped
//! to 0..=100, so "health below 40" means the same thing for every tenant.
//!
//! Cairn stores a second scorer's result as a contact property named after
//! the plugin (`health_score` here), and a change of it is a
//! `property_changed` event a workflow can trigger on ("health crosses below
//! 40 → churn warning").
//!
//! ## Layout
//! - [`Config`]: base, signals, window.
//! - [`health`]: the pure scoring function (tested natively).
//! - `HealthScorer`: the plugin.

use cairn_sdk::prelude::*;
use serde::Deserialize;

/// Days of events asked for: health is about now, not last year.
const WINDOW_DAYS: u32 = 30;
/// Events per call: enough for a month of an active account's signals.
const MAX_EVENTS: u32 = 500;

/// The install's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where a customer with no signals stands (default 100).
    #[serde(default = "default_base")]
    pub base: f64,
    /// Points per signal.
    pub signals: Vec<Signal>,
}

fn default_base() -> f64 {
    100.0
}

/// Points for each event of a kind (negative for trouble).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    /// Event kind, e.g. `support_ticket_opened`.
    pub event_kind: String,
    /// Points per event.
    pub points: f64,
    /// Count at most this many events of the kind.
    #[serde(default)]
    pub max_times: Option<u32>,
}

/// The health of a contact with `events` (the window's events).
pub fn health(config: &Config, events: &[Event]) -> Score {
    let mut total = config.base;
    let mut reasons = vec![format!("base {}", config.base)];
    for signal in &config.signals {
        let seen = events.iter().filter(|e| e.kind == signal.event_kind).count();
        let counted = signal.max_times.map_or(seen, |cap| seen.min(cap as usize));
        if counted > 0 {
            let points = signal.points * counted as f64;
            total += points;
            reasons.push(format!("{points:+} {} ({counted}x)", signal.event_kind));
        }
    }
    Score { value: (total.clamp(0.0, 100.0) * 100.0).round() / 100.0, reasons }
}

struct HealthScorer;

impl Plugin for HealthScorer {
    type Config = Config;

    fn describe() -> Description {
        Description::new("health-scorer", env!("CARGO_PKG_VERSION"))
            .summary("Customer health 0-100: starts at a base, trouble signals pull it down, usage pulls it up")
            .kind(Kind::Scorer)
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "Health scorer",
                "type": "object",
                "additionalProperties": false,
                "required": ["signals"],
                "properties": {
                    "base": {"type": "number", "minimum": 0, "maximum": 100, "description": "Health with no signals (default 100)."},
                    "signals": {
                        "type": "array",
                        "maxItems": 100,
                        "items": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["event_kind", "points"],
                            "properties": {
                                "event_kind": {"type": "string", "minLength": 1},
                                "points": {"type": "number"},
                                "max_times": {"type": "integer", "minimum": 1}
                            }
                        }
                    }
                }
            }))
            .reads(InputQuery {
                contact_properties: Vec::new(),
                event_kinds: Vec::new(),
                event_window_days: WINDOW_DAYS,
                max_events: MAX_EVENTS,
            })
    }
}

impl Scorer for HealthScorer {
    fn score(_ctx: &Context, config: &Config, _contact: &Contact, events: &[Event]) -> Result<Score, PluginError> {
        if !config.base.is_finite() || config.signals.iter().any(|s| !s.points.is_finite()) {
            return Err(PluginError::permanent("invalid config: base and points must be finite numbers"));
        }
        Ok(health(config, events))
    }
}

cairn_sdk::register_plugin!(HealthScorer: scorer);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str) -> Event {
        Event {
            id: String::new(),
            contact_id: String::new(),
            kind: kind.into(),
            occurred_at: 0,
            properties: Default::default(),
        }
    }

    fn config() -> Config {
        serde_json::from_value(serde_json::json!({
            "signals": [
                {"event_kind": "logged_in", "points": 2, "max_times": 5},
                {"event_kind": "support_ticket_opened", "points": -25},
                {"event_kind": "payment_failed", "points": -40}
            ]
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_customer_without_signals_is_at_the_base() {
        assert_eq!(health(&config(), &[]).value, 100.0);
    }

    #[test]
    fn trouble_pulls_health_down_and_it_never_leaves_0_to_100() {
        let events = [event("support_ticket_opened"), event("payment_failed"), event("logged_in")];
        assert_eq!(health(&config(), &events).value, 37.0);
        let worse: Vec<Event> = (0..10).map(|_| event("payment_failed")).collect();
        assert_eq!(health(&config(), &worse).value, 0.0);
        let logins: Vec<Event> = (0..20).map(|_| event("logged_in")).collect();
        assert_eq!(health(&config(), &logins).value, 100.0);
    }
}
