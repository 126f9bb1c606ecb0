//! A synthetic Lightning graph and a peer that replays it, for the gossip tests and
//! benchmarks of Phalanx's fronts.
//!
//! [`SyntheticGraph::build`] makes nodes and channels, pays every channel's 2-of-2
//! funding output on the regtest chain (many outputs per transaction, one transaction
//! per block, then six confirmations), and signs each announcement and update for real,
//! so that a front checks them exactly as it checks mainnet's: signatures, then the
//! funding output through the backend's chain source. [`ReplayPeer`] is an LDK peer
//! whose gossip store is that graph: a front that asks it for a full sync (LDK's
//! `gossip_timestamp_filter`) gets every channel with its updates, then every node, at
//! the pace LDK's `PeerManager` sends a backfill.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bitcoin::constants::ChainHash;
use bitcoin::hashes::{Hash, sha256, sha256d};
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::{Amount, OutPoint, Sequence, Transaction, TxIn, TxOut, Witness};
use lightning::ln::chan_utils::make_funding_redeemscript;
use lightning::ln::msgs::{
    BaseMessageHandler, ChannelAnnouncement, ChannelUpdate, Init, LightningError, MessageSendEvent,
    NodeAnnouncement, QueryChannelRange, QueryShortChannelIds, ReplyChannelRange,
    ReplyShortChannelIdsEnd, RoutingMessageHandler, UnsignedChannelAnnouncement,
    UnsignedChannelUpdate, UnsignedNodeAnnouncement,
};
use lightning::ln::peer_handler::{
    ErroringMessageHandler, IgnoringMessageHandler, MessageHandler, PeerManager,
};
use lightning::routing::gossip::{NodeAlias, NodeId};
use lightning::sign::KeysManager;
use lightning::types::features::{ChannelFeatures, InitFeatures, NodeFeatures};
use lightning::util::logger::{Logger, Record};
use lightning::util::ser::Writeable;
use lightning_net_tokio::SocketDescriptor;
use phalanx_regtest::Chain;

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Nodes; each gets at least one channel if there are as many channels.
    pub nodes: usize,
    /// Funded, correctly signed channels.
    pub channels: usize,
    /// Channel updates per channel: 0, 1 or 2 (one per direction).
    pub updates_per_channel: u8,
    /// Extra channels whose announcement carries a broken signature (a front must drop
    /// them, and their updates).
    pub bad_signatures: usize,
    /// Extra channels, correctly signed, whose short channel id names no output.
    pub unfunded: usize,
    /// Each funded channel's capacity.
    pub capacity_sat: u64,
}

impl Shape {
    /// `nodes` nodes and `channels` good channels, both directions updated.
    pub fn new(nodes: usize, channels: usize) -> Self {
        Self {
            nodes,
            channels,
            updates_per_channel: 2,
            bad_signatures: 0,
            unfunded: 0,
            capacity_sat: 20_000,
        }
    }
}

/// Why a graph could not be built.
#[derive(Debug)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

type ChannelEntry = (
    ChannelAnnouncement,
    Option<ChannelUpdate>,
    Option<ChannelUpdate>,
);

/// A signed graph whose channels are funded on a regtest chain (see the crate doc).
pub struct SyntheticGraph {
    channels: BTreeMap<u64, ChannelEntry>,
    nodes: BTreeMap<NodeId, NodeAnnouncement>,
    /// The channels a front must take: funded and correctly signed.
    good: Vec<u64>,
}

/// Outputs per funding transaction: 10,000 P2WSH outputs weigh about 1.7 M units, well
/// inside a block.
const OUTPUTS_PER_TRANSACTION: usize = 10_000;

