//! `phalanx-bench front`: what a keyless front costs, against a direct connection, in one
//! run, on loopback.
//!
//! - Handshakes (`--handshakes N`): the BOLT 8 handshake and `init` of a new peer with the
//!   node, directly (the node's `PeerManager` holds the key) and through a `Front`
//!   (its ECDH asked of the backend's `LinkServer` over mutual TLS). LDK's `PeerManager`
//!   on both sides; the backend on a runtime of its own, as if in its own process.
//! - Payments (`--payments N`, each `--concurrency`): Alice pays Bob, whom she reaches
//!   directly, and Dave pays Carol, whom he reaches only through a front, alternating
//!   rounds. Four nodes on SQLite on the built-in regtest chain (a pair per path, so
//!   that each pair's ledgers can be checked against each other); a payment counts once
//!   the payer saw it succeed and the payee recorded it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::Amount;
use bitcoin::constants::ChainHash;
use bitcoin::secp256k1::PublicKey;
use clap::Args;
use hdrhistogram::Histogram;
use lightning::ln::peer_handler::ErroringMessageHandler;
use lightning::sign::{KeysManager, NodeSigner, Recipient};
use phalanx_devnet::chain::ChainControl;
use phalanx_devnet::harness::{fund, initialize_and_start, node_config, open_channel_at};
use phalanx_devnet::run::chain_config_from_url;
use phalanx_devnet::stream::{self, Plan, Stats};
use phalanx_frontend::testing::{handshake_only, listen};
use phalanx_frontend::{Front, FrontConfig, NodeKey};
use phalanx_link::backend::LinkServer;
use phalanx_link::pki::LinkCa;
use phalanx_link::runtime::OwnRuntime;
use phalanx_link::{ActiveBackend, Role};
use phalanx_node::config::LinkConfig;
use phalanx_regtest::{Regtest, RegtestConfig};
use serde::Serialize;

use crate::payments::{no_violations, print_violations};

#[derive(Args, Debug)]
pub struct FrontArgs {
    /// Handshakes measured on each path (0: none).
    #[arg(long, default_value_t = 200)]
    handshakes: usize,
    /// Payments measured on each path at each concurrency (0: none).
    #[arg(long, default_value_t = 300)]
    payments: u64,
    /// Concurrency levels of the payments.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    concurrency: Vec<usize>,
    /// Channels of the synthetic graph replayed to a front process (0: no gossip
    /// ingest measured). Mainnet-size: 50000.
    #[arg(long, default_value_t = 0)]
    gossip_channels: usize,
    /// Nodes of the synthetic graph (at most as many as channels). Mainnet-size: 15000.
    #[arg(long, default_value_t = 15_000)]
    gossip_nodes: usize,
    /// Channel updates per channel: 0, 1 or 2.
    #[arg(long, default_value_t = 2)]
    gossip_updates_per_channel: u8,
    /// Payments each payer makes to the backend before the ingest, and again after it
    /// (one at a time), as the baselines of the payments made during it (0: no payer).
    #[arg(long, default_value_t = 0)]
    gossip_payments_before: usize,
    /// Runs the front process at the lowest CPU priority (`nice` 19): on a machine it
    /// shares with the backend, as if it had one of its own.
    #[arg(long)]
    gossip_front_nice: bool,
    /// Runs everything the flood needs beside the backend at nice 19: the front, the
    /// replaying peer and the chain that answers the funding checks, as if each had a
    /// machine of its own. The payers stay at the bench's priority, so that with the
    /// backend on a core of its own (`taskset`) what they measure is the backend's share
    /// of the flood.
    #[arg(long)]
    gossip_flood_nice: bool,
    /// Which payers run beside the ingest: `front` (a peer of the flooded front, which
    /// also gets the flood rebroadcast) and `direct` (a peer of the backend).
    #[arg(long, value_delimiter = ',', default_value = "front,direct")]
    gossip_payers: Vec<String>,
    /// Print one JSON object per case.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct HandshakeResult {
    bench: &'static str,
    path: &'static str,
    handshakes: u64,
    handshake_p50_ms: f64,
    handshake_p99_ms: f64,
    handshake_max_ms: f64,
}

