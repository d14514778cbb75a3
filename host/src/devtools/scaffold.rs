//! `cairn plugin new <kind> <name>`: a plugin crate that builds, passes its
//! own tests and its fixtures as generated.
//!
//! The generated files are real files under `templates/` (embedded with
//! `include_str!`), with `{{placeholders}}` only in `Cargo.toml` and the
//! README; the Rust code takes its name and version from Cargo
//! (`env!("CARGO_PKG_NAME")`), which is why a plugin name must also be a
//! valid crate name and vice versa.
//!
//! The crate depends on the SDK by absolute path (by default the `sdk/`
//! beside the sources `cairn` was built from) and gets a copy of the
//! workspace's `Cargo.lock`, so it resolves the same dependency versions,
//! offline, as the SDK's own tests did.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The plugin kinds `plugin new` can scaffold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TemplateKind {
    /// Computes a score from a contact's events.
    Scorer,
    /// Does a workflow step's work.
    Action,
    /// Decides which events start a workflow.
    Trigger,
    /// Delivers messages and parses provider callbacks.
    Channel,
}

impl TemplateKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [TemplateKind; 4] =
        [TemplateKind::Scorer, TemplateKind::Action, TemplateKind::Trigger, TemplateKind::Channel];

    /// The kind as the API and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateKind::Scorer => "scorer",
            TemplateKind::Action => "action",
            TemplateKind::Trigger => "trigger",
            TemplateKind::Channel => "channel",
        }
    }

    fn lib_rs(self) -> &'static str {
        match self {
            TemplateKind::Scorer => include_str!("templates/scorer/lib.rs"),
            TemplateKind::Action => include_str!("templates/action/lib.rs"),
            TemplateKind::Trigger => include_str!("templates/trigger/lib.rs"),
            TemplateKind::Channel => include_str!("templates/channel/lib.rs"),
        }
    }

    /// `(file name, contents)` of the kind's fixtures.
    fn fixtures(self) -> &'static [(&'static str, &'static str)] {
        match self {
            TemplateKind::Scorer => &[
                ("capped.json", include_str!("templates/scorer/fixtures/capped.json")),
                ("points-per-event.json", include_str!("templates/scorer/fixtures/points-per-event.json")),
            ],
            TemplateKind::Action => &[
                ("already-tagged.json", include_str!("templates/action/fixtures/already-tagged.json")),
                ("blank-tag-is-refused.json", include_str!("templates/action/fixtures/blank-tag-is-refused.json")),
                ("tags-the-contact.json", include_str!("templates/action/fixtures/tags-the-contact.json")),
            ],
            TemplateKind::Trigger => &[
                ("enrolls-on-the-kind.json", include_str!("templates/trigger/fixtures/enrolls-on-the-kind.json")),
                (
                    "other-kinds-are-ignored.json",
                    include_str!("templates/trigger/fixtures/other-kinds-are-ignored.json"),
                ),
                ("third-page-view.json", include_str!("templates/trigger/fixtures/third-page-view.json")),
            ],
            TemplateKind::Channel => &[
                ("delivers.json", include_str!("templates/channel/fixtures/delivers.json")),
                ("no-email-is-refused.json", include_str!("templates/channel/fixtures/no-email-is-refused.json")),
                ("parses-callbacks.json", include_str!("templates/channel/fixtures/parses-callbacks.json")),
            ],
        }
    }

    /// A config that installs the generated plugin (shown in its README).
    pub fn example_config(self) -> &'static str {
        match self {
            TemplateKind::Scorer => r#"{"points": {"page_viewed": 5, "email_clicked": 10}, "max_score": 100}"#,
            TemplateKind::Action => r#"{"tag": "vip"}"#,
            TemplateKind::Trigger => r#"{"event_kind": "demo_requested"}"#,
            TemplateKind::Channel => r#"{"from": "team@acme.example"}"#,
        }
    }
}

