//! Attack: reads its own contact 5 000 times in one `score` call, hammering
//! the database through the `store` import.
//!
//! The host must stop answering past its per-invocation host-call budget:
//! the import returns `limit`, which this guest propagates with `?`, so the
//! call fails as a plugin error that names the limit.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-host-call-flood", "0.1.0")
            .summary("test guest")
            .kind(Kind::Scorer)
            .capability(Capability::StoreRead)
    }
}

impl Scorer for Guest {
    fn score(ctx: &Context, _: &Config, contact: &Contact, _: &[Event]) -> Result<Score, PluginError> {
        for _ in 0..5_000 {
            ctx.get_contact(&contact.id)?;
        }
        Ok(Score { value: 1.0, reasons: vec!["guest-host-call-flood: 5000 reads".into()] })
    }
}

cairn_sdk::register_plugin!(Guest: scorer);
