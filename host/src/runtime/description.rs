//! The host's own copy of a plugin's `describe()` result: serialisable for
//! the API and the database, and validated before a plugin is accepted.

use serde::{Deserialize, Serialize};

use crate::runtime::bindings::types as wit;

/// The kinds a plugin implements, as the API spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Starts automations.
    Trigger,
    /// Does a step's work.
    Action,
    /// Computes scores.
    Scorer,
    /// Delivers messages.
    Channel,
}

impl Kind {
    /// The WIT interface a component must export for this kind.
    pub fn export_name(self) -> &'static str {
        match self {
            Kind::Trigger => "cairn:plugin/trigger@0.1.0",
            Kind::Action => "cairn:plugin/action@0.1.0",
            Kind::Scorer => "cairn:plugin/scorer@0.1.0",
            Kind::Channel => "cairn:plugin/channel@0.1.0",
        }
    }
}

/// What a scorer or trigger reads (see the WIT `input-query`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// A validated plugin description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// Machine name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Catalog line.
    pub summary: String,
    /// Kinds implemented.
    pub kinds: Vec<Kind>,
    /// JSON Schema of the config.
    pub config_schema: serde_json::Value,
    /// Capabilities asked for, as grant strings (`store-write`, `http:host`).
    pub capabilities: Vec<String>,
    /// Inputs read.
    pub reads: InputQuery,
}

/// Longest event window a plugin may ask for: bounds what one call copies.
pub const MAX_WINDOW_DAYS: u32 = 400;
/// Most events a plugin may ask for per call.
pub const MAX_EVENTS: u32 = 1000;

impl Description {
    /// Validate what `describe()` returned. The message names the field.
    pub fn from_wit(d: wit::Description) -> Result<Description, String> {
        if d.name.is_empty()
            || d.name.len() > 64
            || !d.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!("describe().name `{}` must be 1-64 characters of a-z, 0-9 and -", d.name));
        }
        if d.version.is_empty()
            || d.version.len() > 32
            || !d.version.chars().all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
        {
            return Err(format!("describe().version `{}` is not a version like 1.2.0", d.version));
        }
        if d.kinds.is_empty() {
            return Err("describe().kinds is empty: a plugin implements at least one kind".into());
        }
        let schema: serde_json::Value =
            serde_json::from_str(&d.config_schema).map_err(|e| format!("describe().config-schema is not JSON: {e}"))?;
        if !schema.is_object() {
            return Err("describe().config-schema must be a JSON object (a JSON Schema)".into());
        }
        if let Err(e) = jsonschema::validator_for(&schema) {
            return Err(format!("describe().config-schema is not a valid JSON Schema: {e}"));
        }
        let mut kinds = Vec::new();
        for k in d.kinds {
            let kind = match k {
                wit::PluginKind::Trigger => Kind::Trigger,
                wit::PluginKind::Action => Kind::Action,
                wit::PluginKind::Scorer => Kind::Scorer,
                wit::PluginKind::Channel => Kind::Channel,
            };
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        let capabilities = d
            .capabilities
            .into_iter()
            .map(|c| match c {
                wit::Capability::StoreRead => "store-read".to_string(),
                wit::Capability::StoreWrite => "store-write".to_string(),
                wit::Capability::State => "state".to_string(),
                wit::Capability::Http(host) => format!("http:{host}"),
            })
            .collect();
        Ok(Description {
            name: d.name,
            version: d.version,
            summary: d.summary.chars().take(300).collect(),
            kinds,
            config_schema: schema,
            capabilities,
            reads: InputQuery {
                contact_properties: d.reads.contact_properties.into_iter().take(100).collect(),
                event_kinds: d.reads.event_kinds.into_iter().take(100).collect(),
                event_window_days: d.reads.event_window_days.min(MAX_WINDOW_DAYS),
                max_events: d.reads.max_events.min(MAX_EVENTS),
            },
        })
    }

    /// Whether the plugin implements `kind`.
    pub fn has(&self, kind: Kind) -> bool {
        self.kinds.contains(&kind)
    }
}
