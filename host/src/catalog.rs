//! The prebuilt plugin catalog, embedded in the binary.
//!
//! `build.rs` compiles each crate under `plugins/` to a component; these
//! bytes are uploaded to the global catalog at every start (an unchanged
//! version is recognised by name, version and hash and not stored twice).

/// Name and bytes of each prebuilt plugin.
pub const PREBUILT: [(&str, &[u8]); 6] = [
    ("rules-scorer", include_bytes!(concat!(env!("CAIRN_GUEST_DIR"), "/rules_scorer.wasm"))),
    ("page-visits", include_bytes!(concat!(env!("CAIRN_GUEST_DIR"), "/page_visits.wasm"))),
    ("tag-contact", include_bytes!(concat!(env!("CAIRN_GUEST_DIR"), "/tag_contact.wasm"))),
    ("create-task", include_bytes!(concat!(env!("CAIRN_GUEST_DIR"), "/create_task.wasm"))),
    ("webhook", include_bytes!(concat!(env!("CAIRN_GUEST_DIR"), "/webhook.wasm"))),
    ("health-scorer", include_bytes!(concat!(env!("CAIRN_GUEST_DIR"), "/health_scorer.wasm"))),
];

/// The directory holding every built guest component (plugins, examples and
/// the hostile test guests), for tests and the benchmark.
pub const GUEST_DIR: &str = env!("CAIRN_GUEST_DIR");

/// The bytes of a built guest by package name (`guest-loop`), if it exists.
pub fn guest_bytes(package: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(std::path::Path::new(GUEST_DIR).join(format!("{}.wasm", package.replace('-', "_"))))
}
