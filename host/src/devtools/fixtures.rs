//! Fixture files: one plugin call each, for `cairn plugin test`.
//!
//! A fixture is either a bare [`RecordedCall`] (what `plugin replay --save`
//! and the invocation record hold):
//!
//! ```json
//! {"export": "execute", "config": {"tag": "vip"}, "contact": {"id": "c1"}}
//! ```
//!
//! or that call wrapped with what to check and how to run it:
//!
//! ```json
//! {
//!   "description": "a contact without the tag gets it",
//!   "call": {"export": "execute", "config": {"tag": "vip"}, "contact": {"id": "c1"}},
//!   "grants": {"store_write": true, "http": ["api.example.com"]},
//!   "now": 1767225600000,
//!   "expect": {"tag": "vip", "changed": true}
//! }
//! ```
//!
//! - `grants` (default: what the plugin's `describe()` asks for): to test how
//!   the plugin copes when an admin grants less.
//! - `now` (default: the real time): the call's clock, for plugins that
//!   weigh events by age.
//! - `expect`: the result must equal this JSON (numbers compare by value, so
//!   `20` matches a score of `20.0`), or, when it is an object with
//!   `error_cause` (and optionally `error_message_contains`) and nothing
//!   else, the call must fail that way.
//!
//! Unknown fields are refused everywhere, by name, so a typo does not
//! silently turn a check off.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::runtime::grants::Grants;
use crate::runtime::recorded::RecordedCall;

/// The failure causes a call can have, as recorded and as `error_cause`
/// names them (see [`crate::runtime::FailureCause`]).
pub const FAILURE_CAUSES: [&str; 10] = [
    "deadline",
    "fuel",
    "memory",
    "stack-overflow",
    "trap",
    "plugin",
    "output-too-large",
    "invalid-output",
    "unsupported",
    "unavailable",
];

/// The capabilities a fixture's call is run with.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureGrants {
    /// `store-read`.
    #[serde(default)]
    pub store_read: bool,
    /// `store-write`.
    #[serde(default)]
    pub store_write: bool,
    /// `state`.
    #[serde(default)]
    pub state: bool,
    /// `http:<host>` for each host.
    #[serde(default)]
    pub http: Vec<String>,
}

impl FixtureGrants {
    /// As runtime grants; host names are checked as an install's would be.
    pub fn to_grants(&self) -> anyhow::Result<Grants> {
        let mut strings: Vec<String> = Vec::new();
        for (on, name) in [(self.store_read, "store-read"), (self.store_write, "store-write"), (self.state, "state")] {
            if on {
                strings.push(name.into());
            }
        }
        strings.extend(self.http.iter().map(|h| format!("http:{h}")));
        Grants::parse(&strings).map_err(|e| anyhow::anyhow!("grants: {e}"))
    }
}

/// What a fixture's result must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// The call succeeds with this result.
    Result(Json),
    /// The call fails with this cause (and a message containing this text).
    Failure {
        /// `plugin`, `trap`, `fuel`, ...
        cause: String,
        /// Text the error message must contain.
        message_contains: Option<String>,
    },
}

/// One fixture file, parsed.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The file name (`tags-the-contact.json`).
    pub name: String,
    /// What it checks, in words.
    pub description: Option<String>,
    /// The call.
    pub call: RecordedCall,
    /// Grants; `None`: what `describe()` asks for.
    pub grants: Option<FixtureGrants>,
    /// The call's clock, epoch ms; `None`: now.
    pub now: Option<i64>,
    /// The check; `None`: the call must succeed.
    pub expect: Option<Expectation>,
}

/// The wrapper form, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapper {
    #[serde(default)]
    description: Option<String>,
    call: RecordedCall,
    #[serde(default)]
    grants: Option<FixtureGrants>,
    #[serde(default)]
    now: Option<i64>,
    #[serde(default)]
    expect: Option<Json>,
}

/// `T` from `value`, with the path of the offending field in the error.
fn from_json<T: serde::de::DeserializeOwned>(value: Json) -> anyhow::Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            anyhow::anyhow!("{}", e.into_inner())
        } else {
            anyhow::anyhow!("at `{path}`: {}", e.into_inner())
        }
    })
}

