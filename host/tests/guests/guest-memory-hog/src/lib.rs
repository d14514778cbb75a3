//! Attack: allocates without bound inside `score`.
//!
//! The host must stop the linear memory at its cap (the allocation fails and
//! the guest traps), fail only that call, and not take the process down.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-memory-hog", {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        // Write every page so the memory is really committed, not just reserved.
        for i in (0..block.len()).step_by(4096) {
            block[i] = 1;
        }
        hoard.push(std::hint::black_box(block));
    }
});
