//! An action: tags the workflow run's contact with a configured tag.
//!
//! Actions do a workflow step's work. This one adds (or, with `"remove":
//! true`, removes) a tag. Tags are sets, so running the step twice changes
//! nothing: a retried step needs no idempotency key.
//!
//! Writing tags needs the `store-write` capability, asked for in
//! `describe()`; the admin grants it when installing.

use cairn_sdk::prelude::*;
use serde::Deserialize;

/// Longest tag accepted (the host refuses longer ones too).
const MAX_TAG_LEN: usize = 100;

/// The install's config (and a workflow step's `config` laid over it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The tag, e.g. `vip`.
    pub tag: String,
    /// Remove the tag instead of adding it.
    #[serde(default)]
    pub remove: bool,
}

/// The plugin.
pub struct TagAction;

impl Plugin for TagAction {
    type Config = Config;

    fn describe() -> Description {
        Description::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
            .summary("Add or remove a tag on the contact")
            .kind(Kind::Action)
            .capability(Capability::StoreWrite)
            // Cairn draws the install form from this schema and checks every
            // install's config against it.
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "additionalProperties": false,
                "required": ["tag"],
                "properties": {
                    "tag": {"description": "The tag, e.g. vip.", "type": "string", "minLength": 1, "maxLength": MAX_TAG_LEN},
                    "remove": {"description": "Remove the tag instead of adding it.", "type": "boolean", "default": false}
                }
            }))
    }
}

impl Action for TagAction {
    fn execute(
        ctx: &Context,
        config: &Config,
        input: &ActionInput,
    ) -> Result<Outputs, PluginError> {
        // " vip" and "vip" look the same in the editor; make them the same tag.
        let tag = config.tag.trim();
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(PluginError::permanent(format!(
                "invalid config: tag must have 1 to {MAX_TAG_LEN} characters"
            )));
        }
        let contact = &input.contact;
        let had = contact.tags.iter().any(|t| t == tag);
        if config.remove {
            ctx.remove_tag(&contact.id, tag)?;
        } else {
            ctx.add_tag(&contact.id, tag)?;
        }
        ctx.log(
            LogLevel::Info,
            &format!(
                "{} tag {tag} on {}",
                if config.remove { "removed" } else { "added" },
                contact.id
            ),
        );
        // Outputs are visible to later steps of the workflow.
        let mut out = Outputs::new();
        out.insert("tag".into(), tag.into());
        out.insert("changed".into(), (had == config.remove).into());
        Ok(out)
    }
}

cairn_sdk::register_plugin!(TagAction: action);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testkit::{self, TestHost};
    use serde_json::json;

    #[test]
    fn tags_the_contact() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let out =
            testkit::run_action::<TagAction>(&host, json!({"tag": " vip "}), "c1", "run:1:tag")
                .unwrap();
        assert_eq!(host.contact("c1").unwrap().tags, vec!["vip".to_string()]);
        assert_eq!(out.get("changed"), Some(&Value::Bool(true)));
    }

    #[test]
    fn tagging_twice_changes_nothing() {
        let mut contact = Contact::new("c1");
        contact.tags.push("vip".into());
        let host = TestHost::new().with_contact(contact);
        let out =
            testkit::run_action::<TagAction>(&host, json!({"tag": "vip"}), "c1", "k").unwrap();
        assert_eq!(host.contact("c1").unwrap().tags, vec!["vip".to_string()]);
        assert_eq!(out.get("changed"), Some(&Value::Bool(false)));
    }

    #[test]
    fn removes_the_tag() {
        let mut contact = Contact::new("c1");
        contact.tags.push("vip".into());
        let host = TestHost::new().with_contact(contact);
        testkit::run_action::<TagAction>(&host, json!({"tag": "vip", "remove": true}), "c1", "k")
            .unwrap();
        assert!(host.contact("c1").unwrap().tags.is_empty());
    }

    #[test]
    fn a_blank_tag_is_a_permanent_error() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let err =
            testkit::run_action::<TagAction>(&host, json!({"tag": "  "}), "c1", "k").unwrap_err();
        assert!(!err.retryable);
        assert!(err.message.contains("tag"), "{}", err.message);
    }
}
