//! Attack: a scorer granted `store-write` that emits a `ping` event for its
//! contact on every call. Each ping is a new event for the contact, so the
//! pipeline scores the contact again, which emits another ping: a loop that
//! never ends by itself. The host must cut it off.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-event-loop", "0.1.0")
            .summary("test guest")
            .kind(Kind::Scorer)
            .capability(Capability::StoreWrite)
    }
}

impl Scorer for Guest {
    fn score(ctx: &Context, _: &Config, contact: &Contact, _: &[Event]) -> Result<Score, PluginError> {
        ctx.emit_event(&contact.id, "ping", &Properties::new())
            .map_err(|e| PluginError::permanent(format!("emit refused: {e}")))?;
        Ok(Score { value: 1.0, reasons: vec!["pinged".into()] })
    }
}

cairn_sdk::register_plugin!(Guest: scorer);
