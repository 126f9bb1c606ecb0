//! The backend's end of the link: fronts connect to the active instance, which answers
//! their ECDH requests and takes their peers' sessions into its channel handler.
//!
//! [`LinkServer`] keeps which front holds each peer. A peer is on one session at a time:
//! a new session (on any front) ends the old one, whose later frames, disconnect included,
//! are ignored; so an old connection never tears down a newer one, and the handler sees
//! connects and disconnects paired, as LDK requires. Every frame is handled under one
//! lock, so the handler is never called for one peer from two fronts at once.
//!
//! [`SplitHandler`] is the channel handler the backend's own `PeerManager` gets (for
//! peers connected to the backend directly): it passes everything to the node's handler,
//! but sends the events of peers on a front down their link, and broadcasts to every
//! front too.
//!
//! Onion messages (BOLT 4 and 12) of peers on fronts go to the node's onion message
//! handler ([`LinkServer::set_onion_handler`]) as their sessions come and go, and what it
//! has for them leaves down their links each time the backend's `PeerManager` processes
//! its events (through [`SplitHandler`]), the way LDK's `PeerManager` pulls them for its
//! own peers.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bitcoin::secp256k1::PublicKey;
use futures::{SinkExt, StreamExt};
use lightning::ln::msgs::{
    BaseMessageHandler, ChannelMessageHandler, Init, MessageSendEvent, OnionMessage,
    OnionMessageHandler,
};
use lightning::types::features::{InitFeatures, NodeFeatures};
use lightning::util::ser::LengthReadable;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

use crate::ldk::gossip::{FundingLookupFailure, FundingOutput, VerifiedGossip};
use crate::ldk::inbound::{ChannelMessage, Inbox};
use crate::ldk::outbound::{PeerEvent, Route, route};
use crate::ldk::{WireMessage, types};
use crate::tls::LinkIdentity;
use crate::{ActiveBackend, Frame, Hello, LinkCodec, LinkError, Role, SessionId};

/// Answers the handshake's ECDH with the node key: `None` refuses.
pub type EcdhFn = Box<dyn Fn(&PublicKey) -> Option<[u8; 32]> + Send + Sync>;

/// Called once with the answer to a front's funding-output question.
pub type FundingAnswer = Box<dyn FnOnce(Result<FundingOutput, FundingLookupFailure>) + Send>;

/// The node's onion message handler (LDK's `OnionMessenger`), for peers on fronts.
pub type OnionHandler = Arc<dyn OnionMessageHandler + Send + Sync>;

/// At most this many onion messages leave for one peer each time events are processed,
/// so that one peer's backlog cannot hold the server's lock long; the rest wait for the
/// next round (LDK's own buffers bound them).
const ONION_MESSAGES_PER_ROUND: usize = 32;

/// What the backend does with its fronts' gossip (see [`crate::ldk::gossip`]).
pub trait GossipBackend: Send + Sync {
    /// Finds the output `short_channel_id` names on the node's chain, for a front checking
    /// a channel announcement: unspent and confirmed deeply enough to be announced, or
    /// [`FundingLookupFailure::UnknownTx`]. `answer` is called once, promptly and without
    /// blocking the caller (a front gives up after a few seconds and drops the
    /// announcement).
    fn funding_output(&self, short_channel_id: u64, answer: FundingAnswer);
    /// Gossip a front verified (signatures, funding output) and its graph took as new:
    /// for the node's router, through LDK's unsigned paths.
    fn verified(&self, front: &str, gossip: VerifiedGossip);
}

type LinkId = u64;

struct FrontLink {
    name: String,
    frames: mpsc::UnboundedSender<Frame>,
    /// Where peers reach the node through this front, as it said.
    public_address: Option<String>,
}

struct Session {
    link: LinkId,
    id: SessionId,
    inbound: bool,
    inbox: Inbox,
}

/// A peer connected through a front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontPeer {
    /// The peer.
    pub node_id: PublicKey,
    /// The front's name.
    pub front: String,
    /// Whether the peer connected to the front (rather than the front to it).
    pub inbound: bool,
}

#[derive(Default)]
struct State {
    links: HashMap<LinkId, FrontLink>,
    sessions: HashMap<PublicKey, Session>,
    /// Peers connected to the backend directly, through its own `PeerManager`.
    direct: HashSet<PublicKey>,
    next_link: LinkId,
    /// Spreads the dials the backend asks for over its fronts.
    next_dial: usize,
}

