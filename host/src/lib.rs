//! # Cairn host
//!
//! A CRM automation host: one customer store, an event pipeline, and
//! behaviour supplied by sandboxed WebAssembly components (triggers, actions,
//! scorers, channel adapters) that tenants write and upload.
//!
//! ## Layout
//! - [`runtime`]: wasmtime engine, compile cache, per-call limits, host imports.
//! - [`store`]: the customer store over sqlx (SQLite by default, PostgreSQL).
//! - [`registry`]: plugin versions, installs and the live table of loaded installs.
//! - [`clock`]: business time, system or manual (shared by store and engine).
//! - [`engine`]: durable intake (group commit), the event pipeline, workflows.
//! - [`api`]: the HTTP API (axum).
//! - [`server`]: wiring all of it into a running server.
//! - [`cluster`]: several servers on one PostgreSQL database, told of each other's changes.
//! - [`catalog`]: the prebuilt plugins embedded in the binary.
//! - [`demo`], [`mod@bench`]: `cairn demo` and `cairn bench`.
//! - [`devtools`]: `cairn plugin new|build|test|push|replay`.
//! - [`watch`]: `cairn serve --watch`, rebuild and hot-reload from source.
#![deny(unsafe_code)]

pub mod api;
pub mod bench;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod demo;
pub mod devtools;
pub mod engine;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod store;
pub mod watch;
