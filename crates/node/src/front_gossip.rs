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

use crate::chain::{ChainClient, ChainReader};
use crate::metrics::Metrics;
use crate::types::NetworkGraph;

/// Blocks kept for funding checks: an initial sync asks for thousands of outputs of the
/// same few blocks, one `getblock` each without this.
const CACHED_BLOCKS: usize = 8;

/// BOLT 7 announces a channel after six confirmations; like LDK's `GossipVerifier`, one
/// block of slack for a tip seen late.
const MIN_CONFIRMATIONS: u32 = 5;

/// Answers fronts' funding checks from the chain source and feeds their verified gossip
/// to the router's graph, both on threads of their own at the lowest CPU priority: a
/// gossip flood at a front is background work for the backend (a mainnet sync is tens of
/// thousands of funding checks and about a third of a core for 40 s), and must not take
/// CPU time from payments, which run on the node's runtime at the node's own priority.
pub struct FrontGossip {
    metrics: Arc<Metrics>,
    /// Fronts' funding checks, to the thread that answers them.
    checks: tokio::sync::mpsc::UnboundedSender<(u64, FundingAnswer)>,
    /// Fronts' gossip, in the order it came, to the thread that applies it.
    to_apply: std::sync::mpsc::Sender<(String, VerifiedGossip)>,
}

/// The nice value of the threads that check and apply fronts' gossip: the lowest
/// priority, so that payments always go first.
const GOSSIP_NICE: libc::c_int = 19;

/// Applies fronts' gossip to `graph` in order, on a thread of its own at the lowest CPU
/// priority: a gossip flood at a front is background work for the backend (a mainnet
/// sync is about a third of a core for 40 s), and must not take CPU time from payments.
/// The thread ends when its queue's sender (the `FrontGossip`) is dropped.
fn spawn_gossip_applier(
    graph: Arc<NetworkGraph>,
    metrics: Arc<Metrics>,
) -> std::sync::mpsc::Sender<(String, VerifiedGossip)> {
    let (to_apply, queue) = std::sync::mpsc::channel::<(String, VerifiedGossip)>();
    let spawned = std::thread::Builder::new()
        .name("phalanx-gossip".into())
        .spawn(move || {
            lower_this_threads_priority("applies fronts' gossip");
            while let Ok((front, gossip)) = queue.recv() {
                apply(&graph, &metrics, &front, &gossip);
            }
        });
    if let Err(err) = spawned {
        // Without the thread, fronts' gossip is counted dropped (the router keeps what it
        // has and what direct peers send); the node itself runs on.
        tracing::error!(error = %err, "cannot start the thread that applies fronts' gossip");
    }
    to_apply
}

/// What a funding check needs, shared by the checks in flight.
struct FundingLookups {
    /// A reader of the node's bitcoind of this thread's own: the node's client's
    /// connections belong to the node's runtime, and a check must not wait for (or hold)
    /// what payments use.
    reader: ChainReader,
    blocks: BlockCache,
    tip: Mutex<Option<Tip>>,
}

/// Answers funding checks on a thread of its own at the lowest CPU priority, each check a
/// task of the thread's own runtime, so that checks wait for the chain source together.
/// The thread ends, dropping the checks in flight, when its queue's sender (the
/// `FrontGossip`) is dropped.
fn spawn_funding_checker(
    reader: ChainReader,
    metrics: Arc<Metrics>,
) -> tokio::sync::mpsc::UnboundedSender<(u64, FundingAnswer)> {
    let (checks, mut queue) = tokio::sync::mpsc::unbounded_channel::<(u64, FundingAnswer)>();
    let spawned = std::thread::Builder::new()
        .name("phalanx-funding".into())
        .spawn(move || {
            lower_this_threads_priority("checks fronts' funding outputs");
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    // The queue is dropped with this thread: checks are answered "unknown".
                    tracing::error!(error = %err, "cannot start the runtime of fronts' funding checks");
                    return;
                }
            };
            let lookups = Arc::new(FundingLookups {
                reader,
                blocks: BlockCache::default(),
                tip: Mutex::default(),
            });
            runtime.block_on(async move {
                while let Some((short_channel_id, answer)) = queue.recv().await {
                    let (lookups, metrics) = (Arc::clone(&lookups), Arc::clone(&metrics));
                    tokio::spawn(async move {
                        let output = funding_output(&lookups, short_channel_id).await;
                        metrics.front_funding_check(if output.is_ok() { "found" } else { "unknown" });
                        answer(output);
                    });
                }
            });
        });
    if let Err(err) = spawned {
        tracing::error!(error = %err, "cannot start the thread that checks fronts' funding outputs");
    }
    checks
}

