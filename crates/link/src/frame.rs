//! The frames.

use bitcoin::secp256k1::PublicKey;
use serde::{Deserialize, Serialize};

use crate::LinkError;
use crate::ldk::WireMessage;
use crate::ldk::gossip::{FundingLookupFailure, FundingOutput, VerifiedGossip};
use crate::ldk::outbound::{Broadcast, PeerEvent};

/// The link's version. Frames are encoded by `postcard`, which numbers the variants of
/// [`Frame`] by their order: a variant is only ever added at the end (the tests pin every
/// variant's number), so that one version's decoder reads the frames of the versions
/// before it. An end cannot read a frame added after its version, nor knows a new use
/// of an old one, so each such change takes a new version, and ends of different
/// versions refuse each other at the [`Hello`].
///
/// - 1: peers' sessions and channel messages, ECDH, link pings, the active backend,
///   broadcasts and dials.
/// - 2: gossip at the edge (funding-output checks, verified gossip, the public
///   address), and onion messages both ways ([`Frame::PeerMessage`] from the backend).
pub const LINK_VERSION: u16 = 2;

/// Which end of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A front: peers' connections, no key.
    Front,
    /// A backend instance of the node (active or standby).
    Backend,
}

/// The first frame each end sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`LINK_VERSION`] of the sender.
    pub version: u16,
    /// What the sender is.
    pub role: Role,
    /// The sender's name (a front's or an instance's id), for logs and metrics.
    pub name: String,
}

impl Hello {
    /// This end's hello.
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        Self {
            version: LINK_VERSION,
            role,
            name: name.into(),
        }
    }

    /// Checks the other end's hello: same version, the role expected.
    pub fn check(&self, expected: Role) -> Result<(), LinkError> {
        if self.version != LINK_VERSION {
            return Err(LinkError::Version {
                ours: LINK_VERSION,
                theirs: self.version,
            });
        }
        if self.role != expected {
            return Err(LinkError::Protocol(format!(
                "{} says it is a {:?}, expected a {expected:?}",
                self.name, self.role
            )));
        }
        Ok(())
    }
}

/// One connection of one peer to one front. A front numbers its connections from 1 and
/// never reuses a number while it runs; the backend tells fronts apart by their link, so
/// a session is (link, this number). A peer that reconnects gets a new session, and
/// everything tagged with an older one is about a connection that is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// A frame of the link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The first frame, each way.
    Hello(Hello),
    /// A peer finished the handshake and sent `init` (front to backend). The backend
    /// answers with `PeerDisconnected` for the session if it refuses the peer.
    PeerConnected {
        /// The new session.
        session: SessionId,
        /// The peer's node id.
        peer: PublicKey,
        /// The peer's `init` message, as it sent it (BOLT type and body).
        init: Vec<u8>,
        /// Whether the peer connected to the front (rather than the front to it).
        inbound: bool,
    },
    /// A session ended: the connection closed (front to backend), or the backend wants it
    /// closed (backend to front).
    PeerDisconnected {
        /// The session.
        session: SessionId,
        /// Its peer.
        peer: PublicKey,
    },
    /// A Lightning message of a session, in the order the session sent or must send it:
    /// a channel or onion message from the peer (front to backend), or an onion message
    /// for it (backend to front; the backend's channel messages come as
    /// [`Frame::PeerEvent`]s).
    PeerMessage {
        /// The session.
        session: SessionId,
        /// Its peer.
        peer: PublicKey,
        /// The message.
        message: WireMessage,
    },
    /// The front asks for the noise handshake's ECDH of the node key with `point`.
    EcdhRequest {
        /// Matches the answer to the question.
        request: u64,
        /// The other side's ephemeral key.
        point: PublicKey,
    },
    /// The backend's answer: the shared secret, or none if it refuses.
    EcdhResponse {
        /// The request answered.
        request: u64,
        /// SHA-256 of the shared point, as `NodeSigner::ecdh` returns it.
        shared_secret: Option<[u8; 32]>,
    },
    /// Asks for a [`Frame::LinkPong`] with the same nonce (liveness, round-trip time).
    LinkPing {
        /// Echoed.
        nonce: u64,
    },
    /// Answers a [`Frame::LinkPing`].
    LinkPong {
        /// The ping's.
        nonce: u64,
    },
    /// The backend is the node's active instance, and this is what a front tells peers
    /// of it (backend to front; sent when it becomes active, or at once if it is).
    Active(ActiveBackend),
    /// What the backend's channel handler wants done with a session's peer (backend to
    /// front), in order.
    PeerEvent {
        /// The session.
        session: SessionId,
        /// Its peer.
        peer: PublicKey,
        /// The event.
        event: PeerEvent,
    },
    /// The node's own gossip, for every peer of the front (backend to front).
    Broadcast(Broadcast),
    /// The backend wants a connection to `peer` (backend to front): the front dials it,
    /// unless it is connected already, and the session comes as any other.
    ConnectPeer {
        /// The peer.
        peer: PublicKey,
        /// Where it listens (`host:port`).
        address: String,
    },
    /// The front checks a channel announcement: which output does `short_channel_id`
    /// name on the node's chain, if it exists and is unspent (front to backend)?
    FundingOutputRequest {
        /// Matches the answer to the question.
        request: u64,
        /// The channel's short id (BOLT 7).
        short_channel_id: u64,
    },
    /// The backend's answer to a [`Frame::FundingOutputRequest`].
    FundingOutputResponse {
        /// The request answered.
        request: u64,
        /// The output, or why there is none.
        output: Result<FundingOutput, FundingLookupFailure>,
    },
    /// Gossip a front verified and took as new, for the backend's router (front to
    /// backend).
    Gossip(VerifiedGossip),
    /// Where peers reach the node through this front (its load balancer's address), for
    /// the node's announcement (front to backend, once attached).
    PublicAddress {
        /// `host:port`, as LDK's `SocketAddress` reads it.
        address: String,
    },
}

