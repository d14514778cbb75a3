//! Attack: returns NaN as the score.
//!
//! NaN poisons every comparison (thresholds, sorting, "score went up"). The
//! host must reject a non-finite score as a failed call and keep the stored
//! score unchanged.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-nan-scorer", "0.1.0").summary("hostile test guest").kind(Kind::Scorer)
    }
}

impl Scorer for Guest {
    fn score(_: &Context, _: &Config, _: &Contact, _: &[Event]) -> Result<Score, PluginError> {
        Ok(Score { value: f64::NAN, reasons: vec!["guest-nan-scorer: NaN".into()] })
    }
}

cairn_sdk::register_plugin!(Guest: scorer);