impl State {
    fn send(&self, link: LinkId, frame: Frame) {
        if let Some(front) = self.links.get(&link) {
            // A link whose writer is gone is being torn down; its reader ends it.
            let _ = front.frames.send(frame);
        }
    }
}

/// The active backend's end of the links to its fronts (see the module doc).
pub struct LinkServer<H: Deref>
where
    H::Target: ChannelMessageHandler,
{
    handler: H,
    name: String,
    active: ActiveBackend,
    ecdh: EcdhFn,
    state: Mutex<State>,
    wake: OnceLock<Box<dyn Fn() + Send + Sync>>,
    gossip: OnceLock<Arc<dyn GossipBackend>>,
    onion: OnceLock<OnionHandler>,
    /// Set once the node stops: every link is closed and no frame reaches the handler.
    closed: tokio::sync::watch::Sender<bool>,
}

impl<H> LinkServer<H>
where
    H: Deref + Send + Sync + 'static,
    H::Target: ChannelMessageHandler,
{
    /// A server for the node's channel `handler`; `active` is what fronts are told of
    /// the node, `ecdh` answers their handshakes.
    pub fn new(handler: H, name: impl Into<String>, active: ActiveBackend, ecdh: EcdhFn) -> Self {
        Self {
            handler,
            name: name.into(),
            active,
            ecdh,
            state: Mutex::default(),
            wake: OnceLock::new(),
            gossip: OnceLock::new(),
            onion: OnceLock::new(),
            closed: tokio::sync::watch::channel(false).0,
        }
    }

    /// Stops serving fronts, for good: every link is closed (its fronts detach and
    /// disconnect its peers) and no frame reaches the handler any more, nor does any
    /// event leave. The node calls it when it stops, as it disconnects its own peers:
    /// a stopped node must not act through its fronts either.
    pub fn close(&self) {
        self.closed.send_replace(true);
        let mut state = self.lock();
        state.links.clear();
        let peers: Vec<PublicKey> = state.sessions.drain().map(|(peer, _)| peer).collect();
        for peer in peers {
            self.peer_gone(peer);
        }
    }

    /// Tells the handlers that `peer`'s session through a front ended.
    fn peer_gone(&self, peer: PublicKey) {
        self.handler.peer_disconnected(peer);
        if let Some(onion) = self.onion.get() {
            onion.peer_disconnected(peer);
        }
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// What to call once frames were handed to the handler, so that its answers go out
    /// (the backend's `PeerManager::process_events`). Set once.
    pub fn set_wake(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.wake.set(Box::new(wake));
    }

    /// Where peers reach the node through the linked fronts (their balancers'
    /// addresses), sorted, each once: what the node announces.
    pub fn public_addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = self
            .lock()
            .links
            .values()
            .filter_map(|link| link.public_address.clone())
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// Where the fronts' gossip goes and their funding questions are answered. Set once;
    /// until then a front's questions are answered "unknown" and its gossip dropped.
    pub fn set_gossip(&self, gossip: Arc<dyn GossipBackend>) {
        let _ = self.gossip.set(gossip);
    }

    /// Where the onion messages of peers on fronts go, and whence theirs come. Set once;
    /// until then their onion messages are ignored, as an unknown odd message is.
    pub fn set_onion_handler(&self, onion: OnionHandler) {
        let _ = self.onion.set(onion);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `peer` is connected through a front.
    pub fn has_peer(&self, peer: &PublicKey) -> bool {
        self.lock().sessions.contains_key(peer)
    }

    /// The peers connected through fronts.
    pub fn peers(&self) -> Vec<FrontPeer> {
        let state = self.lock();
        state
            .sessions
            .iter()
            .map(|(peer, session)| FrontPeer {
                node_id: *peer,
                front: state
                    .links
                    .get(&session.link)
                    .map(|l| l.name.clone())
                    .unwrap_or_default(),
                inbound: session.inbound,
            })
            .collect()
    }

    /// Ends `peer`'s session on its front, if it has one.
    pub fn disconnect(&self, peer: &PublicKey) -> bool {
        let mut state = self.lock();
        let on_front = state.sessions.contains_key(peer);
        self.end_session(&mut state, *peer, "asked to");
        on_front
    }

    /// Asks a front to dial `peer` at `address` (the fronts in turn, one request each
    /// call); `false` if no front is linked. The session comes back as any other.
    pub fn connect_through_front(&self, peer: PublicKey, address: &str) -> bool {
        let mut state = self.lock();
        state.next_dial = state.next_dial.wrapping_add(1);
        let mut fronts: Vec<LinkId> = state.links.keys().copied().collect();
        if fronts.is_empty() {
            return false;
        }
        fronts.sort_unstable();
        let link = fronts[state.next_dial % fronts.len()];
        state.send(
            link,
            Frame::ConnectPeer {
                peer,
                address: address.to_owned(),
            },
        );
        true
    }

    /// How many fronts are linked.
    pub fn fronts(&self) -> usize {
        self.lock().links.len()
    }

    /// Accepts fronts on `listener` over mutual TLS until [`close`](Self::close)d (a
    /// failed accept is retried after a pause); each link runs on a task of its own.
    /// Fails only if the TLS configuration cannot be built.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        identity: &LinkIdentity,
    ) -> Result<(), LinkError> {
        let acceptor = TlsAcceptor::from(identity.server_config()?);
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off rather than spin, or stop the node.
                    tracing::warn!(error = %err, "accepting a front's connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            if self.is_closed() {
                return Ok(());
            }
            let _ = tcp.set_nodelay(true);
            let (server, acceptor) = (Arc::clone(&self), acceptor.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => server.run_link(tls).await,
                    Err(err) => {
                        tracing::warn!(%remote, error = %err, "a front's TLS handshake failed")
                    }
                }
            });
        }
    }

    async fn run_link<S>(self: Arc<Self>, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut link = Framed::new(stream, LinkCodec::default());
        let front = match link.next().await {
            Some(Ok(Frame::Hello(hello))) => match hello.check(Role::Front) {
                Ok(()) => hello.name,
                Err(err) => {
                    tracing::warn!(front = %hello.name, error = %err, "a front refused");
                    return;
                }
            },
            _ => return,
        };
        let greeting = [
            Frame::Hello(Hello::new(Role::Backend, self.name.clone())),
            Frame::Active(self.active.clone()),
        ];
        for frame in greeting {
            if link.send(frame).await.is_err() {
                return;
            }
        }
        let (sink, mut stream) = link.split();
        let (frames, outgoing) = mpsc::unbounded_channel::<Frame>();
        let writer = tokio::spawn(crate::write_queued_frames(sink, outgoing));
        let link_id = {
            let mut state = self.lock();
            if self.is_closed() {
                return;
            }
            state.next_link += 1;
            let id = state.next_link;
            state.links.insert(
                id,
                FrontLink {
                    name: front.clone(),
                    frames,
                    public_address: None,
                },
            );
            id
        };
        tracing::info!(%front, "front linked");
        let mut closed = self.closed.subscribe();
        loop {
            let frame = tokio::select! {
                frame = stream.next() => frame,
                _ = closed.wait_for(|closed| *closed) => break,
            };
            let Some(frame) = frame else { break };
            // Only what reaches the channel handler can make it want to send something.
            let for_the_handler = frame.as_ref().is_ok_and(|frame| {
                !matches!(
                    frame,
                    Frame::Gossip(_)
                        | Frame::FundingOutputRequest { .. }
                        | Frame::PublicAddress { .. }
                        | Frame::LinkPing { .. }
                        | Frame::LinkPong { .. }
                )
            });
            let handled = frame.and_then(|frame| self.on_frame(link_id, &front, frame));
            if for_the_handler
                && !self.is_closed()
                && let Some(wake) = self.wake.get()
            {
                wake();
            }
            if let Err(err) = handled {
                tracing::warn!(%front, error = %err, "closing a front's link");
                break;
            }
        }
        self.drop_link(link_id);
        writer.abort();
        tracing::info!(%front, "front unlinked");
    }

    /// One frame from a front.
    fn on_frame(&self, link: LinkId, front: &str, frame: Frame) -> Result<(), LinkError> {
        if self.is_closed() {
            return Err(LinkError::Protocol("the node has stopped".into()));
        }
        match frame {
            Frame::PeerConnected {
                session,
                peer,
                init,
                inbound,
            } => self.connect(link, session, peer, &init, inbound),
            Frame::PeerMessage {
                session,
                peer,
                message,
            } => self.message(link, session, peer, message),
            Frame::PeerDisconnected { session, peer } => {
                let mut state = self.lock();
                if is_current(&state, link, session, &peer) {
                    state.sessions.remove(&peer);
                    self.peer_gone(peer);
                }
            }
            Frame::EcdhRequest { request, point } => {
                let shared_secret = (self.ecdh)(&point);
                self.lock().send(
                    link,
                    Frame::EcdhResponse {
                        request,
                        shared_secret,
                    },
                );
            }
            Frame::LinkPing { nonce } => self.lock().send(link, Frame::LinkPong { nonce }),
            Frame::LinkPong { .. } => {}
            Frame::FundingOutputRequest {
                request,
                short_channel_id,
            } => {
                let Some(frames) = self.lock().links.get(&link).map(|l| l.frames.clone()) else {
                    return Ok(());
                };
                let answer: FundingAnswer = Box::new(move |output| {
                    let _ = frames.send(Frame::FundingOutputResponse { request, output });
                });
                match self.gossip.get() {
                    Some(gossip) => gossip.funding_output(short_channel_id, answer),
                    None => answer(Err(FundingLookupFailure::UnknownTx)),
                }
            }
            Frame::Gossip(gossip) => {
                if let Some(backend) = self.gossip.get() {
                    backend.verified(front, gossip);
                }
            }
            Frame::PublicAddress { address } => {
                if let Some(link) = self.lock().links.get_mut(&link) {
                    link.public_address = Some(address);
                }
            }
            other => {
                return Err(LinkError::Protocol(format!(
                    "a front sent a {} frame",
                    other.kind()
                )));
            }
        }
        Ok(())
    }

    fn connect(
        &self,
        link: LinkId,
        session: SessionId,
        peer: PublicKey,
        init: &[u8],
        inbound: bool,
    ) {
        let mut state = self.lock();
        let refuse = |state: &State, why: &str| {
            tracing::info!(%peer, session = session.0, why, "refusing a session");
            state.send(link, Frame::PeerDisconnected { session, peer });
        };
        if state.direct.contains(&peer) {
            return refuse(&state, "the peer is connected to the backend directly");
        }
        let Ok(init) = Init::read_from_fixed_length_buffer(&mut &init[..]) else {
            return refuse(&state, "its init does not decode");
        };
        if let Some(old) = state.sessions.remove(&peer) {
            // The newer connection wins: the old one is ended on its front.
            self.peer_gone(peer);
            state.send(
                old.link,
                Frame::PeerDisconnected {
                    session: old.id,
                    peer,
                },
            );
        }
        if self.handler.peer_connected(peer, &init, inbound).is_err() {
            return refuse(&state, "the channel handler refused it");
        }
        if let Some(onion) = self.onion.get()
            && onion.peer_connected(peer, &init, inbound).is_err()
        {
            self.handler.peer_disconnected(peer);
            return refuse(&state, "the onion message handler refused it");
        }
        state.sessions.insert(
            peer,
            Session {
                link,
                id: session,
                inbound,
                inbox: Inbox::default(),
            },
        );
        tracing::debug!(%peer, session = session.0, inbound, "peer session through a front");
    }

    fn message(&self, link: LinkId, session: SessionId, peer: PublicKey, message: WireMessage) {
        let mut state = self.lock();
        if !is_current(&state, link, session, &peer) {
            return; // A message of a session that has ended.
        }
        if message.message_type == types::ONION_MESSAGE {
            let Some(onion) = self.onion.get() else {
                return; // No onion handler: an odd type this node does not read.
            };
            match message.read::<OnionMessage>() {
                Ok(decoded) => onion.handle_onion_message(peer, &decoded),
                Err(err) => self.end_session(&mut state, peer, &err.to_string()),
            }
            return;
        }
        let decoded = match ChannelMessage::decode(&message) {
            Ok(Some(decoded)) => decoded,
            // BOLT 1: an unknown odd type is ignored, an unknown even one ends the
            // connection.
            Ok(None) if message.message_type % 2 == 1 => return,
            Ok(None) => {
                return self.end_session(&mut state, peer, "a message of an unknown even type");
            }
            Err(err) => return self.end_session(&mut state, peer, &err.to_string()),
        };
        let session_state = state.sessions.get_mut(&peer).expect("checked current");
        if let Err(err) = session_state.inbox.deliver(&*self.handler, peer, decoded) {
            self.end_session(&mut state, peer, &err.to_string());
        }
    }

    fn end_session(&self, state: &mut State, peer: PublicKey, why: &str) {
        if let Some(session) = state.sessions.remove(&peer) {
            tracing::info!(%peer, session = session.id.0, why, "ending a peer's session");
            self.peer_gone(peer);
            state.send(
                session.link,
                Frame::PeerEvent {
                    session: session.id,
                    peer,
                    event: PeerEvent::Disconnect { last: None },
                },
            );
        }
    }

    /// A front's link is gone: its peers are disconnected.
    fn drop_link(&self, link: LinkId) {
        let mut state = self.lock();
        state.links.remove(&link);
        let gone: Vec<PublicKey> = state
            .sessions
            .iter()
            .filter(|(_, session)| session.link == link)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in gone {
            state.sessions.remove(&peer);
            self.peer_gone(peer);
        }
    }

    /// Sends the events of peers on fronts down their links, and broadcasts to every
    /// front; returns the events the backend's own `PeerManager` is to handle (those of
    /// its direct peers, the broadcasts, and the ones it only logs). The onion messages
    /// waiting for peers on fronts leave too.
    pub fn route_events(&self, events: Vec<MessageSendEvent>) -> Vec<MessageSendEvent> {
        let state = self.lock();
        self.send_onion_messages(&state);
        if events.is_empty() || state.links.is_empty() {
            return events;
        }
        let mut kept = Vec::with_capacity(events.len());
        for event in events {
            let original = event.clone();
            match route(event) {
                Route::Peer { node_id, event } => match state.sessions.get(&node_id) {
                    Some(session) => state.send(
                        session.link,
                        Frame::PeerEvent {
                            session: session.id,
                            peer: node_id,
                            event,
                        },
                    ),
                    None => kept.push(original),
                },
                Route::Broadcast(broadcast) => {
                    for link in state.links.keys() {
                        state.send(*link, Frame::Broadcast(broadcast.clone()));
                    }
                    kept.push(original);
                }
                Route::Nowhere => kept.push(original),
            }
        }
        kept
    }
}

