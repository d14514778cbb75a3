//! Attack: spins forever inside `score`.
//!
//! The host must interrupt the call at its deadline (epoch interruption) or
//! when its fuel runs out, fail only that call, and stay responsive.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-loop", "0.1.0").summary("hostile test guest").kind(Kind::Scorer)
    }
}

impl Scorer for Guest {
    fn score(_: &Context, _: &Config, _: &Contact, _: &[Event]) -> Result<Score, PluginError> {
        let mut n = 0u64;
        // black_box keeps the optimiser from proving the loop has no effect.
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

cairn_sdk::register_plugin!(Guest: scorer);
