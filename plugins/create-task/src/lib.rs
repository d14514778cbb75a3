//! # create-task: a follow-up task for a person, created once per step
//!
//! The step that hands a lead to sales: "Call Ada now", due in 4 hours,
//! assigned to the contact's owner. The title can name the contact with
//! `{{first_name}}`, `{{last_name}}`, `{{email}}`, `{{owner}}`, `{{score}}`
//! and any of its properties (`{{health_score}}`, `{{plan}}`).
//!
//! Workflow steps are retried after timeouts and crashes, and a retried step
//! must not leave the rep with two identical tasks: the task carries the
//! step's idempotency key, and the store returns the first task for a second
//! create with the same key.
//!
//! ## Layout
//! - `Config`: title template, due time, assignee.
//! - `render`: fills the placeholders.
//! - `CreateTask`: the plugin.

use cairn_sdk::prelude::*;
use serde::Deserialize;

/// Tasks due more than a year out are a typo (hours for days), not a plan.
const MAX_DUE_IN_HOURS: u32 = 24 * 366;

/// Longest title kept; task lists show one line.
const MAX_TITLE_LEN: usize = 200;

const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Title with `{{placeholders}}`.
    title: String,
    /// Due this many hours after the step runs; no due date when absent.
    #[serde(default)]
    due_in_hours: Option<u32>,
    /// Who does it; the host assigns the contact's owner when absent.
    #[serde(default)]
    assignee: Option<String>,
}

struct CreateTask;

impl Plugin for CreateTask {
    type Config = Config;

    fn describe() -> Description {
        Description::new("create-task", env!("CARGO_PKG_VERSION"))
            .summary("Create a task for the contact, e.g. \"Call {{first_name}} now\"; once per step, even when retried")
            .kind(Kind::Action)
            .capability(Capability::StoreWrite)
            .config_schema(serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "Create task",
                "type": "object",
                "additionalProperties": false,
                "required": ["title"],
                "properties": {
                    "title": {
                        "description": "Task title; {{first_name}}, {{last_name}}, {{email}}, {{owner}}, {{score}} and {{<property>}} are filled from the contact.",
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_TITLE_LEN
                    },
                    "due_in_hours": {
                        "description": "Due this many hours after the step runs.",
                        "type": "integer",
                        "minimum": 0,
                        "maximum": MAX_DUE_IN_HOURS
                    },
                    "assignee": {
                        "description": "Who should do it; the contact's owner when empty.",
                        "type": "string",
                        "minLength": 1
                    }
                }
            }))
    }
}

/// Fills `{{name}}` placeholders (spaces inside the braces allowed) from the
/// contact. A known field the contact lacks renders empty; an unknown name
/// is left as written, so a typo shows up in the task instead of vanishing.
fn render(template: &str, contact: &Contact) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return tidy(out);
        };
        let name = after[..end].trim();
        match field(contact, name) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    tidy(out)
}

fn field(contact: &Contact, name: &str) -> Option<String> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    match name {
        "first_name" => Some(text(&contact.first_name)),
        "last_name" => Some(text(&contact.last_name)),
        "email" => Some(text(&contact.email)),
        "owner" => Some(text(&contact.owner)),
        "score" => Some(number(contact.score)),
        // A property the contact has; one it lacks stays as written.
        _ => contact.properties.get(name).map(|v| match v {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => number(*n),
            Value::Text(t) => t.clone(),
            Value::TextList(items) => items.join(", "),
            Value::Timestamp(t) => t.to_string(),
        }),
    }
}

/// Scores are stored with decimals; a title wants "42", not "42.000001".
fn number(n: f64) -> String {
    format!("{}", (n * 100.0).round() / 100.0)
}

/// Collapses the double spaces an empty placeholder leaves behind.
fn tidy(s: String) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Action for CreateTask {
    fn execute(ctx: &Context, config: &Config, input: &ActionInput) -> Result<Outputs, PluginError> {
        let contact = &input.contact;
        let mut title = render(&config.title, contact);
        if title.is_empty() {
            // A title made only of placeholders the contact lacks: still give
            // the rep something to act on rather than fail the whole run.
            let who = contact.email.as_deref().unwrap_or(&contact.id);
            title = format!("Follow up with {who}");
        }
        if title.len() > MAX_TITLE_LEN {
            let mut cut = MAX_TITLE_LEN;
            while !title.is_char_boundary(cut) {
                cut -= 1;
            }
            title.truncate(cut);
        }
        let due_at = match config.due_in_hours {
            None => None,
            Some(h) if h <= MAX_DUE_IN_HOURS => Some(ctx.now.saturating_add(i64::from(h) * HOUR_MS)),
            Some(h) => {
                return Err(PluginError::permanent(format!(
                    "invalid config: due_in_hours must be at most {MAX_DUE_IN_HOURS}, got {h}"
                )));
            }
        };
        let assignee = config.assignee.as_deref().map(str::trim).filter(|a| !a.is_empty()).map(String::from);
        let task_id = ctx.create_task(&NewTask {
            contact_id: contact.id.clone(),
            title,
            assignee,
            due_at,
            idempotency_key: Some(input.idempotency_key.clone()),
        })?;
        let mut out = Outputs::new();
        out.insert("task_id".into(), task_id.into());
        Ok(out)
    }
}

