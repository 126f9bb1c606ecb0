//! `phalanx`: one Lightning node, many servers.
//!
//! Today it inspects state stores; the node, the devnet and the regtest chain come with
//! their issues.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use phalanx_store::{ClusterName, StoreOptions};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(name = "phalanx", version, about = "One Lightning node, many servers.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect a state store.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Connect, apply the schema, and show who holds the lease and the recent epochs.
    Check(StoreArgs),
}

#[derive(Args, Debug)]
struct StoreArgs {
    /// The store: sqlite:///path/node.db, postgres://user:pass@host:port/db,
    /// etcd://host:port[,host:port...]/prefix.
    #[arg(long, env = "PHALANX_STORE_URL")]
    url: String,
    /// The cluster (one node's lease and keys).
    #[arg(long, env = "PHALANX_CLUSTER", default_value = "default")]
    cluster: String,
    /// Give up connecting after this many milliseconds.
    #[arg(long, env = "PHALANX_STORE_CONNECT_TIMEOUT_MS", default_value_t = phalanx_store::DEFAULT_CONNECT_TIMEOUT_MS)]
    connect_timeout_ms: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct CheckReport {
    store: String,
    cluster: String,
    lease: Option<LeaseReport>,
    epochs: Vec<EpochReport>,
}

#[derive(Serialize)]
struct LeaseReport {
    holder: String,
    epoch: u64,
    expires_in_ms: Option<u128>,
}

#[derive(Serialize)]
struct EpochReport {
    epoch: u64,
    holder: String,
    acquired_at_unix_ms: i64,
}

async fn check(args: StoreArgs) -> anyhow::Result<()> {
    let cluster = ClusterName::new(&args.cluster)?;
    let mut options = StoreOptions::new(cluster);
    options.connect_timeout = Duration::from_millis(args.connect_timeout_ms);
    options.validate()?;
    let store = phalanx_store_connect::connect(&args.url, options)
        .await
        .map_err(|e| anyhow::anyhow!(e.report()))
        .context("cannot open the store")?;
    let lease = store
        .current_lease()
        .await
        .map_err(|e| anyhow::anyhow!(e.report()))
        .context("cannot read the lease")?;
    let epochs = store
        .epoch_history(5)
        .await
        .map_err(|e| anyhow::anyhow!(e.report()))
        .context("cannot read the epoch history")?;
    let report = CheckReport {
        store: store.describe(),
        cluster: args.cluster,
        lease: lease.map(|info| LeaseReport {
            holder: info.holder,
            epoch: info.epoch.0,
            expires_in_ms: info.expires_in.map(|d| d.as_millis()),
        }),
        epochs: epochs
            .into_iter()
            .map(|record| EpochReport {
                epoch: record.epoch.0,
                holder: record.holder,
                acquired_at_unix_ms: record.acquired_at_unix_ms,
            })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("store:   {}", report.store);
    println!("cluster: {}", report.cluster);
    match &report.lease {
        Some(lease) => println!(
            "lease:   held by {} at epoch {}{}",
            lease.holder,
            lease.epoch,
            lease
                .expires_in_ms
                .map(|ms| format!(", expires in {ms} ms unless renewed"))
                .unwrap_or_default()
        ),
        None => println!("lease:   free"),
    }
    for epoch in &report.epochs {
        println!(
            "epoch {:>6}  {}  (won at {} ms since the Unix epoch)",
            epoch.epoch, epoch.holder, epoch.acquired_at_unix_ms
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHALANX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Store(StoreCommand::Check(args)) => check(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