#[derive(Serialize)]
struct PaymentResult {
    bench: &'static str,
    path: &'static str,
    concurrency: usize,
    payments: u64,
    failed: u64,
    payments_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn keys(seed: [u8; 32]) -> Arc<KeysManager> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Arc::new(KeysManager::new(
        &seed,
        now.as_secs(),
        now.subsec_nanos(),
        true,
    ))
}

pub async fn run(args: FrontArgs) -> anyhow::Result<()> {
    if args.handshakes > 0 {
        handshakes(&args).await?;
    }
    if args.payments > 0 {
        payments(&args).await?;
    }
    if args.gossip_channels > 0 {
        anyhow::ensure!(
            args.gossip_nodes >= 2 && args.gossip_nodes <= args.gossip_channels,
            "--gossip-nodes must be between 2 and --gossip-channels (every node needs a channel)"
        );
        anyhow::ensure!(
            args.gossip_updates_per_channel <= 2,
            "--gossip-updates-per-channel is 0, 1 or 2"
        );
        crate::gossip::ingest(
            args.gossip_nodes,
            args.gossip_channels,
            args.gossip_updates_per_channel,
            args.gossip_payments_before,
            crate::gossip::LowestPriority {
                front: args.gossip_front_nice || args.gossip_flood_nice,
                flood: args.gossip_flood_nice,
            },
            &args.gossip_payers,
            args.json,
        )
        .await?;
    }
    Ok(())
}

