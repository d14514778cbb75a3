//! # webhook: signed JSON to an endpoint of the tenant's choosing
//!
//! The escape hatch every automation tool needs: hand a message (as a
//! channel) or a workflow step (as an action) to the tenant's own system, and
//! turn that system's callbacks back into events.
//!
//! Every request is a `POST` of one JSON document, signed with
//! `x-cairn-signature: sha256=<hex HMAC-SHA256(secret, body)>` so the receiver
//! can tell it came from this install, and carries the step's idempotency key
//! (`x-cairn-idempotency-key` and in the body) so the receiver can drop the
//! duplicates that retries produce. Answers map onto Cairn's retry rules:
//! 2xx delivered, 429 and 5xx retried later, any other status a permanent
//! failure (retrying a 400 gives another 400).
//!
//! In a dry run (`ctx.test_mode`) nothing is sent: a test of a workflow must
//! not reach a real endpoint.
//!
//! ## Layout
//! - `Config`: URL, secret, extra headers.
//! - `payload` / `post`: building, signing and sending the request, and
//!   mapping the answer; shared by both kinds.
//! - `Webhook`: the plugin (`Channel` and `Action`).
//! - `inbound`: the callback format `parse_inbound` accepts.

use std::collections::BTreeMap;

use cairn_sdk::prelude::*;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// A shorter secret can be brute-forced from one signed request.
const MIN_SECRET_LEN: usize = 16;

/// How much of an error response to quote in the error message: enough to
/// show the receiver's complaint, not so much that the run history fills up.
const ERROR_BODY_QUOTE: usize = 200;

/// Headers the plugin sets itself. Letting config override them would let a
/// typo unsign every request or break deduplication.
const RESERVED_HEADERS: [&str; 3] = ["content-type", "x-cairn-signature", "x-cairn-idempotency-key"];

/// Callback kinds Cairn knows (the host prefixes them by channel).
const INBOUND_KINDS: [&str; 6] = ["delivered", "opened", "clicked", "bounced", "replied", "unsubscribed"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Where to POST.
    url: String,
    /// HMAC key for `x-cairn-signature`.
    secret: String,
    /// Extra request headers, e.g. an API key the receiver expects.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

impl Config {
    fn validate(&self) -> Result<(), PluginError> {
        let bad = |m: String| Err(PluginError::permanent(format!("invalid config: {m}")));
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return bad(format!("url must start with https:// or http://, got {:?}", self.url));
        }
        if self.secret.len() < MIN_SECRET_LEN {
            return bad(format!("secret must be at least {MIN_SECRET_LEN} characters"));
        }
        if let Some(name) = self.headers.keys().find(|k| RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str())) {
            return bad(format!("header {name} is set by the plugin and cannot be configured"));
        }
        Ok(())
    }
}

/// What the receiver gets. Field names are part of the receiver's contract.
#[derive(serde::Serialize)]
struct Payload<'a> {
    idempotency_key: &'a str,
    contact: ContactJson<'a>,
    subject: Option<&'a str>,
    body: &'a str,
    properties: &'a Properties,
}

/// The contact's core fields only: custom properties can hold data the
/// tenant never meant to send to a third party.
#[derive(serde::Serialize)]
struct ContactJson<'a> {
    id: &'a str,
    email: Option<&'a str>,
    first_name: Option<&'a str>,
    last_name: Option<&'a str>,
    owner: Option<&'a str>,
    lifecycle_stage: &'a str,
    score: f64,
    tags: &'a [String],
}

impl<'a> ContactJson<'a> {
    fn of(c: &'a Contact) -> Self {
        ContactJson {
            id: &c.id,
            email: c.email.as_deref(),
            first_name: c.first_name.as_deref(),
            last_name: c.last_name.as_deref(),
            owner: c.owner.as_deref(),
            lifecycle_stage: &c.lifecycle_stage,
            score: c.score,
            tags: &c.tags,
        }
    }
}

