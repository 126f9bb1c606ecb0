//! Gossip at the edge: the front keeps its own network graph (in memory: a restarted
//! front syncs it again from its peers), answers gossip queries and rebroadcasts from
//! it, and checks what peers send before the backend sees any of it: signatures here,
//! funding outputs through the backend's chain source (LDK's asynchronous
//! `UtxoLookup`, asked over the link). The backend gets only what the front's graph took
//! as new, unsigned, for its router (`phalanx_link::ldk::gossip`).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::PublicKey;
use lightning::ln::msgs::{
    BaseMessageHandler, ChannelAnnouncement, ChannelUpdate, ErrorAction, Init, LightningError,
    MessageSendEvent, NodeAnnouncement, QueryChannelRange, QueryShortChannelIds, ReplyChannelRange,
    ReplyShortChannelIdsEnd, RoutingMessageHandler, UnsignedChannelUpdate,
    UnsignedNodeAnnouncement,
};
use lightning::routing::gossip::{NetworkGraph, NodeId, P2PGossipSync};
use lightning::types::features::{InitFeatures, NodeFeatures};
use phalanx_link::ldk::gossip::VerifiedGossip;

use crate::front::LdkTracing;
use crate::state::FrontState;

/// The front's network graph.
pub type FrontGraph = NetworkGraph<Arc<LdkTracing>>;

/// LDK's gossip handler over the front's graph, checking funding outputs through the
/// backend ([`FrontState`] is the `UtxoLookup`).
pub type FrontGossipSync = P2PGossipSync<Arc<FrontGraph>, Arc<FrontState>, Arc<LdkTracing>>;

/// The front's route handler: LDK's gossip handling, and what its graph takes as new
/// from a peer handed to the backend.
pub struct EdgeGossip {
    sync: FrontGossipSync,
    state: Arc<FrontState>,
    /// The channels whose announcement went to the backend. The backend refuses an
    /// update of a channel it does not know, and a node announcement of a node without
    /// channels; and a channel enters the front's graph (when its funding check
    /// completes) a moment before its announcement is forwarded, while other peers'
    /// updates of it may be handled. So an announcement is sent under this lock, and
    /// anything that needs it checks here first and sends it if it has not gone yet.
    announced: Mutex<HashSet<u64>>,
    /// Taken shared while a peer's update or node announcement is handled, and
    /// exclusively while LDK applies the completed funding checks. LDK takes a completed
    /// check out of its pending set before it puts the channel in the graph: an update
    /// handled in between finds neither, and is dropped (seen: 31 of 100,000 updates in
    /// the ingest benchmark, before this lock).
    resolving: RwLock<()>,
    /// Channels whose funding output was found and that were not in the graph right
    /// after LDK's next pass, and since when: LDK adds a channel whose check completed
    /// before it had registered the check later, in the peer's own thread, so a channel
    /// is only counted missing once it stays so (see [`Self::settle_missing`]).
    missing: Mutex<Vec<(u64, Instant)>>,
}

/// How long a channel whose funding output was found may take to enter the graph.
const MISSING_AFTER: Duration = Duration::from_secs(2);

impl EdgeGossip {
    /// Gossip over `graph`, funding outputs and new gossip through `state`'s link.
    pub fn new(graph: Arc<FrontGraph>, state: Arc<FrontState>) -> Self {
        let sync = P2PGossipSync::new(graph, Some(Arc::clone(&state)), Arc::new(LdkTracing));
        Self {
            sync,
            state,
            announced: Mutex::default(),
            missing: Mutex::default(),
            resolving: RwLock::new(()),
        }
    }

    /// The front's graph.
    pub fn graph(&self) -> &Arc<FrontGraph> {
        self.sync.network_graph()
    }

    /// Resolves the next time a funding-output check completes (the front's
    /// `PeerManager` must then process events: the checked announcements wait there).
    pub fn checks_completed(&self) -> lightning::util::wakers::Future {
        self.sync.validation_completion_future()
    }

