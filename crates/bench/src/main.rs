//! `phalanx-bench`: measurements, not tests. Each benchmark starts the servers it needs
//! (unless given a URL) and prints one JSON object per result with `--json`, a table
//! otherwise. Results and how they were taken live in `docs/BENCHMARKS.md`.

mod payments;
mod store;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs only when asked (RUST_LOG), on stderr: stdout is for results.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.bench {
            Bench::Store(args) => store::run(args).await,
            Bench::Payments(args) => payments::run(args).await,
        }
    })
}
