//! What a front knows between its peers and the active backend: the backend it is
//! attached to, a session per connected peer, and the backend's events waiting for the
//! front's `PeerManager`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bitcoin::constants::ChainHash;
use bitcoin::secp256k1::PublicKey;
use bitcoin::secp256k1::ecdh::SharedSecret;
use lightning::ln::msgs::{BaseMessageHandler, ErrorAction, Init, MessageSendEvent, OnionMessage};
use lightning::routing::utxo::{UtxoFuture, UtxoLookup, UtxoLookupError, UtxoResult};
use lightning::types::features::{InitFeatures, NodeFeatures};
use lightning::util::ser::Writeable;
use lightning::util::wakers::Notifier;
use phalanx_link::ldk::gossip::{FundingLookupFailure, FundingOutput, VerifiedGossip};
use phalanx_link::ldk::inbound::{ChannelMessage, ForwardTarget};
use phalanx_link::ldk::{WireMessage, types};
use phalanx_link::{ActiveBackend, Frame, SessionId};
use tokio::sync::{Notify, mpsc};

use crate::signer::{EcdhSource, EcdhUnavailable};

/// The backend a front is attached to: where frames go, and what it said of the node.
struct Attached {
    frames: mpsc::UnboundedSender<Frame>,
    backend: ActiveBackend,
    name: String,
}

struct PeerSession {
    id: SessionId,
    /// The backend refused or ended the session, or the link it was on is gone: its
    /// messages are dropped and its disconnect is not forwarded (the backend has none
    /// to pair it with).
    detached: bool,
    /// The peer's `init`, as it sent it: a peer kept across a failover is introduced to
    /// the next backend with it.
    init: Vec<u8>,
    inbound: bool,
    /// A channel message crossed the session, either way: the peer has (or is opening)
    /// a channel with the node, so a failover must disconnect it for
    /// `channel_reestablish` to run with the next backend. Peers without are only
    /// gossiping with the front and stay connected.
    channel_traffic: bool,
    /// Kept connected when the backend went away; gets a new session at the next one.
    awaiting_backend: bool,
}

/// The front's state (see the module doc); the handler its `PeerManager` forwards to.
pub struct FrontState {
    node_id: PublicKey,
    attached: RwLock<Option<Attached>>,
    sessions: Mutex<HashMap<PublicKey, PeerSession>>,
    next_session: AtomicU64,
    events: Mutex<Vec<MessageSendEvent>>,
    /// Woken when events wait: the front then runs `PeerManager::process_events`.
    pub(crate) events_ready: Notify,
    /// Woken when the front attaches to a backend: it then hands it its graph.
    pub(crate) attached_notify: Notify,
    ecdh_waiting: Mutex<HashMap<u64, std::sync::mpsc::Sender<Option<[u8; 32]>>>>,
    next_ecdh: AtomicU64,
    ecdh_timeout: Duration,
    /// The link ping in flight: its nonce and when it left.
    ping_in_flight: Mutex<Option<(u64, std::time::Instant)>>,
    /// Counters for `/v1/state` and `/metrics`.
    pub(crate) counters: Counters,
    /// The dials the backend asks for, to the front's task that makes them.
    dials: mpsc::UnboundedSender<(PublicKey, String)>,
    /// Funding-output checks asked of the backend: LDK's future for each, and when it
    /// was asked (checks hold LDK's gossip processing back, so they time out).
    funding_waiting: Mutex<HashMap<u64, FundingCheck>>,
    /// Checks resolved since LDK last collected completed checks: kept alive until then
    /// (see [`ResolvedCheck`]).
    resolved: Mutex<Vec<ResolvedCheck>>,
    next_funding: AtomicU64,
    /// Where peers reach the node through this front: told to each backend attached to.
    pub(crate) public_address: Option<String>,
    /// Onion messages from the backend, per peer, until the front's `PeerManager` pulls
    /// them (as it does from an onion messenger: when the peer's buffer has room).
    onion_out: Mutex<HashMap<PublicKey, VecDeque<OnionMessage>>>,
}

/// A funding-output check asked of the backend.
struct FundingCheck {
    future: UtxoFuture,
    asked: Instant,
    short_channel_id: u64,
}

