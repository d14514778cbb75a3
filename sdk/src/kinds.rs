//! One trait per plugin kind. A type implements [`Plugin`] and the traits of
//! the kinds it registers with [`crate::register_plugin!`].
//!
//! Functions are associated (no `self`): Cairn runs every call in a fresh
//! sandbox, so there is no state to keep between calls except the install's
//! key-value state ([`Context::state_get`]).

use crate::context::Context;
use crate::types::{
    ActionInput, Contact, Description, Enrollment, Event, InboundEvent, InboundRequest, Message, Outputs, PluginError,
    Receipt, Score, SelfCheck, Timestamp,
};

/// What every plugin is.
pub trait Plugin {
    /// The install's config, deserialized from its JSON. Use `()`-like empty
    /// structs for plugins without settings.
    type Config: serde::de::DeserializeOwned;

    /// Name, version, kinds, config schema, capabilities, inputs.
    fn describe() -> Description;

    /// Checks the plugin runs on itself before a new version of it takes
    /// over an install (an upgrade or a hot reload): any failed check keeps
    /// the old version running and is shown to the admin. Runs with no
    /// tenant (store, state and HTTP answer "not allowed"), so exercise your
    /// own logic on inputs you bring, e.g. call your `score` on a sample
    /// contact. None by default.
    fn self_test() -> Vec<SelfCheck> {
        Vec::new()
    }
}

/// Computes a score. Must be deterministic: same inputs, same score.
pub trait Scorer: Plugin {
    /// Score `contact` from `events` (those declared in `describe().reads`, newest first).
    fn score(ctx: &Context, config: &Self::Config, contact: &Contact, events: &[Event]) -> Result<Score, PluginError>;
}

/// Decides which contacts start an automation.
pub trait Trigger: Plugin {
    /// Called for each event; `history` holds the contact's events declared in
    /// `describe().reads`, newest first, including `event`.
    fn on_event(
        ctx: &Context,
        config: &Self::Config,
        contact: &Contact,
        event: &Event,
        history: &[Event],
    ) -> Result<Vec<Enrollment>, PluginError>;

    /// Called on the install's schedule. Enrolls nobody unless overridden.
    fn on_schedule(_ctx: &Context, _config: &Self::Config, _now: Timestamp) -> Result<Vec<Enrollment>, PluginError> {
        Ok(Vec::new())
    }
}

/// Does a workflow step's work.
pub trait Action: Plugin {
    /// Run the step; outputs are visible to later steps.
    fn execute(ctx: &Context, config: &Self::Config, input: &ActionInput) -> Result<Outputs, PluginError>;
}

/// Delivers messages and parses provider callbacks.
pub trait Channel: Plugin {
    /// Deliver a message.
    fn send(ctx: &Context, config: &Self::Config, message: &Message) -> Result<Receipt, PluginError>;

    /// Turn a provider callback into events. Accepts none unless overridden.
    fn parse_inbound(
        _ctx: &Context,
        _config: &Self::Config,
        _request: &InboundRequest,
    ) -> Result<Vec<InboundEvent>, PluginError> {
        Ok(Vec::new())
    }
}
