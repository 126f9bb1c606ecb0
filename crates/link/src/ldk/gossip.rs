//! Gossip on the link: what a front checked at the edge, for the backend's router.
//!
//! A front verifies a peer's gossip itself (signatures in its own `NetworkGraph`, funding
//! outputs through the backend's chain source, asked with
//! [`Frame::FundingOutputRequest`](crate::Frame::FundingOutputRequest)) and hands the
//! backend only what its graph took as new: the *unsigned* contents, which the backend
//! applies through LDK's unsigned update paths without checking a signature again.

use bitcoin::{Amount, ScriptBuf, TxOut};
use lightning::ln::msgs::{
    UnsignedChannelAnnouncement, UnsignedChannelUpdate, UnsignedNodeAnnouncement,
};
use lightning::routing::gossip::NetworkGraph;
use lightning::routing::utxo::{UtxoLookup, UtxoLookupError, UtxoResult};
use lightning::util::logger::Logger;
use lightning::util::ser::{LengthReadable, Writeable};
use lightning::util::wakers::Notifier;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::LinkError;

/// A funding output, as a front asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundingOutput {
    /// Its value, in satoshis.
    pub value_sat: u64,
    /// Its script.
    pub script_pubkey: Vec<u8>,
}

impl FundingOutput {
    /// The output in link form.
    pub fn of(output: &TxOut) -> Self {
        Self {
            value_sat: output.value.to_sat(),
            script_pubkey: output.script_pubkey.to_bytes(),
        }
    }

    /// The output, as LDK's lookup returns it.
    pub fn into_tx_out(self) -> TxOut {
        TxOut {
            value: Amount::from_sat(self.value_sat),
            script_pubkey: ScriptBuf::from_bytes(self.script_pubkey),
        }
    }
}

/// Why a funding output was not found (LDK's [`UtxoLookupError`], in link form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FundingLookupFailure {
    /// The chain asked about is not the node's.
    UnknownChain,
    /// No such output, spent, or not confirmed deeply enough; also the answer when the
    /// backend cannot reach its chain source.
    UnknownTx,
}

impl From<FundingLookupFailure> for UtxoLookupError {
    fn from(failure: FundingLookupFailure) -> Self {
        match failure {
            FundingLookupFailure::UnknownChain => UtxoLookupError::UnknownChain,
            FundingLookupFailure::UnknownTx => UtxoLookupError::UnknownTx,
        }
    }
}

/// One piece of gossip a front verified and its graph took as new (front to backend).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifiedGossip {
    /// A `channel_announcement`'s unsigned contents, as LDK writes them, and the funding
    /// output's value the front found on chain.
    ChannelAnnouncement {
        /// `UnsignedChannelAnnouncement`, written.
        contents: Vec<u8>,
        /// The channel's capacity.
        capacity_sat: Option<u64>,
    },
    /// A `channel_update`'s unsigned contents, as LDK writes them.
    ChannelUpdate {
        /// `UnsignedChannelUpdate`, written.
        contents: Vec<u8>,
    },
    /// A `node_announcement`'s unsigned contents, as LDK writes them.
    NodeAnnouncement {
        /// `UnsignedNodeAnnouncement`, written.
        contents: Vec<u8>,
    },
}

/// What [`VerifiedGossip::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The graph took it.
    New,
    /// The graph had it, or something newer, or refused it (another front sent it first,
    /// or it no longer fits the graph): nothing changed.
    Ignored,
}

impl VerifiedGossip {
    /// A channel announcement the front's graph took, with the capacity it found.
    pub fn channel_announcement(
        contents: &UnsignedChannelAnnouncement,
        capacity_sat: Option<u64>,
    ) -> Self {
        Self::ChannelAnnouncement {
            contents: contents.encode(),
            capacity_sat,
        }
    }

    /// A channel update the front's graph took.
    pub fn channel_update(contents: &UnsignedChannelUpdate) -> Self {
        Self::ChannelUpdate {
            contents: contents.encode(),
        }
    }

    /// A node announcement the front's graph took.
    pub fn node_announcement(contents: &UnsignedNodeAnnouncement) -> Self {
        Self::NodeAnnouncement {
            contents: contents.encode(),
        }
    }

