//! A component whose `describe()` claims the `action` kind but that exports
//! only `meta` and `scorer` (built on the `scorer-plugin` world). The host
//! must refuse it at upload, naming the missing `cairn:plugin/action` export.

#[allow(missing_docs, unsafe_code, clippy::all)]
mod bindings {
    wit_bindgen::generate!({ world: "scorer-plugin", path: "../../../../wit/0.1.0" });
}

use bindings::cairn::plugin::types::{CallContext, Contact, Description, Event, InputQuery, PluginError, PluginKind};
use bindings::exports::cairn::plugin::{meta, scorer};

struct Liar;

impl meta::Guest for Liar {
    fn describe() -> Description {
        Description {
            name: "guest-missing-export".into(),
            version: "0.1.0".into(),
            summary: "claims a kind it does not export".into(),
            kinds: vec![PluginKind::Scorer, PluginKind::Action],
            config_schema: "{\"type\": \"object\"}".into(),
            capabilities: Vec::new(),
            reads: InputQuery {
                contact_properties: Vec::new(),
                event_kinds: Vec::new(),
                event_window_days: 0,
                max_events: 0,
            },
        }
    }
}

impl scorer::Guest for Liar {
    fn score(_: CallContext, _: String, _: Contact, _: Vec<Event>) -> Result<scorer::ScoreResult, PluginError> {
        Ok(scorer::ScoreResult { value: 0.0, reasons: Vec::new() })
    }
}

// The export symbols contain `:` and `/`, which native linkers refuse; the
// crate is only ever a component.
#[cfg(target_family = "wasm")]
bindings::export!(Liar with_types_in bindings);
