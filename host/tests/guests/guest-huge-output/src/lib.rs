//! Attack: returns a score with 100 000 reasons of 100 bytes each (10 MB).
//!
//! The host must enforce its cap on what a plugin returns: fail the call
//! (or truncate) without storing or logging 10 MB per call.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-huge-output", "0.1.0").summary("hostile test guest").kind(Kind::Scorer)
    }
}

impl Scorer for Guest {
    fn score(_: &Context, _: &Config, _: &Contact, _: &[Event]) -> Result<Score, PluginError> {
        let reason = "x".repeat(100);
        Ok(Score { value: 1.0, reasons: vec![reason; 100_000] })
    }
}

cairn_sdk::register_plugin!(Guest: scorer);