    /// The gossip's name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifiedGossip::ChannelAnnouncement { .. } => "channel_announcement",
            VerifiedGossip::ChannelUpdate { .. } => "channel_update",
            VerifiedGossip::NodeAnnouncement { .. } => "node_announcement",
        }
    }

    /// Applies the gossip to the backend's `graph` through LDK's unsigned paths: no
    /// signature is checked again (the front did). A channel announcement gets the
    /// capacity the front found, with the funding script rebuilt from its bitcoin keys
    /// (LDK compares the two), so the backend's router knows the channel's size without
    /// asking its chain source again. Fails only if the bytes do not decode.
    pub fn apply<L: Logger>(&self, graph: &NetworkGraph<L>) -> Result<Applied, LinkError> {
        let outcome = match self {
            VerifiedGossip::ChannelAnnouncement {
                contents,
                capacity_sat,
            } => {
                let msg: UnsignedChannelAnnouncement = decode(contents, self.kind())?;
                match capacity_sat.map(|sat| funding_output_of(&msg, sat)) {
                    Some(output) => graph.update_channel_from_unsigned_announcement(
                        &msg,
                        &Some(KnownOutput(output)),
                    ),
                    None => {
                        graph.update_channel_from_unsigned_announcement::<&KnownOutput>(&msg, &None)
                    }
                }
            }
            VerifiedGossip::ChannelUpdate { contents } => {
                let msg: UnsignedChannelUpdate = decode(contents, self.kind())?;
                graph.update_channel_unsigned(&msg).map(|_| ())
            }
            VerifiedGossip::NodeAnnouncement { contents } => {
                let msg: UnsignedNodeAnnouncement = decode(contents, self.kind())?;
                graph.update_node_from_unsigned_announcement(&msg)
            }
        };
        Ok(match outcome {
            Ok(()) => Applied::New,
            Err(_) => Applied::Ignored,
        })
    }
}

fn decode<M: LengthReadable>(bytes: &[u8], kind: &str) -> Result<M, LinkError> {
    M::read_from_fixed_length_buffer(&mut &bytes[..]).map_err(|err| {
        LinkError::Malformed(format!("a verified {kind} that does not decode: {err:?}"))
    })
}

/// The P2WSH 2-of-2 output the announcement's bitcoin keys fund, worth `capacity_sat`.
///
/// Built from the keys' 33 bytes as they are, as LDK builds the script it compares this
/// output's with (its `make_funding_redeemscript_from_slices` is not public): parsing
/// each key first, as `make_funding_redeemscript` needs, is a square root per key, a
/// twentieth of the backend's CPU during a mainnet-size ingest. A key that is not one
/// gives a script LDK's own does not match, and the announcement is ignored.
pub fn funding_output_of(msg: &UnsignedChannelAnnouncement, capacity_sat: u64) -> TxOut {
    let (key_1, key_2) = (msg.bitcoin_key_1.as_array(), msg.bitcoin_key_2.as_array());
    let (first, second) = if key_1 < key_2 {
        (key_1, key_2)
    } else {
        (key_2, key_1)
    };
    let script = bitcoin::script::Builder::new()
        .push_opcode(bitcoin::opcodes::all::OP_PUSHNUM_2)
        .push_slice(first)
        .push_slice(second)
        .push_opcode(bitcoin::opcodes::all::OP_PUSHNUM_2)
        .push_opcode(bitcoin::opcodes::all::OP_CHECKMULTISIG)
        .into_script();
    TxOut {
        value: Amount::from_sat(capacity_sat),
        script_pubkey: script.to_p2wsh(),
    }
}

/// A lookup that knows one output: the one a front already found.
struct KnownOutput(TxOut);

impl UtxoLookup for KnownOutput {
    fn get_utxo(
        &self,
        _chain_hash: &bitcoin::constants::ChainHash,
        _short_channel_id: u64,
        _notifier: Arc<Notifier>,
    ) -> UtxoResult {
        UtxoResult::Sync(Ok(self.0.clone()))
    }
}

/// The parts of a short channel id (BOLT 7): block height, transaction index in the
/// block, output index in the transaction.
pub fn short_channel_id_parts(short_channel_id: u64) -> (u32, u32, u16) {
    (
        (short_channel_id >> 40) as u32,
        ((short_channel_id >> 16) & 0xff_ffff) as u32,
        (short_channel_id & 0xffff) as u16,
    )
}

/// The short channel id of output `vout` of transaction `tx_index` in block `height`.
pub fn short_channel_id(height: u32, tx_index: u32, vout: u16) -> u64 {
    (u64::from(height) << 40) | (u64::from(tx_index & 0xff_ffff) << 16) | u64::from(vout)
}