impl SyntheticGraph {
    /// Builds `shape`'s graph, funding its channels on `chain` (which mines a block per
    /// funding transaction and six more on top, paying its own wallet). Fails if the
    /// chain's wallet has too little to fund it.
    pub fn build(shape: Shape, chain: &mut Chain) -> Result<Self, BuildError> {
        if shape.nodes < 2 {
            return Err(BuildError("a graph needs two nodes at least".into()));
        }
        let secp = Secp256k1::signing_only();
        let keys: Vec<SecretKey> = (0..shape.nodes).map(|i| node_key(i as u64)).collect();
        let ids: Vec<PublicKey> = keys
            .iter()
            .map(|k| PublicKey::from_secret_key(&secp, k))
            .collect();
        let genesis = chain
            .hash_at(0)
            .ok_or_else(|| BuildError("the chain has no genesis block".into()))?;
        let chain_hash = ChainHash::from(genesis.to_byte_array());
        let total = shape.channels + shape.bad_signatures;
        // Channel k joins node k mod n to another, so that every node has a channel.
        let ends = |k: usize| {
            let n = shape.nodes;
            let a = k % n;
            let b = (a + 1 + (k / n) % (n - 1)) % n;
            if ids[a].serialize() < ids[b].serialize() {
                (a, b)
            } else {
                (b, a)
            }
        };
        let scripts: Vec<TxOut> = (0..total)
            .map(|k| {
                let (a, b) = ends(k);
                TxOut {
                    value: Amount::from_sat(shape.capacity_sat),
                    script_pubkey: make_funding_redeemscript(&ids[a], &ids[b]).to_p2wsh(),
                }
            })
            .collect();
        let mut scids = fund(chain, &scripts)?;
        // Unfunded channels: an output index past the end of a funding transaction.
        let last = *scids.last().unwrap_or(&0);
        let (height, tx_index) = ((last >> 40) as u32, ((last >> 16) & 0xff_ffff) as u32);
        for extra in 0..shape.unfunded {
            scids.push(lightning_scid(height, tx_index, 0xffff - extra as u16));
        }
        let timestamp = now_secs().saturating_sub(60);
        let mut graph = Self {
            channels: BTreeMap::new(),
            nodes: BTreeMap::new(),
            good: Vec::new(),
        };
        for (k, scid) in scids.into_iter().enumerate() {
            let (a, b) = ends(k % total.max(1));
            let contents = UnsignedChannelAnnouncement {
                features: ChannelFeatures::empty(),
                chain_hash,
                short_channel_id: scid,
                node_id_1: NodeId::from_pubkey(&ids[a]),
                node_id_2: NodeId::from_pubkey(&ids[b]),
                bitcoin_key_1: NodeId::from_pubkey(&ids[a]),
                bitcoin_key_2: NodeId::from_pubkey(&ids[b]),
                excess_data: Vec::new(),
            };
            let hash = digest(&contents);
            // The node keys fund the channel too: one signature serves as both.
            let signature_1 = secp.sign_ecdsa(&hash, &keys[a]);
            let mut signature_2 = secp.sign_ecdsa(&hash, &keys[b]);
            let bad = k >= shape.channels && k < total;
            if bad {
                signature_2 = secp.sign_ecdsa(&hash, &keys[a]);
            } else if k < shape.channels {
                graph.good.push(scid);
            }
            let announcement = ChannelAnnouncement {
                node_signature_1: signature_1,
                node_signature_2: signature_2,
                bitcoin_signature_1: signature_1,
                bitcoin_signature_2: signature_2,
                contents,
            };
            let update = |direction: u8| {
                let contents = UnsignedChannelUpdate {
                    chain_hash,
                    short_channel_id: scid,
                    timestamp,
                    message_flags: 1,
                    channel_flags: direction,
                    cltv_expiry_delta: 40,
                    htlc_minimum_msat: 1_000,
                    htlc_maximum_msat: shape.capacity_sat * 1_000,
                    fee_base_msat: 1_000,
                    fee_proportional_millionths: 100 + k as u32 % 900,
                    excess_data: Vec::new(),
                };
                let key = if direction == 0 { &keys[a] } else { &keys[b] };
                ChannelUpdate {
                    signature: secp.sign_ecdsa(&digest(&contents), key),
                    contents,
                }
            };
            let update_1 = (shape.updates_per_channel >= 1).then(|| update(0));
            let update_2 = (shape.updates_per_channel >= 2).then(|| update(1));
            graph
                .channels
                .insert(scid, (announcement, update_1, update_2));
        }
        for (i, key) in keys.iter().enumerate() {
            let mut alias = [0u8; 32];
            let name = format!("sim-{i}");
            alias[..name.len()].copy_from_slice(name.as_bytes());
            let contents = UnsignedNodeAnnouncement {
                features: NodeFeatures::empty(),
                timestamp,
                node_id: NodeId::from_pubkey(&ids[i]),
                rgb: [(i % 256) as u8, 0x42, 0x42],
                alias: NodeAlias(alias),
                addresses: Vec::new(),
                excess_address_data: Vec::new(),
                excess_data: Vec::new(),
            };
            let announcement = NodeAnnouncement {
                signature: secp.sign_ecdsa(&digest(&contents), key),
                contents,
            };
            graph
                .nodes
                .insert(announcement.contents.node_id, announcement);
        }
        Ok(graph)
    }

