//! Plain Rust types a plugin works with: contacts, events, values, the
//! plugin's description of itself, and errors. None of them is generated
//! code, so they stay stable when the WIT bindings change.

use std::collections::BTreeMap;

/// Milliseconds since the Unix epoch, UTC.
pub type Timestamp = i64;

/// One day in milliseconds, for windows and decay.
pub const DAY_MS: i64 = 86_400_000;

/// A typed property value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// No value.
    Null,
    /// True or false.
    Bool(bool),
    /// A number.
    Number(f64),
    /// Text.
    Text(String),
    /// A list of strings.
    TextList(Vec<String>),
    /// A point in time (never produced by JSON deserialisation, which yields numbers).
    #[serde(skip_deserializing)]
    Timestamp(Timestamp),
}

impl Value {
    /// The text, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is a number (timestamps count as numbers).
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Timestamp(t) => Some(*t as f64),
            _ => None,
        }
    }

    /// True when a property filter written as JSON-ish text matches this
    /// value: text compares exactly, numbers numerically, booleans by
    /// `true`/`false`, lists when any element matches.
    pub fn matches(&self, expected: &str) -> bool {
        match self {
            Value::Null => expected.is_empty(),
            Value::Bool(b) => expected == if *b { "true" } else { "false" },
            Value::Number(n) => expected.parse::<f64>().is_ok_and(|e| e == *n),
            Value::Text(s) => s == expected,
            Value::TextList(items) => items.iter().any(|i| i == expected),
            Value::Timestamp(t) => expected.parse::<i64>().is_ok_and(|e| e == *t),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}
impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// Named values: custom properties of a contact or an event, or an action's outputs.
pub type Properties = BTreeMap<String, Value>;

/// What an action returns: values later workflow steps can read.
pub type Outputs = Properties;

/// A person in the customer store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contact {
    /// Stable id within the tenant.
    pub id: String,
    /// Primary email address.
    pub email: Option<String>,
    /// Phone number.
    pub phone: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// The owning user.
    pub owner: Option<String>,
    /// Lifecycle stage (`lead`, `mql`, `customer`…).
    pub lifecycle_stage: String,
    /// The stored score.
    pub score: f64,
    /// Tags.
    pub tags: Vec<String>,
    /// Custom properties the plugin asked for.
    pub properties: Properties,
}

impl Contact {
    /// A contact with an id and lifecycle stage `lead`.
    pub fn new(id: impl Into<String>) -> Self {
        Contact { id: id.into(), lifecycle_stage: "lead".into(), ..Default::default() }
    }

    /// Builder: set a custom property.
    pub fn with_property(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(name.to_string(), value.into());
        self
    }

    /// Builder: set the email.
    pub fn with_email(mut self, email: &str) -> Self {
        self.email = Some(email.to_string());
        self
    }

    /// Builder: set the owner.
    pub fn with_owner(mut self, owner: &str) -> Self {
        self.owner = Some(owner.to_string());
        self
    }
}

/// Something that happened to a contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event id.
    pub id: String,
    /// The contact it happened to.
    pub contact_id: String,
    /// Kind, e.g. `page_viewed`.
    pub kind: String,
    /// When.
    pub occurred_at: Timestamp,
    /// Properties, e.g. `url`.
    pub properties: Properties,
}

impl Event {
    /// An event with no properties.
    pub fn new(
        id: impl Into<String>,
        contact_id: impl Into<String>,
        kind: impl Into<String>,
        occurred_at: Timestamp,
    ) -> Self {
        Event {
            id: id.into(),
            contact_id: contact_id.into(),
            kind: kind.into(),
            occurred_at,
            properties: Properties::new(),
        }
    }

    /// Builder: set a property.
    pub fn with_property(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(name.to_string(), value.into());
        self
    }
}

/// The kinds of plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Starts automations.
    Trigger,
    /// Does a workflow step's work.
    Action,
    /// Computes scores.
    Scorer,
    /// Delivers messages, parses provider callbacks.
    Channel,
}

/// A capability the plugin asks to be granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Read contacts and events beyond the call's input.
    StoreRead,
    /// Write to the store.
    StoreWrite,
    /// Outbound HTTP to this host.
    Http(String),
    /// The install's own key-value state.
    State,
}

/// What a scorer or trigger reads; the host builds only this.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputQuery {
    /// Custom contact properties to include.
    pub contact_properties: Vec<String>,
    /// Event kinds to include (empty: all).
    pub event_kinds: Vec<String>,
    /// Window in days (0: no events).
    pub event_window_days: u32,
    /// At most this many events.
    pub max_events: u32,
}

