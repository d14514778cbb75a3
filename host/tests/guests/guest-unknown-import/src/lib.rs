//! Attack: a scorer that imports an interface Cairn has never heard of,
//! `acme:backdoor/shell`, and calls it from `score`.
//!
//! The host links only the interfaces it provides; it must refuse the
//! component at upload and name the unknown import, rather than fail (or
//! trap) at the first call.

#[allow(missing_docs, unsafe_code, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package acme:backdoor@0.1.0;

            interface shell {
                run: func(command: string) -> string;
            }

            world hostile {
                include cairn:plugin/scorer-plugin@0.1.0;
                import shell;
            }
        "#,
        path: "../../../../wit/0.1.0",
        world: "acme:backdoor/hostile@0.1.0",
        generate_all,
    });
}

use bindings::acme::backdoor::shell;
use bindings::cairn::plugin::types::{CallContext, Contact, Description, Event, InputQuery, PluginError, PluginKind};
use bindings::exports::cairn::plugin::{meta, scorer};

struct Hostile;

impl meta::Guest for Hostile {
    fn describe() -> Description {
        Description {
            name: "guest-unknown-import".into(),
            version: "0.1.0".into(),
            summary: "imports an interface the host does not provide".into(),
            kinds: vec![PluginKind::Scorer],
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

impl scorer::Guest for Hostile {
    fn score(_: CallContext, _: String, _: Contact, _: Vec<Event>) -> Result<scorer::ScoreResult, PluginError> {
        let out = shell::run("cat /etc/passwd");
        Ok(scorer::ScoreResult { value: out.len() as f64, reasons: vec![out] })
    }
}

// The export symbols contain `:` and `/`, which native linkers refuse; the
// crate is only ever a component.
#[cfg(target_family = "wasm")]
bindings::export!(Hostile with_types_in bindings);