/// Read an `expect` value.
fn expectation(value: Json) -> anyhow::Result<Expectation> {
    let Some(object) = value.as_object().filter(|o| o.contains_key("error_cause")) else {
        return Ok(Expectation::Result(value));
    };
    if let Some(other) = object.keys().find(|k| *k != "error_cause" && *k != "error_message_contains") {
        bail!(
            "expect: `{other}` next to `error_cause`: an expected failure has only `error_cause` and \
             `error_message_contains`"
        );
    }
    let cause = object["error_cause"].as_str().context("expect.error_cause must be a string")?;
    if !FAILURE_CAUSES.contains(&cause) {
        bail!("expect.error_cause `{cause}` is not a failure cause; expected one of {}", FAILURE_CAUSES.join(", "));
    }
    let message_contains = match object.get("error_message_contains") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(_) => bail!("expect.error_message_contains must be a string"),
    };
    Ok(Expectation::Failure { cause: cause.to_string(), message_contains })
}

/// Parse fixture text; `name` is the file name, used in messages.
pub fn parse(name: &str, text: &str) -> anyhow::Result<Fixture> {
    let value: Json = serde_json::from_str(text).with_context(|| format!("{name} is not JSON"))?;
    let Some(object) = value.as_object() else {
        bail!("{name}: a fixture is a JSON object (a recorded call with `export`, or `{{\"call\": ...}}`)");
    };
    if object.contains_key("call") {
        let w: Wrapper = from_json(value).with_context(|| format!("{name} is not a valid fixture"))?;
        let expect = w.expect.map(expectation).transpose().with_context(|| name.to_string())?;
        if let Some(g) = &w.grants {
            g.to_grants().with_context(|| name.to_string())?;
        }
        return Ok(Fixture {
            name: name.to_string(),
            description: w.description,
            call: w.call,
            grants: w.grants,
            now: w.now,
            expect,
        });
    }
    if object.contains_key("export") {
        let call: RecordedCall = from_json(value).with_context(|| format!("{name} is not a valid recorded call"))?;
        return Ok(Fixture { name: name.to_string(), description: None, call, grants: None, now: None, expect: None });
    }
    bail!(
        "{name}: neither a recorded call (it has no `export`) nor a fixture (it has no `call`); see `cairn plugin test --help`"
    )
}

/// Read one fixture file.
pub fn read(path: &Path) -> anyhow::Result<Fixture> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&name, &text)
}

/// The fixture files to run: `path` itself when it is a file, else its
/// `*.json` files sorted by name (so the output is in a stable order).
pub fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .with_context(|| format!("no fixtures folder at {}: create it, or pass --fixtures <dir>", path.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} has no *.json fixtures: add one (a recorded call, see the crate's README)", path.display());
    }
    Ok(files)
}

/// Whether `actual` equals `expected`, numbers compared by value.
pub fn json_matches(expected: &Json, actual: &Json) -> bool {
    match (expected, actual) {
        (Json::Number(a), Json::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        (Json::Array(a), Json::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_matches(x, y)),
        (Json::Object(a), Json::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| json_matches(v, w)))
        }
        _ => expected == actual,
    }
}

/// A call's outcome as the check sees it: the result, or the cause and
/// message of the failure.
pub type Outcome<'a> = Result<&'a Json, (&'a str, &'a str)>;

/// Check an outcome against a fixture's expectation; `Err` says how it differs.
pub fn check(expect: Option<&Expectation>, outcome: Outcome<'_>) -> Result<(), String> {
    match (expect, outcome) {
        (None, Ok(_)) => Ok(()),
        (None, Err((cause, _))) => Err(format!("the call failed ({cause}) and the fixture expects no failure")),
        (Some(Expectation::Result(want)), Ok(got)) => {
            if json_matches(want, got) {
                Ok(())
            } else {
                Err(format!("expected {want}"))
            }
        }
        (Some(Expectation::Result(want)), Err((cause, _))) => {
            Err(format!("expected {want}, but the call failed ({cause})"))
        }
        (Some(Expectation::Failure { cause, .. }), Ok(_)) => {
            Err(format!("expected a `{cause}` failure, but the call succeeded"))
        }
        (Some(Expectation::Failure { cause, message_contains }), Err((got_cause, message))) => {
            if cause != got_cause {
                return Err(format!("expected a `{cause}` failure, got `{got_cause}`"));
            }
            match message_contains {
                Some(text) if !message.contains(text.as_str()) => {
                    Err(format!("expected the error message to contain {text:?}"))
                }
                _ => Ok(()),
            }
        }
    }
}

