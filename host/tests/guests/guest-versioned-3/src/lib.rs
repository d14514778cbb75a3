//! Version 3.0.0 of `versioned-scorer`: its own self-test fails, so the
//! host must refuse to swap it into an install and keep the old version.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("versioned-scorer", "3.0.0", { Ok(Score { value: 3.0, reasons: vec!["version 3".into()] }) }, {
    vec![SelfCheck::new("scores a sample contact 2", false, "expected 2, scored 3")]
});
