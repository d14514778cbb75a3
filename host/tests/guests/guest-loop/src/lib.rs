//! Attack: spins forever inside `score`.
//!
//! The host must interrupt the call at its deadline (epoch interruption) or
//! when its fuel runs out, fail only that call, and stay responsive.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-loop", {
    let mut n = 0u64;
    // black_box keeps the optimiser from proving the loop has no effect.
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
});
