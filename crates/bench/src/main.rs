//! `phalanx-bench`: measurements, not tests. Each benchmark starts the servers it needs
//! (unless given a URL) and prints one JSON object per result with `--json`, a table
//! otherwise. Results and how they were taken live in `docs/BENCHMARKS.md`.

mod failover;
mod front;
mod gossip;
mod payments;
mod snapshot;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "phalanx-bench", about = "Phalanx benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Fenced writes and reads on a state store backend.
    Store(store::StoreArgs),
    /// Lightning payments between two nodes on regtest, at several concurrencies.
    Payments(payments::PaymentsArgs),
    /// Snapshots of a running node's store: time, size, and the pause they cost.
    Snapshot(snapshot::SnapshotArgs),
    /// kill -9 of a cluster's active instance under load: time to the standby's start
    /// and to the next payment, force closes, lost and duplicate payments.
    Failover(failover::FailoverArgs),
    /// What a keyless front costs: handshakes and payments through it against direct,
    /// and its gossip ingest.
    Front(front::FrontArgs),
    /// `phalanx node` itself: the failover benchmark runs its instances as this.
    #[command(hide = true)]
    Node(Box<phalanx_cli::node_cmd::NodeArgs>),
    /// `phalanx init` itself: for the processes the benchmarks start.
    #[command(hide = true)]
    Init(Box<phalanx_cli::node_cmd::NodeArgs>),
    /// `phalanx front` itself: the gossip benchmark runs its front as this.
    #[command(hide = true, name = "front-server")]
    FrontServer(Box<phalanx_cli::front_cmd::FrontArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime's threads start: `prepare` takes secrets out of the environment.
    let prepared = match &cli.bench {
        Bench::Node(args) | Bench::Init(args) => match phalanx_cli::node_cmd::prepare(args) {
            Ok(prepared) => Some(prepared),
            Err(code) => return code,
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.bench {
        // It sets up its own logging, as `phalanx node` does.
        Bench::Node(_) => {
            let Some(prepared) = prepared else {
                unreachable!("prepared above")
            };
            return runtime.block_on(phalanx_cli::node_cmd::run(prepared));
        }
        Bench::Init(_) => {
            let Some(prepared) = prepared else {
                unreachable!("prepared above")
            };
            return runtime.block_on(phalanx_cli::node_cmd::init(prepared));
        }
        Bench::FrontServer(args) => return runtime.block_on(phalanx_cli::front_cmd::run(*args)),
        Bench::Store(args) => {
            init_logs();
            runtime.block_on(store::run(args))
        }
        Bench::Snapshot(args) => {
            init_logs();
            runtime.block_on(snapshot::run(args))
        }
        Bench::Payments(args) => {
            init_logs();
            runtime.block_on(payments::run(args))
        }
        Bench::Failover(args) => {
            init_logs();
            runtime.block_on(failover::run(args))
        }
        Bench::Front(args) => {
            init_logs();
            runtime.block_on(front::run(args))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs only when asked (RUST_LOG), on stderr: stdout is for results.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}