/// A plugin's description of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    /// Machine name.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// One line for the catalog.
    pub summary: String,
    /// Kinds implemented.
    pub kinds: Vec<Kind>,
    /// JSON Schema of the config.
    pub config_schema: serde_json::Value,
    /// Capabilities asked for.
    pub capabilities: Vec<Capability>,
    /// Inputs read.
    pub reads: InputQuery,
}

impl Description {
    /// A description with an empty config schema (an object with no fields).
    pub fn new(name: &str, version: &str) -> Self {
        Description {
            name: name.into(),
            version: version.into(),
            summary: String::new(),
            kinds: Vec::new(),
            config_schema: serde_json::json!({"type": "object", "additionalProperties": false}),
            capabilities: Vec::new(),
            reads: InputQuery::default(),
        }
    }
    /// Builder: the catalog line.
    pub fn summary(mut self, summary: &str) -> Self {
        self.summary = summary.into();
        self
    }
    /// Builder: add a kind.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kinds.push(kind);
        self
    }
    /// Builder: the config's JSON Schema.
    pub fn config_schema(mut self, schema: serde_json::Value) -> Self {
        self.config_schema = schema;
        self
    }
    /// Builder: ask for a capability.
    pub fn capability(mut self, capability: Capability) -> Self {
        self.capabilities.push(capability);
        self
    }
    /// Builder: declare the inputs read.
    pub fn reads(mut self, reads: InputQuery) -> Self {
        self.reads = reads;
        self
    }
}

/// A score and its reasons.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// The score.
    pub value: f64,
    /// Why, e.g. "+10 viewed /pricing".
    pub reasons: Vec<String>,
}

/// One check of a plugin's [`self_test`](crate::Plugin::self_test).
#[derive(Debug, Clone, PartialEq)]
pub struct SelfCheck {
    /// A short name, e.g. "scores an email click".
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was expected and seen (may be empty when it passed).
    pub detail: String,
}

impl SelfCheck {
    /// A check named `name` that passed when `passed`, with `detail` saying
    /// what was seen: `SelfCheck::new("scores a click", score == 10.0, format!("got {score}"))`.
    pub fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> SelfCheck {
        SelfCheck { name: name.into(), passed, detail: detail.into() }
    }
}

/// A contact a trigger enrolls.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    /// The contact.
    pub contact_id: String,
    /// Why.
    pub reason: String,
}

/// An action step's input.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionInput {
    /// The contact of the run.
    pub contact: Contact,
    /// The event that started the run.
    pub trigger_event: Option<Event>,
    /// Same on every retry of the step.
    pub idempotency_key: String,
}

/// A message for a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Recipient.
    pub contact: Contact,
    /// Subject.
    pub subject: Option<String>,
    /// Body.
    pub body: String,
    /// Extra provider fields.
    pub properties: Properties,
    /// Same on every retry.
    pub idempotency_key: String,
}

/// A provider's receipt for a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// Provider's message id.
    pub provider_id: String,
    /// Provider status.
    pub status: String,
}

/// A provider callback.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRequest {
    /// Path below the install's callback URL.
    pub path: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// An event parsed from a callback.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    /// Contact by id.
    pub contact_id: Option<String>,
    /// Or by email.
    pub email: Option<String>,
    /// `opened`, `clicked`…
    pub kind: String,
    /// Extra fields.
    pub properties: Properties,
}

/// An error a plugin returns.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginError {
    /// What went wrong.
    pub message: String,
    /// Whether a retry may help.
    pub retryable: bool,
}

impl PluginError {
    /// An error a retry will not fix (bad config, bad input).
    pub fn permanent(message: impl Into<String>) -> Self {
        PluginError { message: message.into(), retryable: false }
    }
    /// An error a retry may fix (timeouts, 5xx upstream).
    pub fn retryable(message: impl Into<String>) -> Self {
        PluginError { message: message.into(), retryable: true }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

/// An error from a host service.
#[derive(Debug, Clone, PartialEq)]
pub enum HostError {
    /// The capability was not granted to this install.
    Denied(String),
    /// No such record in this tenant.
    NotFound,
    /// Arguments rejected.
    Invalid(String),
    /// A per-call limit was reached.
    Limit(String),
    /// Temporary failure.
    Unavailable(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Denied(m) => write!(f, "denied: {m}"),
            HostError::NotFound => f.write_str("not found"),
            HostError::Invalid(m) => write!(f, "invalid: {m}"),
            HostError::Limit(m) => write!(f, "limit reached: {m}"),
            HostError::Unavailable(m) => write!(f, "unavailable: {m}"),
        }
    }
}

impl std::error::Error for HostError {}

/// `?` on a host call inside a plugin: temporary failures stay retryable.
impl From<HostError> for PluginError {
    fn from(e: HostError) -> Self {
        let retryable = matches!(e, HostError::Unavailable(_));
        PluginError { message: e.to_string(), retryable }
    }
}
