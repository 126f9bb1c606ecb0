//! `phalanx`: one Lightning node, many servers.
//!
//! It runs the node (`phalanx node`), drives it (`phalanx ctl`), inspects state stores
//! and runs a regtest chain.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use phalanx_store::{ClusterName, StoreOptions};
use serde::Serialize;

mod ctl;
mod devnet;

use phalanx_cli::{backup_cmd, front_cmd, link_certs_cmd, migrate_cmd, node_cmd, seed_cmd};

#[derive(Parser, Debug)]
#[command(name = "phalanx", version, about = "One Lightning node, many servers.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node and its REST API until SIGTERM or SIGINT.
    Node(Box<node_cmd::NodeArgs>),
    /// Record in the store that it belongs to this node (once, before the first start;
    /// the same options as `node`). `node` refuses a store without this record.
    Init(Box<node_cmd::NodeArgs>),
    /// Make, encrypt or decrypt a seed file, or print a seed's node id.
    #[command(subcommand)]
    Seed(seed_cmd::SeedCommand),
    /// Snapshot backups of a node: create one while it runs, or check one.
    #[command(subcommand)]
    Backup(backup_cmd::BackupCommand),
    /// Restore a backup into an empty store (any backend).
    Restore(backup_cmd::RestoreArgs),
    /// Move a node from one store to another, of any backend (every instance stopped):
    /// copies every key, checks the copy byte for byte, marks the old store as moved.
    Migrate(migrate_cmd::MigrateArgs),
    /// Inspect a state store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Make the link's certificate authority and a certificate for every backend and
    /// front of a cluster (mutual TLS between fronts and backends).
    LinkCerts(link_certs_cmd::LinkCertsArgs),
    /// Run a front server: peers' connections (BOLT 8, init, pings) at the edge, their
    /// channel messages forwarded to the node's active backend over the link; no node key.
    Front(Box<front_cmd::FrontArgs>),
    /// Run a Bitcoin regtest chain speaking Bitcoin Core's RPC (and REST), until stopped.
    Regtest(RegtestArgs),
    /// Drive a running node through its REST API.
    Ctl(ctl::CtlArgs),
    /// A local network on regtest: a chain, two nodes, a channel and a stream of payments.
    Devnet(devnet::DevnetArgs),
}

#[derive(Args, Debug)]
struct RegtestArgs {
    /// Address to listen on (keep it on loopback: the chain has a built-in wallet).
    #[arg(long, env = "PHALANX_REGTEST_RPC_BIND", default_value = "127.0.0.1")]
    rpc_bind: std::net::IpAddr,
    /// Port to listen on (Bitcoin Core's regtest default is 18443; 0 picks a free one).
    #[arg(long, env = "PHALANX_REGTEST_RPC_PORT", default_value_t = 18443)]
    rpc_port: u16,
    /// RPC user name.
    #[arg(long, env = "PHALANX_REGTEST_RPC_USER")]
    rpc_user: String,
    /// RPC password.
    #[arg(long, env = "PHALANX_REGTEST_RPC_PASSWORD")]
    rpc_password: String,
    /// Also serve Bitcoin Core's REST interface under /rest/.
    #[arg(long)]
    rest: bool,
    /// The fee rate `estimatesmartfee` answers and the built-in wallet pays, in sat/vB.
    #[arg(long, default_value_t = 5)]
    fee_rate_sat_per_vb: u32,
    /// Freeze the chain's clock at this Unix time (Bitcoin Core's `setmocktime`).
    #[arg(long)]
    mock_time: Option<u64>,
    /// Print the endpoints as one JSON object instead of text.
    #[arg(long)]
    json: bool,
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
    /// The node the store belongs to (`phalanx init`); `None` when it has no record.
    identity: Option<IdentityReport>,
    /// Why the identity could not be read, if it could not (a lock held by the leader).
    identity_error: Option<String>,
    lease: Option<LeaseReport>,
    epochs: Vec<EpochReport>,
}

