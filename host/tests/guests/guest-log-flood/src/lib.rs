//! Attack: writes 10 000 log lines of 10 KB each (100 MB) inside `score`,
//! then scores 7.
//!
//! Logging is not a failure, so the call must succeed; the host must keep
//! only its per-call quota of lines, each cut to its line cap, and count the
//! rest as dropped, never buffering 100 MB per call.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-log-flood", "0.1.0").summary("test guest").kind(Kind::Scorer)
    }
}

impl Scorer for Guest {
    fn score(ctx: &Context, _: &Config, _: &Contact, _: &[Event]) -> Result<Score, PluginError> {
        let line = "x".repeat(10_000);
        for _ in 0..10_000 {
            ctx.log(LogLevel::Info, &line);
        }
        Ok(Score { value: 7.0, reasons: vec!["guest-log-flood: logged 100 MB".into()] })
    }
}

cairn_sdk::register_plugin!(Guest: scorer);