/// A resolved funding check, kept until LDK's next pass over its completed checks has
/// begun. LDK 0.3's `PendingChecks::check_resolved_futures` reads a check's result under
/// its lock, releases it, then takes a check nobody else holds for one that was dropped
/// unanswered, and throws it away with its announcement and the updates held behind it.
/// A check resolved, and its last other holder (ours) dropped, between those two reads
/// was lost that way: one announcement in about six mainnet-size ingests. Holding our
/// copy across the pass closes the window.
pub(crate) struct ResolvedCheck {
    _future: UtxoFuture,
    pub(crate) short_channel_id: u64,
    /// The backend found the output (LDK should then have the channel in the graph,
    /// unless the announcement does not match it).
    pub(crate) found: bool,
}

/// At most this many onion messages wait for one peer; more are dropped (onion
/// messages are best-effort, and LDK's own messenger bounds its per-peer buffer too).
pub const ONION_MESSAGES_PER_PEER: usize = 64;

/// What a front has done, for its state and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages forwarded to the backend.
    pub messages_to_backend: AtomicU64,
    /// Events received from the backend.
    pub events_from_backend: AtomicU64,
    /// Times the front attached to an active backend.
    pub attachments: AtomicU64,
    /// The link's last ping round trip, in microseconds (0: none yet).
    pub link_rtt_micros: AtomicU64,
    /// Gossip messages (announcements, updates) received from peers.
    pub gossip_received: AtomicU64,
    /// Of those, the ones the graph had already.
    pub gossip_duplicate: AtomicU64,
    /// Of those, the ones not taken at once: refused (a bad signature, no funding
    /// output, stale), or held while their funding output is checked.
    pub gossip_not_taken: AtomicU64,
    /// New, verified gossip handed to the backend.
    pub gossip_to_backend: AtomicU64,
    /// Funding outputs asked of the backend.
    pub funding_checks: AtomicU64,
    /// Of those, the ones that found no output (or failed, or timed out).
    pub funding_checks_failed: AtomicU64,
    /// Of those that found an output, the ones whose channel the graph did not then take
    /// (an announcement that does not match its output, or a check LDK lost).
    pub funding_found_not_taken: AtomicU64,
    /// Onion messages from peers forwarded to the backend.
    pub onion_to_backend: AtomicU64,
    /// Onion messages from the backend queued for peers.
    pub onion_from_backend: AtomicU64,
    /// Onion messages dropped: from a peer while no backend could take them, or for a
    /// peer whose queue was full or whose session had ended.
    pub onion_dropped: AtomicU64,
}

impl FrontState {
    /// The state of a front of node `node_id`; ECDH answers are awaited `ecdh_timeout`.
    /// The receiver gets the dials the backend asks for.
    pub fn new(
        node_id: PublicKey,
        ecdh_timeout: Duration,
    ) -> (Self, mpsc::UnboundedReceiver<(PublicKey, String)>) {
        let (dials, dial_requests) = mpsc::unbounded_channel();
        let state = Self {
            node_id,
            attached: RwLock::new(None),
            sessions: Mutex::default(),
            next_session: AtomicU64::new(1),
            events: Mutex::default(),
            events_ready: Notify::new(),
            attached_notify: Notify::new(),
            ecdh_waiting: Mutex::default(),
            next_ecdh: AtomicU64::new(1),
            ecdh_timeout,
            ping_in_flight: Mutex::default(),
            counters: Counters::default(),
            dials,
            funding_waiting: Mutex::default(),
            resolved: Mutex::default(),
            next_funding: AtomicU64::new(1),
            public_address: None,
            onion_out: Mutex::default(),
        };
        (state, dial_requests)
    }

    /// The node's id.
    pub fn node_id(&self) -> PublicKey {
        self.node_id
    }

