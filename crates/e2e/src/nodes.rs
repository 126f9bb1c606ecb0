//! In-process nodes on a [`TestChain`], each step a line: the test fails with the step's
//! error. The steps themselves are `phalanx_devnet::harness`'s, which the devnet runs.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, OutPoint};
use phalanx_devnet::harness;
use phalanx_node::Node;
use phalanx_node::config::NodeConfig;

use crate::chain::TestChain;

pub use phalanx_devnet::harness::usable_with;

/// The configuration of a node named `name` in `dir/name`, following `chain`, on
/// `store_url` (SQLite in its data directory when `None`).
pub fn node_config(
    chain: &TestChain,
    dir: &Path,
    name: &str,
    store_url: Option<String>,
) -> NodeConfig {
    harness::node_config(chain.config(), dir, name, store_url)
        .unwrap_or_else(|err| panic!("the configuration of {name}: {err}"))
}

/// Initializes the node's store (as `phalanx init` does; a no-op once done) and starts
/// the node.
pub async fn start(config: &NodeConfig) -> Arc<Node> {
    harness::initialize_and_start(config)
        .await
        .unwrap_or_else(|err| panic!("node {} did not start: {err}", config.data_dir.display()))
}

/// Polls `check` until it returns `Some`; fails the test with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    harness::wait_for(what, timeout, check)
        .await
        .unwrap_or_else(|err| panic!("{err}"))
}

/// Waits until every node has processed the chain's tip.
pub async fn wait_synced(chain: &TestChain, nodes: &[&Node]) {
    harness::wait_synced(chain.control(), nodes)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
}

/// Mines `count` blocks and waits until every node has processed them.
pub async fn mine(chain: &TestChain, nodes: &[&Node], count: u32) {
    harness::mine(chain.control(), nodes, count)
        .await
        .unwrap_or_else(|err| panic!("mining {count} blocks: {err}"));
}

/// Pays `amount` from the chain's wallet to `node` and confirms it.
pub async fn fund(chain: &TestChain, node: &Node, amount: Amount) {
    harness::fund(chain.control(), node, amount)
        .await
        .unwrap_or_else(|err| panic!("funding {} with {amount}: {err}", node.node_id()));
}

/// Opens a channel from `from` to `to`, confirms it, waits until both can route through
/// it, and returns its funding outpoint. Checks on the way that LDK's broadcast of the
/// funding released the wallet's hold on it.
pub async fn open_channel(
    chain: &TestChain,
    from: &Node,
    to: &Node,
    amount_sat: u64,
    push_msat: u64,
) -> OutPoint {
    let funding = harness::open_channel(chain.control(), from, to, amount_sat, push_msat)
        .await
        .unwrap_or_else(|err| panic!("opening a {amount_sat} sat channel: {err}"));
    assert!(
        from.wallet().funding_holds().is_empty(),
        "the funding was broadcast, yet the wallet still holds it back"
    );
    funding
}

/// The msat `node` can send right now over its channels to `peer`.
pub fn outbound_msat(node: &Node, peer: PublicKey) -> u64 {
    node.list_channels()
        .iter()
        .filter(|c| c.counterparty.node_id == peer)
        .map(|c| c.outbound_capacity_msat)
        .sum()
}

/// The msat balance `node` holds in its channels with `peer` (LDK's claimable balance,
/// before reserve and fees).
pub fn channel_balance_msat(node: &Node, peer: PublicKey) -> u64 {
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
