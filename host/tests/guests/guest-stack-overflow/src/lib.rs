//! Attack: recurses without bound inside `score`.
//!
//! The host must turn the stack exhaustion into a trap for that call only
//! (wasmtime's `max_wasm_stack`), never into a crash of the host thread.

use cairn_sdk::prelude::*;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {}

struct Guest;

impl Plugin for Guest {
    type Config = Config;

    fn describe() -> Description {
        Description::new("guest-stack-overflow", "0.1.0").summary("hostile test guest").kind(Kind::Scorer)
    }
}

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

impl Scorer for Guest {
    fn score(_: &Context, _: &Config, _: &Contact, _: &[Event]) -> Result<Score, PluginError> {
        let depth = dive(0);
        Ok(Score { value: depth as f64, reasons: Vec::new() })
    }
}

cairn_sdk::register_plugin!(Guest: scorer);
