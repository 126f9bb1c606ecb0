//! `phalanx-bench snapshot`: a node with N channels on the chosen backend, paying at
//! concurrency 4; snapshots of its store taken back to back meanwhile (as `phalanx
//! backup create` takes them), and the same payments without snapshots, in one run.
//! Reports the snapshot's time and size, the encrypted backup's size, and the payment
//! latencies with and without snapshots running (the pause a snapshot costs the node).
//! On SQLite the running node holds its file's lock, so the node takes each backup
//! itself (`POST /v1/backups`, [`phalanx_node::Node::create_backup`]), copying its
//! database a few pages at a time between its own writes (`phalanx-bench store
//! --snapshot-pause` measures the pause that leaves them).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Args;
use phalanx_devnet::chain::ChainControl;
use phalanx_devnet::harness::{initialize_and_start, node_config, open_channels};
use phalanx_devnet::run::chain_config_from_url;
use phalanx_devnet::stream::{self, Plan, Stats};
use phalanx_node::identity;
use phalanx_regtest::{Regtest, RegtestConfig};
use phalanx_secrets::{FileSeedProvider, SeedProvider};
use phalanx_store::{ClusterName, StoreOptions};
use phalanx_testkit::etcd::EtcdServer;
use phalanx_testkit::postgres::PostgresServer;
use serde::Serialize;

use crate::store::{Backend, backend_name};

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// The store backend (on SQLite the node takes each backup itself).
    #[arg(long, value_enum)]
    backend: Backend,
    /// Channel counts measured, each on a fresh pair of nodes.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    channels: Vec<usize>,
    /// Payments in each half (with snapshots, without).
    #[arg(long, default_value_t = 200)]
    payments: u64,
    /// Print one JSON object per channel count.
    #[arg(long)]
    json: bool,
    /// The nodes' lease TTL (default 4000); a large node on etcd needs more, since etcd
    /// answers a renewal only after every write queued before it is applied.
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
}

#[derive(Serialize)]
struct Result {
    bench: &'static str,
    backend: &'static str,
    channels: usize,
    keys: usize,
    state_bytes: usize,
    backup_bytes: u64,
    snapshots: usize,
    snapshot_ms_p50: f64,
    snapshot_ms_max: f64,
    payment_p99_ms_without: f64,
    payment_max_ms_without: f64,
    payment_p99_ms_during: f64,
    payment_max_ms_during: f64,
}

pub async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    for &channels in &args.channels {
        let result = run_once(&args, channels).await?;
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            println!(
                "{} {} channels: {} keys, {} bytes (backup {} bytes); {} snapshots p50 {:.1} ms max {:.1} ms; payments p99/max {:.1}/{:.1} ms without, {:.1}/{:.1} ms during",
                result.backend,
                result.channels,
                result.keys,
                result.state_bytes,
                result.backup_bytes,
                result.snapshots,
                result.snapshot_ms_p50,
                result.snapshot_ms_max,
                result.payment_p99_ms_without,
                result.payment_max_ms_without,
                result.payment_p99_ms_during,
                result.payment_max_ms_during
            );
        }
    }
    Ok(())
}

