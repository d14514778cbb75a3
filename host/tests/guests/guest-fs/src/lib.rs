//! Attack: reads `/etc/passwd` with `std::fs` inside `score`, so the
//! component imports `wasi:filesystem`.
//!
//! The host must give plugins no filesystem: either refuse the component at
//! upload because of the import, or link the import to nothing (no preopened
//! directories) so the read fails. The file must never be read.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-fs", "0.1.0").summary("hostile test guest").kind(Kind::Scorer)
    }
}

impl Scorer for Guest {
    fn score(_: &Context, _: &Config, _: &Contact, _: &[Event]) -> Result<Score, PluginError> {
        match std::fs::read_to_string("/etc/passwd") {
            Ok(text) => Ok(Score { value: text.len() as f64, reasons: vec![format!("read /etc/passwd: {text}")] }),
            Err(e) => Err(PluginError::permanent(format!("guest-fs: read failed: {e}"))),
        }
    }
}

cairn_sdk::register_plugin!(Guest: scorer);
