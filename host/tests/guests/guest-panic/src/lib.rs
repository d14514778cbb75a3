//! Attack: panics inside `score`.
//!
//! A Rust panic in wasm aborts with a trap. The host must report a failed
//! call (with the panic message from stderr if it captures it) and keep
//! serving other calls and other plugins.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-panic", { panic!("guest-panic: deliberate panic for the sandbox test") });