cairn_sdk::register_plugin!(CreateTask: action);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::testkit::{self, TestHost};
    use serde_json::json;

    fn ada() -> Contact {
        let mut c = Contact::new("c1").with_email("ada@example.test").with_owner("rep@acme.test");
        c.first_name = Some("Ada".into());
        c.last_name = Some("Lovelace".into());
        c.score = 87.456;
        c
    }

    #[test]
    fn renders_the_title_and_sets_the_due_time() {
        let host = TestHost::new().with_contact(ada());
        let config =
            json!({"title": "Call {{first_name}} {{ last_name }} ({{email}}, score {{score}}) now", "due_in_hours": 4});
        let out = testkit::run_action::<CreateTask>(&host, config, "c1", "run1:step2").expect("runs");
        let tasks = host.tasks();
        assert_eq!(tasks.len(), 1);
        assert_eq!(out.get("task_id"), Some(&Value::from(tasks[0].id.clone())));
        let task = &tasks[0].task;
        assert_eq!(task.title, "Call Ada Lovelace (ada@example.test, score 87.46) now");
        assert_eq!(task.due_at, Some(host.now + 4 * HOUR_MS));
        assert_eq!(task.assignee, None, "the host assigns the owner");
        assert_eq!(task.contact_id, "c1");
        assert_eq!(task.idempotency_key.as_deref(), Some("run1:step2"));
    }

    #[test]
    fn a_retried_step_creates_one_task() {
        let host = TestHost::new().with_contact(ada());
        let config = json!({"title": "Call {{first_name}} now"});
        let first = testkit::run_action::<CreateTask>(&host, config.clone(), "c1", "run1:step2").expect("runs");
        let retry = testkit::run_action::<CreateTask>(&host, config.clone(), "c1", "run1:step2").expect("runs");
        assert_eq!(first, retry);
        assert_eq!(host.tasks().len(), 1);
        testkit::run_action::<CreateTask>(&host, config, "c1", "run2:step2").expect("runs");
        assert_eq!(host.tasks().len(), 2, "another run is another task");
    }

    #[test]
    fn properties_fill_placeholders_by_name() {
        let mut contact = Contact::new("c4");
        contact.properties.insert("health_score".into(), Value::Number(31.999));
        contact.properties.insert("plan".into(), Value::Text("pro".into()));
        let host = TestHost::new().with_contact(contact);
        let config = json!({"title": "Retention call ({{plan}}, health {{health_score}})"});
        testkit::run_action::<CreateTask>(&host, config, "c4", "k").expect("runs");
        assert_eq!(host.tasks()[0].task.title, "Retention call (pro, health 32)");
    }

    #[test]
    fn missing_fields_render_empty_and_unknown_placeholders_stay() {
        let host = TestHost::new().with_contact(Contact::new("c2"));
        let config = json!({"title": "Call {{first_name}} about {{company}} {{", "assignee": " bob@acme.test "});
        testkit::run_action::<CreateTask>(&host, config, "c2", "k").expect("runs");
        let task = &host.tasks()[0].task;
        assert_eq!(task.title, "Call about {{company}} {{");
        assert_eq!(task.assignee.as_deref(), Some("bob@acme.test"));
        assert_eq!(task.due_at, None);
    }

    #[test]
    fn a_title_of_only_missing_fields_falls_back() {
        let host = TestHost::new().with_contact(Contact::new("c3").with_email("x@y.test"));
        testkit::run_action::<CreateTask>(&host, json!({"title": "{{first_name}}"}), "c3", "k").expect("runs");
        assert_eq!(host.tasks()[0].task.title, "Follow up with x@y.test");
    }

    #[test]
    fn bad_config_is_permanent() {
        let host = TestHost::new().with_contact(ada());
        let err = testkit::run_action::<CreateTask>(&host, json!({"title": "x", "due_in_hours": 100000}), "c1", "k")
            .expect_err("rejects");
        assert!(!err.retryable);
        let err = testkit::run_action::<CreateTask>(&host, json!({"due_in_hours": 1}), "c1", "k").expect_err("rejects");
        assert!(err.message.contains("title"), "{}", err.message);
        assert!(host.tasks().is_empty());
    }

    #[test]
    fn describe_asks_for_store_write() {
        let d = CreateTask::describe();
        assert_eq!(d.capabilities, vec![Capability::StoreWrite]);
        assert_eq!(d.config_schema["required"], json!(["title"]));
        assert_eq!(d.config_schema["additionalProperties"], json!(false));
    }
}
