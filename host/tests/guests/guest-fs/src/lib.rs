//! Attack: reads `/etc/passwd` with `std::fs` inside `score`, so the
//! component imports `wasi:filesystem`.
//!
//! The host must give plugins no filesystem: either refuse the component at
//! upload because of the import, or link the import to nothing (no preopened
//! directories) so the read fails. The file must never be read.

use cairn_sdk::prelude::*;

include!("../../hostile_scorer.rs");

hostile_scorer!("guest-fs", {
    match std::fs::read_to_string("/etc/passwd") {
        Ok(text) => Ok(Score { value: text.len() as f64, reasons: vec![format!("read /etc/passwd: {text}")] }),
        Err(e) => Err(PluginError::permanent(format!("guest-fs: read failed: {e}"))),
    }
});
