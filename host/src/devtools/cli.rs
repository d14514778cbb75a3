//! The `cairn plugin …` subcommands (clap) and their dispatch.
//!
//! Defaults are chosen so that, inside a crate made by `plugin new`, every
//! command works with no arguments but the server's: the crate is `.`, the
//! component is its release build, the fixtures are `fixtures/`, and the
//! limits are those of `cairn serve`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::runner::{Harness, LimitArgs, header, run_fixtures};
use super::scaffold::{NewPlugin, TemplateKind};
use super::{build, fixtures, installs, push, replay, scaffold};

/// `cairn plugin`: write, build, test, upload and replay plugins.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate that builds and passes its tests as generated.
    New {
        /// What the plugin does: scorer, action, trigger or channel.
        kind: TemplateKind,
        /// Crate and plugin name: a-z, 0-9 and -, e.g. my-tagger.
        name: String,
        /// The folder to create the crate's folder in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The cairn-sdk crate (default: the `sdk/` of the sources this cairn was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build the crate's component: `cargo build --release --target wasm32-wasip2`.
    Build {
        /// The plugin crate.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Pass --offline to cargo (use only dependencies already downloaded).
        #[arg(long)]
        offline: bool,
    },
    /// Run the fixtures (one call each) in the real sandbox, with usage against limits.
    ///
    /// A fixture is a recorded call (`{"export": "execute", "config": {...},
    /// "contact": {...}}`) or `{"call": <recorded call>, "expect": <result>,
    /// "grants": {"store_write": true, ...}, "now": <epoch ms>, "description":
    /// "..."}`; `"expect": {"error_cause": "plugin"}` expects a failure. Exits
    /// non-zero when a call fails or a result differs from its `expect`.
    Test {
        /// The plugin crate.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The component to run (default: the crate's release build).
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// A fixtures folder or one fixture file (default: DIR/fixtures).
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// Per-call limits.
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// Upload the component to a server and optionally install it.
    Push {
        /// The plugin crate.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The component to upload (default: the crate's release build).
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// The server, e.g. http://127.0.0.1:7700.
        #[arg(long, env = "CAIRN_URL")]
        server: String,
        /// The tenant's API key.
        #[arg(long, env = "CAIRN_API_KEY", hide_env_values = true)]
        key: String,
        /// Also install it for the tenant.
        #[arg(long)]
        install: bool,
        /// The install's config: JSON, or @file.json.
        #[arg(long)]
        config: Option<String>,
        /// A capability to grant (repeatable; default: all the plugin asks for).
        #[arg(long = "grant", value_name = "CAPABILITY")]
        grants: Vec<String>,
    },
    /// Move an install to another version of its plugin (health-checked by the server).
    Upgrade {
        /// The install.
        install: String,
        /// The plugin version to run (`GET /v1/plugins`).
        version: String,
        /// Where and as whom.
        #[command(flatten)]
        server: ServerFlags,
    },
    /// Put an install back on the version before its latest change, or on --to.
    Rollback {
        /// The install.
        install: String,
        /// The version to go back to.
        #[arg(long)]
        to: Option<String>,
        /// Where and as whom.
        #[command(flatten)]
        server: ServerFlags,
    },
    /// An install's version changes: upgrades, rollbacks, refusals, with reasons.
    History {
        /// The install.
        install: String,
        /// Where and as whom.
        #[command(flatten)]
        server: ServerFlags,
    },
    /// Run a recorded call (from a server, or a file) against a local build.
    Replay {
        /// The invocation id (`GET /v1/invocations`).
        #[arg(required_unless_present = "input", conflicts_with = "input")]
        id: Option<String>,
        /// A file to replay instead: a saved invocation record, a fixture or a recorded call.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The component to run (default: the release build of the crate in --crate-dir).
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// The plugin crate, when --plugin is not given.
        #[arg(long, default_value = ".")]
        crate_dir: PathBuf,
        /// The server the invocation was recorded on.
        #[arg(long, env = "CAIRN_URL")]
        server: Option<String>,
        /// The tenant's API key.
        #[arg(long, env = "CAIRN_API_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Save the input as a fixture file.
        #[arg(long)]
        save: Option<PathBuf>,
        /// Per-call limits.
        #[command(flatten)]
        limits: LimitFlags,
    },
}

/// The server and the tenant's key.
#[derive(Debug, Clone, Args)]
pub struct ServerFlags {
    /// The server, e.g. http://127.0.0.1:7700.
    #[arg(long, env = "CAIRN_URL")]
    pub server: String,
    /// The tenant's API key.
    #[arg(long, env = "CAIRN_API_KEY", hide_env_values = true)]
    pub key: String,
}

impl ServerFlags {
    fn target(self, install: String) -> installs::Target {
        installs::Target { server: self.server, key: self.key, install }
    }
}

/// Per-call limits; the defaults are `cairn serve`'s.
#[derive(Debug, Clone, Copy, Args)]
pub struct LimitFlags {
    /// Per-call wall-clock deadline, ms.
    #[arg(long, default_value_t = 500)]
    pub deadline_ms: u64,
    /// Per-call instruction budget (wasmtime fuel).
    #[arg(long, default_value_t = 50_000_000)]
    pub fuel: u64,
    /// Per-call memory cap, MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub memory_mib: u64,
}

impl LimitFlags {
    fn args(self) -> LimitArgs {
        LimitArgs { deadline_ms: self.deadline_ms, fuel: self.fuel, memory_mib: self.memory_mib as usize }
    }
}

/// Run a `cairn plugin` command.
pub async fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { kind, name, dir, sdk } => scaffold::run(&NewPlugin { kind, name, parent: dir, sdk }),
        PluginCommand::Build { dir, offline } => build::run(&dir, offline),
        PluginCommand::Test { dir, plugin, fixtures, limits } => test(dir, plugin, fixtures, limits.args()).await,
        PluginCommand::Push { dir, plugin, server, key, install, config, grants } => {
            let grants = if grants.is_empty() { None } else { Some(grants) };
            push::run(&push::PushRequest { crate_dir: dir, plugin, server, key, install, config, grants }).await
        }
        PluginCommand::Upgrade { install, version, server } => {
            installs::upgrade(&server.target(install), &version).await.map(drop)
        }
        PluginCommand::Rollback { install, to, server } => {
            installs::rollback(&server.target(install), to.as_deref()).await.map(drop)
        }
        PluginCommand::History { install, server } => installs::history(&server.target(install)).await,
        PluginCommand::Replay { id, input, plugin, crate_dir, server, key, save, limits } => {
            let source = match (id, input) {
                (_, Some(path)) => replay::Source::File(path),
                (Some(id), None) => {
                    let server = server.ok_or_else(|| {
                        anyhow::anyhow!(
                            "replaying invocation {id} needs --server <url> (or CAIRN_URL), or use --input <file>"
                        )
                    })?;
                    let key =
                        key.ok_or_else(|| anyhow::anyhow!("replaying needs --key <tenant key> (or CAIRN_API_KEY)"))?;
                    replay::Source::Server { server, key, id }
                }
                (None, None) => anyhow::bail!("give an invocation id, or --input <file>"),
            };
            replay::run(&replay::ReplayRequest { source, crate_dir, plugin, save, limits: limits.args() }).await
        }
    }
}

/// `cairn plugin test`.
async fn test(
    dir: PathBuf,
    plugin: Option<PathBuf>,
    fixtures_path: Option<PathBuf>,
    limits: LimitArgs,
) -> anyhow::Result<()> {
    let wasm = build::resolve_wasm(&dir, plugin.as_deref())?;
    let fixtures_path = fixtures_path.unwrap_or_else(|| dir.join("fixtures"));
    let files = fixtures::files(&fixtures_path)?;
    let harness = Harness::load(&wasm, limits.limits()).await?;
    for line in header(&harness) {
        println!("{line}");
    }
    println!();
    let failed = run_fixtures(&harness, &files).await?;
    println!();
    println!("{} fixtures: {} passed, {} failed", files.len(), files.len() - failed.len(), failed.len());
    if !failed.is_empty() {
        anyhow::bail!("{} of {} fixtures failed: {}", failed.len(), files.len(), failed.join(", "));
    }
    Ok(())
}
