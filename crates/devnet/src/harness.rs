//! Starting nodes on a regtest chain and bringing them to funded, usable channels: the
//! primitives the devnet, the end-to-end tests (`phalanx-e2e`, which panics where these
//! return errors) and the benchmarks share. The chain is driven over its RPC
//! ([`ChainControl`]), so they work against the built-in chain and a real bitcoind.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, Network, OutPoint};
use phalanx_node::config::{
    ApiConfig, AwsConfig, ChainConfig, LightningConfig, NodeConfig, SeedConfig, SeedSource,
    StoreConfig,
};
use phalanx_node::metrics::Metrics;
use phalanx_node::{Node, NodeError};
use phalanx_store::{ClusterName, HolderId};

use crate::DevnetError;
use crate::chain::ChainControl;

/// How long the devnet waits for any one step (a block to be seen, a channel to open).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Channels opened before their fundings are confirmed: LDK accepts at most four inbound
/// channels per peer whose funding has not confirmed (`MAX_UNFUNDED_CHANS_PER_PEER`).
pub const OPENS_AT_ONCE: usize = 4;

/// Payments from the chain's wallet between two blocks when funding in bulk (Bitcoin
/// Core limits chains of unconfirmed transactions).
const SENDS_PER_BLOCK: usize = 20;

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
            password_secret: None,
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
            token_secret: None,
            token_reload_interval: Duration::from_millis(
                phalanx_node::config::DEFAULT_TOKEN_RELOAD_INTERVAL_MS,
            ),
        },
        seed: SeedConfig {
            source: SeedSource::File {
                path: data_dir.join("seed"),
            },
            expected_node_id: None,
            aws: AwsConfig::default(),
        },
        backup_dir: None,
        backup_options: Default::default(),
        link: None,
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
pub async fn wait_synced(chain: &ChainControl, nodes: &[&Node]) -> Result<(), DevnetError> {
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
pub async fn mine(chain: &ChainControl, nodes: &[&Node], count: u32) -> Result<(), DevnetError> {
    chain.mine(count).await?;
    wait_synced(chain, nodes).await
}

/// Pays `amount` from the chain wallet to `node` and confirms it.
pub async fn fund(chain: &ChainControl, node: &Node, amount: Amount) -> Result<(), DevnetError> {
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

/// Whether `node` has a usable channel with `peer` whose forwarding fees it knows: an
/// invoice's route hints leave out a channel whose counterparty's `channel_update` has
/// not arrived, so an invoice made before that cannot be paid through it.
pub fn usable_with(node: &Node, peer: PublicKey) -> bool {
    node.list_channels().iter().any(|c| {
        c.counterparty.node_id == peer && c.is_usable && c.counterparty.forwarding_info.is_some()
    })
}

/// The funding outpoints of `node`'s channels with `peer`.
pub fn fundings_with(node: &Node, peer: PublicKey) -> Vec<OutPoint> {
    node.list_channels()
        .iter()
        .filter(|c| c.counterparty.node_id == peer)
        .filter_map(|c| c.funding_txo.map(|o| o.into_bitcoin_outpoint()))
        .collect()
}

/// Opens a channel from `from` to `to`, confirms it, and waits until both sides can
/// route through it; returns its funding outpoint.
pub async fn open_channel(
    chain: &ChainControl,
    from: &Node,
    to: &Node,
    amount_sat: u64,
    push_msat: u64,
) -> Result<OutPoint, DevnetError> {
    open_channel_at(
        chain,
        from,
        to,
        to.listen_addresses()[0],
        amount_sat,
        push_msat,
    )
    .await
}

/// [`open_channel`], reaching `to` at `address` (one of its front servers, say).
pub async fn open_channel_at(
    chain: &ChainControl,
    from: &Node,
    to: &Node,
    address: SocketAddr,
    amount_sat: u64,
    push_msat: u64,
) -> Result<OutPoint, DevnetError> {
    let before = fundings_with(from, to.node_id());
    from.open_channel(to.node_id(), Some(address), amount_sat, push_msat, false)
        .await?;
    let funding = wait_for("the funding transaction", STEP_TIMEOUT, || async {
        fundings_with(from, to.node_id())
            .into_iter()
            .find(|outpoint| !before.contains(outpoint))
    })
    .await?;
    // LDK broadcasts the funding once the peer's `funding_signed` is persisted.
    wait_for(
        "the funding transaction in the mempool",
        STEP_TIMEOUT,
        || async { chain.in_mempool(&funding.txid).await.ok()?.then_some(()) },
    )
    .await?;
    mine(chain, &[from, to], 6).await?;
    wait_for(
        "the channel to be usable on both sides",
        STEP_TIMEOUT,
        || async {
            (usable_with(from, to.node_id()) && usable_with(to, from.node_id())).then_some(())
        },
    )
    .await?;
    Ok(funding)
}

/// Opens `count` channels of `channel_sat` from `from` to `to`, pushing half of each,
/// confirms them and waits until both sides can use every one; returns their funding
/// outpoints.
///
/// In bulk: the chain's wallet first pays `from` one coin per channel (with
/// `fee_reserve_sat` for the funding's fee), so that no funding waits for the change of
/// another; the channels are then opened [`OPENS_AT_ONCE`] at a time.
pub async fn open_channels(
    chain: &ChainControl,
    from: &Node,
    to: &Node,
    count: usize,
    channel_sat: u64,
    fee_reserve_sat: u64,
) -> Result<Vec<OutPoint>, DevnetError> {
    let coin = Amount::from_sat(channel_sat + fee_reserve_sat);
    chain
        .ensure_funds(coin * count as u64 + Amount::from_sat(100_000))
        .await?;
    let before = from.onchain_balance().confirmed_sat;
    let address = from.new_address()?.to_string();
    for sent in 0..count {
        chain.send_to(&address, coin).await?;
        if (sent + 1) % SENDS_PER_BLOCK == 0 {
            chain.mine(1).await?;
        }
    }
    mine(chain, &[from, to], 1).await?;
    let funded_total = before + coin.to_sat() * count as u64;
    wait_for("the coins to confirm", STEP_TIMEOUT, || async {
        (from.onchain_balance().confirmed_sat >= funded_total).then_some(())
    })
    .await?;

    // LDK counts an inbound channel as unfunded until its funding confirms: open four,
    // confirm them, open the next four.
    let confirmed_at_peer = || {
        to.list_channels()
            .iter()
            .filter(|c| c.counterparty.node_id == from.node_id())
            .filter(|c| c.confirmations.is_some_and(|n| n > 0))
            .count()
    };
    let already = confirmed_at_peer();
    let mut opened = 0;
    while opened < count {
        let batch = OPENS_AT_ONCE.min(count - opened);
        for _ in 0..batch {
            from.open_channel(
                to.node_id(),
                Some(to.listen_addresses()[0]),
                channel_sat,
                channel_sat * 1000 / 2,
                false,
            )
            .await?;
        }
        opened += batch;
        wait_for("the fundings to reach the peer", STEP_TIMEOUT, || async {
            (fundings_with(to, from.node_id()).len() >= already + opened).then_some(())
        })
        .await?;
        // Each funding is broadcast once the peer's `funding_signed` is back: mine until
        // the peer sees all of them confirmed.
        wait_for("the fundings to confirm", STEP_TIMEOUT, || async {
            mine(chain, &[from, to], 1).await.ok()?;
            (confirmed_at_peer() >= already + opened).then_some(())
        })
        .await?;
    }
    mine(chain, &[from, to], 6).await?;
    let timeout = STEP_TIMEOUT + Duration::from_millis(100) * count as u32;
    wait_for("the channels to be usable", timeout, || async {
        let usable = to
            .list_channels()
            .iter()
            .filter(|c| c.counterparty.node_id == from.node_id())
            .filter(|c| c.is_usable && c.counterparty.forwarding_info.is_some())
            .count();
        (usable >= already + count).then_some(())
    })
    .await?;
    Ok(fundings_with(to, from.node_id()))
}
