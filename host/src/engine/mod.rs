//! The engine: durable intake, the event pipeline, and workflows.
//!
//! ## Layout
//! - [`intake`]: group commit of incoming events; the API answers 202 only
//!   after the events' transaction committed.
//! - [`latency`]: how long events wait from accepted to processed.
//! - [`pipeline`]: claims committed events, runs scorers and thresholds, and
//!   enrolls contacts in the workflows their events trigger.
//! - [`workflows`]: durable multi-step workflows (definitions, enrollment,
//!   the runner, dry runs).
//! - [`actions`]: calling an action or channel install for a workflow step.
//! - [`automation`]: per-tenant cache of lifecycle thresholds.

pub mod actions;
pub mod automation;
pub mod intake;
pub mod latency;
pub mod pipeline;
pub mod workflows;

/// Business time lives in [`crate::clock`] (the store uses it too).
pub use crate::clock::Clock;
pub use intake::{Intake, IntakeError};
pub use pipeline::Pipeline;
