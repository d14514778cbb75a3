//! A channel: "delivers" messages by logging them, and turns a provider's
//! JSON callbacks into events.
//!
//! A real channel would call its provider's API with `ctx.http_send` (ask
//! for `Capability::Http("api.provider.example".into())` in `describe()`);
//! this one writes the message to the call's log, so it works anywhere and
//! shows the shape: a receipt whose id is stable across retries of the same
//! step, and callbacks parsed into `delivered`, `opened`, `clicked`,
//! `bounced`, `replied` or `unsubscribed` events.
//!
//! Callback body: one object or a list of them,
//! `{"event": "opened", "email": "ada@example.com", "properties": {...}}`
//! (or `"contact_id"` instead of `"email"`).

use cairn_sdk::prelude::*;
use serde::Deserialize;

/// The event kinds Cairn knows for channels.
const INBOUND_KINDS: [&str; 6] = [
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "replied",
    "unsubscribed",
];

/// The install's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Shown as the sender in the log line.
    pub from: String,
}

/// The plugin.
pub struct LogChannel;

impl Plugin for LogChannel {
    type Config = Config;

    fn describe() -> Description {
        Description::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
            .summary("Deliver messages to the log; parse JSON callbacks")
            .kind(Kind::Channel)
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "additionalProperties": false,
                "required": ["from"],
                "properties": {
                    "from": {"description": "The sender, e.g. team@acme.example.", "type": "string", "minLength": 1}
                }
            }))
    }
}

/// One callback item.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Callback {
    event: String,
    #[serde(default)]
    contact_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    properties: Properties,
}

impl Channel for LogChannel {
    fn send(ctx: &Context, config: &Config, message: &Message) -> Result<Receipt, PluginError> {
        // Without an address a retry cannot help: fail permanently.
        let Some(to) = message.contact.email.as_deref() else {
            return Err(PluginError::permanent(format!(
                "contact {} has no email address",
                message.contact.id
            )));
        };
        let subject = message.subject.as_deref().unwrap_or("(no subject)");
        ctx.log(
            LogLevel::Info,
            &format!(
                "from {} to {to}: {subject} ({} bytes)",
                config.from,
                message.body.len()
            ),
        );
        // The idempotency key is the same on every retry of a step, so the
        // receipt is too: a provider would deduplicate on it.
        Ok(Receipt {
            provider_id: format!("log:{}", message.idempotency_key),
            status: "delivered".into(),
        })
    }

    fn parse_inbound(
        _ctx: &Context,
        _config: &Config,
        request: &InboundRequest,
    ) -> Result<Vec<InboundEvent>, PluginError> {
        let bad = |m: String| PluginError::permanent(format!("malformed callback: {m}"));
        let items = match serde_json::from_slice::<serde_json::Value>(&request.body) {
            Ok(serde_json::Value::Array(items)) => items,
            Ok(item) => vec![item],
            Err(e) => return Err(bad(format!("the body is not JSON: {e}"))),
        };
        let mut events = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let cb: Callback =
                serde_json::from_value(item).map_err(|e| bad(format!("item {i}: {e}")))?;
            let kind = cb.event.trim().to_ascii_lowercase();
            if !INBOUND_KINDS.contains(&kind.as_str()) {
                return Err(bad(format!(
                    "item {i}: unknown event {:?}; expected one of {}",
                    cb.event,
                    INBOUND_KINDS.join(", ")
                )));
            }
            if cb.contact_id.is_none() && cb.email.is_none() {
                return Err(bad(format!(
                    "item {i} names no contact: give contact_id or email"
                )));
            }
            events.push(InboundEvent {
                contact_id: cb.contact_id,
                email: cb.email,
                kind,
                properties: cb.properties,
            });
        }
        Ok(events)
    }
}

cairn_sdk::register_plugin!(LogChannel: channel);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testkit::{self, TestHost};
    use serde_json::json;

    fn message(contact: Contact) -> Message {
        Message {
            contact,
            subject: Some("Welcome".into()),
            body: "Hello Ada".into(),
            properties: Properties::new(),
            idempotency_key: "run:1:welcome".into(),
        }
    }

    #[test]
    fn delivers_to_the_log_with_a_stable_receipt() {
        let host = TestHost::new();
        let msg = message(Contact::new("c1").with_email("ada@example.com"));
        let receipt =
            testkit::run_send::<LogChannel>(&host, json!({"from": "team@acme.example"}), &msg)
                .unwrap();
        assert_eq!(receipt.provider_id, "log:run:1:welcome");
        assert!(
            host.logs()[0].1.contains("to ada@example.com: Welcome"),
            "{:?}",
            host.logs()
        );
    }

    #[test]
    fn a_contact_without_email_is_a_permanent_error() {
        let host = TestHost::new();
        let err = testkit::run_send::<LogChannel>(
            &host,
            json!({"from": "x"}),
            &message(Contact::new("c1")),
        )
        .unwrap_err();
        assert!(!err.retryable);
    }

    #[test]
    fn parses_callbacks_into_events() {
        let host = TestHost::new();
        let ctx = Context::new(&host, "install", "invocation", host.now, false);
        let body = json!([
            {"event": "Opened", "email": "ada@example.com"},
            {"event": "clicked", "contact_id": "c1", "properties": {"url": "https://acme.example/pricing"}}
        ]);
        let request = InboundRequest {
            path: String::new(),
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        };
        let config = Config { from: "x".into() };
        let events = LogChannel::parse_inbound(&ctx, &config, &request).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, "opened");
        assert_eq!(
            events[1].properties.get("url"),
            Some(&Value::from("https://acme.example/pricing"))
        );
    }

    #[test]
    fn unknown_callback_events_are_refused() {
        let host = TestHost::new();
        let ctx = Context::new(&host, "install", "invocation", host.now, false);
        let request = InboundRequest {
            path: String::new(),
            headers: Vec::new(),
            body: br#"{"event": "exploded", "email": "a@b.c"}"#.to_vec(),
        };
        let err =
            LogChannel::parse_inbound(&ctx, &Config { from: "x".into() }, &request).unwrap_err();
        assert!(err.message.contains("exploded"), "{}", err.message);
    }
}