    /// The name of the backend the front is attached to, if any.
    pub fn attached_to(&self) -> Option<String> {
        self.attached
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| a.name.clone())
    }

    /// How many peers have a session with the backend.
    pub fn sessions(&self) -> usize {
        self.lock_sessions()
            .values()
            .filter(|s| !s.detached)
            .count()
    }

    /// What the front has done.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn lock_sessions(&self) -> MutexGuard<'_, HashMap<PublicKey, PeerSession>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, frame: Frame) -> bool {
        match &*self.attached.read().unwrap_or_else(|e| e.into_inner()) {
            Some(attached) => attached.frames.send(frame).is_ok(),
            None => false,
        }
    }

    fn push_events(&self, events: impl IntoIterator<Item = MessageSendEvent>) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(events);
        self.events_ready.notify_one();
    }

    /// Hands verified gossip to the backend; false if none is attached.
    pub(crate) fn send_gossip(&self, gossip: VerifiedGossip) -> bool {
        self.send(Frame::Gossip(gossip))
    }

    /// Fails the funding checks asked before `deadline` (LDK holds the announcement
    /// and its updates meanwhile, and slows gossip intake while many wait).
    pub(crate) fn expire_funding_checks(&self, deadline: Instant) {
        let expired: Vec<FundingCheck> = {
            let mut waiting = self.lock_funding();
            let old: Vec<u64> = waiting
                .iter()
                .filter(|(_, check)| check.asked < deadline)
                .map(|(request, _)| *request)
                .collect();
            old.into_iter()
                .filter_map(|request| waiting.remove(&request))
                .collect()
        };
        for check in expired {
            self.resolve_funding(check, Err(FundingLookupFailure::UnknownTx));
        }
    }

    fn resolve_funding(
        &self,
        check: FundingCheck,
        output: Result<FundingOutput, FundingLookupFailure>,
    ) {
        let found = output.is_ok();
        if !found {
            self.counters
                .funding_checks_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        check
            .future
            .resolve(output.map(FundingOutput::into_tx_out).map_err(Into::into));
        // After the resolution, so that LDK's next pass over completed checks sees it
        // complete while we still hold it.
        self.resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ResolvedCheck {
                _future: check.future,
                short_channel_id: check.short_channel_id,
                found,
            });
    }

    /// The checks resolved so far, for the caller to hold across LDK's next pass over
    /// completed checks (see [`ResolvedCheck`]).
    pub(crate) fn take_resolved(&self) -> Vec<ResolvedCheck> {
        std::mem::take(&mut *self.resolved.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn lock_funding(&self) -> MutexGuard<'_, HashMap<u64, FundingCheck>> {
        self.funding_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches to a backend that said it is active; refuses one of another node.
    pub(crate) fn attach(
        &self,
        name: String,
        backend: ActiveBackend,
        frames: mpsc::UnboundedSender<Frame>,
    ) -> Result<(), String> {
        if backend.node_id != self.node_id {
            return Err(format!(
                "backend {name} runs node {}, this front serves {}",
                backend.node_id, self.node_id
            ));
        }
        *self.attached.write().unwrap_or_else(|e| e.into_inner()) = Some(Attached {
            frames,
            backend,
            name,
        });
        self.counters.attachments.fetch_add(1, Ordering::Relaxed);
        if let Some(address) = &self.public_address {
            self.send(Frame::PublicAddress {
                address: address.clone(),
            });
        }
        self.introduce_kept_peers();
        self.attached_notify.notify_one();
        Ok(())
    }

    /// Gives each peer kept connected across the last backend's loss a new session at
    /// this one, as if it had just connected.
    fn introduce_kept_peers(&self) {
        let mut sessions = self.lock_sessions();
        for (peer, session) in sessions.iter_mut() {
            if !session.awaiting_backend {
                continue;
            }
            session.id = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
            session.awaiting_backend = false;
            session.detached = !self.send(Frame::PeerConnected {
                session: session.id,
                peer: *peer,
                init: session.init.clone(),
                inbound: session.inbound,
            });
        }
    }

    /// The link to the backend is gone: every peer with channel traffic is
    /// disconnected, so that it reconnects (through any front) to whichever instance is
    /// active next and `channel_reestablish` runs with it; peers that only gossip stay
    /// connected and are introduced to the next backend. ECDH questions and funding
    /// checks waiting fail at once.
    pub(crate) fn detach(&self) {
        *self.attached.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.ecdh_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // No answer will come over a link that is gone.
        self.expire_funding_checks(Instant::now() + Duration::from_secs(1));
        // What the old backend had for peers is its own business; a stopped instance
        // does not act through its fronts, even by onion message.
        self.lock_onion_out().clear();
        let channel_peers: Vec<PublicKey> = {
            let mut sessions = self.lock_sessions();
            let mut channel_peers = Vec::new();
            for (peer, session) in sessions.iter_mut() {
                if session.channel_traffic || session.detached {
                    channel_peers.push(*peer);
                } else {
                    session.awaiting_backend = true;
                }
                session.detached = true;
            }
            channel_peers
        };
        self.push_events(channel_peers.into_iter().map(disconnect));
    }

    /// A frame from the attached backend (public for the fuzz targets: it takes bytes
    /// from another process).
    pub fn on_frame(&self, frame: Frame) -> Result<(), phalanx_link::LinkError> {
        match frame {
            Frame::PeerEvent {
                session,
                peer,
                event,
            } => {
                match self.lock_sessions().get_mut(&peer) {
                    Some(current) if current.id == session && !current.detached => {
                        current.channel_traffic = true;
                    }
                    _ => return Ok(()),
                }
                self.counters
                    .events_from_backend
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(event) = event.into_event(peer)? {
                    self.push_events([event]);
                }
            }
            Frame::PeerDisconnected { session, peer } => {
                let mut sessions = self.lock_sessions();
                if let Some(current) = sessions.get_mut(&peer)
                    && current.id == session
                {
                    current.detached = true;
                    drop(sessions);
                    self.push_events([disconnect(peer)]);
                }
            }
            Frame::PeerMessage {
                session,
                peer,
                message,
            } => self.onion_message_from_backend(session, peer, &message)?,
            Frame::Broadcast(broadcast) => {
                self.counters
                    .events_from_backend
                    .fetch_add(1, Ordering::Relaxed);
                self.push_events([broadcast.into_event()?]);
            }
            Frame::EcdhResponse {
                request,
                shared_secret,
            } => {
                let asker = self
                    .ecdh_waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&request);
                if let Some(asker) = asker {
                    let _ = asker.send(shared_secret);
                }
            }
            Frame::FundingOutputResponse { request, output } => {
                let waiting = self.lock_funding().remove(&request);
                if let Some(check) = waiting {
                    self.resolve_funding(check, output);
                }
            }
            Frame::ConnectPeer { peer, address } => {
                // The front's task dials; it outlives no front.
                let _ = self.dials.send((peer, address));
            }
            Frame::LinkPong { nonce } => {
                let sent = self
                    .ping_in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_if(|(expected, _)| *expected == nonce);
                if let Some((_, at)) = sent {
                    let micros = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.counters
                        .link_rtt_micros
                        .store(micros.max(1), Ordering::Relaxed);
                }
            }
            Frame::LinkPing { nonce } => {
                self.send(Frame::LinkPong { nonce });
            }
            other => {
                return Err(phalanx_link::LinkError::Protocol(format!(
                    "the backend sent a {} frame",
                    other.kind()
                )));
            }
        }
        Ok(())
    }

    /// An onion message the backend has for a session's peer: queued until the front's
    /// `PeerManager` pulls it. Anything but an onion message comes as a `PeerEvent`.
    fn onion_message_from_backend(
        &self,
        session: SessionId,
        peer: PublicKey,
        message: &WireMessage,
    ) -> Result<(), phalanx_link::LinkError> {
        if message.message_type != types::ONION_MESSAGE {
            return Err(phalanx_link::LinkError::Protocol(format!(
                "the backend sent a peer message of type {}: only onion messages come that way",
                message.message_type
            )));
        }
        let onion: OnionMessage = message.read()?;
        let current = self
            .lock_sessions()
            .get(&peer)
            .is_some_and(|s| s.id == session && !s.detached);
        let queued = current && {
            let mut queues = self.lock_onion_out();
            let queue = queues.entry(peer).or_default();
            queue.len() < ONION_MESSAGES_PER_PEER && {
                queue.push_back(onion);
                true
            }
        };
        if queued {
            self.counters
                .onion_from_backend
                .fetch_add(1, Ordering::Relaxed);
            // The `PeerManager` pulls onion messages as it writes to its peers.
            self.events_ready.notify_one();
        } else {
            self.counters.onion_dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Forwards an onion message from `peer` to the backend, on its current session;
    /// dropped if there is none (no backend attached, or the session was refused).
    pub(crate) fn onion_message_from_peer(&self, peer: PublicKey, message: &OnionMessage) {
        let session = self
            .lock_sessions()
            .get(&peer)
            .filter(|s| !s.detached && !s.awaiting_backend)
            .map(|s| s.id);
        let sent = session.is_some_and(|session| {
            self.send(Frame::PeerMessage {
                session,
                peer,
                message: WireMessage::of(message),
            })
        });
        let counter = if sent {
            &self.counters.onion_to_backend
        } else {
            &self.counters.onion_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The next onion message the backend has for `peer`.
    pub(crate) fn next_onion_message_for(&self, peer: &PublicKey) -> Option<OnionMessage> {
        let mut queues = self.lock_onion_out();
        let queue = queues.get_mut(peer)?;
        let next = queue.pop_front();
        if queue.is_empty() {
            queues.remove(peer);
        }
        next
    }

    /// `peer` is gone: what waited for it is dropped.
    pub(crate) fn drop_onion_messages_for(&self, peer: &PublicKey) {
        if let Some(queue) = self.lock_onion_out().remove(peer) {
            self.counters
                .onion_dropped
                .fetch_add(queue.len() as u64, Ordering::Relaxed);
        }
    }

    fn lock_onion_out(&self) -> MutexGuard<'_, HashMap<PublicKey, VecDeque<OnionMessage>>> {
        self.onion_out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a link ping as it leaves, to time its pong.
    pub(crate) fn ping_sent(&self, nonce: u64) {
        *self
            .ping_in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((nonce, std::time::Instant::now()));
    }

    fn backend<T>(&self, read: impl FnOnce(&ActiveBackend) -> T) -> Option<T> {
        self.attached
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| read(&a.backend))
    }
}

fn disconnect(node_id: PublicKey) -> MessageSendEvent {
    MessageSendEvent::HandleError {
        node_id,
        action: ErrorAction::DisconnectPeer { msg: None },
    }
}

impl BaseMessageHandler for FrontState {
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn peer_disconnected(&self, their_node_id: PublicKey) {
        let Some(session) = self.lock_sessions().remove(&their_node_id) else {
            return;
        };
        if !session.detached {
            self.send(Frame::PeerDisconnected {
                session: session.id,
                peer: their_node_id,
            });
        }
    }

    fn provided_node_features(&self) -> NodeFeatures {
        self.backend(|b| NodeFeatures::from_le_bytes(b.node_features.clone()))
            .unwrap_or_else(NodeFeatures::empty)
    }

    fn provided_init_features(&self, _their_node_id: PublicKey) -> InitFeatures {
        self.backend(|b| InitFeatures::from_le_bytes(b.init_features.clone()))
            .unwrap_or_else(InitFeatures::empty)
    }

    /// Accepted at once if a backend is attached (LDK asks synchronously); the backend
    /// may still refuse, and then the session is detached and the peer disconnected.
    fn peer_connected(
        &self,
        their_node_id: PublicKey,
        msg: &Init,
        inbound: bool,
    ) -> Result<(), ()> {
        let id = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
        let init = msg.encode();
        // The session is recorded before the backend can answer about it.
        self.lock_sessions().insert(
            their_node_id,
            PeerSession {
                id,
                detached: false,
                init: init.clone(),
                inbound,
                channel_traffic: false,
                awaiting_backend: false,
            },
        );
        let sent = self.send(Frame::PeerConnected {
            session: id,
            peer: their_node_id,
            init,
            inbound,
        });
        if !sent {
            self.lock_sessions().remove(&their_node_id);
            return Err(());
        }
        Ok(())
    }
}

impl ForwardTarget for FrontState {
    fn forward(&self, peer: PublicKey, message: ChannelMessage) {
        let session = {
            let mut sessions = self.lock_sessions();
            let Some(session) = sessions.get_mut(&peer) else {
                return;
            };
            if matches!(message, ChannelMessage::ChannelUpdate(_)) {
                // The channel handler only wants a channel's counterparty's update, and a
                // channel needs other messages first: every gossiped update would
                // otherwise cross the link twice (once to the router, verified).
                if !session.channel_traffic || session.detached {
                    return;
                }
            }
            session.channel_traffic = true;
            if session.awaiting_backend {
                // A peer kept across a failover starts on a channel while no backend can
                // answer: it must reconnect to reestablish it with the next one.
                session.awaiting_backend = false;
                drop(sessions);
                self.push_events([disconnect(peer)]);
                return;
            }
            if session.detached {
                return;
            }
            session.id
        };
        self.counters
            .messages_to_backend
            .fetch_add(1, Ordering::Relaxed);
        self.send(Frame::PeerMessage {
            session,
            peer,
            message: message.wire(),
        });
    }

    fn chain_hashes(&self) -> Option<Vec<ChainHash>> {
        // No backend: no chain a peer could match, so PeerManager refuses it.
        Some(
            self.backend(|b| vec![ChainHash::from(b.chain_hash)])
                .unwrap_or_default(),
        )
    }
}

/// The handshake's ECDH, asked of the attached backend; blocks up to the timeout.
impl EcdhSource for FrontState {
    fn ecdh(&self, point: &PublicKey) -> Result<SharedSecret, EcdhUnavailable> {
        let request = self.next_ecdh.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = std::sync::mpsc::channel();
        self.ecdh_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request, answer);
        let outcome = if self.send(Frame::EcdhRequest {
            request,
            point: *point,
        }) {
            let wait = || {
                answered
                    .recv_timeout(self.ecdh_timeout)
                    .map_err(|err| match err {
                        std::sync::mpsc::RecvTimeoutError::Timeout => "no answer in time",
                        std::sync::mpsc::RecvTimeoutError::Disconnected => "the link went down",
                    })
            };
            // LDK asks from inside `read_event`, on a runtime worker. Blocking it as is
            // would also hold back the task tokio keeps in that worker's own slot (one it
            // woke last) for the whole wait; `block_in_place` hands the worker's queue to
            // another thread first.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime)
                    if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
                {
                    tokio::task::block_in_place(wait)
                }
                _ => wait(),
            }
        } else {
            Err("no backend attached")
        };
        self.ecdh_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request);
        match outcome {
            Ok(Some(secret)) => Ok(SharedSecret::from_bytes(secret)),
            Ok(None) => Err(EcdhUnavailable("the backend refused".into())),
            Err(why) => Err(EcdhUnavailable(why.into())),
        }
    }
}

