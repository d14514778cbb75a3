//! Attack: sleeps for an hour inside `score`, parked in a host call (the
//! `wasi:io/poll` wait behind `std::thread::sleep`).
//!
//! Epoch interruption only fires while wasm runs; the host must also bound
//! time spent inside its own imports and fail the call at its deadline.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-sleep", {
    std::thread::sleep(std::time::Duration::from_secs(3600));
    Ok(Score { value: 1.0, reasons: vec!["guest-sleep: woke up".into()] })
});
