//! Host-side bindings for the `cairn:plugin@0.1.0` WIT package and the
//! optional `cairn:health@0.1.0` self-test.
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

/// Host-side bindings for the optional `cairn:health@0.1.0` `self-test`
/// export. Its world exports only that interface and imports nothing, so
/// no import traits are generated twice.
pub mod health {
    wasmtime::component::bindgen!({
        world: "cairn:health/self-test-plugin",
        path: ["../wit/0.1.0", "../wit/health/0.1.0"],
        exports: { default: async },
    });

    pub use self::exports::cairn::health::self_test;
}
