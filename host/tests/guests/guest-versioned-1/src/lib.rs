//! Version 1.0.0 of `versioned-scorer`: scores every contact 1.0, so
//! a test can tell which version of an install answered (upgrade, rollback).

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("versioned-scorer", "1.0.0", { Ok(Score { value: 1.0, reasons: vec!["version 1".into()] }) });