/// Sets the calling thread's nice value to [`GOSSIP_NICE`] (Linux's nice is per thread);
/// `what` the thread does, for the warning if it cannot.
fn lower_this_threads_priority(what: &str) {
    let thread = nix::unistd::gettid().as_raw() as libc::id_t;
    // SAFETY: setpriority reads only its integer arguments.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, GOSSIP_NICE) };
    if set != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the priority of the thread that {what}"
        );
    }
}

fn apply(graph: &NetworkGraph, metrics: &Metrics, front: &str, gossip: &VerifiedGossip) {
    match gossip.apply(graph) {
        Ok(Applied::New) => metrics.front_gossip("new"),
        Ok(Applied::Ignored) => metrics.front_gossip("ignored"),
        Err(err) => {
            metrics.front_gossip("malformed");
            tracing::warn!(%front, kind = gossip.kind(), error = %err, "a front's gossip does not decode");
        }
    }
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
    pub fn new(chain: &ChainClient, graph: Arc<NetworkGraph>, metrics: Arc<Metrics>) -> Self {
        Self {
            checks: spawn_funding_checker(chain.new_reader(), Arc::clone(&metrics)),
            to_apply: spawn_gossip_applier(graph, Arc::clone(&metrics)),
            metrics,
        }
    }
}

impl GossipBackend for FrontGossip {
    fn funding_output(&self, short_channel_id: u64, answer: FundingAnswer) {
        if let Err(unsent) = self.checks.send((short_channel_id, answer)) {
            // No checker thread: "unknown", as for a chain source that is down.
            let (_, answer) = unsent.0;
            self.metrics.front_funding_check("unknown");
            answer(Err(FundingLookupFailure::UnknownTx));
        }
    }

    fn verified(&self, front: &str, gossip: VerifiedGossip) {
        if self.to_apply.send((front.to_owned(), gossip)).is_err() {
            self.metrics.front_gossip("dropped");
        }
    }
}