/// What a front needs of the active backend to answer peers itself during their
/// handshake: LDK asks for features and chains synchronously.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveBackend {
    /// The node's id.
    pub node_id: PublicKey,
    /// The chain the node runs on (genesis block hash, as in `init`'s `networks`).
    pub chain_hash: [u8; 32],
    /// The channel handler's `init` features (little-endian bytes, as LDK keeps them).
    pub init_features: Vec<u8>,
    /// The channel handler's node features (the same form).
    pub node_features: Vec<u8>,
}

impl Frame {
    /// The frame's bytes (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("every frame encodes")
    }

    /// Decodes one frame's bytes; trailing bytes are an error, and so are bytes that
    /// are not the frame's own encoding (postcard reads an overlong varint as the number
    /// it spells: found by the fuzz target), so that each frame has one form on the wire.
    pub fn decode(bytes: &[u8]) -> Result<Self, LinkError> {
        let (frame, rest) = postcard::take_from_bytes::<Frame>(bytes)
            .map_err(|err| LinkError::Malformed(err.to_string()))?;
        if !rest.is_empty() {
            return Err(LinkError::Malformed(format!(
                "{} bytes after the frame",
                rest.len()
            )));
        }
        // The canonical encoding is the shortest (an overlong varint only adds bytes),
        // so comparing sizes is enough, and it allocates nothing.
        let canonical_size =
            postcard::serialize_with_flavor(&frame, postcard::ser_flavors::Size::default())
                .expect("every frame encodes");
        if canonical_size != bytes.len() {
            return Err(LinkError::Malformed(format!(
                "a {} frame not in its canonical encoding",
                frame.kind()
            )));
        }
        Ok(frame)
    }

    /// The frame's name, for logs and metrics (never its contents).
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::PeerConnected { .. } => "peer_connected",
            Frame::PeerDisconnected { .. } => "peer_disconnected",
            Frame::PeerMessage { .. } => "peer_message",
            Frame::EcdhRequest { .. } => "ecdh_request",
            Frame::EcdhResponse { .. } => "ecdh_response",
            Frame::LinkPing { .. } => "link_ping",
            Frame::LinkPong { .. } => "link_pong",
            Frame::Active(_) => "active",
            Frame::PeerEvent { .. } => "peer_event",
            Frame::Broadcast(_) => "broadcast",
            Frame::ConnectPeer { .. } => "connect_peer",
            Frame::FundingOutputRequest { .. } => "funding_output_request",
            Frame::FundingOutputResponse { .. } => "funding_output_response",
            Frame::Gossip(_) => "gossip",
            Frame::PublicAddress { .. } => "public_address",
        }
    }
}
