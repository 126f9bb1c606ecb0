//! The link between Phalanx's fronts and its backends.
//!
//! A front holds the peers' connections (BOLT 8 transport, `init`, pings, gossip) and no
//! node key; the active backend runs the channels. Between them runs this link, over
//! mutual TLS: a stream of [`Frame`]s, each one length-prefixed (4 bytes, big-endian)
//! and encoded with `postcard`. Both ends open with a [`Hello`] naming the link version
//! and their role; a peer that speaks another version is refused before any other frame.
//!
//! The frames carry, per peer session: its connection and disconnection, every channel
//! and onion message in both directions (as its BOLT type and body, so that this crate
//! does not decode Lightning messages: the ends do, with LDK), and the handshake's ECDH,
//! which the front asks of the backend because it holds no key.
//!
//! Everything a decoder here reads may come from a compromised or buggy process: every
//! length is bounded ([`MAX_FRAME_BYTES`]) before anything is allocated, a public key is
//! checked to be a point, and any malformed frame is an error, never a panic.

#![warn(missing_docs)]

pub mod backend;
mod codec;
mod error;
mod frame;
pub mod ldk;
pub mod pki;
pub mod runtime;
pub mod tls;

pub use crate::codec::{LinkCodec, MAX_FRAME_BYTES, write_queued_frames};
pub use crate::error::LinkError;
pub use crate::frame::{ActiveBackend, Frame, Hello, LINK_VERSION, Role, SessionId};