/// A fixture file's text for `call` (what `plugin replay --save` writes),
/// fields in reading order: what it is, when, the call, the check.
pub fn fixture_text(description: &str, now: Option<i64>, call: &RecordedCall, expect: Option<&Json>) -> String {
    #[derive(serde::Serialize)]
    struct Saved<'a> {
        description: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        now: Option<i64>,
        call: &'a RecordedCall,
        #[serde(skip_serializing_if = "Option::is_none")]
        expect: Option<&'a Json>,
    }
    let saved = Saved { description, now, call, expect };
    // Plain data with string keys: serialising it cannot fail.
    serde_json::to_string_pretty(&saved).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_forms_parse() {
        let bare =
            parse("a.json", r#"{"export": "execute", "config": {"tag": "x"}, "contact": {"id": "c1"}}"#).unwrap();
        assert!(bare.expect.is_none() && bare.grants.is_none());
        let wrapped = parse(
            "b.json",
            r#"{"call": {"export": "score"}, "grants": {"store_read": true, "http": ["api.example.com"]},
                "expect": {"error_cause": "plugin", "error_message_contains": "points"}}"#,
        )
        .unwrap();
        let grants = wrapped.grants.unwrap().to_grants().unwrap();
        assert!(grants.store_read && !grants.store_write && grants.http_hosts.contains("api.example.com"));
        assert_eq!(
            wrapped.expect,
            Some(Expectation::Failure { cause: "plugin".into(), message_contains: Some("points".into()) })
        );
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let e = format!("{:#}", parse("x.json", r#"{"call": {"export": "score"}, "expcet": 1}"#).unwrap_err());
        assert!(e.contains("x.json") && e.contains("expcet"), "{e}");
        let e = format!(
            "{:#}",
            parse("x.json", r#"{"call": {"export": "score"}, "grants": {"store_wrte": true}}"#).unwrap_err()
        );
        assert!(e.contains("grants") && e.contains("store_wrte"), "{e}");
        let e = format!(
            "{:#}",
            parse("x.json", r#"{"call": {"export": "score"}, "expect": {"error_cause": "boom"}}"#).unwrap_err()
        );
        assert!(e.contains("boom") && e.contains("plugin"), "{e}");
        let e = format!(
            "{:#}",
            parse("x.json", r#"{"call": {"export": "score"}, "grants": {"http": ["*"]}}"#).unwrap_err()
        );
        assert!(e.contains("x.json"), "{e}");
        let e = format!("{:#}", parse("x.json", r#"{"contact": {}}"#).unwrap_err());
        assert!(e.contains("export") && e.contains("call"), "{e}");
    }

    #[test]
    fn a_saved_fixture_reads_back() {
        let call = parse("a.json", r#"{"export": "execute", "contact": {"id": "c1"}}"#).unwrap().call;
        let text = fixture_text("why", Some(5), &call, None);
        assert!(text.find("description") < text.find("\"call\""), "{text}");
        let back = parse("a.json", &text).unwrap();
        assert_eq!((back.call, back.now, back.description.as_deref()), (call, Some(5), Some("why")));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_matches(&json!({"score": 20, "r": [1]}), &json!({"score": 20.0, "r": [1.0]})));
        assert!(!json_matches(&json!({"score": 20}), &json!({"score": 20.5})));
        assert!(!json_matches(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }

    #[test]
    fn outcomes_are_checked_against_expectations() {
        let ok = json!({"tag": "vip"});
        assert!(check(None, Ok(&ok)).is_ok());
        assert!(check(None, Err(("trap", "boom"))).is_err());
        assert!(check(Some(&Expectation::Result(json!({"tag": "gold"}))), Ok(&ok)).is_err());
        let failure = Expectation::Failure { cause: "plugin".into(), message_contains: Some("tag".into()) };
        assert!(check(Some(&failure), Err(("plugin", "bad tag"))).is_ok());
        assert!(check(Some(&failure), Err(("plugin", "bad"))).is_err());
        assert!(check(Some(&failure), Err(("trap", "bad tag"))).is_err());
        assert!(check(Some(&failure), Ok(&ok)).is_err());
    }
}