    /// Every message a full sync sends: announcements, updates, node announcements.
    pub fn messages(&self) -> usize {
        self.nodes.len()
            + self
                .channels
                .values()
                .map(|(_, a, b)| 1 + usize::from(a.is_some()) + usize::from(b.is_some()))
                .sum::<usize>()
    }

    /// The channels a front must take (funded, correctly signed).
    pub fn good_channels(&self) -> &[u64] {
        &self.good
    }

    /// The channels a front must refuse (a broken signature, or no funding output).
    pub fn bad_channels(&self) -> Vec<u64> {
        self.channels
            .keys()
            .filter(|scid| !self.good.contains(scid))
            .copied()
            .collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// A channel's announcement and updates.
    pub fn channel(&self, scid: u64) -> Option<&ChannelEntry> {
        self.channels.get(&scid)
    }
}

fn lightning_scid(height: u32, tx_index: u32, vout: u16) -> u64 {
    (u64::from(height) << 40) | (u64::from(tx_index) << 16) | u64::from(vout)
}

fn node_key(index: u64) -> SecretKey {
    let mut engine = sha256::Hash::engine();
    bitcoin::hashes::HashEngine::input(&mut engine, b"phalanx-gossip-sim node ");
    bitcoin::hashes::HashEngine::input(&mut engine, &index.to_be_bytes());
    SecretKey::from_slice(sha256::Hash::from_engine(engine).as_byte_array())
        .expect("a hash is a key but with negligible odds")
}

fn digest<M: Writeable>(contents: &M) -> Message {
    Message::from_digest(sha256d::Hash::hash(&contents.encode()).to_byte_array())
}

fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Pays `outputs` from the chain's wallet, many per transaction, one transaction per
/// block, and mines six blocks on top; returns each output's short channel id.
fn fund(chain: &mut Chain, outputs: &[TxOut]) -> Result<Vec<u64>, BuildError> {
    let payout = chain.wallet().default_address().script_pubkey();
    let mut scids = Vec::with_capacity(outputs.len());
    for batch in outputs.chunks(OUTPUTS_PER_TRANSACTION) {
        let needed: Amount =
            batch.iter().map(|o| o.value).sum::<Amount>() + Amount::from_sat(1_000_000);
        let mut coins = chain.wallet_coins();
        coins.sort_by_key(|coin| std::cmp::Reverse(coin.1.value));
        let mut spent = Vec::new();
        let mut total = Amount::ZERO;
        for coin in coins {
            if total >= needed {
                break;
            }
            total += coin.1.value;
            spent.push(coin);
        }
        if total < needed {
            return Err(BuildError(format!(
                "the chain's wallet has {total} of the {needed} the funding needs"
            )));
        }
        let mut tx_outputs = batch.to_vec();
        tx_outputs.push(TxOut {
            value: total - needed + Amount::from_sat(900_000),
            script_pubkey: payout.clone(),
        });
        let mut tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: spent
                .iter()
                .map(|(outpoint, _): &(OutPoint, TxOut)| TxIn {
                    previous_output: *outpoint,
                    script_sig: bitcoin::ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output: tx_outputs,
        };
        let spent_outputs: Vec<TxOut> = spent.into_iter().map(|(_, output)| output).collect();
        chain.wallet().sign(&mut tx, &spent_outputs);
        chain
            .mine_block(&payout, Some(vec![tx]))
            .map_err(|err| BuildError(format!("the funding block was refused: {err:?}")))?;
        let height = chain.height();
        scids.extend((0..batch.len()).map(|vout| lightning_scid(height, 1, vout as u16)));
    }
    for _ in 0..6 {
        chain
            .mine_block(&payout, Some(Vec::new()))
            .map_err(|err| BuildError(format!("a confirming block was refused: {err:?}")))?;
    }
    Ok(scids)
}

/// The replay peer's gossip store: the synthetic graph, served as LDK's `PeerManager`
/// asks for a backfill; everything the other side sends is dropped.
pub struct ReplaySource {
    graph: Arc<SyntheticGraph>,
    served: AtomicU64,
    finished: AtomicBool,
    disconnections: AtomicU64,
}

impl ReplaySource {
    fn new(graph: Arc<SyntheticGraph>) -> Self {
        Self {
            graph,
            served: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            disconnections: AtomicU64::new(0),
        }
    }
}

impl BaseMessageHandler for ReplaySource {
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        Vec::new()
    }

    fn peer_disconnected(&self, _their_node_id: PublicKey) {
        self.disconnections.fetch_add(1, Ordering::Relaxed);
    }

    fn provided_node_features(&self) -> NodeFeatures {
        let mut features = NodeFeatures::empty();
        features.set_gossip_queries_optional();
        features
    }

    fn provided_init_features(&self, _their_node_id: PublicKey) -> InitFeatures {
        let mut features = InitFeatures::empty();
        features.set_gossip_queries_optional();
        features
    }

    fn peer_connected(&self, _: PublicKey, _: &Init, _: bool) -> Result<(), ()> {
        Ok(())
    }
}

impl RoutingMessageHandler for ReplaySource {
    fn handle_node_announcement(
        &self,
        _: Option<PublicKey>,
        _: &NodeAnnouncement,
    ) -> Result<bool, LightningError> {
        Ok(false)
    }