async fn run_once(args: &SnapshotArgs, channels: usize) -> anyhow::Result<Result> {
    let dir = phalanx_testkit::process::scratch_dir("bench-snapshot")?;
    let (_postgres, _etcd, alice_store, bob_store) = match args.backend {
        Backend::Sqlite => (
            None,
            None,
            format!("sqlite://{}/alice.db", dir.display()),
            format!("sqlite://{}/bob.db", dir.display()),
        ),
        Backend::Postgres => {
            let server = PostgresServer::start()?;
            let (a, b) = (server.fresh_database()?, server.fresh_database()?);
            (Some(server), None, a, b)
        }
        _ => {
            let server = EtcdServer::start()?;
            let (a, b) = (server.url("alice"), server.url("bob"));
            (None, Some(server), a, b)
        }
    };
    let regtest = Regtest::start(RegtestConfig::default()).await?;
    let chain =
        ChainControl::connect(chain_config_from_url(&regtest.rpc_url_with_credentials())?).await?;
    let with_lease = |mut config: phalanx_node::config::NodeConfig| {
        if let Some(ttl) = args.lease_ttl_ms {
            config.store.lease.ttl = std::time::Duration::from_millis(ttl);
        }
        config
    };
    let alice_config = with_lease(node_config(
        chain.config(),
        &dir,
        "alice",
        Some(alice_store.clone()),
    )?);
    let alice = initialize_and_start(&alice_config).await?;
    let bob = initialize_and_start(&with_lease(node_config(
        chain.config(),
        &dir,
        "bob",
        Some(bob_store),
    )?))
    .await?;
    open_channels(&chain, &alice, &bob, channels, 200_000, 20_000).await?;
    // A running node's SQLite file cannot be opened by another process: the node's.
    let store = match args.backend {
        Backend::Sqlite => None,
        _ => Some(
            phalanx_store_connect::connect(
                &alice_store,
                StoreOptions::new(ClusterName::new("alice")?),
            )
            .await?,
        ),
    };

    let count = args.payments;
    let pay = |stats: Arc<Mutex<Stats>>| {
        let (alice, bob) = (Arc::clone(&alice), Arc::clone(&bob));
        async move {
            let (_stop_sender, stop) = tokio::sync::watch::channel(false);
            let plan = Plan {
                count: Some(count),
                concurrency: 4,
                amount_msat: 100_000,
                both_ways: true,
            };
            stream::run(alice, bob, plan, stats, stop).await;
        }
    };
    let without = Arc::new(Mutex::new(Stats::default()));
    pay(Arc::clone(&without)).await;

    let during = Arc::new(Mutex::new(Stats::default()));
    let payments = tokio::spawn(pay(Arc::clone(&during)));
    let mut times_ms = Vec::new();
    let mut last = Vec::new();
    let mut taken = 0usize;
    let (mut keys, mut state_bytes) = (0, 0);
    while !payments.is_finished() {
        match &store {
            Some(store) => {
                let started = Instant::now();
                last = store.snapshot().await?;
                times_ms.push(started.elapsed().as_secs_f64() * 1000.0);
                (keys, state_bytes) = (last.len(), last.iter().map(|(_, v)| v.len()).sum());
            }
            None => {
                // The node's own backup: its snapshot time is what its writes wait.
                let backup = dir.join(format!("node-backup-{taken}"));
                let created = alice.create_backup(&backup).await?;
                times_ms.push(created.snapshot_ms as f64);
                (keys, state_bytes) = (created.keys, created.bytes);
                if taken > 0 {
                    let _ = std::fs::remove_dir_all(dir.join(format!("node-backup-{}", taken - 1)));
                }
            }
        }
        taken += 1;
    }
    payments.await?;
    anyhow::ensure!(!times_ms.is_empty(), "no snapshot was taken");
    times_ms.sort_by(f64::total_cmp);

    let backup = match &store {
        Some(store) => {
            let seed = FileSeedProvider::new(alice_config.data_dir.join("seed"), false)
                .seed()
                .await?;
            let node = identity::read_identity(&**store)
                .await?
                .ok_or_else(|| anyhow::anyhow!("alice's store has no identity"))?;
            let backup = dir.join("backup");
            phalanx_backup::archive::write(&backup, &seed, &node, "alice", 0, &last)?;
            backup
        }
        None => dir.join(format!("node-backup-{}", taken - 1)),
    };
    let backup_bytes = std::fs::metadata(backup.join(phalanx_backup::archive::PAYLOAD_FILE))?.len();

    alice.shutdown().await;
    bob.shutdown().await;
    let (without, during) = (
        without.lock().unwrap_or_else(|e| e.into_inner()),
        during.lock().unwrap_or_else(|e| e.into_inner()),
    );
    let result = Result {
        bench: "snapshot",
        backend: backend_name(args.backend),
        channels,
        keys,
        state_bytes,
        backup_bytes,
        snapshots: times_ms.len(),
        snapshot_ms_p50: times_ms[times_ms.len() / 2],
        snapshot_ms_max: times_ms[times_ms.len() - 1],
        payment_p99_ms_without: without.latency_ms(0.99),
        payment_max_ms_without: without.latency_ms(1.0),
        payment_p99_ms_during: during.latency_ms(0.99),
        payment_max_ms_during: during.latency_ms(1.0),
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result)
}
