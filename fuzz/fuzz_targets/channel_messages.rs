//! What a front forwards for a peer, as the backend takes it: a BOLT type and a body,
//! decoded by the link's own table and handed to a channel handler through the session's
//! inbox (commitment batches assembled), or an onion message for the node's onion
//! messenger. Errors are fine; panics are not.

#![no_main]

use bitcoin::constants::ChainHash;
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use libfuzzer_sys::fuzz_target;
use lightning::ln::msgs::{BaseMessageHandler, Init, MessageSendEvent, OnionMessage};
use lightning::types::features::{InitFeatures, NodeFeatures};
use phalanx_link::ldk::{WireMessage, types};
use phalanx_link::ldk::inbound::{ChannelMessage, ForwardTarget, Forwarder, Inbox};

/// A channel handler that takes everything and does nothing.
struct Sink;

impl BaseMessageHandler for Sink {
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        Vec::new()
    }
    fn peer_disconnected(&self, _: PublicKey) {}
    fn provided_node_features(&self) -> NodeFeatures {
        NodeFeatures::empty()
    }
    fn provided_init_features(&self, _: PublicKey) -> InitFeatures {
        InitFeatures::empty()
    }
    fn peer_connected(&self, _: PublicKey, _: &Init, _: bool) -> Result<(), ()> {
        Ok(())
    }
}

impl ForwardTarget for Sink {
    fn forward(&self, _: PublicKey, message: ChannelMessage) {
        // What reaches a handler re-encodes.
        let _ = message.wire();
    }
    fn chain_hashes(&self) -> Option<Vec<ChainHash>> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let peer = PublicKey::from_secret_key(
        &Secp256k1::signing_only(),
        &SecretKey::from_slice(&[1; 32]).expect("a key"),
    );
    let handler = Forwarder(Sink);
    let mut inbox = Inbox::default();
    // Several messages: [type: 2 bytes][length: 2 bytes][body], again and again.
    let mut rest = data;
    while rest.len() >= 4 {
        let message_type = u16::from_be_bytes([rest[0], rest[1]]);
        let length = usize::from(u16::from_be_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let body = rest[4..4 + length].to_vec();
        rest = &rest[4 + length..];
        let message = WireMessage { message_type, body };
        if message_type == types::ONION_MESSAGE {
            // What decodes re-encodes (the backend hands it on, the front queues it).
            if let Ok(onion) = message.read::<OnionMessage>() {
                let _ = WireMessage::of(&onion);
            }
            continue;
        }
        if let Ok(Some(decoded)) = ChannelMessage::decode(&message) {
            if inbox.deliver(&handler, peer, decoded).is_err() {
                inbox = Inbox::default();
            }
        }
    }
});
