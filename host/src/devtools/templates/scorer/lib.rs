//! A scorer: points per event kind, from the install's config.
//!
//! `{"points": {"page_viewed": 5, "email_clicked": 10}, "max_score": 100}`
//! gives a contact 5 points per page view and 10 per click in the last 90
//! days, never more than 100. Scorers must be deterministic: the same contact
//! and events always give the same score.

use std::collections::BTreeMap;

use cairn_sdk::prelude::*;
use serde::Deserialize;

/// Days of events the scorer reads. A bounded window keeps every call's
/// input, and so its cost, bounded.
const WINDOW_DAYS: u32 = 90;
/// At most this many events per call (newest first).
const MAX_EVENTS: u32 = 500;

/// The install's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Points for each event of a kind (negative to penalise).
    pub points: BTreeMap<String, f64>,
    /// The score never goes above this.
    #[serde(default)]
    pub max_score: Option<f64>,
}

/// The plugin.
pub struct PointsScorer;

impl Plugin for PointsScorer {
    type Config = Config;

    fn describe() -> Description {
        Description::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
            .summary("Points per event kind")
            .kind(Kind::Scorer)
            // The host builds only what the scorer declares it reads.
            .reads(InputQuery {
                event_window_days: WINDOW_DAYS,
                max_events: MAX_EVENTS,
                ..InputQuery::default()
            })
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "additionalProperties": false,
                "required": ["points"],
                "properties": {
                    "points": {
                        "description": "Points per event of each kind, e.g. {\"page_viewed\": 5}.",
                        "type": "object",
                        "additionalProperties": {"type": "number"}
                    },
                    "max_score": {"description": "Upper bound of the score.", "type": "number"}
                }
            }))
    }
}

impl Scorer for PointsScorer {
    fn score(
        _ctx: &Context,
        config: &Config,
        _contact: &Contact,
        events: &[Event],
    ) -> Result<Score, PluginError> {
        if let Some((kind, _)) = config.points.iter().find(|(_, p)| !p.is_finite()) {
            return Err(PluginError::permanent(format!(
                "invalid config: points for {kind} is not a number"
            )));
        }
        // Count per kind first, so the reasons read "+10 email_clicked x3"
        // rather than one line per event.
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for event in events {
            if config.points.contains_key(&event.kind) {
                *counts.entry(event.kind.as_str()).or_default() += 1;
            }
        }
        let mut value = 0.0;
        let mut reasons = Vec::new();
        for (kind, n) in counts {
            let points = config.points.get(kind).copied().unwrap_or_default();
            value += points * f64::from(n);
            reasons.push(format!("{points:+} {kind} x{n}"));
        }
        if let Some(max) = config.max_score
            && value > max
        {
            reasons.push(format!("capped at {max}"));
            value = max;
        }
        Ok(Score { value, reasons })
    }
}

cairn_sdk::register_plugin!(PointsScorer: scorer);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testkit::{self, TestHost};
    use serde_json::json;

    fn host() -> TestHost {
        let now = TestHost::new().now;
        TestHost::new()
            .with_contact(Contact::new("c1"))
            .with_event(Event::new("e1", "c1", "page_viewed", now - DAY_MS))
            .with_event(Event::new("e2", "c1", "page_viewed", now - 2 * DAY_MS))
            .with_event(Event::new("e3", "c1", "email_clicked", now - 3 * DAY_MS))
            .with_event(Event::new(
                "e4",
                "c1",
                "newsletter_opened",
                now - 4 * DAY_MS,
            ))
    }

    #[test]
    fn adds_points_per_event_kind() {
        let config = json!({"points": {"page_viewed": 5, "email_clicked": 10}});
        let score = testkit::run_scorer::<PointsScorer>(&host(), config, "c1").unwrap();
        assert_eq!(score.value, 20.0);
        assert_eq!(
            score.reasons,
            vec!["+10 email_clicked x1", "+5 page_viewed x2"]
        );
    }

    #[test]
    fn events_older_than_the_window_do_not_count() {
        let now = TestHost::new().now;
        let host = TestHost::new()
            .with_contact(Contact::new("c1"))
            .with_event(Event::new("old", "c1", "page_viewed", now - 200 * DAY_MS));
        let score =
            testkit::run_scorer::<PointsScorer>(&host, json!({"points": {"page_viewed": 5}}), "c1")
                .unwrap();
        assert_eq!(score.value, 0.0);
    }

    #[test]
    fn the_score_is_capped() {
        let config = json!({"points": {"page_viewed": 50}, "max_score": 60});
        let score = testkit::run_scorer::<PointsScorer>(&host(), config, "c1").unwrap();
        assert_eq!(score.value, 60.0);
    }

    #[test]
    fn a_config_without_points_is_refused() {
        let err = testkit::run_scorer::<PointsScorer>(&host(), json!({"max_score": 1}), "c1")
            .unwrap_err();
        assert!(err.message.contains("points"), "{}", err.message);
    }
}