/// Funding outputs are asked of the attached backend's chain source, answered later
/// (LDK holds the announcement meanwhile).
impl UtxoLookup for FrontState {
    fn get_utxo(
        &self,
        chain_hash: &ChainHash,
        short_channel_id: u64,
        async_completion_notifier: Arc<Notifier>,
    ) -> UtxoResult {
        match self.backend(|b| ChainHash::from(b.chain_hash)) {
            None => return UtxoResult::Sync(Err(UtxoLookupError::UnknownTx)),
            Some(ours) if ours != *chain_hash => {
                return UtxoResult::Sync(Err(UtxoLookupError::UnknownChain));
            }
            Some(_) => {}
        }
        let request = self.next_funding.fetch_add(1, Ordering::Relaxed);
        let future = UtxoFuture::new(async_completion_notifier);
        // Recorded before asking, so that the answer always finds it.
        self.lock_funding().insert(
            request,
            FundingCheck {
                future: future.clone(),
                asked: Instant::now(),
                short_channel_id,
            },
        );
        self.counters.funding_checks.fetch_add(1, Ordering::Relaxed);
        if !self.send(Frame::FundingOutputRequest {
            request,
            short_channel_id,
        }) {
            self.lock_funding().remove(&request);
            self.counters
                .funding_checks_failed
                .fetch_add(1, Ordering::Relaxed);
            return UtxoResult::Sync(Err(UtxoLookupError::UnknownTx));
        }
        UtxoResult::Async(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use lightning::ln::msgs::Stfu;
    use lightning::ln::types::ChannelId;

    fn key(byte: u8) -> PublicKey {
        PublicKey::from_secret_key(
            &Secp256k1::new(),
            &SecretKey::from_slice(&[byte; 32]).unwrap(),
        )
    }

    fn attach(state: &FrontState) -> mpsc::UnboundedReceiver<Frame> {
        let (frames, received) = mpsc::unbounded_channel();
        let backend = ActiveBackend {
            node_id: state.node_id(),
            chain_hash: [0; 32],
            init_features: Vec::new(),
            node_features: Vec::new(),
        };
        state.attach("backend".into(), backend, frames).unwrap();
        received
    }

    fn connected(frames: &mut mpsc::UnboundedReceiver<Frame>) -> Vec<(PublicKey, SessionId)> {
        let mut connected = Vec::new();
        while let Ok(frame) = frames.try_recv() {
            if let Frame::PeerConnected { peer, session, .. } = frame {
                connected.push((peer, session));
            }
        }
        connected.sort();
        connected
    }

    fn disconnected(state: &FrontState) -> Vec<PublicKey> {
        let mut peers: Vec<PublicKey> = state
            .get_and_clear_pending_msg_events()
            .into_iter()
            .filter_map(|event| match event {
                MessageSendEvent::HandleError { node_id, .. } => Some(node_id),
                _ => None,
            })
            .collect();
        peers.sort();
        peers
    }

    /// Across a failover, a peer with channel traffic is disconnected (it must
    /// reestablish with the next backend) and a gossip-only peer stays, introduced to
    /// the next backend with a new session.
    #[test]
    fn a_failover_disconnects_channel_peers_and_keeps_gossip_only_peers() {
        let (state, _dials) = FrontState::new(key(1), Duration::from_secs(1));
        let mut first = attach(&state);
        let init = Init {
            features: InitFeatures::empty(),
            networks: None,
            remote_network_address: None,
        };
        let (channel_peer, gossip_peer) = (key(2), key(3));
        state.peer_connected(channel_peer, &init, true).unwrap();
        state.peer_connected(gossip_peer, &init, true).unwrap();
        let first_sessions = connected(&mut first);
        assert_eq!(first_sessions.len(), 2);
        state.forward(
            channel_peer,
            ChannelMessage::Stfu(Stfu {
                channel_id: ChannelId([0; 32]),
                initiator: true,
            }),
        );

        state.detach();
        assert_eq!(disconnected(&state), vec![channel_peer]);
        // While no backend is attached the kept peer has no session.
        assert_eq!(state.sessions(), 0);

        // LDK tells the front the channel peer is gone; the gossip peer is still there.
        state.peer_disconnected(channel_peer);
        let mut second = attach(&state);
        let second_sessions = connected(&mut second);
        assert_eq!(second_sessions.len(), 1);
        assert_eq!(second_sessions[0].0, gossip_peer);
        assert!(
            first_sessions
                .iter()
                .all(|(_, session)| *session != second_sessions[0].1),
            "the kept peer gets a new session"
        );
        assert_eq!(state.sessions(), 1);
        assert!(disconnected(&state).is_empty());
    }

    /// A kept peer that starts on a channel while no backend is attached is
    /// disconnected rather than left waiting for an answer.
    #[test]
    fn a_kept_peer_that_sends_a_channel_message_between_backends_is_disconnected() {
        let (state, _dials) = FrontState::new(key(1), Duration::from_secs(1));
        let _first = attach(&state);
        let init = Init {
            features: InitFeatures::empty(),
            networks: None,
            remote_network_address: None,
        };
        let peer = key(4);
        state.peer_connected(peer, &init, true).unwrap();
        state.detach();
        assert!(disconnected(&state).is_empty());
        state.forward(
            peer,
            ChannelMessage::Stfu(Stfu {
                channel_id: ChannelId([0; 32]),
                initiator: true,
            }),
        );
        assert_eq!(disconnected(&state), vec![peer]);
    }
}
