//! # assign-by-region: an example custom action
//!
//! Sets the contact's owner from one of its properties, e.g. leads from EMEA
//! go to Alice and leads from NA to Bob; everyone else to the sales inbox.
//! It is the "assign by region" step of the new-lead scenario, written the way
//! a tenant's developer would write it: only `cairn-sdk`, one config struct,
//! one trait, one macro (see README.md in this folder).
//!
//! The owner is written with `set_properties`: Cairn treats the core field
//! names `owner`, `first_name`, `last_name`, `phone` and `lifecycle_stage`
//! there as writes to those fields, so plugins need no separate call per field.

use std::collections::BTreeMap;

use cairn_sdk::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The contact property holding the region.
    property: String,
    /// Region value -> owner.
    owners: BTreeMap<String, String>,
    /// Owner when the region is missing or not in `owners`. Without it such
    /// contacts keep their current owner.
    #[serde(default)]
    default_owner: Option<String>,
}

struct AssignByRegion;

impl Plugin for AssignByRegion {
    type Config = Config;

    fn describe() -> Description {
        Description::new("assign-by-region", env!("CARGO_PKG_VERSION"))
            .summary("Set the contact's owner from its region (or any other property)")
            .kind(Kind::Action)
            .capability(Capability::StoreWrite)
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "Assign by region",
                "type": "object",
                "additionalProperties": false,
                "required": ["property", "owners"],
                "properties": {
                    "property": {
                        "description": "Contact property to read, e.g. region.",
                        "type": "string",
                        "minLength": 1
                    },
                    "owners": {
                        "description": "Owner for each value of the property, e.g. {\"EMEA\": \"alice@acme.test\"}.",
                        "type": "object",
                        "additionalProperties": {"type": "string", "minLength": 1}
                    },
                    "default_owner": {
                        "description": "Owner when the value is missing or not listed; unchanged when empty.",
                        "type": "string",
                        "minLength": 1
                    }
                }
            }))
    }
}

impl Action for AssignByRegion {
    fn execute(ctx: &Context, config: &Config, input: &ActionInput) -> Result<Outputs, PluginError> {
        let contact = &input.contact;
        // People type "emea " in forms; trim so the lookup matches the config.
        let region = contact.properties.get(&config.property).and_then(Value::as_text).map(str::trim);
        let owner = region.and_then(|r| config.owners.get(r)).or(config.default_owner.as_ref());

        let mut out = Outputs::new();
        let Some(owner) = owner else {
            out.insert("owner".into(), contact.owner.clone().map_or(Value::Null, Value::Text));
            out.insert("changed".into(), false.into());
            return Ok(out);
        };
        let changed = contact.owner.as_deref() != Some(owner.as_str());
        if changed {
            let update = Properties::from([("owner".to_string(), Value::Text(owner.clone()))]);
            ctx.set_properties(&contact.id, &update)?;
        }
        out.insert("owner".into(), owner.as_str().into());
        out.insert("changed".into(), changed.into());
        Ok(out)
    }
}

cairn_sdk::register_plugin!(AssignByRegion: action);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testkit::{self, TestHost};
    use serde_json::json;

    fn config() -> serde_json::Value {
        json!({
            "property": "region",
            "owners": {"EMEA": "alice@acme.test", "NA": "bob@acme.test"},
            "default_owner": "sales@acme.test"
        })
    }

    /// The contact's owner field after the call (`owner` in set-properties
    /// writes the core field, in the test host as in Cairn).
    fn written_owner(host: &TestHost, id: &str) -> Option<Value> {
        host.contact(id).and_then(|c| c.owner).map(Value::Text)
    }

    #[test]
    fn assigns_the_owner_of_the_region() {
        let host = TestHost::new()
            .with_contact(Contact::new("eu").with_property("region", "EMEA"))
            .with_contact(Contact::new("us").with_property("region", " NA "));
        let out = testkit::run_action::<AssignByRegion>(&host, config(), "eu", "k1").expect("runs");
        assert_eq!(out.get("owner"), Some(&Value::from("alice@acme.test")));
        assert_eq!(written_owner(&host, "eu"), Some(Value::from("alice@acme.test")));
        testkit::run_action::<AssignByRegion>(&host, config(), "us", "k2").expect("runs");
        assert_eq!(written_owner(&host, "us"), Some(Value::from("bob@acme.test")));
    }

    #[test]
    fn unknown_or_missing_regions_go_to_the_default_owner() {
        let host = TestHost::new()
            .with_contact(Contact::new("apac").with_property("region", "APAC"))
            .with_contact(Contact::new("none"));
        testkit::run_action::<AssignByRegion>(&host, config(), "apac", "k").expect("runs");
        testkit::run_action::<AssignByRegion>(&host, config(), "none", "k").expect("runs");
        assert_eq!(written_owner(&host, "apac"), Some(Value::from("sales@acme.test")));
        assert_eq!(written_owner(&host, "none"), Some(Value::from("sales@acme.test")));
    }

    #[test]
    fn without_a_default_the_owner_is_left_alone() {
        let host = TestHost::new().with_contact(Contact::new("c1").with_owner("carol@acme.test"));
        let config = json!({"property": "region", "owners": {"EMEA": "alice@acme.test"}});
        let out = testkit::run_action::<AssignByRegion>(&host, config, "c1", "k").expect("runs");
        assert_eq!(out.get("owner"), Some(&Value::from("carol@acme.test")));
        assert_eq!(out.get("changed"), Some(&Value::Bool(false)));
        assert_eq!(written_owner(&host, "c1"), Some(Value::from("carol@acme.test")));
    }

    #[test]
    fn an_owner_already_right_is_not_rewritten() {
        let contact = Contact::new("c1").with_property("region", "EMEA").with_owner("alice@acme.test");
        let host = TestHost::new().with_contact(contact);
        let out = testkit::run_action::<AssignByRegion>(&host, config(), "c1", "k").expect("runs");
        assert_eq!(out.get("changed"), Some(&Value::Bool(false)));
        assert_eq!(written_owner(&host, "c1"), Some(Value::from("alice@acme.test")));
    }

    #[test]
    fn a_config_without_owners_is_rejected() {
        let host = TestHost::new().with_contact(Contact::new("c1"));
        let err = testkit::run_action::<AssignByRegion>(&host, json!({"property": "region"}), "c1", "k")
            .expect_err("rejects");
        assert!(!err.retryable);
        assert!(err.message.contains("owners"), "{}", err.message);
    }
}
