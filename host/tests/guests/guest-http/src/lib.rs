//! Attack: an action that GETs whatever URL its config names (the tests pass
//! hosts that were not granted, loopback, private and metadata addresses).
//!
//! The host must allow only the hosts granted to the install, refuse loopback
//! and private addresses unless the operator allows them, and bound the time
//! and size of the exchange; a refusal reaches the guest as a host error,
//! which this guest returns as a permanent plugin error.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct Config {
    url: String,
}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-http", "0.1.0")
            .summary("hostile test guest")
            .kind(Kind::Action)
            // Asks for any host; what it gets is what the test grants.
            .capability(Capability::Http("*".into()))
            .config_schema(serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["url"],
                "properties": {"url": {"type": "string"}}
            }))
    }
}

impl Action for Guest {
    fn execute(ctx: &Context, config: &Config, _: &ActionInput) -> Result<Outputs, PluginError> {
        let request =
            HttpRequest { method: "GET".into(), url: config.url.clone(), headers: Vec::new(), body: Vec::new() };
        let response = ctx.http_send(&request).map_err(|e| PluginError::permanent(e.to_string()))?;
        let mut out = Outputs::new();
        out.insert("status".into(), Value::Number(f64::from(response.status)));
        Ok(out)
    }
}

cairn_sdk::register_plugin!(Guest: action);
