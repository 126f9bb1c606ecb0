//! `phalanx-bench payments`: two nodes on the built-in regtest chain with one channel,
//! each with its own store on the chosen backend, paying invoices at concurrency 1, 10
//! and 100. A payment counts when the payer saw it succeed and the payee recorded it.

use std::sync::{Arc, Mutex};

use bitcoin::Amount;
use clap::Args;
use phalanx_devnet::chain::ChainControl;
use phalanx_devnet::harness::{fund, initialize_and_start, node_config, open_channel};
use phalanx_devnet::run::chain_config_from_url;
use phalanx_devnet::stream::{self, Plan, Stats};
use phalanx_regtest::{Regtest, RegtestConfig};
use phalanx_testkit::etcd::EtcdServer;
use phalanx_testkit::postgres::PostgresServer;
use serde::Serialize;

use crate::store::{Backend, backend_name};

#[derive(Args, Debug)]
pub struct PaymentsArgs {
    /// The store backend both nodes use (each its own database or prefix).
    #[arg(long, value_enum)]
    backend: Backend,
    /// Payments measured at each concurrency.
    #[arg(long, default_value_t = 500)]
    payments: u64,
    /// Concurrency levels (payments in flight).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    concurrency: Vec<usize>,
    /// The amount of each payment.
    #[arg(long, default_value_t = 1_000_000)]
    amount_msat: u64,
    /// The synchronous backup stream: off, on (each node streams to a directory of its
    /// own), or both, one after the other in the same run.
    #[arg(long, value_enum, default_value_t = StreamMode::Off)]
    backup_stream: StreamMode,
    /// Print one JSON object per concurrency level.
    #[arg(long)]
    json: bool,
}

/// Whether the nodes stream their commits to a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamMode {
    /// No backup stream.
    Off,
    /// Every commit also appended and fsynced to the stream.
    On,
    /// Off, then on, in one run.
    Both,
}

#[derive(Serialize)]
struct Result {
    bench: &'static str,
    backend: &'static str,
    concurrency: usize,
    payments: u64,
    failed: u64,
    backup_stream: bool,
    payments_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Bytes the payer committed to its store per payment of this level: all of them,
    /// and those of its channel manager and of its monitors (full and updates).
    payer_bytes_per_payment: f64,
    payer_manager_bytes_per_payment: f64,
    payer_monitor_bytes_per_payment: f64,
    /// All the payee committed per payment.
    payee_bytes_per_payment: f64,
}

