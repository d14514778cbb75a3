//! Version 1.0.1 of `versioned-scorer`: scores like 1.0.0 (1.0), from other
//! bytes, so swapping between the two changes no contact: what the swap
//! itself costs the events flowing through, with nothing else moving.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("versioned-scorer", "1.0.1", { Ok(Score { value: 1.0, reasons: vec!["version 1.0.1".into()] }) });
