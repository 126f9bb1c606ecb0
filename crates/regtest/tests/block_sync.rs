//! LDK's `lightning-block-sync` RPC and REST clients, unchanged, against the regtest
//! chain: they read its tip, headers, blocks and UTXOs, and follow it through a reorg.

use std::ops::Deref;
use std::sync::Mutex;

use base64::Engine;
use bitcoin::block::Header;
use bitcoin::{BlockHash, Network, OutPoint};
use lightning::chain::{BlockLocator, Listen};
use lightning_block_sync::gossip::UtxoSource;
use lightning_block_sync::poll::ChainPoller;
use lightning_block_sync::rest::RestClient;
use lightning_block_sync::rpc::RpcClient;
use lightning_block_sync::{BlockData, BlockSource, HeaderCache, SpvClient, init};
use phalanx_regtest::{Regtest, RegtestConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Connected(BlockHash, u32),
    DisconnectedTo(BlockHash, u32),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Seen>>);

impl Listen for Recorder {
    fn filtered_block_connected(
        &self,
        header: &Header,
        _txdata: &lightning::chain::transaction::TransactionData,
        height: u32,
    ) {
        self.0
            .lock()
            .unwrap()
            .push(Seen::Connected(header.block_hash(), height));
    }

    fn blocks_disconnected(&self, fork_point: BlockLocator) {
        self.0.lock().unwrap().push(Seen::DisconnectedTo(
            fork_point.block_hash,
            fork_point.height,
        ));
    }
}

async fn reads_the_chain<S: BlockSource + UtxoSource>(regtest: &Regtest, source: &S) {
    let (tip, height) = {
        let chain = regtest.chain();
        (chain.tip(), chain.height())
    };
    let (best, best_height) = source.get_best_block().await.unwrap();
    assert_eq!((best, best_height), (tip, Some(height)));

    let header = source.get_header(&tip, None).await.unwrap();
    let expected = regtest.chain().entry(&tip).unwrap().clone();
    assert_eq!(header.header, expected.block.header);
    assert_eq!(header.height, expected.height);
    assert_eq!(header.chainwork, expected.chain_work);

    match source.get_block(&tip).await.unwrap() {
        BlockData::FullBlock(block) => assert_eq!(block, *expected.block),
        BlockData::HeaderOnly(_) => panic!("full blocks expected"),
    }
    let at_three = source.get_block_hash_by_height(3).await.unwrap();
    assert_eq!(at_three, regtest.chain().hash_at(3).unwrap());

    let coinbase = OutPoint::new(expected.block.txdata[0].compute_txid(), 0);
    assert!(source.is_output_unspent(coinbase).await.unwrap());
    let nothing = OutPoint::new(expected.block.txdata[0].compute_txid(), 7);
    assert!(!source.is_output_unspent(nothing).await.unwrap());
}

/// Follows the chain with an SPV client over `source` through 3 new blocks, then a reorg
/// that replaces the last 2 of them with 3 others.
async fn follows_a_reorg<S: BlockSource, B: Deref<Target = S> + Send + Sync>(
    regtest: &Regtest,
    source: B,
) {
    let start = init::validate_best_block_header(&*source).await.unwrap();
    let recorder = Recorder::default();
    let poller = ChainPoller::new(source, Network::Regtest);
    let mut client = SpvClient::new(start, poller, HeaderCache::new(), &recorder);

    let first = regtest.mine(3, None);
    let (_, connected) = client.poll_best_tip().await.unwrap();
    assert!(connected);
    let base = regtest.chain().entry(&first[0]).unwrap().height;
    assert_eq!(
        *recorder.0.lock().unwrap(),
        first
            .iter()
            .enumerate()
            .map(|(i, hash)| Seen::Connected(*hash, base + i as u32))
            .collect::<Vec<_>>()
    );
    recorder.0.lock().unwrap().clear();

    regtest.chain().invalidate_block(&first[1]).unwrap();
    let replacement = regtest.mine(3, None);
    let (_, connected) = client.poll_best_tip().await.unwrap();
    assert!(connected);
    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(seen[0], Seen::DisconnectedTo(first[0], base));
    assert_eq!(
        &seen[1..],
        replacement
            .iter()
            .enumerate()
            .map(|(i, hash)| Seen::Connected(*hash, base + 1 + i as u32))
            .collect::<Vec<_>>()
    );
}

fn credentials(regtest: &Regtest) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        regtest.rpc_user(),
        regtest.rpc_password()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_client_reads_and_follows_the_chain() {
    let regtest = Regtest::start(RegtestConfig::default()).await.unwrap();
    regtest.mine(5, None);
    let rpc = RpcClient::new(&credentials(&regtest), regtest.rpc_url());
    reads_the_chain(&regtest, &rpc).await;
    follows_a_reorg(&regtest, &rpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_client_reads_and_follows_the_chain() {
    let regtest = Regtest::start(RegtestConfig::default()).await.unwrap();
    regtest.mine(5, None);
    let rest = RestClient::new(regtest.rest_url().trim_end_matches('/').to_owned());
    reads_the_chain(&regtest, &rest).await;
    follows_a_reorg(&regtest, &rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_client_sees_rpc_errors_and_bad_credentials() {
    let regtest = Regtest::start(RegtestConfig::default()).await.unwrap();
    let rpc = RpcClient::new(&credentials(&regtest), regtest.rpc_url());
    let missing = BlockHash::from_byte_array([7; 32]);
    assert!(rpc.get_header(&missing, None).await.is_err());
    let wrong = RpcClient::new(
        &base64::engine::general_purpose::STANDARD.encode("phalanx:wrong"),
        regtest.rpc_url(),
    );
    assert!(wrong.get_best_block().await.is_err());
    // The server is still serving.
    assert!(rpc.get_best_block().await.is_ok());
}

use bitcoin::hashes::Hash as _;
