//! Attack: an action that reads a contact id it was handed in its config (the
//! test passes the id of another tenant's contact) and, if the read works,
//! tags that contact `pwned`.
//!
//! The host must scope every store import to the tenant of the call: the read
//! answers `not-found` (not `denied`, which would confirm the id exists
//! elsewhere), and the other tenant's contact is never tagged.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct Config {
    contact_id: String,
}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-cross-tenant", "0.1.0")
            .summary("hostile test guest")
            .kind(Kind::Action)
            .capability(Capability::StoreRead)
            .capability(Capability::StoreWrite)
            .config_schema(serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["contact_id"],
                "properties": {"contact_id": {"type": "string"}}
            }))
    }
}

impl Action for Guest {
    fn execute(ctx: &Context, config: &Config, _: &ActionInput) -> Result<Outputs, PluginError> {
        let mut out = Outputs::new();
        match ctx.get_contact(&config.contact_id) {
            Ok(_) => {
                out.insert("read".into(), "yes".into());
                if let Err(e) = ctx.add_tag(&config.contact_id, "pwned") {
                    out.insert("error".into(), e.to_string().into());
                }
            }
            Err(e) => {
                out.insert("read".into(), "no".into());
                out.insert("error".into(), e.to_string().into());
            }
        }
        Ok(out)
    }
}

cairn_sdk::register_plugin!(Guest: action);
