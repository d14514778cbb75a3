//! `cairn plugin build`: the crate's component, and where to find it.
//!
//! A plain `cargo build --release --target wasm32-wasip2` in the crate (so
//! its own `.cargo/config.toml`, `CARGO_TARGET_DIR` and toolchain file all
//! apply), with cargo's JSON messages read to learn the exact path of the
//! `.wasm` it produced rather than guessing it. `plugin test`, `push` and
//! `replay` find the same file without building, from `cargo metadata`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::Value as Json;

/// The target every Cairn plugin is built for: WASI preview 2 components.
pub const TARGET: &str = "wasm32-wasip2";

/// Lines of cargo's output quoted when a build fails: enough for the
/// compiler's error, not the whole log.
const STDERR_TAIL: usize = 40;

/// A plugin crate as cargo describes it.
#[derive(Debug, Clone)]
pub struct CrateInfo {
    /// The crate's folder.
    pub dir: PathBuf,
    /// Package name (`my-tagger`).
    pub package: String,
    /// Library name (`my_tagger`), which names the `.wasm`.
    pub lib_name: String,
    /// Where cargo puts build output for this crate.
    pub target_dir: PathBuf,
}

impl CrateInfo {
    /// The release component `plugin build` produces.
    pub fn wasm_path(&self) -> PathBuf {
        self.target_dir.join(TARGET).join("release").join(format!("{}.wasm", self.lib_name))
    }
}

/// A built component.
#[derive(Debug, Clone)]
pub struct Built {
    /// The crate.
    pub info: CrateInfo,
    /// The `.wasm` file.
    pub wasm: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// The cargo to run: the one that ran us when there is one (`cargo run`),
/// else `cargo` from PATH, as cargo subcommands do.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Describe the crate in `dir` (no build, no network).
pub fn crate_info(dir: &Path) -> anyhow::Result<CrateInfo> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} has no Cargo.toml: give the folder of a plugin crate (`cairn plugin new` makes one), or --plugin <file.wasm>",
            dir.display()
        );
    }
    // Absolute, so cargo's view (run from inside the crate) and ours agree.
    let dir = &dir.canonicalize().with_context(|| format!("{} cannot be opened", dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    let output = Command::new(cargo())
        .current_dir(dir)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(&manifest)
        .output()
        .context("running `cargo metadata` (is cargo installed and on PATH?)")?;
    if !output.status.success() {
        bail!("`cargo metadata` failed in {}:\n{}", dir.display(), tail(&String::from_utf8_lossy(&output.stderr)));
    }
    let meta: Json = serde_json::from_slice(&output.stdout).context("reading `cargo metadata` output")?;
    let target_dir =
        meta["target_directory"].as_str().map(PathBuf::from).context("`cargo metadata` names no target_directory")?;
    let packages = meta["packages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let package = packages
        .iter()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        .or_else(|| if packages.len() == 1 { packages.first() } else { None })
        .with_context(|| {
            format!("{} is a workspace, not a plugin crate: give the plugin crate's folder", manifest.display())
        })?;
    let name = package["name"].as_str().context("`cargo metadata` names no package")?.to_string();
    let cdylib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["crate_types"].as_array().is_some_and(|types| types.iter().any(|k| k == "cdylib")));
    let Some(cdylib) = cdylib else {
        bail!(
            "{name} does not build a component: add `[lib] crate-type = [\"cdylib\", \"rlib\"]` to {}",
            manifest.display()
        );
    };
    let lib_name = cdylib["name"].as_str().unwrap_or(&name).replace('-', "_");
    Ok(CrateInfo { dir: dir.to_path_buf(), package: name, lib_name, target_dir })
}

/// The last lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(STDERR_TAIL)..].join("\n")
}

/// Whether cargo's output says the wasm target's standard library is missing.
fn target_missing(stderr: &str) -> bool {
    stderr.contains("target may not be installed")
        || (stderr.contains(TARGET) && stderr.contains("can't find crate for `core`"))
        || (stderr.contains(TARGET) && stderr.contains("can't find crate for `std`"))
}

