//! A scorer written straight against the WIT `scorer-plugin` world with
//! wit-bindgen, no SDK: what a plugin in another language looks like. It
//! exports only `meta` and `scorer`; the host must load it and call it.
//! The score is the number of events it was given.

#[allow(missing_docs, unsafe_code, clippy::all)]
mod bindings {
    wit_bindgen::generate!({ world: "scorer-plugin", path: "../../../../wit/0.1.0" });
}

use bindings::cairn::plugin::types::{CallContext, Contact, Description, Event, InputQuery, PluginError, PluginKind};
use bindings::exports::cairn::plugin::{meta, scorer};

struct RawScorer;

impl meta::Guest for RawScorer {
    fn describe() -> Description {
        Description {
            name: "guest-raw-scorer".into(),
            version: "0.1.0".into(),
            summary: "counts events".into(),
            kinds: vec![PluginKind::Scorer],
            config_schema: "{\"type\": \"object\"}".into(),
            capabilities: Vec::new(),
            reads: InputQuery {
                contact_properties: Vec::new(),
                event_kinds: Vec::new(),
                event_window_days: 30,
                max_events: 100,
            },
        }
    }
}

impl scorer::Guest for RawScorer {
    fn score(_: CallContext, _: String, _: Contact, events: Vec<Event>) -> Result<scorer::ScoreResult, PluginError> {
        Ok(scorer::ScoreResult { value: events.len() as f64, reasons: vec![format!("{} events", events.len())] })
    }
}

// The export symbols contain `:` and `/`, which native linkers refuse; the
// crate is only ever a component.
#[cfg(target_family = "wasm")]
bindings::export!(RawScorer with_types_in bindings);
