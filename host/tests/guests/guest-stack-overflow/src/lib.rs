//! Attack: recurses without bound inside `score`.
//!
//! The host must turn the stack exhaustion into a trap for that call only
//! (wasmtime's `max_wasm_stack`), never into a crash of the host thread.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-stack-overflow", {
    let depth = dive(0);
    Ok(Score { value: depth as f64, reasons: Vec::new() })
});

/// Recursion on the wasm call stack itself (no big locals, which Rust would
/// put on its shadow stack in linear memory), so it is the engine's
/// `max_wasm_stack` guard that must catch it. `black_box` on the result keeps
/// LLVM from turning the recursion into a loop.
#[inline(never)]
fn dive(depth: u64) -> u64 {
    // Never true in practice; it only tells rustc the recursion can end.
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    std::hint::black_box(dive(depth + 1)).wrapping_add(depth)
}