/// `count` handshakes, one new peer each, one after another.
async fn measure_handshakes(
    path: &'static str,
    node_id: PublicKey,
    address: SocketAddr,
    count: usize,
) -> anyhow::Result<HandshakeResult> {
    let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..count {
        let peer = handshake_only(keys(rand::random()), rand::random());
        let began = Instant::now();
        let connection = lightning_net_tokio::connect_outbound(Arc::clone(&peer), node_id, address)
            .await
            .ok_or_else(|| anyhow::anyhow!("cannot connect to {address}"))?;
        let limit = began + Duration::from_secs(10);
        while peer.peer_by_node_id(&node_id).is_none() {
            anyhow::ensure!(Instant::now() < limit, "{path}: no handshake in 10 s");
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        times.saturating_record(began.elapsed().as_micros().max(1) as u64);
        peer.disconnect_all_peers();
        drop(connection);
    }
    Ok(HandshakeResult {
        bench: "front",
        path,
        handshakes: times.len(),
        handshake_p50_ms: times.value_at_quantile(0.5) as f64 / 1000.0,
        handshake_p99_ms: times.value_at_quantile(0.99) as f64 / 1000.0,
        handshake_max_ms: times.max() as f64 / 1000.0,
    })
}

async fn handshakes(args: &FrontArgs) -> anyhow::Result<()> {
    let node_keys = keys(rand::random());
    let node_id = node_keys
        .get_node_id(Recipient::Node)
        .map_err(|()| anyhow::anyhow!("no node id"))?;

    // Direct: the node's own PeerManager, with its key.
    let direct = listen(handshake_only(Arc::clone(&node_keys), rand::random())).await?;

    // Through a keyless front: a backend's link server answers the ECDH (no channels:
    // a handler that takes none), on a runtime of its own as if in its own process.
    let ca = LinkCa::generate("bench")?;
    let backend_identity = ca.identity(Role::Backend, "backend-1")?;
    let link_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    link_listener.set_nonblocking(true)?;
    let link_address = link_listener.local_addr()?;
    let answering = Arc::clone(&node_keys);
    let server = Arc::new(LinkServer::new(
        Arc::new(ErroringMessageHandler::new()),
        "backend-1",
        ActiveBackend {
            node_id,
            chain_hash: *ChainHash::using_genesis_block(bitcoin::Network::Regtest).as_bytes(),
            init_features: Vec::new(),
            node_features: Vec::new(),
        },
        Box::new(move |point| {
            answering
                .ecdh(Recipient::Node, point, None)
                .ok()
                .map(|secret| secret.secret_bytes())
        }),
    ));
    let backend = OwnRuntime::new("bench-backend", 1)?;
    backend.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(link_listener)?;
        server.serve(listener, &backend_identity).await
    });
    let front = Front::start(FrontConfig {
        name: "front-1".into(),
        listen: "127.0.0.1:0".parse()?,
        backends: vec![link_address],
        identity: ca.identity(Role::Front, "front-1")?,
        ecdh_timeout: Duration::from_secs(5),
        node_key: None,
        public_address: None,
    })
    .await?;
    // A front holding the node key (`key_provider = "seed"`), attached to the same
    // backend: its handshakes ask the backend nothing.
    let keyed = Front::start(FrontConfig {
        name: "front-2".into(),
        listen: "127.0.0.1:0".parse()?,
        backends: vec![link_address],
        identity: ca.identity(Role::Front, "front-2")?,
        ecdh_timeout: Duration::from_secs(5),
        node_key: Some(NodeKey::new(node_keys.get_node_secret_key())),
        public_address: None,
    })
    .await?;

    // Alternating rounds, so that every path sees the same machine.
    let rounds = 4;
    let per_round = args.handshakes.div_ceil(rounds);
    let paths = [
        ("direct", direct),
        ("keyless-front", front.address()),
        ("keyed-front", keyed.address()),
    ];
    let mut results: Vec<(&'static str, Vec<HandshakeResult>)> =
        paths.iter().map(|(path, _)| (*path, Vec::new())).collect();
    for _ in 0..rounds {
        for (index, (path, address)) in paths.iter().enumerate() {
            results[index]
                .1
                .push(measure_handshakes(path, node_id, *address, per_round).await?);
        }
    }
    drop(keyed);
    drop(front);
    drop(backend);
    for (path, rounds) in results {
        // Whole-run figures: the rounds' histograms are not kept, so medians of rounds.
        let mut p50: Vec<f64> = rounds.iter().map(|r| r.handshake_p50_ms).collect();
        let mut p99: Vec<f64> = rounds.iter().map(|r| r.handshake_p99_ms).collect();
        p50.sort_by(f64::total_cmp);
        p99.sort_by(f64::total_cmp);
        let result = HandshakeResult {
            bench: "front",
            path,
            handshakes: rounds.iter().map(|r| r.handshakes).sum(),
            handshake_p50_ms: p50[p50.len() / 2],
            handshake_p99_ms: p99[p99.len() / 2],
            handshake_max_ms: rounds
                .iter()
                .map(|r| r.handshake_max_ms)
                .fold(0.0, f64::max),
        };
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            println!(
                "{path}: {} handshakes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                result.handshakes,
                result.handshake_p50_ms,
                result.handshake_p99_ms,
                result.handshake_max_ms
            );
        }
    }
    Ok(())
}

