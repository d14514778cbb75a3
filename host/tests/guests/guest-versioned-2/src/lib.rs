//! Version 2.0.0 of `versioned-scorer`: scores every contact 2.0, so
//! a test can tell which version of an install answered (upgrade, rollback).

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("versioned-scorer", "2.0.0", { Ok(Score { value: 2.0, reasons: vec!["version 2".into()] }) });
