//! Attack: returns a score with 100 000 reasons of 100 bytes each (10 MB).
//!
//! The host must enforce its cap on what a plugin returns: fail the call
//! (or truncate) without storing or logging 10 MB per call.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-huge-output", {
    let reason = "x".repeat(100);
    Ok(Score { value: 1.0, reasons: vec![reason; 100_000] })
});
