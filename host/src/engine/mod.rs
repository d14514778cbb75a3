//! The engine: durable intake, the event pipeline, rules, and the clock.
//!
//! ## Layout
//! - [`intake`]: group commit of incoming events; the API answers 202 only
//!   after the events' transaction committed.
//! - [`pipeline`]: claims committed events and runs scorers, thresholds,
//!   triggers and rule actions for them.
//! - [`rules`]: single-step rules (built-in event matchers, action execution
//!   with retries). Multi-step workflows will replace them.
//! - [`automation`]: per-tenant cache of rules and thresholds.
//! - [`clock`]: re-export of [`crate::clock`] (system or manual time).

pub mod automation;
/// The clock moved to [`crate::clock`] (the store uses it too); this path
/// stays so `crate::engine::clock::Clock` keeps working.
pub mod clock {
    pub use crate::clock::*;
}
pub mod actions;
pub mod intake;
pub mod pipeline;
pub mod workflows;

pub use crate::clock::Clock;
pub use intake::{Intake, IntakeError};
pub use pipeline::Pipeline;
