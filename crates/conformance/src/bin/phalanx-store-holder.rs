//! A lease holder in its own process, for the conformance suite's crash tests: it
//! campaigns, then writes in a loop and reports every acknowledged write on stdout.
//!
//! Lines: `CAMPAIGNING`, `LEADER <epoch>`, `ACK <n>` (write `n` acknowledged),
//! `RETRY <n> <error>` (transient failure), `FENCED <reason>`, `ERROR <message>`.
//! Exit status: 3 when fenced (by the store or by its own deadline), 2 on other errors.

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use phalanx_cluster::{Campaigner, LeaseTimings};
use phalanx_store::{HolderId, StateStore, StoreKey};

/// Exit status when the leadership ended.
const EXIT_FENCED: i32 = 3;
/// Exit status on any other failure.
const EXIT_ERROR: i32 = 2;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Overwrite one key (`holder/seq`) with 1, 2, 3 ...
    Seq,
    /// Write a new key (`keys/k<n>`) each time.
    Keys,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "c")]
    cluster: String,
    #[arg(long)]
    holder: String,
    #[arg(long)]
    ttl_ms: u64,
    #[arg(long)]
    renew_ms: u64,
    #[arg(long)]
    margin_ms: u64,
    #[arg(long)]
    retry_ms: u64,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Pause between writes.
    #[arg(long, default_value_t = 5)]
    write_interval_ms: u64,
}

fn fail(message: impl std::fmt::Display) -> ! {
    println!("ERROR {message}");
    std::process::exit(EXIT_ERROR);
}

fn fenced(reason: impl std::fmt::Display) -> ! {
    println!("FENCED {reason}");
    std::process::exit(EXIT_FENCED);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let store = phalanx_store_connect::connect(
        &args.url,
        phalanx_conformance::store_options(&args.cluster),
    )
    .await
    .unwrap_or_else(|err| fail(err.report()));
    let timings = LeaseTimings {
        ttl: Duration::from_millis(args.ttl_ms),
        renew_interval: Duration::from_millis(args.renew_ms),
        safety_margin: Duration::from_millis(args.margin_ms),
        retry_interval: Duration::from_millis(args.retry_ms),
    };
    let holder = HolderId::new(&args.holder).unwrap_or_else(|err| fail(err));
    let campaigner =
        Campaigner::new(store.clone(), holder, timings).unwrap_or_else(|err| fail(err));
    println!("CAMPAIGNING");
    let leadership = campaigner
        .campaign()
        .await
        .unwrap_or_else(|err| fail(err.report()));
    println!("LEADER {}", leadership.epoch());
    let fence = leadership.fence();
    let store: Arc<dyn StateStore> = store;
    let mut n: u64 = 1;
    loop {
        let token = fence.current_token().unwrap_or_else(|err| fenced(err));
        let key = match args.mode {
            Mode::Seq => StoreKey::new("holder", "", "seq"),
            Mode::Keys => StoreKey::new("keys", "", &format!("k{n}")),
        }
        .unwrap_or_else(|err| fail(err));
        match store.write(token, &key, n.to_be_bytes().to_vec()).await {
            Ok(()) => {
                println!("ACK {n}");
                n += 1;
            }
            Err(err) if err.is_fenced() => {
                fence.report_fenced(token, &err.to_string());
                fenced(err);
            }
            Err(err) if err.is_transient() => {
                println!("RETRY {n} {}", err.report());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => fail(err.report()),
        }
        tokio::time::sleep(Duration::from_millis(args.write_interval_ms)).await;
    }
}