#[derive(Serialize)]
struct IdentityReport {
    node_id: String,
    network: String,
    created_at_unix: u64,
    schema_version: u32,
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
    let (identity, identity_error) = match phalanx_node::identity::read_identity(&*store).await {
        Ok(identity) => (
            identity.map(|identity| IdentityReport {
                node_id: identity.node_id.to_string(),
                network: identity.network.to_string(),
                created_at_unix: identity.created_at_unix,
                schema_version: identity.schema_version,
            }),
            None,
        ),
        Err(err) => (None, Some(err.to_string())),
    };
    let report = CheckReport {
        store: store.describe(),
        cluster: args.cluster,
        identity,
        identity_error,
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
    match (&report.identity, &report.identity_error) {
        (Some(identity), _) => println!(
            "node:    {} on {} (initialized at {} s since the Unix epoch, schema {})",
            identity.node_id, identity.network, identity.created_at_unix, identity.schema_version
        ),
        (None, Some(err)) => println!("node:    unknown ({err})"),
        (None, None) => println!("node:    none recorded (not initialized: `phalanx init`)"),
    }
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

async fn regtest(args: RegtestArgs) -> anyhow::Result<()> {
    use phalanx_regtest::{ChainSettings, Regtest, RegtestConfig};
    let config = RegtestConfig {
        bind: std::net::SocketAddr::new(args.rpc_bind, args.rpc_port),
        rpc_user: args.rpc_user,
        rpc_password: args.rpc_password,
        rest: args.rest,
        chain: ChainSettings {
            fee_rate: bitcoin::FeeRate::from_sat_per_vb_u32(args.fee_rate_sat_per_vb),
            mock_time: args.mock_time,
            ..ChainSettings::default()
        },
    };
    let bind = config.bind;
    let regtest = Regtest::start(config)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "rpc_url": regtest.rpc_url(),
                "rest_url": args.rest.then(|| regtest.rest_url()),
                "rpc_user": regtest.rpc_user(),
                "rpc_password": regtest.rpc_password(),
            })
        );
    } else {
        println!("regtest chain serving Bitcoin Core's RPC");
        println!(
            "rpc:  {}  (user {}, password {})",
            regtest.rpc_url(),
            regtest.rpc_user(),
            regtest.rpc_password()
        );
        if args.rest {
            println!("rest: {}", regtest.rest_url());
        }
        println!(
            "try:  bitcoin-cli -regtest -rpcport={} -rpcuser={} -rpcpassword=... getblockchaininfo",
            regtest.addr().port(),
            regtest.rpc_user()
        );
        println!("stop: the `stop` RPC, Ctrl-C or SIGTERM");
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = regtest.stopped() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    // Let the answer to `stop` reach its caller before the server goes.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `phalanx node` sets up its own logging, once its configuration is read.
    if !matches!(
        cli.command,
        Command::Node(_) | Command::Init(_) | Command::Front(_)
    ) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("PHALANX_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    // Before the runtime's threads start: `prepare` takes secrets out of the environment.
    let prepared = match &cli.command {
        Command::Node(args) | Command::Init(args) => match node_cmd::prepare(args) {
            Ok(prepared) => Some(prepared),
            Err(code) => return code,
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match (cli.command, prepared) {
            (Command::Store(StoreCommand::Check(args)), _) => {
                check(args).await.map(|()| ExitCode::SUCCESS)
            }
            (Command::Regtest(args), _) => regtest(args).await.map(|()| ExitCode::SUCCESS),
            (Command::Ctl(args), _) => Ok(ctl::run(args).await),
            (Command::Seed(command), _) => Ok(seed_cmd::run(command).await),
            (Command::Migrate(args), _) => Ok(migrate_cmd::run(args).await),
            (Command::LinkCerts(args), _) => Ok(link_certs_cmd::run(args)),
            (Command::Front(args), _) => Ok(front_cmd::run(*args).await),
            (Command::Backup(command), _) => Ok(backup_cmd::run(command).await),
            (Command::Restore(args), _) => Ok(backup_cmd::run_restore(args).await),
            (Command::Devnet(args), _) => Ok(devnet::run(args).await),
            (Command::Node(_), Some(prepared)) => Ok(node_cmd::run(prepared).await),
            (Command::Init(_), Some(prepared)) => Ok(node_cmd::init(prepared).await),
            (Command::Node(_) | Command::Init(_), None) => unreachable!("prepared above"),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