/// Keeps the servers alive until the end.
enum Servers {
    None,
    Postgres(#[allow(dead_code)] PostgresServer),
    Etcd(#[allow(dead_code)] EtcdServer),
}

pub async fn run(args: PaymentsArgs) -> anyhow::Result<()> {
    let modes: &[bool] = match args.backup_stream {
        StreamMode::Off => &[false],
        StreamMode::On => &[true],
        StreamMode::Both => &[false, true],
    };
    if !args.json {
        println!(
            "{:<10} {:>6} {:>11} {:>9} {:>7} {:>12} {:>9} {:>9} {:>15}",
            "backend",
            "stream",
            "concurrency",
            "payments",
            "failed",
            "payments/s",
            "p50 ms",
            "p99 ms",
            "payer KiB/pay"
        );
    }
    for &stream in modes {
        run_once(&args, stream).await?;
    }
    Ok(())
}

async fn run_once(args: &PaymentsArgs, backup_stream: bool) -> anyhow::Result<()> {
    let dir = phalanx_testkit::process::scratch_dir("bench-payments")?;
    let (servers, alice_store, bob_store) = match args.backend {
        Backend::Sqlite => (Servers::None, None, None),
        Backend::Postgres => {
            let server = PostgresServer::start()?;
            let (a, b) = (server.fresh_database()?, server.fresh_database()?);
            (Servers::Postgres(server), Some(a), Some(b))
        }
        Backend::Etcd => {
            let server = EtcdServer::start()?;
            let (a, b) = (server.url("alice"), server.url("bob"));
            (Servers::Etcd(server), Some(a), Some(b))
        }
    };
    let regtest = Regtest::start(RegtestConfig::default()).await?;
    let chain =
        ChainControl::connect(chain_config_from_url(&regtest.rpc_url_with_credentials())?).await?;
    chain.ensure_funds(Amount::from_sat(50_000_000)).await?;
    let config = |name: &str, store| -> anyhow::Result<_> {
        let mut config = node_config(chain.config(), &dir, name, store)?;
        if backup_stream {
            config.backup_dir = Some(dir.join(format!("{name}-stream")));
        }
        Ok(config)
    };
    let alice = initialize_and_start(&config("alice", alice_store)?).await?;
    let bob = initialize_and_start(&config("bob", bob_store)?).await?;
    // Room for every payment of every level in one direction.
    let levels = args.concurrency.len() as u64;
    let channel_sat = (args.payments * levels * args.amount_msat / 1000 * 2).max(1_000_000);
    fund(&chain, &alice, Amount::from_sat(channel_sat + 1_000_000)).await?;
    open_channel(&chain, &alice, &bob, channel_sat, 0).await?;

    let name = backend_name(args.backend);
    for &concurrency in &args.concurrency {
        let (payer_before, payee_before) = (written_bytes(&alice), written_bytes(&bob));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (_stop_sender, stop) = tokio::sync::watch::channel(false);
        let plan = Plan {
            count: Some(args.payments),
            concurrency,
            amount_msat: args.amount_msat,
            both_ways: false,
        };
        stream::run(
            Arc::clone(&alice),
            Arc::clone(&bob),
            plan,
            Arc::clone(&stats),
            stop,
        )
        .await;
        let stats = stats.lock().unwrap_or_else(|e| e.into_inner());
        let (payer, payee) = (
            written_bytes(&alice).since(&payer_before),
            written_bytes(&bob).since(&payee_before),
        );
        let per_payment = |bytes: u64| bytes as f64 / stats.succeeded.max(1) as f64;
        let result = Result {
            bench: "payments",
            backend: name,
            concurrency,
            backup_stream,
            payments: stats.succeeded,
            failed: stats.failed,
            payments_per_s: stats.rate(),
            p50_ms: stats.latency_ms(0.5),
            p99_ms: stats.latency_ms(0.99),
            payer_bytes_per_payment: per_payment(payer.total()),
            payer_manager_bytes_per_payment: per_payment(payer.of(&["manager"])),
            payer_monitor_bytes_per_payment: per_payment(
                payer.of(&["monitors", "monitor_updates"]),
            ),
            payee_bytes_per_payment: per_payment(payee.total()),
        };
        if let Some(failure) = &stats.last_failure {
            eprintln!(
                "{} payments failed at concurrency {concurrency}; last: {failure}",
                stats.failed
            );
        }
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            println!(
                "{:<10} {:>6} {:>11} {:>9} {:>7} {:>12.1} {:>9.2} {:>9.2} {:>15.1}",
                result.backend,
                if backup_stream { "on" } else { "off" },
                result.concurrency,
                result.payments,
                result.failed,
                result.payments_per_s,
                result.p50_ms,
                result.p99_ms,
                result.payer_bytes_per_payment / 1024.0
            );
        }
    }
    let violations = phalanx_devnet::invariants::between(&chain, &alice, &bob).await;
    print_violations(&violations);
    alice.shutdown().await;
    bob.shutdown().await;
    drop(servers);
    no_violations(&violations)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What a node committed to its store so far, by kind, as its metrics count it
/// (`phalanx_store_written_bytes_total{kind}`).
struct WrittenBytes(std::collections::BTreeMap<String, u64>);

fn written_bytes(node: &phalanx_node::Node) -> WrittenBytes {
    let text = node
        .metrics()
        .render(phalanx_api::ServerState::ServerActive, None);
    WrittenBytes(
        text.lines()
            .filter_map(|line| line.strip_prefix("phalanx_store_written_bytes_total{kind=\""))
            .filter_map(|rest| {
                let (kind, value) = rest.split_once("\"} ")?;
                Some((kind.to_owned(), value.trim().parse::<f64>().ok()? as u64))
            })
            .collect(),
    )
}

impl WrittenBytes {
    /// What was written since `before`.
    fn since(&self, before: &WrittenBytes) -> WrittenBytes {
        WrittenBytes(
            self.0
                .iter()
                .map(|(kind, bytes)| {
                    let earlier = before.0.get(kind).copied().unwrap_or(0);
                    (kind.clone(), bytes.saturating_sub(earlier))
                })
                .collect(),
        )
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    fn of(&self, kinds: &[&str]) -> u64 {
        kinds.iter().filter_map(|kind| self.0.get(*kind)).sum()
    }
}

/// Prints the invariants a run violated (on stderr, beside the figures).
pub(crate) fn print_violations(violations: &[String]) {
    eprintln!("invariants: {} violated", violations.len());
    for violation in violations {
        eprintln!("  {violation}");
    }
}

/// The nearest-rank percentile of `samples` (sorted in place), in milliseconds; 0 for
/// none.
pub(crate) fn percentile_ms(samples: &mut [std::time::Duration], quantile: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort();
    let rank = ((samples.len() as f64 * quantile).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1000.0
}

/// A run whose invariants did not hold fails, whatever its figures.
pub(crate) fn no_violations(violations: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        violations.is_empty(),
        "{} invariant violations",
        violations.len()
    );
    Ok(())
}
