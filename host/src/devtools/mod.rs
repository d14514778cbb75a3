//! # `cairn plugin`: the plugin developer's tools
//!
//! What a developer needs between "I want a plugin" and "it runs in my
//! tenant's workflows", without reading the host's code: a crate that builds
//! and passes its tests as generated, one command to build the component, a
//! local harness that runs it in the *real* sandbox (same engine, limits and
//! host imports as `cairn serve`) and shows what each call used against its
//! limits, an upload, and a replay of a call that failed on a server.
//!
//! ```text
//! cairn plugin new action my-tagger      # scaffold ./my-tagger
//! cairn plugin build my-tagger           # cargo build --release --target wasm32-wasip2
//! cairn plugin test my-tagger            # run fixtures/*.json in the sandbox
//! cairn plugin push my-tagger --server http://127.0.0.1:7700 --key $KEY --install --config '{"tag":"vip"}'
//! cairn plugin upgrade <install id> <version id> --server … --key …
//! cairn plugin rollback <install id> --server … --key …
//! cairn plugin replay <invocation id> --plugin my_tagger.wasm --server … --key …
//! ```
//!
//! ## Layout
//! - [`cli`]: the clap subcommands and their dispatch.
//! - [`scaffold`]: `plugin new`; the generated files live in `templates/`
//!   (real files, embedded with `include_str!`, so they can be read and
//!   edited as what they are).
//! - [`build`]: `plugin build`, and finding a crate's built `.wasm`.
//! - [`fixtures`]: the fixture file format and how a result is checked
//!   against a fixture's `expect`.
//! - [`runner`]: the harness: the real runtime, a scratch store, one call per
//!   fixture in test mode, and the report line.
//! - [`push`]: `plugin push` (upload, optionally install) over the HTTP API.
//! - [`installs`]: `plugin upgrade|rollback|history`: an install's version.
//! - [`replay`]: `plugin replay`: a recorded call, fetched or from a file, run
//!   against a local build.
//!
//! Everything here is a client of the public surface (the runtime's
//! [`crate::runtime::recorded::RecordedCall`], the HTTP API); nothing in the
//! server depends on it.

pub mod build;
pub mod cli;
pub mod fixtures;
pub mod installs;
pub mod push;
pub mod replay;
pub mod runner;
pub mod scaffold;

use std::path::PathBuf;

/// The `sdk/` folder next to the sources this binary was built from: the
/// default `cairn-sdk` of a new crate. Only meaningful on the machine that
/// built `cairn`; elsewhere `plugin new --sdk` names it.
pub fn default_sdk_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk"))
}

/// The workspace's `Cargo.lock` next to those sources. A new crate gets a
/// copy so it resolves the very versions the SDK was tested with, offline,
/// and reuses artifacts already built for them.
pub fn workspace_lock_file() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
}