impl fmt::Display for TemplateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `plugin new` is asked for.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// The kind of plugin.
    pub kind: TemplateKind,
    /// Crate and plugin name.
    pub name: String,
    /// The folder the crate folder is created in.
    pub parent: PathBuf,
    /// The `cairn-sdk` crate (default: [`super::default_sdk_dir`]).
    pub sdk: Option<PathBuf>,
}

/// What `plugin new` made.
#[derive(Debug, Clone)]
pub struct Created {
    /// The new crate's folder.
    pub dir: PathBuf,
    /// The SDK it depends on (absolute).
    pub sdk: PathBuf,
    /// Files written, relative to `dir`.
    pub files: Vec<String>,
    /// Whether the workspace's `Cargo.lock` was copied.
    pub lock_copied: bool,
}

/// Names that are Rust keywords or crates every build already has: a
/// package by that name would not compile or would shadow them.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "gen",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "std",
    "core",
    "alloc",
    "proc-macro",
    "test",
];

/// Dependencies of the generated crate: a package cannot share a name with
/// one of them.
const DEPENDENCIES: &[&str] = &["cairn-sdk", "cairn_sdk", "serde", "serde_json", "serde-json"];

/// Check that `name` works both as a Cargo package name and as a Cairn plugin
/// name (`describe().name`: 1-64 of a-z, 0-9 and -), and say how to fix it.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let valid_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let starts_with_letter = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if name.is_empty() || name.len() > 64 || !valid_chars || !starts_with_letter || name.ends_with('-') {
        bail!(
            "`{name}` is not a valid plugin name: use 1 to 64 characters of a-z, 0-9 and -, starting with a letter \
             (e.g. my-tagger); it is both the crate's name and the name Cairn shows"
        );
    }
    if name.contains("--") {
        bail!("`{name}` is not a valid plugin name: no double dashes (e.g. my-tagger)");
    }
    if RESERVED.contains(&name) {
        bail!("`{name}` is reserved in Rust and cannot name a crate: pick another name (e.g. {name}-plugin)");
    }
    if DEPENDENCIES.contains(&name) {
        bail!("`{name}` is the name of one of the crate's dependencies: pick another name (e.g. my-{name})");
    }
    Ok(())
}

/// The library name Cargo derives from a package name (`my-tagger` →
/// `my_tagger`), which is also the `.wasm` file's name.
pub fn crate_name(package: &str) -> String {
    package.replace('-', "_")
}

/// A path as the contents of a TOML basic string.
fn toml_string(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "\\\\").replace('"', "\\\"")
}

/// The SDK folder: `--sdk` or the default, canonicalized, with a Cargo.toml.
fn resolve_sdk(sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (path, given) = match sdk {
        Some(p) => (p.to_path_buf(), true),
        None => (super::default_sdk_dir(), false),
    };
    let hint = if given {
        "--sdk must name the folder of the cairn-sdk crate (the `sdk/` folder of the Cairn sources)"
    } else {
        "this cairn binary was built elsewhere: pass --sdk <the `sdk/` folder of the Cairn sources>"
    };
    let canonical =
        path.canonicalize().with_context(|| format!("the SDK folder {} does not exist; {hint}", path.display()))?;
    if !canonical.join("Cargo.toml").is_file() {
        bail!("{} has no Cargo.toml, so it is not the cairn-sdk crate; {hint}", canonical.display());
    }
    Ok(canonical)
}

/// Replace `{{key}}` placeholders.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_string(), |text, (key, value)| text.replace(&format!("{{{{{key}}}}}"), value))
}

