//! The `cairn` command: `serve`, `demo`, `bench`, `tenant create`, and
//! `plugin new|build|test|push|replay` for plugin developers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use cairn::runtime::{Limits, RuntimeSettings};
use cairn::server::{self, ServerConfig};

/// Cairn: a CRM automation host extended by sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Run the seed scenario on a fresh temporary store and show what happened.
    Demo,
    /// Measure plugin calls and pipeline throughput; prints JSON lines.
    Bench {
        /// Fewer iterations (a quick smoke run).
        #[arg(long)]
        quick: bool,
        /// Only the workflow engine figure (enrollments/s, steps/s).
        #[arg(long)]
        workflows_only: bool,
        /// Only the hot-swap figure (p99 event latency during swaps vs steady).
        #[arg(long, conflicts_with = "workflows_only")]
        swap_only: bool,
        /// Only the noisy-neighbour figure (a tenant's p99 latency while
        /// another tenant's plugins run away, against alone).
        #[arg(long, conflicts_with_all = ["workflows_only", "swap_only"])]
        noisy_only: bool,
        /// With --noisy-only: run it on a fresh PostgreSQL database
        /// (CAIRN_TEST_POSTGRES_URL, default
        /// postgres://postgres@127.0.0.1:5432/postgres) instead of SQLite.
        #[arg(long, requires = "noisy_only")]
        postgres: bool,
        /// With --noisy-only: the noisy tenant posts this many events a
        /// second in all (e.g. 200, the quiet tenant's rate: its runaway
        /// plugins still take all its call slots) instead of as fast as
        /// its rate limit lets it.
        #[arg(long, requires = "noisy_only", value_name = "EVENTS_PER_SEC", value_parser = clap::value_parser!(u32).range(1..))]
        a_rate: Option<u32>,
        /// With --noisy-only: run it this many times, each on a new server,
        /// and print the rounds pooled too (B's p99 over every round's
        /// events; each round's ratios and their median).
        #[arg(long, requires = "noisy_only", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: u32,
        /// Only the cluster figure: events/s with 1, 2 and 3 `cairn serve`
        /// nodes on one database. Needs PostgreSQL (CAIRN_TEST_POSTGRES_URL,
        /// default postgres://postgres@127.0.0.1:5432/postgres); not part of
        /// the full run.
        #[arg(long, conflicts_with_all = ["workflows_only", "swap_only", "noisy_only"])]
        cluster_only: bool,
    },
    /// Manage tenants directly on a database.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Write plugins: new, build, test, push, replay.
    Plugin {
        #[command(subcommand)]
        command: cairn::devtools::cli::PluginCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its id and first API key.
    Create {
        /// Display name.
        name: String,
        /// Database URL (default: cairn.db in the working folder).
        #[arg(long, env = "CAIRN_DATABASE_URL")]
        db: Option<String>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Database URL: a SQLite file (default `cairn.db` in --data-dir) or postgres://...
    #[arg(long, env = "CAIRN_DATABASE_URL")]
    db: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Folder for the SQLite file and the compiled-plugin cache.
    #[arg(long, default_value = ".")]
    data_dir: PathBuf,
    /// Let plugins reach loopback and private addresses (development only).
    #[arg(long)]
    allow_private_network: bool,
    /// Per-call wall-clock deadline, ms.
    #[arg(long, default_value_t = 500)]
    deadline_ms: u64,
    /// Per-call instruction budget (wasmtime fuel).
    #[arg(long, default_value_t = 50_000_000)]
    fuel: u64,
    /// Per-call memory cap, MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: usize,
    /// Failures in a row after which an install is disabled (0: never).
    #[arg(long, default_value_t = 20)]
    breaker_failures: u32,
    /// Events per second a tenant may send before it gets 429 (0: unlimited).
    #[arg(long, default_value_t = 20_000)]
    tenant_events_per_sec: u32,
    /// Plugin calls of one tenant running at once (0: unlimited).
    #[arg(long, default_value_t = 16)]
    tenant_concurrent_calls: u32,
    /// Seconds a newly upgraded version is on probation (rolled back if its
    /// calls fail too often).
    #[arg(long, default_value_t = 300)]
    probation_secs: u64,
    /// Share of failed calls, percent, that rolls a version on probation back (0: never).
    #[arg(long, default_value_t = 50)]
    rollback_failure_percent: u32,
    /// Calls a version on probation makes before its failure rate counts.
    #[arg(long, default_value_t = 5)]
    rollback_min_calls: u32,
    /// How long a node's claim on work (events, a run's step, a schedule)
    /// lasts, seconds: how soon another node resumes the work of one that
    /// died. At least 4 × --deadline-ms.
    #[arg(long, default_value_t = 60)]
    claim_lease_secs: u64,
    /// How long recorded plugin-call inputs are kept for replay, hours.
    #[arg(long, env = "CAIRN_INVOCATION_RETENTION_HOURS", default_value_t = 168)]
    invocation_retention_hours: u64,
    /// Rebuild the plugin crate(s) in this folder when their sources change
    /// and hot-reload every install of them (development).
    #[arg(long)]
    watch: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "cairn=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Demo => cairn::demo::run().await,
            Command::Bench { quick, cluster_only: true, .. } => cairn::bench::cluster::run(quick).await,
            Command::Bench {
                quick,
                workflows_only,
                swap_only,
                noisy_only,
                postgres,
                a_rate,
                rounds,
                cluster_only: false,
            } => {
                use cairn::bench::Only;
                use cairn::bench::noisy::{Database, Options};
                let database = if postgres { Database::Postgres } else { Database::Sqlite };
                let only = match (workflows_only, swap_only, noisy_only) {
                    (true, _, _) => Only::Workflows,
                    (_, true, _) => Only::Swap,
                    (_, _, true) => Only::Noisy(Options { database, a_events_per_sec: a_rate, rounds }),
                    _ => Only::All,
                };
                cairn::bench::run(quick, only).await
            }
            Command::Tenant { command: TenantCommand::Create { name, db } } => {
                let store = cairn::store::Store::open(db.as_deref().unwrap_or("sqlite://cairn.db")).await?;
                let tenant = store.create_tenant(&name).await?;
                let key = store.create_api_key(&cairn::store::Principal::Tenant(tenant.id.clone())).await?;
                println!("{}", serde_json::json!({"tenant": tenant, "api_key": key}));
                Ok(())
            }
            Command::Plugin { command } => cairn::devtools::cli::run(command).await,
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    if args.claim_lease_secs.saturating_mul(1000) < args.deadline_ms.saturating_mul(4) {
        anyhow::bail!(
            "--claim-lease-secs {} is too short for --deadline-ms {}: a step still running could be claimed again \
             by another node; use at least {} s",
            args.claim_lease_secs,
            args.deadline_ms,
            (args.deadline_ms * 4).div_ceil(1000)
        );
    }
    let mut config = ServerConfig::in_dir(args.data_dir.clone());
    if let Some(db) = args.db {
        config.database_url = db;
    }
    config.listen = args.listen;
    config.admin_key = std::env::var("CAIRN_ADMIN_KEY").ok().filter(|k| !k.is_empty());
    config.runtime = RuntimeSettings {
        limits: Limits {
            deadline: Duration::from_millis(args.deadline_ms),
            fuel: args.fuel,
            memory_bytes: args.memory_mib << 20,
            breaker_failures: args.breaker_failures,
            probation: Duration::from_secs(args.probation_secs),
            rollback_failure_percent: args.rollback_failure_percent,
            rollback_min_calls: args.rollback_min_calls,
            tenant_events_per_sec: args.tenant_events_per_sec,
            tenant_concurrent_calls: args.tenant_concurrent_calls,
            claim_lease: Duration::from_secs(args.claim_lease_secs),
            ..Limits::default()
        },
        allow_private_network: args.allow_private_network,
        ..config.runtime
    };
    let retention = server::InputRetention {
        keep: Duration::from_secs(args.invocation_retention_hours.saturating_mul(3600)),
        ..Default::default()
    };
    let server = server::start_with_retention(config, retention).await?;
    if let Some(key) = &server.generated_admin_key {
        // Printed once: only its hash is stored.
        eprintln!("admin key (shown once, store it now): {key}");
    }
    tracing::info!("cairn listening on {} (started in {:?})", server.url(), server.startup);
    let _watch = args.watch.map(|dir| {
        tracing::info!("watching {} for plugin sources", dir.display());
        cairn::watch::spawn(dir, server.state.registry.clone(), Duration::from_millis(500), false)
    });
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