    /// Counts a peer's gossip and what became of it; `forward` hands the new to the
    /// backend.
    fn took<T>(
        &self,
        from: Option<PublicKey>,
        outcome: &Result<T, LightningError>,
        forward: impl FnOnce(),
    ) {
        // Our own gossip (the backend's, from its broadcasts) comes with no peer: the
        // backend has it already.
        if from.is_none() {
            return;
        }
        let counters = &self.state.counters;
        counters.gossip_received.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(_) => forward(),
            Err(LightningError {
                action: ErrorAction::IgnoreDuplicateGossip,
                ..
            }) => {
                counters.gossip_duplicate.fetch_add(1, Ordering::Relaxed);
            }
            // Still being checked, or refused (bad signature, no such output, stale).
            Err(_) => {
                counters.gossip_not_taken.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn forward(&self, gossip: VerifiedGossip) {
        if self.state.send_gossip(gossip) {
            self.state
                .counters
                .gossip_to_backend
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends the backend the announcement of channel `scid` from the front's graph,
    /// unless it went already.
    fn announce(&self, scid: u64) {
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        if announced.contains(&scid) {
            return;
        }
        let gossip = {
            let graph = self.graph().read_only();
            let Some(channel) = graph.channel(scid) else {
                return;
            };
            let Some(announcement) = &channel.announcement_message else {
                return;
            };
            VerifiedGossip::channel_announcement(&announcement.contents, channel.capacity_sats)
        };
        announced.insert(scid);
        self.forward(gossip);
    }

    /// Hands the backend the whole graph, as new: called when the front attaches to a
    /// backend. A backend that just took over has only the graph it last persisted (and
    /// a new node none), and the front hands over only what is new to its own graph, so
    /// without this the router would miss what the fronts learnt before. The backend
    /// keeps what it lacks and ignores the rest. Returns the messages sent.
    pub fn replay_graph_to_backend(&self) -> u64 {
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let (channels, nodes) = {
            let graph = self.graph().read_only();
            let channels: Vec<(u64, Vec<UnsignedChannelUpdate>)> = graph
                .channels()
                .unordered_iter()
                .map(|(scid, channel)| {
                    let updates = [&channel.one_to_two, &channel.two_to_one]
                        .into_iter()
                        .flatten()
                        .filter_map(|direction| direction.last_update_message.as_ref())
                        .map(|update| update.contents.clone())
                        .collect();
                    (*scid, updates)
                })
                .collect();
            let nodes: Vec<UnsignedNodeAnnouncement> = graph
                .nodes()
                .unordered_iter()
                .filter_map(|(_, node)| node.announcement_info.as_ref())
                .filter_map(|info| info.announcement_message())
                .map(|announcement| announcement.contents.clone())
                .collect();
            (channels, nodes)
        };
        let before = self
            .state
            .counters
            .gossip_to_backend
            .load(Ordering::Relaxed);
        for (scid, updates) in channels {
            self.announce(scid);
            for update in &updates {
                self.forward(VerifiedGossip::channel_update(update));
            }
        }
        for node in &nodes {
            self.forward(VerifiedGossip::node_announcement(node));
        }
        self.state
            .counters
            .gossip_to_backend
            .load(Ordering::Relaxed)
            - before
    }

    /// An update, after its channel's announcement.
    fn forward_channel_update(&self, update: &UnsignedChannelUpdate) {
        self.announce(update.short_channel_id);
        self.forward(VerifiedGossip::channel_update(update));
    }

    /// Notes the checks that found their output but whose channel is not in the graph
    /// after LDK's pass over completed checks (see [`Self::settle_missing`]).
    fn note_found_not_taken(&self, resolved: &[crate::state::ResolvedCheck]) {
        if !resolved.iter().any(|check| check.found) {
            return;
        }
        let now = Instant::now();
        let graph = self.graph().read_only();
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        for check in resolved.iter().filter(|check| check.found) {
            if graph.channel(check.short_channel_id).is_none() {
                missing.push((check.short_channel_id, now));
            }
        }
    }

    /// Counts and logs, by channel, each channel whose funding output was found and that
    /// is still not in the graph [`MISSING_AFTER`] later: an announcement that does not
    /// match its output (another script or value), or a check LDK lost. The front calls
    /// it every second.
    pub fn settle_missing(&self) {
        let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        if missing.is_empty() {
            return;
        }
        let graph = self.graph().read_only();
        missing.retain(|(short_channel_id, since)| {
            if graph.channel(*short_channel_id).is_some() {
                return false;
            }
            if since.elapsed() < MISSING_AFTER {
                return true;
            }
            self.state
                .counters
                .funding_found_not_taken
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                short_channel_id,
                "a channel whose funding output was found did not enter the front's graph"
            );
            false
        });
    }

    /// A node announcement, after the announcement of a channel of the node.
    fn forward_node_announcement(&self, announcement: &UnsignedNodeAnnouncement) {
        let a_channel = self
            .graph()
            .read_only()
            .node(&announcement.node_id)
            .and_then(|info| info.channels.first().copied());
        if let Some(scid) = a_channel {
            self.announce(scid);
        }
        self.forward(VerifiedGossip::node_announcement(announcement));
    }
}

impl BaseMessageHandler for EdgeGossip {
    /// LDK's gossip events; the announcements whose funding check just completed are new
    /// in the graph, so they go to the backend as they go out to peers.
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        // Held across LDK's pass, which collects each of them (see `ResolvedCheck`).
        let resolved = self.state.take_resolved();
        let events = {
            let _resolving = self.resolving.write().unwrap_or_else(|e| e.into_inner());
            self.sync.get_and_clear_pending_msg_events()
        };
        self.note_found_not_taken(&resolved);
        drop(resolved);
        for event in &events {
            match event {
                MessageSendEvent::BroadcastChannelAnnouncement { msg, update_msg } => {
                    self.announce(msg.contents.short_channel_id);
                    if let Some(update) = update_msg {
                        self.forward_channel_update(&update.contents);
                    }
                }
                MessageSendEvent::BroadcastChannelUpdate { msg, .. } => {
                    self.forward_channel_update(&msg.contents);
                }
                MessageSendEvent::BroadcastNodeAnnouncement { msg } => {
                    self.forward_node_announcement(&msg.contents);
                }
                _ => {}
            }
        }
        events
    }

    fn peer_disconnected(&self, their_node_id: PublicKey) {
        self.sync.peer_disconnected(their_node_id)
    }

    fn provided_node_features(&self) -> NodeFeatures {
        self.sync.provided_node_features()
    }

    fn provided_init_features(&self, their_node_id: PublicKey) -> InitFeatures {
        self.sync.provided_init_features(their_node_id)
    }

    fn peer_connected(
        &self,
        their_node_id: PublicKey,
        msg: &Init,
        inbound: bool,
    ) -> Result<(), ()> {
        self.sync.peer_connected(their_node_id, msg, inbound)
    }
}

impl RoutingMessageHandler for EdgeGossip {
    fn handle_node_announcement(
        &self,
        their_node_id: Option<PublicKey>,
        msg: &NodeAnnouncement,
    ) -> Result<bool, LightningError> {
        let outcome = {
            let _resolving = self.resolving.read().unwrap_or_else(|e| e.into_inner());
            self.sync.handle_node_announcement(their_node_id, msg)
        };
        self.took(their_node_id, &outcome, || {
            self.forward_node_announcement(&msg.contents)
        });
        outcome
    }

    fn handle_channel_announcement(
        &self,
        their_node_id: Option<PublicKey>,
        msg: &ChannelAnnouncement,
    ) -> Result<bool, LightningError> {
        let outcome = self.sync.handle_channel_announcement(their_node_id, msg);
        // Taken at once when its funding check answered without waiting; otherwise it
        // goes when the check completes (see `get_and_clear_pending_msg_events`).
        self.took(their_node_id, &outcome, || {
            self.announce(msg.contents.short_channel_id)
        });
        outcome
    }

    fn handle_channel_update(
        &self,
        their_node_id: Option<PublicKey>,
        msg: &ChannelUpdate,
    ) -> Result<Option<(NodeId, NodeId)>, LightningError> {
        let outcome = {
            let _resolving = self.resolving.read().unwrap_or_else(|e| e.into_inner());
            self.sync.handle_channel_update(their_node_id, msg)
        };
        self.took(their_node_id, &outcome, || {
            self.forward_channel_update(&msg.contents)
        });
        outcome
    }

    fn get_next_channel_announcement(
        &self,
        starting_point: u64,
    ) -> Option<(
        ChannelAnnouncement,
        Option<ChannelUpdate>,
        Option<ChannelUpdate>,
    )> {
        self.sync.get_next_channel_announcement(starting_point)
    }

    fn get_next_node_announcement(
        &self,
        starting_point: Option<&NodeId>,
    ) -> Option<NodeAnnouncement> {
        self.sync.get_next_node_announcement(starting_point)
    }

    fn handle_reply_channel_range(
        &self,
        their_node_id: PublicKey,
        msg: ReplyChannelRange,
    ) -> Result<(), LightningError> {
        self.sync.handle_reply_channel_range(their_node_id, msg)
    }

    fn handle_reply_short_channel_ids_end(
        &self,
        their_node_id: PublicKey,
        msg: ReplyShortChannelIdsEnd,
    ) -> Result<(), LightningError> {
        self.sync
            .handle_reply_short_channel_ids_end(their_node_id, msg)
    }

    fn handle_query_channel_range(
        &self,
        their_node_id: PublicKey,
        msg: QueryChannelRange,
    ) -> Result<(), LightningError> {
        self.sync.handle_query_channel_range(their_node_id, msg)
    }

    fn handle_query_short_channel_ids(
        &self,
        their_node_id: PublicKey,
        msg: QueryShortChannelIds,
    ) -> Result<(), LightningError> {
        self.sync.handle_query_short_channel_ids(their_node_id, msg)
    }

    fn processing_queue_high(&self) -> bool {
        self.sync.processing_queue_high()
    }
}