    fn handle_channel_announcement(
        &self,
        _: Option<PublicKey>,
        _: &ChannelAnnouncement,
    ) -> Result<bool, LightningError> {
        Ok(false)
    }

    fn handle_channel_update(
        &self,
        _: Option<PublicKey>,
        _: &ChannelUpdate,
    ) -> Result<Option<(NodeId, NodeId)>, LightningError> {
        Ok(None)
    }

    fn get_next_channel_announcement(&self, starting_point: u64) -> Option<ChannelEntry> {
        let entry = self
            .graph
            .channels
            .range(starting_point..)
            .next()?
            .1
            .clone();
        let count = 1 + u64::from(entry.1.is_some()) + u64::from(entry.2.is_some());
        self.served.fetch_add(count, Ordering::Relaxed);
        Some(entry)
    }

    fn get_next_node_announcement(
        &self,
        starting_point: Option<&NodeId>,
    ) -> Option<NodeAnnouncement> {
        use std::ops::Bound;
        let next = match starting_point {
            Some(after) => self
                .graph
                .nodes
                .range((Bound::Excluded(*after), Bound::Unbounded))
                .next(),
            None => self.graph.nodes.iter().next(),
        };
        match next {
            Some((_, announcement)) => {
                self.served.fetch_add(1, Ordering::Relaxed);
                Some(announcement.clone())
            }
            None => {
                self.finished.store(true, Ordering::Release);
                None
            }
        }
    }

    fn handle_reply_channel_range(
        &self,
        _: PublicKey,
        _: ReplyChannelRange,
    ) -> Result<(), LightningError> {
        Ok(())
    }

    fn handle_reply_short_channel_ids_end(
        &self,
        _: PublicKey,
        _: ReplyShortChannelIdsEnd,
    ) -> Result<(), LightningError> {
        Ok(())
    }

