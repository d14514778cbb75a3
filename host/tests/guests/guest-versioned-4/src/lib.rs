//! Version 4.0.0 of `versioned-scorer`: passes its self-test, then traps on
//! every real call, so the host must roll it back on its failure rate.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("versioned-scorer", "4.0.0", { panic!("version 4 is broken") }, {
    vec![SelfCheck::new("loads", true, "")]
});
