//! The `cairn` command: `serve`, `demo`, `bench`, `tenant create`.

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
    },
    /// Manage tenants directly on a database.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
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
            Command::Bench { quick, workflows_only } => cairn::bench::run(quick, workflows_only).await,
            Command::Tenant { command: TenantCommand::Create { name, db } } => {
                let store = cairn::store::Store::open(db.as_deref().unwrap_or("sqlite://cairn.db")).await?;
                let tenant = store.create_tenant(&name).await?;
                let key = store.create_api_key(&cairn::store::Principal::Tenant(tenant.id.clone())).await?;
                println!("{}", serde_json::json!({"tenant": tenant, "api_key": key}));
                Ok(())
            }
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
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
            ..Limits::default()
        },
        allow_private_network: args.allow_private_network,
        ..config.runtime
    };
    let server = server::start(config).await?;
    if let Some(key) = &server.generated_admin_key {
        // Printed once: only its hash is stored.
        eprintln!("admin key (shown once, store it now): {key}");
    }
    tracing::info!("cairn listening on {} (started in {:?})", server.url(), server.startup);
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
