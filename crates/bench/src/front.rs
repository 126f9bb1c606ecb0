//! `phalanx-bench front --handshakes N`: the BOLT 8 handshake and `init` of a peer with
//! the node, directly (the node's `PeerManager` holds the key) and through a keyless
//! front (its ECDH asked of the backend over the mutual-TLS link, on loopback), in one
//! run. LDK's `PeerManager` on both sides; each handshake is a new peer with new keys.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::secp256k1::PublicKey;
use clap::Args;
use hdrhistogram::Histogram;
use lightning::sign::{KeysManager, NodeSigner, Recipient};
use phalanx_frontend::KeylessSigner;
use phalanx_frontend::testing::{handshake_only, listen};
use phalanx_link::Role;
use phalanx_link::ecdh::{EcdhClient, serve_ecdh};
use phalanx_link::pki::LinkCa;
use phalanx_link::tls::LinkIdentity;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct FrontArgs {
    /// Handshakes measured on each path.
    #[arg(long, default_value_t = 200)]
    handshakes: usize,
    /// Print one JSON object per path.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Result {
    bench: &'static str,
    path: &'static str,
    handshakes: u64,
    handshake_p50_ms: f64,
    handshake_p99_ms: f64,
    handshake_max_ms: f64,
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

/// The backend's runtime, shut down without blocking (it is dropped on an async thread).
struct BackendRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for BackendRuntime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("until dropped")
    }
}

impl Drop for BackendRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// `count` handshakes, one new peer each, one after another.
async fn measure(
    path: &'static str,
    node_id: PublicKey,
    address: std::net::SocketAddr,
    count: usize,
) -> anyhow::Result<Result> {
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
    Ok(Result {
        bench: "front",
        path,
        handshakes: times.len(),
        handshake_p50_ms: times.value_at_quantile(0.5) as f64 / 1000.0,
        handshake_p99_ms: times.value_at_quantile(0.99) as f64 / 1000.0,
        handshake_max_ms: times.max() as f64 / 1000.0,
    })
}

pub async fn run(args: FrontArgs) -> anyhow::Result<()> {
    let node_keys = keys(rand::random());
    let node_id = node_keys
        .get_node_id(Recipient::Node)
        .map_err(|()| anyhow::anyhow!("no node id"))?;

    // Direct: the node's own PeerManager, with its key.
    let direct = listen(handshake_only(Arc::clone(&node_keys), rand::random())).await?;

    // Through a keyless front: the backend answers ECDH over the link.
    let ca = LinkCa::generate("bench")?;
    let identity = |role, name| -> anyhow::Result<LinkIdentity> {
        let cert = ca.issue(role, name)?;
        Ok(LinkIdentity::from_pem(
            &cert.cert_pem,
            &cert.key_pem,
            &ca.cert_pem(),
        )?)
    };
    // The backend on a runtime of its own, as if in its own process: the front's
    // handshake blocks a thread of this one while it waits for the answer.
    let link_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    link_listener.set_nonblocking(true)?;
    let link_address = link_listener.local_addr()?;
    let backend_identity = identity(Role::Backend, "backend-1")?;
    let answering = Arc::clone(&node_keys);
    let backend = BackendRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
    ));
    backend.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(link_listener)?;
        serve_ecdh(
            listener,
            &backend_identity,
            "backend-1".into(),
            move |point| {
                answering
                    .ecdh(Recipient::Node, point, None)
                    .ok()
                    .map(|secret| secret.secret_bytes())
            },
        )
        .await
    });
    let link = EcdhClient::connect(
        &identity(Role::Front, "front-1")?,
        "front-1",
        link_address,
        Duration::from_secs(5),
    )
    .await?;
    let front = listen(handshake_only(
        Arc::new(KeylessSigner::new(node_id, link)),
        rand::random(),
    ))
    .await?;

    // Alternating rounds, so that both paths see the same machine.
    let rounds = 4;
    let per_round = args.handshakes.div_ceil(rounds);
    let mut results: Vec<(&'static str, Vec<Result>)> =
        vec![("direct", Vec::new()), ("keyless-front", Vec::new())];
    for _ in 0..rounds {
        results[0]
            .1
            .push(measure("direct", node_id, direct, per_round).await?);
        results[1]
            .1
            .push(measure("keyless-front", node_id, front, per_round).await?);
    }
    drop(backend);
    for (path, rounds) in results {
        // Whole-run figures: the rounds' histograms are not kept, so medians of rounds.
        let mut p50: Vec<f64> = rounds.iter().map(|r| r.handshake_p50_ms).collect();
        let mut p99: Vec<f64> = rounds.iter().map(|r| r.handshake_p99_ms).collect();
        p50.sort_by(f64::total_cmp);
        p99.sort_by(f64::total_cmp);
        let result = Result {
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
