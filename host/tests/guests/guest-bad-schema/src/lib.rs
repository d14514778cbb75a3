//! Attack: `describe()` returns a config schema that is JSON but not a JSON
//! Schema (`"type": "no-such-type"`).
//!
//! The host builds each install's settings form and validates configs with
//! that schema; it must refuse the component at upload, naming the problem.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-bad-schema", "0.1.0")
            .summary("test guest")
            .kind(Kind::Scorer)
            .config_schema(serde_json::json!({"type": "no-such-type", "minimum": "not a number"}))
    }
}

impl Scorer for Guest {
    fn score(_: &Context, _: &Config, _: &Contact, _: &[Event]) -> Result<Score, PluginError> {
        Ok(Score { value: 1.0, reasons: Vec::new() })
    }
}

cairn_sdk::register_plugin!(Guest: scorer);