impl<H> LinkServer<H>
where
    H: Deref + Send + Sync + 'static,
    H::Target: ChannelMessageHandler,
{
    /// Pulls what the onion message handler has for each peer on a front, as LDK's
    /// `PeerManager` does for its own peers, and sends it down the peer's link.
    fn send_onion_messages(&self, state: &State) {
        let Some(onion) = self.onion.get() else {
            return;
        };
        for (peer, session) in &state.sessions {
            for _ in 0..ONION_MESSAGES_PER_ROUND {
                let Some(message) = onion.next_onion_message_for_peer(*peer) else {
                    break;
                };
                state.send(
                    session.link,
                    Frame::PeerMessage {
                        session: session.id,
                        peer: *peer,
                        message: WireMessage::of(&message),
                    },
                );
            }
        }
    }
}

fn is_current(state: &State, link: LinkId, session: SessionId, peer: &PublicKey) -> bool {
    state
        .sessions
        .get(peer)
        .is_some_and(|s| s.link == link && s.id == session)
}

/// The channel handler of the backend's own `PeerManager` when fronts may hold peers
/// too (see the module doc).
pub struct SplitHandler<H: Deref>
where
    H::Target: ChannelMessageHandler,
{
    server: Arc<LinkServer<H>>,
}

impl<H> SplitHandler<H>
where
    H: Deref + Send + Sync + 'static,
    H::Target: ChannelMessageHandler,
{
    /// The handler beside `server`.
    pub fn new(server: Arc<LinkServer<H>>) -> Self {
        Self { server }
    }

    pub(crate) fn handler(&self) -> &H::Target {
        &self.server.handler
    }
}

impl<H> BaseMessageHandler for SplitHandler<H>
where
    H: Deref + Send + Sync + 'static,
    H::Target: ChannelMessageHandler,
{
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        self.server
            .route_events(self.handler().get_and_clear_pending_msg_events())
    }

    fn peer_disconnected(&self, their_node_id: PublicKey) {
        self.server.lock().direct.remove(&their_node_id);
        self.handler().peer_disconnected(their_node_id)
    }

    fn provided_node_features(&self) -> NodeFeatures {
        self.handler().provided_node_features()
    }

    fn provided_init_features(&self, their_node_id: PublicKey) -> InitFeatures {
        self.handler().provided_init_features(their_node_id)
    }

    fn peer_connected(
        &self,
        their_node_id: PublicKey,
        msg: &Init,
        inbound: bool,
    ) -> Result<(), ()> {
        let mut state = self.server.lock();
        if state.sessions.contains_key(&their_node_id) {
            return Err(()); // Connected through a front already.
        }
        self.handler().peer_connected(their_node_id, msg, inbound)?;
        state.direct.insert(their_node_id);
        Ok(())
    }
}