/// `sha256=<hex>` of the body under the secret.
fn sign(secret: &str, body: &[u8]) -> Result<String, PluginError> {
    // HMAC takes keys of any length; the error branch exists only in the type.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| PluginError::permanent(format!("cannot use the secret as an HMAC key: {e}")))?;
    mac.update(body);
    Ok(format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
}

fn header<'r>(headers: &'r [(String, String)], name: &str) -> Option<&'r str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Signs and sends the payload; returns the response when it is a 2xx.
/// Callers validate the config first (before the dry-run check, so a dry run
/// reports a bad config too).
fn post(ctx: &Context, config: &Config, payload: &Payload<'_>) -> Result<HttpResponse, PluginError> {
    let body = serde_json::to_vec(payload)
        .map_err(|e| PluginError::permanent(format!("cannot encode the message as JSON: {e}")))?;
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("x-cairn-idempotency-key".to_string(), payload.idempotency_key.to_string()),
        ("x-cairn-signature".to_string(), sign(&config.secret, &body)?),
    ];
    headers.extend(config.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    let response = ctx.http_send(&HttpRequest { method: "POST".into(), url: config.url.clone(), headers, body })?;
    let status = response.status;
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let quote: String = String::from_utf8_lossy(&response.body).chars().take(ERROR_BODY_QUOTE).collect();
    let message = format!("webhook answered HTTP {status}: {}", quote.trim());
    if status == 429 || status >= 500 {
        Err(PluginError::retryable(message))
    } else {
        Err(PluginError::permanent(message))
    }
}

struct Webhook;

impl Plugin for Webhook {
    type Config = Config;

    fn describe() -> Description {
        Description::new("webhook", env!("CARGO_PKG_VERSION"))
            // `http("*")` asks for "the hosts the admin names at install":
            // the endpoint is per install, so the plugin cannot know it here.
            .summary("POST signed JSON to your endpoint (outbound hosts chosen by the admin at install) and turn its callbacks into events")
            .kind(Kind::Channel)
            .kind(Kind::Action)
            .capability(Capability::Http("*".into()))
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "Webhook",
                "type": "object",
                "additionalProperties": false,
                "required": ["url", "secret"],
                "properties": {
                    "url": {
                        "description": "Endpoint that receives the POST, e.g. https://hooks.example.com/cairn.",
                        "type": "string",
                        "format": "uri",
                        "pattern": "^https?://"
                    },
                    "secret": {
                        "description": "Key of the HMAC-SHA256 signature sent in x-cairn-signature.",
                        "type": "string",
                        "minLength": MIN_SECRET_LEN,
                        "writeOnly": true
                    },
                    "headers": {
                        "description": "Extra request headers, e.g. an API key the receiver expects.",
                        "type": "object",
                        "additionalProperties": {"type": "string"}
                    }
                }
            }))
    }
}

impl Channel for Webhook {
    fn send(ctx: &Context, config: &Config, message: &Message) -> Result<Receipt, PluginError> {
        config.validate()?;
        if ctx.test_mode {
            return Ok(Receipt { provider_id: message.idempotency_key.clone(), status: "test".into() });
        }
        let payload = Payload {
            idempotency_key: &message.idempotency_key,
            contact: ContactJson::of(&message.contact),
            subject: message.subject.as_deref(),
            body: &message.body,
            properties: &message.properties,
        };
        let response = post(ctx, config, &payload)?;
        let provider_id = header(&response.headers, "x-request-id")
            .filter(|id| !id.is_empty())
            .unwrap_or(&message.idempotency_key)
            .to_string();
        Ok(Receipt { provider_id, status: "delivered".into() })
    }

    fn parse_inbound(
        _ctx: &Context,
        _config: &Config,
        request: &InboundRequest,
    ) -> Result<Vec<InboundEvent>, PluginError> {
        inbound::parse(&request.body)
    }
}

impl Action for Webhook {
    fn execute(ctx: &Context, config: &Config, input: &ActionInput) -> Result<Outputs, PluginError> {
        config.validate()?;
        let mut out = Outputs::new();
        if ctx.test_mode {
            out.insert("status".into(), Value::Number(0.0));
            out.insert("test_mode".into(), Value::Bool(true));
            return Ok(out);
        }
        let mut properties = Properties::new();
        if let Some(event) = &input.trigger_event {
            properties.insert("trigger_event_kind".into(), event.kind.as_str().into());
            properties.insert("trigger_event_id".into(), event.id.as_str().into());
        }
        let payload = Payload {
            idempotency_key: &input.idempotency_key,
            contact: ContactJson::of(&input.contact),
            subject: None,
            body: "",
            properties: &properties,
        };
        let response = post(ctx, config, &payload)?;
        out.insert("status".into(), Value::Number(f64::from(response.status)));
        Ok(out)
    }
}

