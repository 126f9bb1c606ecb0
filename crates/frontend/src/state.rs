//! What a front knows between its peers and the active backend: the backend it is
//! attached to, a session per connected peer, and the backend's events waiting for the
//! front's `PeerManager`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bitcoin::constants::ChainHash;
use bitcoin::secp256k1::PublicKey;
use bitcoin::secp256k1::ecdh::SharedSecret;
use lightning::ln::msgs::{BaseMessageHandler, ErrorAction, Init, MessageSendEvent};
use lightning::routing::utxo::{UtxoFuture, UtxoLookup, UtxoLookupError, UtxoResult};
use lightning::types::features::{InitFeatures, NodeFeatures};
use lightning::util::ser::Writeable;
use lightning::util::wakers::Notifier;
use phalanx_link::ldk::gossip::{FundingLookupFailure, FundingOutput, VerifiedGossip};
use phalanx_link::ldk::inbound::{ChannelMessage, ForwardTarget};
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
    funding_waiting: Mutex<HashMap<u64, (UtxoFuture, Instant)>>,
    next_funding: AtomicU64,
}

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
            ecdh_waiting: Mutex::default(),
            next_ecdh: AtomicU64::new(1),
            ecdh_timeout,
            ping_in_flight: Mutex::default(),
            counters: Counters::default(),
            dials,
            funding_waiting: Mutex::default(),
            next_funding: AtomicU64::new(1),
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
        let expired: Vec<UtxoFuture> = {
            let mut waiting = self.lock_funding();
            let old: Vec<u64> = waiting
                .iter()
                .filter(|(_, (_, asked))| *asked < deadline)
                .map(|(request, _)| *request)
                .collect();
            old.into_iter()
                .filter_map(|request| waiting.remove(&request).map(|(future, _)| future))
                .collect()
        };
        for future in expired {
            self.resolve_funding(&future, Err(FundingLookupFailure::UnknownTx));
        }
    }

    fn resolve_funding(
        &self,
        future: &UtxoFuture,
        output: Result<FundingOutput, FundingLookupFailure>,
    ) {
        if output.is_err() {
            self.counters
                .funding_checks_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        future.resolve(output.map(FundingOutput::into_tx_out).map_err(Into::into));
    }

    fn lock_funding(&self) -> MutexGuard<'_, HashMap<u64, (UtxoFuture, Instant)>> {
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
        Ok(())
    }

    /// The link to the backend is gone: every peer is disconnected, so that it
    /// reconnects (through any front) to whichever instance is active next and
    /// `channel_reestablish` runs with it. ECDH questions waiting fail at once.
    pub(crate) fn detach(&self) {
        *self.attached.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.ecdh_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // No answer will come over a link that is gone.
        self.expire_funding_checks(Instant::now() + Duration::from_secs(1));
        let peers: Vec<PublicKey> = {
            let mut sessions = self.lock_sessions();
            for session in sessions.values_mut() {
                session.detached = true;
            }
            sessions.keys().copied().collect()
        };
        self.push_events(peers.into_iter().map(disconnect));
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
                if !self.is_current(&peer, session) {
                    return Ok(());
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
                if let Some((future, _)) = waiting {
                    self.resolve_funding(&future, output);
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

    /// Records a link ping as it leaves, to time its pong.
    pub(crate) fn ping_sent(&self, nonce: u64) {
        *self
            .ping_in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((nonce, std::time::Instant::now()));
    }

    fn is_current(&self, peer: &PublicKey, session: SessionId) -> bool {
        self.lock_sessions()
            .get(peer)
            .is_some_and(|s| s.id == session && !s.detached)
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
        // The session is recorded before the backend can answer about it.
        self.lock_sessions().insert(
            their_node_id,
            PeerSession {
                id,
                detached: false,
            },
        );
        let sent = self.send(Frame::PeerConnected {
            session: id,
            peer: their_node_id,
            init: msg.encode(),
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
        let Some(session) = self
            .lock_sessions()
            .get(&peer)
            .filter(|s| !s.detached)
            .map(|s| s.id)
        else {
            return;
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
        self.lock_funding()
            .insert(request, (future.clone(), Instant::now()));
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
