//! Attack: returns `f64::MAX` as the score (finite, so not refused as NaN).
//!
//! A score that large overflows sums and makes every threshold meaningless;
//! the host must clamp it to ±1e9 before storing it.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-extreme-scorer", {
    Ok(Score { value: f64::MAX, reasons: vec!["guest-extreme-scorer: f64::MAX".into()] })
});
