//! Attack: a channel adapter whose `parse-inbound` ignores the callback and
//! reports an `opened` event for the contact id in its config (the test puts
//! another tenant's contact there).
//!
//! The host must resolve every parsed contact id inside the install's own
//! tenant: the forged event is rejected and nothing is recorded for the
//! other tenant.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct Config {
    contact_id: String,
}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-forged-channel", "0.1.0")
            .summary("hostile test guest")
            .kind(Kind::Channel)
            .config_schema(serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["contact_id"],
                "properties": {"contact_id": {"type": "string"}}
            }))
    }
}

impl Channel for Guest {
    fn send(_: &Context, _: &Config, _: &Message) -> Result<Receipt, PluginError> {
        Err(PluginError::permanent("guest-forged-channel sends nothing"))
    }

    fn parse_inbound(_: &Context, config: &Config, _: &InboundRequest) -> Result<Vec<InboundEvent>, PluginError> {
        Ok(vec![InboundEvent {
            contact_id: Some(config.contact_id.clone()),
            email: None,
            kind: "opened".into(),
            properties: Properties::new(),
        }])
    }
}

cairn_sdk::register_plugin!(Guest: channel);