async fn payments(args: &FrontArgs) -> anyhow::Result<()> {
    let dir = phalanx_testkit::process::scratch_dir("bench-front")?;
    let regtest = Regtest::start(RegtestConfig::default()).await?;
    let chain =
        ChainControl::connect(chain_config_from_url(&regtest.rpc_url_with_credentials())?).await?;
    chain.ensure_funds(Amount::from_sat(50_000_000)).await?;

    // Carol serves fronts: the link's certificates in files, as `phalanx link-certs`
    // writes them.
    let ca = LinkCa::generate("bench")?;
    let certs = dir.join("link");
    std::fs::create_dir_all(&certs)?;
    let carol_cert = ca.issue(Role::Backend, "carol-1")?;
    std::fs::write(certs.join("carol-1.crt"), &carol_cert.cert_pem)?;
    std::fs::write(certs.join("carol-1.key"), carol_cert.key_pem.as_bytes())?;
    std::fs::write(certs.join("ca.crt"), ca.cert_pem())?;
    let alice = initialize_and_start(&node_config(chain.config(), &dir, "alice", None)?).await?;
    let bob = initialize_and_start(&node_config(chain.config(), &dir, "bob", None)?).await?;
    let dave = initialize_and_start(&node_config(chain.config(), &dir, "dave", None)?).await?;
    let mut carol_config = node_config(chain.config(), &dir, "carol", None)?;
    carol_config.link = Some(LinkConfig {
        listen: "127.0.0.1:0".parse()?,
        certificate: certs.join("carol-1.crt"),
        key: certs.join("carol-1.key"),
        ca: certs.join("ca.crt"),
    });
    let carol = initialize_and_start(&carol_config).await?;
    let front = Front::start(FrontConfig {
        name: "front-1".into(),
        listen: "127.0.0.1:0".parse()?,
        backends: vec![
            carol
                .link_address()
                .ok_or_else(|| anyhow::anyhow!("carol serves no link"))?,
        ],
        identity: ca.identity(Role::Front, "front-1")?,
        ecdh_timeout: Duration::from_secs(5),
        node_key: None,
        public_address: None,
    })
    .await?;

    let levels = args.concurrency.len() as u64;
    let amount_msat = 1_000_000;
    let channel_sat = (args.payments * levels * amount_msat / 1000 * 2).max(1_000_000);
    fund(&chain, &alice, Amount::from_sat(channel_sat + 1_000_000)).await?;
    fund(&chain, &dave, Amount::from_sat(channel_sat + 1_000_000)).await?;
    open_channel_at(
        &chain,
        &alice,
        &bob,
        bob.listen_addresses()[0],
        channel_sat,
        0,
    )
    .await?;
    open_channel_at(&chain, &dave, &carol, front.address(), channel_sat, 0).await?;

    if !args.json {
        println!(
            "{:<8} {:>11} {:>9} {:>7} {:>12} {:>9} {:>9}",
            "path", "concurrency", "payments", "failed", "payments/s", "p50 ms", "p99 ms"
        );
    }
    // Two rounds per path, alternating, each half the payments; the figures are of the
    // rounds together.
    for &concurrency in &args.concurrency {
        let mut stats = [Stats::default(), Stats::default()];
        // Each path's own time: its rounds only.
        let mut busy = [Duration::ZERO; 2];
        for _ in 0..2 {
            for (index, (payer, payee)) in [(&alice, &bob), (&dave, &carol)].into_iter().enumerate()
            {
                let began = Instant::now();
                let round = Arc::new(Mutex::new(std::mem::take(&mut stats[index])));
                let (_stop_sender, stop) = tokio::sync::watch::channel(false);
                stream::run(
                    Arc::clone(payer),
                    Arc::clone(payee),
                    Plan {
                        count: Some(args.payments.div_ceil(2)),
                        concurrency,
                        amount_msat,
                        both_ways: false,
                    },
                    Arc::clone(&round),
                    stop,
                )
                .await;
                stats[index] =
                    std::mem::take(&mut *round.lock().unwrap_or_else(|e| e.into_inner()));
                busy[index] += began.elapsed();
            }
        }
        for ((path, stats), busy) in ["direct", "front"].into_iter().zip(&stats).zip(busy) {
            let result = PaymentResult {
                bench: "front",
                path,
                concurrency,
                payments: stats.succeeded,
                failed: stats.failed,
                payments_per_s: stats.succeeded as f64 / busy.as_secs_f64().max(1e-9),
                p50_ms: stats.latency_ms(0.5),
                p99_ms: stats.latency_ms(0.99),
            };
            if let Some(failure) = &stats.last_failure {
                eprintln!("{path}: {} payments failed; last: {failure}", stats.failed);
            }
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                println!(
                    "{:<8} {:>11} {:>9} {:>7} {:>12.1} {:>9.2} {:>9.2}",
                    path,
                    concurrency,
                    result.payments,
                    result.failed,
                    result.payments_per_s,
                    result.p50_ms,
                    result.p99_ms
                );
            }
        }
    }
    let mut violations = phalanx_devnet::invariants::between(&chain, &alice, &bob).await;
    violations.extend(phalanx_devnet::invariants::between(&chain, &dave, &carol).await);
    print_violations(&violations);
    drop(front);
    for node in [alice, bob, carol, dave] {
        node.shutdown().await;
    }
    no_violations(&violations)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
