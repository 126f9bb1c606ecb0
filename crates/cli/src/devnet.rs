//! `phalanx devnet`: a local Lightning network on regtest, streaming payments.

use std::process::ExitCode;

use clap::Args;
use phalanx_devnet::DevnetOptions;

/// Options of `phalanx devnet`.
#[derive(Args, Debug)]
pub struct DevnetArgs {
    /// Stop after this many payments and print a summary (default: until Ctrl-C).
    #[arg(long)]
    payments: Option<u64>,
    /// Payments in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The amount of each payment, in msat.
    #[arg(long, default_value_t = 1_000_000)]
    amount_msat: u64,
    /// Leave the nodes running after the payments and print their API addresses and
    /// token files, until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Use an external regtest chain (a real bitcoind, or `phalanx regtest`) at
    /// http://user:pass@host:port instead of the built-in one; blocks are mined with
    /// `generatetoaddress` to a wallet of that node.
    #[arg(long, env = "PHALANX_DEVNET_CHAIN_RPC")]
    chain_rpc: Option<String>,
    /// Keep the nodes' data here (default: a temporary directory, removed at the end
    /// unless --keep).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

/// Runs the devnet; exit status 0 only if every payment succeeded.
pub async fn run(args: DevnetArgs) -> ExitCode {
    if args.concurrency == 0 || args.amount_msat == 0 {
        eprintln!("error: --concurrency and --amount-msat must be positive");
        return ExitCode::from(2);
    }
    let options = DevnetOptions {
        payments: args.payments,
        concurrency: args.concurrency,
        amount_msat: args.amount_msat,
        keep: args.keep,
        chain_rpc: args.chain_rpc,
        data_dir: args.data_dir,
    };
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match phalanx_devnet::run(options, interrupt).await {
        Ok(summary)
            if summary.all_succeeded()
                && summary.succeeded > 0
                && summary.violations.is_empty() =>
        {
            ExitCode::SUCCESS
        }
        Ok(summary) if !summary.violations.is_empty() => {
            eprintln!("error: {} invariant violations", summary.violations.len());
            ExitCode::FAILURE
        }
        Ok(summary) => {
            eprintln!(
                "error: {} of {} payments failed",
                summary.failed,
                summary.failed + summary.succeeded
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