/// The output `short_channel_id` names, if it is confirmed deeply enough and unspent.
/// Any failure of the chain source is "unknown": the front drops the announcement, and
/// peers send it again.
async fn funding_output(
    lookups: &FundingLookups,
    short_channel_id: u64,
) -> Result<FundingOutput, FundingLookupFailure> {
    let (chain, blocks, tip_cache) = (&lookups.reader, &lookups.blocks, &lookups.tip);
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
    chain: &ChainReader,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of this process's thread named `name`, from `/proc`.
    fn nice_of_thread(name: &str) -> Option<i64> {
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let path = task.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            if comm.trim() == name {
                return nice_of_task(&path);
            }
        }
        None
    }

    /// The nice value of the task (thread) whose `/proc` directory is `path`.
    fn nice_of_task(path: &std::path::Path) -> Option<i64> {
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        // Field 19 of the line; 17th after the command name, which may hold spaces.
        let (_, after) = stat.rsplit_once(')')?;
        after.split_whitespace().nth(16)?.parse().ok()
    }

    /// Asks `gossip` about `short_channel_id`; the answer, with the name and nice value
    /// of the thread that gave it.
    fn check(
        gossip: &FrontGossip,
        short_channel_id: u64,
    ) -> (
        Result<FundingOutput, FundingLookupFailure>,
        Option<String>,
        Option<i64>,
    ) {
        let (answered, answer) = std::sync::mpsc::channel();
        gossip.funding_output(
            short_channel_id,
            Box::new(move |output| {
                let thread = std::thread::current().name().map(str::to_owned);
                let nice = nice_of_task(std::path::Path::new("/proc/thread-self"));
                let _ = answered.send((output, thread, nice));
            }),
        );
        answer
            .recv_timeout(Duration::from_secs(30))
            .expect("a funding check was not answered")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fronts_funding_checks_are_answered_from_the_chain_by_a_thread_at_the_lowest_priority()
    {
        let regtest = phalanx_regtest::Regtest::start(Default::default())
            .await
            .unwrap();
        regtest.mine(10, None);
        let coinbase_at = |height: u32| {
            let chain = regtest.chain();
            let hash = chain.hash_at(height).unwrap();
            chain.entry(&hash).unwrap().block.txdata[0].clone()
        };
        let short_channel_id = |height: u64, tx: u64, vout: u64| height << 40 | tx << 16 | vout;
        for rest in [false, true] {
            let config = crate::config::ChainConfig {
                rpc_url: regtest.rpc_url(),
                rpc_user: regtest.rpc_user().into(),
                rpc_password: regtest.rpc_password().into(),
                rest_url: rest.then(|| regtest.rest_url().trim_end_matches('/').to_owned()),
                esplora_url: None,
                poll_interval: Duration::from_millis(100),
            };
            let chain = ChainClient::connect(
                &config,
                bitcoin::Network::Regtest,
                tokio::runtime::Handle::current(),
            )
            .await
            .unwrap();
            let graph = Arc::new(NetworkGraph::new(
                bitcoin::Network::Regtest,
                Arc::new(crate::logger::TracingLogger),
            ));
            let gossip = FrontGossip::new(&chain, graph, Arc::new(Metrics::new()));
            // Blocks 2 and 3 are deep enough under a tip at 10; 8 is not.
            for height in [2, 3] {
                let (output, thread, nice) =
                    tokio::task::block_in_place(|| check(&gossip, short_channel_id(height, 0, 0)));
                assert_eq!(
                    output,
                    Ok(FundingOutput::of(&coinbase_at(height as u32).output[0])),
                    "rest: {rest}"
                );
                assert_eq!(thread.as_deref(), Some("phalanx-funding"));
                assert_eq!(nice, Some(i64::from(GOSSIP_NICE)));
            }
            for unknown in [
                short_channel_id(8, 0, 0),
                short_channel_id(2, 1, 0),
                short_channel_id(2, 0, 7),
                short_channel_id(500, 0, 0),
            ] {
                let (output, _, _) = tokio::task::block_in_place(|| check(&gossip, unknown));
                assert_eq!(output, Err(FundingLookupFailure::UnknownTx));
            }
        }
    }

    #[test]
    fn fronts_gossip_is_applied_in_order_by_a_thread_at_the_lowest_priority() {
        let graph = Arc::new(NetworkGraph::new(
            bitcoin::Network::Regtest,
            Arc::new(crate::logger::TracingLogger),
        ));
        let metrics = Arc::new(Metrics::new());
        let to_apply = spawn_gossip_applier(Arc::clone(&graph), Arc::clone(&metrics));
        // Something that does not decode is counted, by the thread.
        to_apply
            .send((
                "front-1".into(),
                VerifiedGossip::ChannelUpdate {
                    contents: vec![1, 2, 3],
                },
            ))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !metrics
            .render(phalanx_api::ServerState::ServerActive, None)
            .contains("phalanx_front_gossip_total{outcome=\"malformed\"} 1")
        {
            assert!(Instant::now() < deadline, "the thread applied nothing");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            nice_of_thread("phalanx-gossip"),
            Some(i64::from(GOSSIP_NICE))
        );
        // Its queue's sender gone, the thread ends.
        drop(to_apply);
        let deadline = Instant::now() + Duration::from_secs(10);
        while nice_of_thread("phalanx-gossip").is_some() {
            assert!(Instant::now() < deadline, "the thread outlived its queue");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
