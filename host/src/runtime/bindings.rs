//! Host-side bindings for the `cairn:plugin@0.1.0` WIT package.
//!
//! One `bindgen!` over the `plugin` world gives the import traits the host
//! implements and, per exported interface, `GuestIndices` that load just the
//! exports a component has. Components built against the per-kind worlds
//! (`scorer-plugin`, ...) export fewer interfaces; the runtime looks each
//! kind's export up on its own, so both kinds of component load.

#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit/0.1.0",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::cairn::plugin::types;
pub use self::exports::cairn::plugin as guest;
