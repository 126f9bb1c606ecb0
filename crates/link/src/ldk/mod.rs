//! Lightning messages, and LDK's message events, on the link.
//!
//! LDK keeps its wire `Message` enum and `read` function to itself, and its
//! `MessageSendEvent` is not serializable (see `docs/fronts-ldk.md`). So a message
//! crosses the link as a [`WireMessage`]: its BOLT type (from LDK's public
//! `Type::type_id`) and its body as LDK writes it; each end decodes with a table of its
//! own, [`inbound::ChannelMessage`] for what a peer sends the channel handler, and
//! [`outbound`] for what the backend's handler sends peers.

pub mod gossip;
pub mod inbound;
pub mod outbound;

use lightning::ln::wire::Type;
use lightning::util::ser::LengthReadable;
use serde::{Deserialize, Serialize};

use crate::LinkError;

/// One Lightning message: its BOLT type and its body as on the wire (without the type).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    /// The BOLT message type.
    pub message_type: u16,
    /// The body, as LDK writes it.
    pub body: Vec<u8>,
}

impl WireMessage {
    /// The message `msg`, typed by LDK itself.
    pub fn of<M: Type>(msg: &M) -> Self {
        Self {
            message_type: Type::type_id(msg),
            body: msg.encode(),
        }
    }

    /// Reads the body as an `M` (the caller has matched the type).
    pub fn read<M: LengthReadable>(&self) -> Result<M, LinkError> {
        M::read_from_fixed_length_buffer(&mut &self.body[..]).map_err(|err| {
            LinkError::Malformed(format!(
                "a Lightning message of type {} that does not decode: {err:?}",
                self.message_type
            ))
        })
    }
}

/// BOLT message types, as LDK 0.3 numbers them (`ln/wire.rs`); the tests pin each one
/// against LDK's `Type::type_id` on a value.
pub mod types {
    #![allow(missing_docs)]
    pub const WARNING: u16 = 1;
    pub const STFU: u16 = 2;
    pub const PEER_STORAGE: u16 = 7;
    pub const PEER_STORAGE_RETRIEVAL: u16 = 9;
    pub const INIT: u16 = 16;
    pub const ERROR: u16 = 17;
    pub const OPEN_CHANNEL: u16 = 32;
    pub const ACCEPT_CHANNEL: u16 = 33;
    pub const FUNDING_CREATED: u16 = 34;
    pub const FUNDING_SIGNED: u16 = 35;
    pub const CHANNEL_READY: u16 = 36;
    pub const SHUTDOWN: u16 = 38;
    pub const CLOSING_SIGNED: u16 = 39;
    pub const OPEN_CHANNEL_V2: u16 = 64;
    pub const ACCEPT_CHANNEL_V2: u16 = 65;
    pub const TX_ADD_INPUT: u16 = 66;
    pub const TX_ADD_OUTPUT: u16 = 67;
    pub const TX_REMOVE_INPUT: u16 = 68;
    pub const TX_REMOVE_OUTPUT: u16 = 69;
    pub const TX_COMPLETE: u16 = 70;
    pub const TX_SIGNATURES: u16 = 71;
    pub const TX_INIT_RBF: u16 = 72;
    pub const TX_ACK_RBF: u16 = 73;
    pub const TX_ABORT: u16 = 74;
    pub const SPLICE_LOCKED: u16 = 77;
    pub const SPLICE_INIT: u16 = 80;
    pub const SPLICE_ACK: u16 = 81;
    pub const START_BATCH: u16 = 127;
    pub const UPDATE_ADD_HTLC: u16 = 128;
    pub const UPDATE_FULFILL_HTLC: u16 = 130;
    pub const UPDATE_FAIL_HTLC: u16 = 131;
    pub const COMMITMENT_SIGNED: u16 = 132;
    pub const REVOKE_AND_ACK: u16 = 133;
    pub const UPDATE_FEE: u16 = 134;
    pub const UPDATE_FAIL_MALFORMED_HTLC: u16 = 135;
    pub const CHANNEL_REESTABLISH: u16 = 136;
    pub const CHANNEL_ANNOUNCEMENT: u16 = 256;
    pub const NODE_ANNOUNCEMENT: u16 = 257;
    pub const CHANNEL_UPDATE: u16 = 258;
    pub const ANNOUNCEMENT_SIGNATURES: u16 = 259;
    pub const QUERY_SHORT_CHANNEL_IDS: u16 = 261;
    pub const QUERY_CHANNEL_RANGE: u16 = 263;
    pub const REPLY_CHANNEL_RANGE: u16 = 264;
    pub const GOSSIP_TIMESTAMP_FILTER: u16 = 265;
    pub const ONION_MESSAGE: u16 = 513;
}