/// Build the crate in `dir` for [`TARGET`], release profile. Cargo's progress
/// and diagnostics go to our stderr as they come.
pub fn build(dir: &Path, offline: bool) -> anyhow::Result<Built> {
    let info = crate_info(dir)?;
    let dir = info.dir.as_path();
    let mut cmd = Command::new(cargo());
    cmd.current_dir(dir)
        .args(["build", "--release", "--target", TARGET, "--message-format=json-render-diagnostics", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if offline {
        cmd.arg("--offline");
    }
    let mut child = cmd.spawn().context("running cargo (is it installed and on PATH?)")?;
    // Stream stderr through (the developer sees progress) and keep its tail
    // for the error message; read stdout's JSON messages meanwhile.
    let stderr = child.stderr.take().context("cargo's stderr")?;
    let relay = std::thread::spawn(move || {
        let mut kept = VecDeque::with_capacity(STDERR_TAIL);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if kept.len() == STDERR_TAIL {
                kept.pop_front();
            }
            kept.push_back(line);
        }
        Vec::from(kept).join("\n")
    });
    let mut produced = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(wasm) = wasm_artifact(&line) {
                produced = Some(wasm);
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    let stderr_tail = relay.join().unwrap_or_default();
    if !status.success() {
        if target_missing(&stderr_tail) {
            bail!(
                "the {TARGET} target is not installed for this toolchain: run `rustup target add {TARGET}` and build again"
            );
        }
        bail!("cargo build failed in {} ({status}); the end of its output:\n{stderr_tail}", dir.display());
    }
    let wasm = produced.unwrap_or_else(|| info.wasm_path());
    let size =
        std::fs::metadata(&wasm).with_context(|| format!("cargo succeeded but {} is missing", wasm.display()))?.len();
    Ok(Built { info, wasm, size })
}

/// The `.wasm` file of a `compiler-artifact` message for a cdylib, if this
/// line is one.
fn wasm_artifact(line: &str) -> Option<PathBuf> {
    let msg: Json = serde_json::from_str(line).ok()?;
    if msg["reason"] != "compiler-artifact" {
        return None;
    }
    let is_cdylib = msg["target"]["crate_types"].as_array()?.iter().any(|k| k == "cdylib");
    if !is_cdylib {
        return None;
    }
    msg["filenames"].as_array()?.iter().filter_map(Json::as_str).find(|f| f.ends_with(".wasm")).map(PathBuf::from)
}

/// The component to run: `--plugin` when given, else the crate's release
/// build, which must exist (this does not build: a stale or missing build
/// should be a visible step, not a surprise).
pub fn resolve_wasm(crate_dir: &Path, plugin: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = plugin {
        if !p.is_file() {
            bail!("--plugin {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let info = crate_info(crate_dir)?;
    let wasm = info.wasm_path();
    if !wasm.is_file() {
        bail!(
            "{} is not built yet ({} is missing): run `cairn plugin build {}` first, or pass --plugin <file.wasm>",
            info.package,
            wasm.display(),
            crate_dir.display()
        );
    }
    Ok(wasm)
}

/// Bytes as KiB / MiB for people.
pub fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// `cairn plugin build`.
pub fn run(dir: &Path, offline: bool) -> anyhow::Result<()> {
    let built = build(dir, offline)?;
    println!("built {}: {} ({})", built.info.package, built.wasm.display(), human_size(built.size));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wasm_artifact_is_read_from_cargo_messages() {
        let line = r#"{"reason":"compiler-artifact","target":{"crate_types":["cdylib","rlib"]},"filenames":["/t/x.rlib","/t/x.wasm"]}"#;
        assert_eq!(wasm_artifact(line), Some(PathBuf::from("/t/x.wasm")));
        let dep = r#"{"reason":"compiler-artifact","target":{"crate_types":["lib"]},"filenames":["/t/serde.rlib"]}"#;
        assert_eq!(wasm_artifact(dep), None);
        assert_eq!(wasm_artifact("not json"), None);
    }

    #[test]
    fn a_missing_target_is_recognised() {
        assert!(target_missing(
            "error[E0463]: can't find crate for `core`\n = note: the `wasm32-wasip2` target may not be installed"
        ));
        assert!(!target_missing("error[E0425]: cannot find value `x` in this scope"));
    }
}
