//! Attack: panics inside `score`.
//!
//! A Rust panic in wasm aborts with a trap. The host must report a failed
//! call (with the panic message from stderr if it captures it) and keep
//! serving other calls and other plugins.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-panic", "0.1.0").summary("hostile test guest").kind(Kind::Scorer)
    }
}

impl Scorer for Guest {
    fn score(_: &Context, _: &Config, _: &Contact, _: &[Event]) -> Result<Score, PluginError> {
        panic!("guest-panic: deliberate panic for the sandbox test")
    }
}

cairn_sdk::register_plugin!(Guest: scorer);
