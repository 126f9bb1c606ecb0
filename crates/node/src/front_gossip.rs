//! The backend's side of gossip at the edge: fronts check peers' gossip themselves and
//! ask the node's chain source only for funding outputs; what their graphs took as new
//! comes here, unsigned, for the router's graph (`phalanx_link::ldk::gossip`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::{Block, BlockHash, OutPoint, Txid};
use lightning_block_sync::gossip::UtxoSource;
use lightning_block_sync::{BlockData, BlockSource};
use phalanx_link::backend::{FundingAnswer, GossipBackend};
use phalanx_link::ldk::gossip::{
    Applied, FundingLookupFailure, FundingOutput, VerifiedGossip, short_channel_id_parts,
};

use crate::chain::ChainClient;
use crate::metrics::Metrics;
use crate::types::NetworkGraph;

/// Blocks kept for funding checks: an initial sync asks for thousands of outputs of the
/// same few blocks, one `getblock` each without this.
const CACHED_BLOCKS: usize = 8;

/// BOLT 7 announces a channel after six confirmations; like LDK's `GossipVerifier`, one
/// block of slack for a tip seen late.
const MIN_CONFIRMATIONS: u32 = 5;

/// Answers fronts' funding checks from the chain source and feeds their verified gossip
/// to the router's graph.
pub struct FrontGossip {
    chain: Arc<ChainClient>,
    graph: Arc<NetworkGraph>,
    metrics: Arc<Metrics>,
    blocks: Arc<BlockCache>,
    tip: Arc<Mutex<Option<Tip>>>,
}

/// The chain's tip as last asked, reused for a moment: an initial sync asks about
/// thousands of channels a second.
#[derive(Clone, Copy)]
struct Tip {
    hash: BlockHash,
    height: Option<u32>,
    asked: Instant,
}

/// How long a tip is reused.
const TIP_FOR: Duration = Duration::from_secs(1);

/// Recent blocks with their transactions' ids (hashing a large funding transaction for
/// every output of it would cost more than the lookup).
type BlockCache = Mutex<VecDeque<Arc<CachedBlock>>>;

struct CachedBlock {
    hash: BlockHash,
    height: u32,
    /// The tip when the block was found at `height`: while it is still the tip, the
    /// height still names this block.
    tip: BlockHash,
    block: Block,
    txids: Vec<Txid>,
}

impl FrontGossip {
    /// Gossip for `graph`, funding outputs from `chain`.
    pub fn new(chain: Arc<ChainClient>, graph: Arc<NetworkGraph>, metrics: Arc<Metrics>) -> Self {
        Self {
            chain,
            graph,
            metrics,
            blocks: Arc::default(),
            tip: Arc::default(),
        }
    }
}

impl GossipBackend for FrontGossip {
    fn funding_output(&self, short_channel_id: u64, answer: FundingAnswer) {
        let (chain, blocks, tip, metrics) = (
            Arc::clone(&self.chain),
            Arc::clone(&self.blocks),
            Arc::clone(&self.tip),
            Arc::clone(&self.metrics),
        );
        self.chain.runtime.spawn(async move {
            let output = funding_output(&chain, &blocks, &tip, short_channel_id).await;
            metrics.front_funding_check(if output.is_ok() { "found" } else { "unknown" });
            answer(output);
        });
    }

    fn verified(&self, front: &str, gossip: VerifiedGossip) {
        match gossip.apply(&self.graph) {
            Ok(Applied::New) => self.metrics.front_gossip("new"),
            Ok(Applied::Ignored) => self.metrics.front_gossip("ignored"),
            Err(err) => {
                self.metrics.front_gossip("malformed");
                tracing::warn!(%front, kind = gossip.kind(), error = %err, "a front's gossip does not decode");
            }
        }
    }
}

/// The output `short_channel_id` names, if it is confirmed deeply enough and unspent.
/// Any failure of the chain source is "unknown": the front drops the announcement, and
/// peers send it again.
async fn funding_output(
    chain: &ChainClient,
    blocks: &BlockCache,
    tip_cache: &Mutex<Option<Tip>>,
    short_channel_id: u64,
) -> Result<FundingOutput, FundingLookupFailure> {
    let unknown = |_| FundingLookupFailure::UnknownTx;
    let (height, tx_index, vout) = short_channel_id_parts(short_channel_id);
    let recent = *tip_cache.lock().unwrap_or_else(|e| e.into_inner());
    let tip = match recent.filter(|tip| tip.asked.elapsed() < TIP_FOR) {
        Some(tip) => tip,
        None => {
            let (hash, height) = chain.get_best_block().await.map_err(unknown)?;
            let tip = Tip {
                hash,
                height,
                asked: Instant::now(),
            };
            *tip_cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(tip);
            tip
        }
    };
    if tip
        .height
        .is_some_and(|tip| height.saturating_add(MIN_CONFIRMATIONS) > tip)
    {
        return Err(FundingLookupFailure::UnknownTx);
    }
    // The block found at `height` under this very tip, if any; else asked by height and
    // kept by hash: a reorganization changes what a height holds.
    let cached = match cached(blocks, |entry| {
        entry.height == height && entry.tip == tip.hash
    }) {
        Some(cached) => cached,
        None => {
            let hash = chain
                .get_block_hash_by_height(height)
                .await
                .map_err(unknown)?;
            match cached(blocks, |entry| entry.hash == hash) {
                Some(cached) => cached,
                None => fetch(chain, blocks, hash, height, tip.hash).await?,
            }
        }
    };
    let tx = cached
        .block
        .txdata
        .get(tx_index as usize)
        .ok_or(FundingLookupFailure::UnknownTx)?;
    let output = tx
        .output
        .get(usize::from(vout))
        .ok_or(FundingLookupFailure::UnknownTx)?;
    let outpoint = OutPoint::new(cached.txids[tx_index as usize], u32::from(vout));
    if !chain.is_output_unspent(outpoint).await.map_err(unknown)? {
        return Err(FundingLookupFailure::UnknownTx);
    }
    Ok(FundingOutput::of(output))
}

fn cached(
    blocks: &BlockCache,
    matching: impl Fn(&CachedBlock) -> bool,
) -> Option<Arc<CachedBlock>> {
    blocks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|entry| matching(entry))
        .cloned()
}

/// Fetches block `hash` (at `height` under `tip`) and keeps it.
async fn fetch(
    chain: &ChainClient,
    blocks: &BlockCache,
    hash: BlockHash,
    height: u32,
    tip: BlockHash,
) -> Result<Arc<CachedBlock>, FundingLookupFailure> {
    let block = match chain
        .get_block(&hash)
        .await
        .map_err(|_| FundingLookupFailure::UnknownTx)?
    {
        BlockData::FullBlock(block) => block,
        BlockData::HeaderOnly(_) => return Err(FundingLookupFailure::UnknownTx),
    };
    let txids = block.txdata.iter().map(|tx| tx.compute_txid()).collect();
    let cached = Arc::new(CachedBlock {
        hash,
        height,
        tip,
        block,
        txids,
    });
    let mut cache = blocks.lock().unwrap_or_else(|e| e.into_inner());
    if !cache.iter().any(|entry| entry.hash == hash) {
        if cache.len() >= CACHED_BLOCKS {
            cache.pop_front();
        }
        cache.push_back(Arc::clone(&cached));
    }
    Ok(cached)
}