    fn handle_query_channel_range(
        &self,
        _: PublicKey,
        _: QueryChannelRange,
    ) -> Result<(), LightningError> {
        Ok(())
    }

    fn handle_query_short_channel_ids(
        &self,
        _: PublicKey,
        _: QueryShortChannelIds,
    ) -> Result<(), LightningError> {
        Ok(())
    }

    fn processing_queue_high(&self) -> bool {
        false
    }
}

/// Drops LDK's log lines.
pub struct Quiet;

impl Logger for Quiet {
    fn log(&self, _record: Record) {}
}

/// The replay peer's `PeerManager`.
pub type ReplayPeerManager = PeerManager<
    SocketDescriptor,
    Arc<ErroringMessageHandler>,
    Arc<ReplaySource>,
    Arc<IgnoringMessageHandler>,
    Arc<Quiet>,
    Arc<IgnoringMessageHandler>,
    Arc<KeysManager>,
    Arc<IgnoringMessageHandler>,
>;

/// A peer that serves a [`SyntheticGraph`] to whoever asks it for a full gossip sync.
pub struct ReplayPeer {
    peer_manager: Arc<ReplayPeerManager>,
    source: Arc<ReplaySource>,
    node_id: PublicKey,
}

impl ReplayPeer {
    /// A peer with a node key of its own (from `seed`), serving `graph`.
    pub fn new(graph: Arc<SyntheticGraph>, seed: [u8; 32]) -> Self {
        let keys = Arc::new(KeysManager::new(&seed, u64::from(now_secs()), 0, true));
        let node_id =
            lightning::sign::NodeSigner::get_node_id(&*keys, lightning::sign::Recipient::Node)
                .expect("a node key");
        let source = Arc::new(ReplaySource::new(graph));
        let ignoring = Arc::new(IgnoringMessageHandler {});
        let peer_manager = Arc::new(PeerManager::new(
            MessageHandler {
                chan_handler: Arc::new(ErroringMessageHandler::new()),
                route_handler: Arc::clone(&source),
                onion_message_handler: Arc::clone(&ignoring),
                custom_message_handler: Arc::clone(&ignoring),
                send_only_message_handler: ignoring,
            },
            now_secs(),
            &seed,
            Arc::new(Quiet),
            keys,
        ));
        Self {
            peer_manager,
            source,
            node_id,
        }
    }

    /// The peer's node id.
    pub fn node_id(&self) -> PublicKey {
        self.node_id
    }

    /// Connects to node `node_id` at `address` and keeps the connection on a task of the
    /// current runtime; false if the connection failed.
    pub async fn connect(&self, node_id: PublicKey, address: SocketAddr) -> bool {
        let Ok(stream) = tokio::net::TcpStream::connect(address).await else {
            return false;
        };
        // As a Lightning node should: without it, each backfill batch waits for the
        // front's delayed ACK (lightning-net-tokio's `connect_outbound` leaves Nagle on).
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else {
            return false;
        };
        tokio::spawn(lightning_net_tokio::setup_outbound(
            Arc::clone(&self.peer_manager),
            node_id,
            stream,
        ));
        true
    }

    /// Messages handed to the connection so far.
    pub fn served(&self) -> u64 {
        self.source.served.load(Ordering::Relaxed)
    }

    /// Whether the whole graph has been handed to the connection.
    pub fn finished(&self) -> bool {
        self.source.finished.load(Ordering::Acquire)
    }

    /// How many times a connection of the peer's ended.
    pub fn disconnections(&self) -> u64 {
        self.source.disconnections.load(Ordering::Relaxed)
    }

    /// Whether the peer is connected to `node_id`.
    pub fn is_connected(&self, node_id: &PublicKey) -> bool {
        self.peer_manager.peer_by_node_id(node_id).is_some()
    }

    /// Runs LDK's timer (pings); the caller ticks it every few seconds while replaying.
    pub fn tick(&self) {
        self.peer_manager.timer_tick_occurred();
    }
}
