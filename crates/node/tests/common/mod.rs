//! Helpers for end-to-end tests: a regtest chain and nodes on it.

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::{Amount, Network};
use phalanx_node::Node;
use phalanx_node::config::{ApiConfig, ChainConfig, LightningConfig, NodeConfig, StoreConfig};
use phalanx_regtest::{ChainSettings, Regtest, RegtestConfig};
use phalanx_store::{ClusterName, HolderId};

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A regtest chain with 101 blocks mined to its own wallet, so it has coins to send.
pub async fn regtest() -> Regtest {
    init_tracing();
    let regtest = Regtest::start(RegtestConfig {
        chain: ChainSettings {
            fee_rate: bitcoin::FeeRate::from_sat_per_vb_u32(2),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .expect("regtest starts");
    regtest.mine(101, None);
    regtest
}

/// The configuration of a node named `name` in `dir`, on `store_url` (SQLite in `dir`
/// when `None`), following `regtest`.
pub fn node_config(
    regtest: &Regtest,
    dir: &Path,
    name: &str,
    store_url: Option<String>,
) -> NodeConfig {
    let data_dir = dir.join(name);
    std::fs::create_dir_all(&data_dir).unwrap();
    NodeConfig {
        network: Network::Regtest,
        store: StoreConfig {
            url: store_url
                .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("node.db").display())),
            cluster: ClusterName::new(name).unwrap(),
            instance_id: HolderId::new(&format!("{name}-1")).unwrap(),
            cluster_enabled: false,
            lease: phalanx_cluster::LeaseTimings::default(),
        },
        chain: ChainConfig {
            rpc_url: regtest.rpc_url(),
            rpc_user: regtest.rpc_user().into(),
            rpc_password: regtest.rpc_password().into(),
            rest_url: None,
            esplora_url: None,
            poll_interval: Duration::from_millis(100),
        },
        lightning: LightningConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            alias: Some(name.into()),
            forward_delay: Duration::from_millis(0),
        },
        api: ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token_file: data_dir.join("api-token"),
        },
        seed_file: data_dir.join("seed"),
        data_dir,
    }
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node` has processed the regtest tip.
pub async fn wait_synced(regtest: &Regtest, node: &Node) {
    let height = regtest.chain().height();
    wait_for(
        "the node to reach the tip",
        Duration::from_secs(30),
        || async {
            (node.best_block_height() >= height && node.wallet().best_block().height >= height)
                .then_some(())
        },
    )
    .await;
}

/// Mines `count` blocks and waits until every node has processed them.
pub async fn mine(regtest: &Regtest, nodes: &[&Node], count: u32) {
    regtest.mine(count, None);
    for node in nodes {
        wait_synced(regtest, node).await;
    }
}

/// Sends `amount` from the chain's wallet to a new address of `node` and confirms it.
pub async fn fund(regtest: &Regtest, node: &Node, amount: Amount) {
    let before = node.onchain_balance().confirmed_sat;
    let address = node.new_address().unwrap();
    regtest
        .chain()
        .send_to(&address.script_pubkey(), amount)
        .expect("the chain wallet pays");
    mine(regtest, &[node], 1).await;
    wait_for(
        "the funds to confirm in the wallet",
        Duration::from_secs(30),
        || async {
            (node.onchain_balance().confirmed_sat >= before + amount.to_sat()).then_some(())
        },
    )
    .await;
}

/// Opens a channel from `from` to `to`, confirms it, and waits until both can use it.
pub async fn open_channel(
    regtest: &Regtest,
    from: &Node,
    to: &Node,
    amount_sat: u64,
    push_msat: u64,
) {
    let before = from.list_channels().len();
    let address = to.listen_addresses()[0];
    from.open_channel(to.node_id(), Some(address), amount_sat, push_msat, false)
        .await
        .expect("channel opens");
    wait_for(
        "the funding transaction",
        Duration::from_secs(30),
        || async {
            from.list_channels()
                .iter()
                .filter(|c| c.funding_txo.is_some())
                .count()
                .gt(&before)
                .then_some(())
        },
    )
    .await;
    // The funding transaction reaches the mempool through the broadcaster.
    wait_for(
        "the funding transaction in the mempool",
        Duration::from_secs(30),
        || async {
            // The channel with `to`: list order is not creation order.
            let txid = from
                .list_channels()
                .iter()
                .filter(|c| c.counterparty.node_id == to.node_id())
                .find_map(|c| c.funding_txo.map(|o| o.txid))?;
            regtest.chain().mempool().get(&txid).map(|_| ())
        },
    )
    .await;
    mine(regtest, &[from, to], 6).await;
    // Usable, and each side has the other's `channel_update`: an invoice's route hints
    // leave out a channel whose counterparty's forwarding fees are not known yet, so an
    // invoice made before that message arrives cannot be paid through the channel.
    wait_for(
        "the channel to be usable on both sides",
        Duration::from_secs(30),
        || async {
            let usable = |node: &Node, peer| {
                node.list_channels()
                    .iter()
                    .filter(|c| {
                        c.counterparty.node_id == peer
                            && c.is_usable
                            && c.counterparty.forwarding_info.is_some()
                    })
                    .count()
            };
            (usable(from, to.node_id()) > 0 && usable(to, from.node_id()) > 0).then_some(())
        },
    )
    .await;
    // LDK broadcast the funding: the wallet no longer holds it back from rebroadcasts.
    assert!(from.wallet().funding_holds().is_empty());
}

/// The msat `node` can send right now over its channels to `peer`.
pub fn outbound_msat(node: &Node, peer: bitcoin::secp256k1::PublicKey) -> u64 {
    node.list_channels()
        .iter()
        .filter(|c| c.counterparty.node_id == peer)
        .map(|c| c.outbound_capacity_msat)
        .sum()
}

/// The msat balance `node` holds in its channels with `peer` (LDK's claimable balance,
/// before reserve and fees).
pub fn channel_balance_msat(node: &Node, peer: bitcoin::secp256k1::PublicKey) -> u64 {
    node.list_channels()
        .iter()
        .filter(|c| c.counterparty.node_id == peer)
        .map(|c| c.outbound_capacity_msat + c.unspendable_punishment_reserve.unwrap_or(0) * 1000)
        .sum()
}

/// How many balances `node`'s monitors still have to claim on chain.
pub fn claimable_balances(node: &Node) -> usize {
    node.chain_monitor().get_claimable_balances(&[]).len()
}

/// Initializes the node's store (as `phalanx init` does; a no-op once done) and starts
/// the node, failing the test with the error if it does not start.
pub async fn start(config: &NodeConfig) -> Arc<Node> {
    phalanx_instance::initialize(config)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "node {} was not initialized: {err}",
                config.data_dir.display()
            )
        });
    phalanx_instance::start(config, Default::default())
        .await
        .unwrap_or_else(|err| panic!("node {} did not start: {err}", config.data_dir.display()))
}