cairn_sdk::register_plugin!(Webhook: channel, action);

/// The callback format: one object or an array of them,
/// `{"event": "opened", "contact_id": "..." | "email": "...", "properties": {...}}`.
mod inbound {
    use super::*;

    /// Unknown top-level fields are ignored: senders add fields over time,
    /// and rejecting a whole callback for an extra field loses events.
    #[derive(Deserialize)]
    struct Callback {
        event: String,
        #[serde(default)]
        contact_id: Option<String>,
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        properties: Option<Properties>,
    }

    pub(super) fn parse(body: &[u8]) -> Result<Vec<InboundEvent>, PluginError> {
        let bad = |m: String| PluginError::permanent(format!("malformed callback: {m}"));
        let items = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Array(items)) => items,
            Ok(item) => vec![item],
            Err(e) => return Err(bad(format!("body is not JSON: {e}"))),
        };
        let mut events = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let at = |m: String| bad(format!("item {i}: {m}"));
            if !item.is_object() {
                return Err(at("expected an object with an `event` field".into()));
            }
            let cb: Callback = serde_json::from_value(item).map_err(|e| at(e.to_string()))?;
            let kind = cb.event.trim().to_ascii_lowercase();
            if !INBOUND_KINDS.contains(&kind.as_str()) {
                return Err(at(format!("unknown event {:?}; expected one of {}", cb.event, INBOUND_KINDS.join(", "))));
            }
            let contact_id = cb.contact_id.filter(|s| !s.trim().is_empty());
            let email = cb.email.filter(|s| !s.trim().is_empty());
            if contact_id.is_none() && email.is_none() {
                return Err(at("names no contact: give contact_id or email".into()));
            }
            events.push(InboundEvent { contact_id, email, kind, properties: cb.properties.unwrap_or_default() });
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testkit::{self, TestHost};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef-secret";

    fn config() -> serde_json::Value {
        json!({"url": "https://hooks.example.com/x", "secret": SECRET, "headers": {"x-extra": "v"}})
    }

    fn message() -> Message {
        let mut contact = Contact::new("c1").with_email("ada@example.test").with_owner("rep@acme.test");
        contact.first_name = Some("Ada".into());
        contact.tags = vec!["hot".into()];
        contact.score = 42.5;
        Message {
            contact: contact.with_property("secret_note", "not for third parties"),
            subject: Some("Hello".into()),
            body: "Hi Ada".into(),
            properties: Properties::from([("campaign".to_string(), Value::from("spring"))]),
            idempotency_key: "run1:step3".into(),
        }
    }

    fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Result<HttpResponse, HostError> {
        Ok(HttpResponse {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.as_bytes().to_vec(),
        })
    }

    /// A receiver that checks the signature like a real one would.
    fn verifying_receiver(req: &HttpRequest) -> Result<HttpResponse, HostError> {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
        mac.update(&req.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        if header(&req.headers, "x-cairn-signature") != Some(expected.as_str()) {
            return respond(401, &[], "bad signature");
        }
        respond(202, &[("X-Request-Id", "req-123")], "")
    }

    #[test]
    fn send_posts_signed_json_and_returns_the_receivers_id() {
        let host = TestHost::new().with_http(verifying_receiver);
        let receipt = testkit::run_send::<Webhook>(&host, config(), &message()).expect("delivered");
        assert_eq!(receipt, Receipt { provider_id: "req-123".into(), status: "delivered".into() });

        let sent = host.http_requests();
        assert_eq!(sent.len(), 1);
        let req = &sent[0];
        assert_eq!(req.method, "POST");
        assert_eq!(req.url, "https://hooks.example.com/x");
        assert_eq!(header(&req.headers, "content-type"), Some("application/json"));
        assert_eq!(header(&req.headers, "x-cairn-idempotency-key"), Some("run1:step3"));
        assert_eq!(header(&req.headers, "x-extra"), Some("v"));
        let body: serde_json::Value = serde_json::from_slice(&req.body).expect("JSON body");
        assert_eq!(
            body,
            json!({
                "idempotency_key": "run1:step3",
                "contact": {
                    "id": "c1", "email": "ada@example.test", "first_name": "Ada", "last_name": null,
                    "owner": "rep@acme.test", "lifecycle_stage": "lead", "score": 42.5, "tags": ["hot"]
                },
                "subject": "Hello",
                "body": "Hi Ada",
                "properties": {"campaign": "spring"}
            })
        );
    }

    #[test]
    fn a_tampered_body_fails_verification() {
        let sig = sign(SECRET, b"{\"a\":1}").expect("signs");
        assert_ne!(sig, sign(SECRET, b"{\"a\":2}").expect("signs"));
        assert_ne!(sig, sign("another-secret-of-16", b"{\"a\":1}").expect("signs"));
        // Known vector: RFC 4231 test case 2.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?").expect("signs"),
            format!("sha256={}", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn without_a_request_id_the_receipt_uses_the_idempotency_key() {
        let host = TestHost::new().with_http(|_| respond(200, &[], "ok"));
        let receipt = testkit::run_send::<Webhook>(&host, config(), &message()).expect("delivered");
        assert_eq!(receipt.provider_id, "run1:step3");
    }

    #[test]
    fn server_errors_and_rate_limits_are_retryable_client_errors_are_not() {
        for (status, retryable) in [(500, true), (503, true), (429, true), (400, false), (404, false), (301, false)] {
            let host = TestHost::new().with_http(move |_| respond(status, &[], "  upstream says no  "));
            let err = testkit::run_send::<Webhook>(&host, config(), &message()).expect_err("fails");
            assert_eq!(err.retryable, retryable, "HTTP {status}");
            assert_eq!(err.message, format!("webhook answered HTTP {status}: upstream says no"));
        }
    }

    #[test]
    fn host_errors_keep_their_retry_meaning() {
        let host = TestHost::new().with_http(|_| Err(HostError::Unavailable("connect timeout".into())));
        assert!(testkit::run_send::<Webhook>(&host, config(), &message()).expect_err("fails").retryable);
        let host = TestHost::new().with_http(|_| Err(HostError::Denied("hooks.example.com not granted".into())));
        let err = testkit::run_send::<Webhook>(&host, config(), &message()).expect_err("fails");
        assert!(!err.retryable);
        assert!(err.message.contains("not granted"), "{}", err.message);
    }

    #[test]
    fn bad_config_sends_nothing() {
        let host = TestHost::new();
        for bad in [
            json!({"url": "ftp://x", "secret": SECRET}),
            json!({"url": "https://x", "secret": "short"}),
            json!({"url": "https://x", "secret": SECRET, "headers": {"X-Cairn-Signature": "forged"}}),
            json!({"url": "https://x"}),
        ] {
            let err = testkit::run_send::<Webhook>(&host, bad.clone(), &message()).expect_err("rejects");
            assert!(!err.retryable, "{bad}");
        }
        assert!(host.http_requests().is_empty());
    }

    #[test]
    fn a_dry_run_sends_nothing() {
        let host = TestHost::new();
        let ctx = Context::new(&host, "install", "call", host.now, true);
        let config =
            Config { url: "https://hooks.example.com/x".into(), secret: SECRET.into(), headers: BTreeMap::new() };
        let receipt = Webhook::send(&ctx, &config, &message()).expect("ok");
        assert_eq!(receipt.status, "test");
        let input = ActionInput { contact: Contact::new("c1"), trigger_event: None, idempotency_key: "k".into() };
        Webhook::execute(&ctx, &config, &input).expect("ok");
        assert!(host.http_requests().is_empty());
    }

    #[test]
    fn the_action_posts_the_trigger_event_and_outputs_the_status() {
        let host = TestHost::new().with_contact(Contact::new("c1")).with_http(verifying_receiver);
        let ctx = Context::new(&host, "install", "call", host.now, false);
        let config: Config = serde_json::from_value(config()).expect("config");
        let input = ActionInput {
            contact: Contact::new("c1"),
            trigger_event: Some(Event::new("ev9", "c1", "form_submitted", host.now)),
            idempotency_key: "run7:step1".into(),
        };
        let out = Webhook::execute(&ctx, &config, &input).expect("posted");
        assert_eq!(out.get("status"), Some(&Value::Number(202.0)));
        let body: serde_json::Value = serde_json::from_slice(&host.http_requests()[0].body).expect("JSON");
        assert_eq!(body["subject"], json!(null));
        assert_eq!(body["body"], json!(""));
        assert_eq!(body["properties"], json!({"trigger_event_kind": "form_submitted", "trigger_event_id": "ev9"}));

        // Through the test kit (no trigger event): empty properties.
        let out = testkit::run_action::<Webhook>(&host, super::tests::config(), "c1", "k").expect("posted");
        assert_eq!(out.get("status"), Some(&Value::Number(202.0)));
        let body: serde_json::Value = serde_json::from_slice(&host.http_requests()[1].body).expect("JSON");
        assert_eq!(body["properties"], json!({}));

        let host = TestHost::new().with_contact(Contact::new("c1")).with_http(|_| respond(502, &[], ""));
        let err = testkit::run_action::<Webhook>(&host, super::tests::config(), "c1", "k").expect_err("fails");
        assert!(err.retryable);
    }

    fn inbound(body: &str) -> Result<Vec<InboundEvent>, PluginError> {
        let host = TestHost::new();
        let ctx = Context::new(&host, "install", "call", host.now, false);
        let config: Config = serde_json::from_value(config()).expect("config");
        let request = InboundRequest { path: "/".into(), headers: Vec::new(), body: body.as_bytes().to_vec() };
        Webhook::parse_inbound(&ctx, &config, &request)
    }

    #[test]
    fn parses_one_callback_or_many() {
        let one = inbound(r#"{"event": "opened", "contact_id": "c1", "properties": {"ip": "10.0.0.1", "n": 2}}"#)
            .expect("parses");
        assert_eq!(
            one,
            vec![InboundEvent {
                contact_id: Some("c1".into()),
                email: None,
                kind: "opened".into(),
                properties: Properties::from([
                    ("ip".to_string(), Value::from("10.0.0.1")),
                    ("n".to_string(), Value::Number(2.0))
                ]),
            }]
        );
        let many = inbound(
            r#"[{"event": "Clicked", "email": "ada@example.test", "properties": {"url": "https://x"}, "extra": 1},
                {"event": "bounced", "email": "b@example.test"}]"#,
        )
        .expect("parses");
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].kind, "clicked");
        assert_eq!(many[0].email.as_deref(), Some("ada@example.test"));
        assert!(many[1].properties.is_empty());
        assert_eq!(inbound("[]").expect("parses"), vec![]);
    }

    #[test]
    fn malformed_callbacks_are_permanent_errors_that_say_why() {
        for (body, why) in [
            ("not json", "not JSON"),
            (r#"{"event": "opened"}"#, "names no contact"),
            (r#"{"event": "exploded", "contact_id": "c1"}"#, "unknown event"),
            (r#"{"contact_id": "c1"}"#, "missing field `event`"),
            (r#"[{"event": "opened", "contact_id": "c1"}, 3]"#, "item 1"),
            (r#"{"event": "opened", "contact_id": "c1", "properties": {"deep": {"x": 1}}}"#, "item 0"),
            ("\"opened\"", "expected an object"),
        ] {
            let err = inbound(body).expect_err(body);
            assert!(!err.retryable, "{body}");
            assert!(err.message.contains(why), "{body}: {}", err.message);
        }
    }

    #[test]
    fn describe_asks_for_admin_chosen_http() {
        let d = Webhook::describe();
        assert_eq!(d.kinds, vec![Kind::Channel, Kind::Action]);
        assert_eq!(d.capabilities, vec![Capability::Http("*".into())]);
        assert_eq!(d.config_schema["required"], json!(["url", "secret"]));
        assert_eq!(d.config_schema["additionalProperties"], json!(false));
    }
}
