//! Attack: returns NaN as the score.
//!
//! NaN poisons every comparison (thresholds, sorting, "score went up"). The
//! host must reject a non-finite score as a failed call and keep the stored
//! score unchanged.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-nan-scorer", { Ok(Score { value: f64::NAN, reasons: vec!["guest-nan-scorer: NaN".into()] }) });
