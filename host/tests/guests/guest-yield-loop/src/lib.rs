//! Attack: a slow loop that keeps yielding to the host inside `score`: it
//! sleeps a millisecond (a `wasi:clocks` poll, a host call), forever.
//!
//! It burns almost no fuel, so the instruction budget never stops it; the
//! host must still end the call at its wall-clock deadline.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-yield-loop", {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
});
