//! Onion messages at the front: the front's `PeerManager` hands every onion message a
//! peer sends to [`OnionRelay`], which forwards it to the active backend on the peer's
//! session; the backend's onion messenger peels it (the front cannot: it holds no key),
//! and what it sends peers comes back down the link and waits in a per-peer queue until
//! the `PeerManager` pulls it, as it pulls from an onion messenger of its own.
//!
//! The onion message feature bit comes with the backend's features (the backend adds its
//! messenger's to what it tells fronts), so a front advertises it only for a node that
//! handles onion messages.

use std::sync::Arc;

use bitcoin::secp256k1::PublicKey;
use lightning::ln::msgs::{
    BaseMessageHandler, Init, MessageSendEvent, OnionMessage, OnionMessageHandler,
};
use lightning::types::features::{InitFeatures, NodeFeatures};

use crate::state::FrontState;

/// The front's onion message handler (see the module doc).
pub struct OnionRelay {
    state: Arc<FrontState>,
}

impl OnionRelay {
    /// The relay for `state`'s sessions.
    pub fn new(state: Arc<FrontState>) -> Self {
        Self { state }
    }
}

impl BaseMessageHandler for OnionRelay {
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        // Onion messages leave only through `next_onion_message_for_peer`.
        Vec::new()
    }

    fn peer_disconnected(&self, their_node_id: PublicKey) {
        self.state.drop_onion_messages_for(&their_node_id);
    }

    fn provided_node_features(&self) -> NodeFeatures {
        NodeFeatures::empty()
    }

    fn provided_init_features(&self, _their_node_id: PublicKey) -> InitFeatures {
        InitFeatures::empty()
    }

    fn peer_connected(&self, _: PublicKey, _: &Init, _: bool) -> Result<(), ()> {
        // The session (and the backend's own check of the peer's features) is the
        // channel handler's.
        Ok(())
    }
}

impl OnionMessageHandler for OnionRelay {
    fn handle_onion_message(&self, peer_node_id: PublicKey, msg: &OnionMessage) {
        self.state.onion_message_from_peer(peer_node_id, msg);
    }

    fn next_onion_message_for_peer(&self, peer_node_id: PublicKey) -> Option<OnionMessage> {
        self.state.next_onion_message_for(&peer_node_id)
    }

    fn timer_tick_occurred(&self) {}
}