/// Create the crate. Refuses, before writing anything, when the name is
/// invalid, the SDK cannot be found or the folder already exists.
pub fn create(request: &NewPlugin) -> anyhow::Result<Created> {
    check_name(&request.name)?;
    let sdk = resolve_sdk(request.sdk.as_deref())?;
    let dir = request.parent.join(&request.name);
    if dir.exists() {
        bail!("{} already exists: pick another name or --dir, or remove it first", dir.display());
    }
    if !request.parent.is_dir() {
        bail!("--dir {} is not a folder", request.parent.display());
    }
    let kind = request.kind;
    let crate_name = crate_name(&request.name);
    let sdk_toml = toml_string(&sdk);
    let vars = [
        ("name", request.name.as_str()),
        ("kind", kind.as_str()),
        ("crate_name", crate_name.as_str()),
        ("sdk_path", sdk_toml.as_str()),
        ("example_config", kind.example_config()),
    ];
    let mut files: Vec<(String, String)> = vec![
        ("Cargo.toml".into(), render(include_str!("templates/Cargo.toml.tmpl"), &vars)),
        ("README.md".into(), render(include_str!("templates/README.md.tmpl"), &vars)),
        (".gitignore".into(), include_str!("templates/gitignore").to_string()),
        ("src/lib.rs".into(), kind.lib_rs().to_string()),
    ];
    for (name, text) in kind.fixtures() {
        files.push((format!("fixtures/{name}"), (*text).to_string()));
    }

    // Write into a temporary sibling and rename it at the end, so a failure
    // halfway leaves no half-made crate that would block the next attempt.
    let staging = request.parent.join(format!(".{}.cairn-new-{}", request.name, std::process::id()));
    let written = write_all(&staging, &files).and_then(|()| {
        let lock = super::workspace_lock_file();
        let copied = lock.is_file();
        if copied {
            std::fs::copy(&lock, staging.join("Cargo.lock"))
                .with_context(|| format!("copying {} into the new crate", lock.display()))?;
        }
        std::fs::rename(&staging, &dir).with_context(|| format!("moving the new crate to {}", dir.display()))?;
        Ok(copied)
    });
    let lock_copied = match written {
        Ok(copied) => copied,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let mut names: Vec<String> = files.into_iter().map(|(name, _)| name).collect();
    if lock_copied {
        names.push("Cargo.lock".into());
    }
    Ok(Created { dir, sdk, files: names, lock_copied })
}

fn write_all(root: &Path, files: &[(String, String)]) -> anyhow::Result<()> {
    for (name, text) in files {
        let path = root.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `cairn plugin new`: create the crate and say what to do next.
pub fn run(request: &NewPlugin) -> anyhow::Result<()> {
    let created = create(request)?;
    let dir = created.dir.display();
    println!("created {} plugin `{}` in {dir}", request.kind, request.name);
    for file in &created.files {
        println!("  {file}");
    }
    println!("cairn-sdk: {}", created.sdk.display());
    if !created.lock_copied {
        println!("(no Cargo.lock to copy from the Cairn sources: the first build resolves dependencies online)");
    }
    println!();
    println!("next:");
    println!("  cd {dir}");
    println!("  cargo test                  # the plugin's own tests, natively");
    println!("  cairn plugin build          # the .wasm component");
    println!("  cairn plugin test           # fixtures/*.json in the real sandbox");
    println!(
        "  cairn plugin push --server http://127.0.0.1:7700 --key $CAIRN_API_KEY --install --config '{}'",
        request.kind.example_config()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_must_suit_cargo_and_cairn() {
        for good in ["my-tagger", "a", "scorer2", "lead-score-v2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "My-Tagger", "my_tagger", "2fast", "-x", "x-", "a--b", "fn", "test", "serde", "cairn-sdk"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let long = "a".repeat(65);
        assert!(check_name(&long).is_err());
    }

    #[test]
    fn placeholders_are_replaced() {
        assert_eq!(render("name = \"{{name}}\" {{x}}", &[("name", "t"), ("x", "y")]), "name = \"t\" y");
        assert_eq!(toml_string(Path::new("C:\\a\"b")), "C:\\\\a\\\"b");
    }
}
