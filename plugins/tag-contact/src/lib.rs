//! # tag-contact: add or remove a tag on the run's contact
//!
//! The smallest useful workflow step ("tag as hot", "remove from nurture").
//! Tags are sets, so the step is naturally idempotent: a retried step that
//! adds a tag twice or removes a missing one changes nothing, and needs no
//! idempotency key.
//!
//! ## Layout
//! - `Config`: the tag and the direction.
//! - `TagContact`: the plugin.

use cairn_sdk::prelude::*;
use serde::Deserialize;

/// Longest tag accepted. Tags are shown as chips in lists and used as
/// filters; a paragraph in a tag is a mistake in the config, not a tag.
const MAX_TAG_LEN: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The tag.
    tag: String,
    /// Remove instead of add.
    #[serde(default)]
    remove: bool,
}

struct TagContact;

impl Plugin for TagContact {
    type Config = Config;

    fn describe() -> Description {
        Description::new("tag-contact", env!("CARGO_PKG_VERSION"))
            .summary("Add or remove a tag on the contact")
            .kind(Kind::Action)
            .capability(Capability::StoreWrite)
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "Tag contact",
                "type": "object",
                "additionalProperties": false,
                "required": ["tag"],
                "properties": {
                    "tag": {
                        "description": "The tag, e.g. hot.",
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_TAG_LEN,
                        "pattern": "\\S"
                    },
                    "remove": {
                        "description": "Remove the tag instead of adding it.",
                        "type": "boolean",
                        "default": false
                    }
                }
            }))
    }
}

impl Action for TagContact {
    fn execute(ctx: &Context, config: &Config, input: &ActionInput) -> Result<Outputs, PluginError> {
        // Surrounding spaces are invisible in the editor and would make " hot"
        // a different tag from "hot".
        let tag = config.tag.trim();
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(PluginError::permanent(format!(
                "invalid config: tag must have 1 to {MAX_TAG_LEN} non-blank characters"
            )));
        }
        let action = if config.remove {
            ctx.remove_tag(&input.contact.id, tag)?;
            "removed"
        } else {
            ctx.add_tag(&input.contact.id, tag)?;
            "added"
        };
        let mut out = Outputs::new();
        out.insert("tag".into(), tag.into());
        out.insert("action".into(), action.into());
        Ok(out)
    }
}

cairn_sdk::register_plugin!(TagContact: action);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testkit::{self, TestHost};
    use serde_json::json;

    fn host() -> TestHost {
        let mut contact = Contact::new("c1");
        contact.tags = vec!["newsletter".into()];
        TestHost::new().with_contact(contact)
    }

    #[test]
    fn adds_the_tag_once_even_when_retried() {
        let host = host();
        for _ in 0..2 {
            let out =
                testkit::run_action::<TagContact>(&host, json!({"tag": " hot "}), "c1", "run1:step1").expect("runs");
            assert_eq!(out.get("tag"), Some(&Value::from("hot")));
            assert_eq!(out.get("action"), Some(&Value::from("added")));
        }
        assert_eq!(host.contact("c1").expect("contact").tags, vec!["newsletter", "hot"]);
    }

    #[test]
    fn removes_the_tag() {
        let host = host();
        let out = testkit::run_action::<TagContact>(&host, json!({"tag": "newsletter", "remove": true}), "c1", "k")
            .expect("runs");
        assert_eq!(out.get("action"), Some(&Value::from("removed")));
        assert!(host.contact("c1").expect("contact").tags.is_empty());
        // Removing a tag that is not there is not an error.
        testkit::run_action::<TagContact>(&host, json!({"tag": "newsletter", "remove": true}), "c1", "k")
            .expect("still fine");
    }

    #[test]
    fn a_blank_tag_or_unknown_setting_is_rejected() {
        let host = host();
        let err = testkit::run_action::<TagContact>(&host, json!({"tag": "   "}), "c1", "k").expect_err("rejects");
        assert!(!err.retryable);
        let err = testkit::run_action::<TagContact>(&host, json!({"tag": "x", "colour": "red"}), "c1", "k")
            .expect_err("rejects");
        assert!(err.message.contains("colour"), "{}", err.message);
        assert_eq!(host.contact("c1").expect("contact").tags, vec!["newsletter"]);
    }

    #[test]
    fn a_contact_deleted_since_the_run_started_fails_permanently() {
        let host = TestHost::new();
        let ctx = Context::new(&host, "install", "call", host.now, false);
        let input = ActionInput { contact: Contact::new("gone"), trigger_event: None, idempotency_key: "k".into() };
        let config = Config { tag: "hot".into(), remove: false };
        let err = TagContact::execute(&ctx, &config, &input).expect_err("not found");
        assert!(!err.retryable);
        assert!(err.message.contains("not found"), "{}", err.message);
    }

    #[test]
    fn describe_asks_for_store_write_only() {
        let d = TagContact::describe();
        assert_eq!(d.capabilities, vec![Capability::StoreWrite]);
        assert_eq!(d.config_schema["required"], json!(["tag"]));
        assert_eq!(d.config_schema["additionalProperties"], json!(false));
    }
}
