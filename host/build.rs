//! Builds every guest component (prebuilt plugins, examples, hostile test
//! guests) to `wasm32-wasip2`, once per change of their sources.
//!
//! Why a build script: `cargo run -- demo` and `cargo test` must work on a
//! fresh clone with no other step, and the binary embeds the prebuilt plugin
//! catalog. The guests are built by a nested cargo into their own target
//! directory (`target/guests`), so it never waits on the outer build's lock,
//! and with the size-optimised `plugin` profile (about 50 KB per component).
//! Cargo's own up-to-date checks make the nested build a no-op when nothing
//! changed.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const GUEST_DIRS: [&str; 3] = ["plugins", "examples", "host/tests/guests"];

fn main() {
    let host_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = host_dir.parent().expect("host/ lives in the workspace root").to_path_buf();

    for dir in GUEST_DIRS.iter().chain(&["sdk", "wit"]) {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    // sqlx::migrate! embeds the SQL files; a change to them alone must rebuild.
    println!("cargo:rerun-if-changed={}", host_dir.join("migrations").display());
    println!("cargo:rerun-if-env-changed=CAIRN_GUEST_TARGET_DIR");

    let packages = guest_packages(&root);
    let target_dir = std::env::var_os("CAIRN_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("guests")))
        .unwrap_or_else(|| root.join("target").join("guests"));

    ensure_wasm_target();
    build_guests(&root, &target_dir, &packages);

    let out = target_dir.join(TARGET).join("plugin");
    println!("cargo:rustc-env=CAIRN_GUEST_DIR={}", out.display());
}

/// Package names of the guest crates: by convention each directory's name.
fn guest_packages(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for dir in GUEST_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for entry in entries.flatten() {
            if entry.path().join("Cargo.toml").is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    names
}

/// `RUSTUP_AUTO_INSTALL=0` on these machines means `rust-toolchain.toml`
/// alone does not install the target: add it when it is missing.
fn ensure_wasm_target() {
    let Ok(listed) = Command::new("rustup").args(["target", "list", "--installed"]).output() else {
        return; // no rustup: the nested build reports a missing target itself
    };
    if String::from_utf8_lossy(&listed.stdout).lines().any(|l| l.trim() == TARGET) {
        return;
    }
    let status = Command::new("rustup").args(["target", "add", TARGET]).status();
    if !matches!(status, Ok(s) if s.success()) {
        println!("cargo:warning=could not add the {TARGET} target; run `rustup target add {TARGET}`");
    }
}

fn build_guests(root: &Path, target_dir: &Path, packages: &[String]) {
    if packages.is_empty() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--locked", "--profile", "plugin", "--target", TARGET, "--target-dir"])
        .arg(target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // The outer build's settings must not leak into the guest build: clippy's
    // wrapper, host rustflags and per-package variables would all change it.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("DEP_")
        {
            cmd.env_remove(key.as_ref());
        }
    }
    for key in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "RUSTDOC",
        "RUSTC_LINKER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(key);
    }
    let output = cmd.output().expect("failed to run cargo for the guest plugins");
    if !output.status.success() {
        panic!("building the guest plugins for {TARGET} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
}
