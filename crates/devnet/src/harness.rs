//! Starting nodes on a regtest chain and bringing them to a funded channel.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::{Amount, Network};
use phalanx_node::config::{ApiConfig, ChainConfig, LightningConfig, NodeConfig, StoreConfig};
use phalanx_node::metrics::Metrics;
use phalanx_node::{Node, NodeError};
use phalanx_store::{ClusterName, HolderId};

use crate::DevnetError;
use crate::chain::ChainControl;

/// How long the devnet waits for any one step (a block to be seen, a channel to open).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Records the node's identity in its store (as `phalanx init` does; nothing when it is
/// there already), then starts it.
pub async fn initialize_and_start(config: &NodeConfig) -> Result<Arc<Node>, DevnetError> {
    phalanx_instance::initialize(config).await?;
    Ok(phalanx_instance::start(config, Arc::new(Metrics::new())).await?)
}

/// The configuration of a node named `name` with its data in `dir/name`, following the
/// chain of `chain`, on `store_url` (SQLite in its data directory when `None`).
pub fn node_config(
    chain: &ChainConfig,
    dir: &Path,
    name: &str,
    store_url: Option<String>,
) -> Result<NodeConfig, DevnetError> {
    let data_dir = dir.join(name);
    std::fs::create_dir_all(&data_dir)
        .map_err(|err| DevnetError::Io(format!("{}: {err}", data_dir.display())))?;
    let invalid = |err: phalanx_store::StoreError| DevnetError::Node(NodeError::Store(err));
    Ok(NodeConfig {
        network: Network::Regtest,
        store: StoreConfig {
            url: store_url
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("node.db").display())),
            cluster: ClusterName::new(name).map_err(invalid)?,
            instance_id: HolderId::new(&format!("{name}-1")).map_err(invalid)?,
            cluster_enabled: false,
            lease: phalanx_cluster::LeaseTimings::default(),
        },
        chain: ChainConfig {
            poll_interval: Duration::from_millis(100),
            ..chain.clone()
        },
        lightning: LightningConfig {
            listen: vec!["127.0.0.1:0".parse().expect("a socket address")],
            alias: Some(name.into()),
            forward_delay: Duration::from_millis(0),
        },
        api: ApiConfig {
            listen: "127.0.0.1:0".parse().expect("a socket address"),
            token_file: data_dir.join("api-token"),
        },
        seed_file: data_dir.join("seed"),
        data_dir,
    })
}

/// Polls `check` until it returns `Some`, or fails with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<T, DevnetError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(DevnetError::Timeout(format!("{what} (waited {timeout:?})")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node has processed the chain's tip.
pub async fn wait_synced(chain: &ChainControl, nodes: &[&Arc<Node>]) -> Result<(), DevnetError> {
    let height = chain.height().await?;
    for node in nodes {
        wait_for("a node to process the chain tip", STEP_TIMEOUT, || async {
            (node.best_block_height() >= height && node.wallet().best_block().height >= height)
                .then_some(())
        })
        .await?;
    }
    Ok(())
}

/// Mines `count` blocks and waits until every node has processed them.
pub async fn mine(
    chain: &ChainControl,
    nodes: &[&Arc<Node>],
    count: u32,
) -> Result<(), DevnetError> {
    chain.mine(count).await?;
    wait_synced(chain, nodes).await
}

/// Pays `amount` from the chain wallet to `node` and confirms it.
pub async fn fund(
    chain: &ChainControl,
    node: &Arc<Node>,
    amount: Amount,
) -> Result<(), DevnetError> {
    chain
        .ensure_funds(amount + Amount::from_sat(100_000))
        .await?;
    let before = node.onchain_balance().confirmed_sat;
    let address = node.new_address()?;
    chain.send_to(&address.to_string(), amount).await?;
    mine(chain, &[node], 1).await?;
    wait_for(
        "the funds to confirm in the node's wallet",
        STEP_TIMEOUT,
        || async {
            (node.onchain_balance().confirmed_sat >= before + amount.to_sat()).then_some(())
        },
    )
    .await
}

/// Opens a channel from `from` to `to`, confirms it, and waits until both sides can
/// route through it.
pub async fn open_channel(
    chain: &ChainControl,
    from: &Arc<Node>,
    to: &Arc<Node>,
    amount_sat: u64,
    push_msat: u64,
) -> Result<(), DevnetError> {
    let before = from
        .list_channels()
        .iter()
        .filter(|c| c.funding_txo.is_some())
        .count();
    from.open_channel(
        to.node_id(),
        Some(to.listen_addresses()[0]),
        amount_sat,
        push_msat,
        false,
    )
    .await?;
    wait_for("the funding transaction", STEP_TIMEOUT, || async {
        (from
            .list_channels()
            .iter()
            .filter(|c| c.funding_txo.is_some())
            .count()
            > before)
            .then_some(())
    })
    .await?;
    // Give the broadcast a moment to reach the chain's mempool before mining.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..6 {
        mine(chain, &[from, to], 1).await?;
    }
    let peer_ready = |node: &Arc<Node>, peer| {
        node.list_channels().iter().any(|c| {
            c.counterparty.node_id == peer
                && c.is_usable
                && c.counterparty.forwarding_info.is_some()
        })
    };
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !(peer_ready(from, to.node_id()) && peer_ready(to, from.node_id())) {
        if Instant::now() >= deadline {
            return Err(DevnetError::Timeout(format!(
                "the channel to be usable on both sides (waited {STEP_TIMEOUT:?})"
            )));
        }
        // The funding may have missed the first block: keep mining, slowly.
        tokio::time::sleep(Duration::from_millis(500)).await;
        chain.mine(1).await?;
    }
    Ok(())
}
