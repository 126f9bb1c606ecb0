//! What a peer sends the node's channel handler: decoded on the backend from the
//! [`WireMessage`]s a front forwards, and handed to LDK's `ChannelMessageHandler` in the
//! order they came, with commitment batches assembled as LDK's `PeerManager` does.

use bitcoin::constants::ChainHash;
use bitcoin::secp256k1::PublicKey;
use lightning::ln::msgs::{
    self, BaseMessageHandler, ChannelMessageHandler, Init, MessageSendEvent,
};
use lightning::ln::types::ChannelId;
use lightning::types::features::{InitFeatures, NodeFeatures};

use super::{WireMessage, types};
use crate::LinkError;

/// Declares [`ChannelMessage`] from one list: variant, message struct, BOLT type, the
/// handler's method, and whether that method takes the message by reference or by value.
macro_rules! channel_messages {
    ($($variant:ident($message:ty) = $code:path => $handle:ident($pass:ident)),* $(,)?) => {
        /// A message for the channel handler (every one `PeerManager` routes to it, but
        /// `closing_complete`/`closing_sig`, which LDK only builds with `cfg(simple_close)`).
        #[derive(Clone, Debug, PartialEq)]
        #[allow(missing_docs)]
        // `update_add_htlc` holds its 1,366-byte onion inline; a message lives only
        // between its decoding and its handler, so a box per message would cost more.
        #[allow(clippy::large_enum_variant)]
        pub enum ChannelMessage {
            $($variant($message),)*
            /// Opens a batch of `commitment_signed` (BOLT 2 `start_batch`).
            StartBatch(msgs::StartBatch),
        }

        impl ChannelMessage {
            /// Decodes `message`; `Ok(None)` for a type the channel handler does not take
            /// (the caller decides what an unknown type means).
            pub fn decode(message: &WireMessage) -> Result<Option<Self>, LinkError> {
                Ok(Some(match message.message_type {
                    $($code => ChannelMessage::$variant(message.read()?),)*
                    types::START_BATCH => ChannelMessage::StartBatch(message.read()?),
                    _ => return Ok(None),
                }))
            }

            /// The message as it crosses the link.
            pub fn wire(&self) -> WireMessage {
                match self {
                    $(ChannelMessage::$variant(msg) => WireMessage::of(msg),)*
                    ChannelMessage::StartBatch(msg) => WireMessage::of(msg),
                }
            }

            /// Hands the message to `handler`; a `start_batch` has no handler method and
            /// is refused here ([`Inbox`] takes it).
            fn hand_to<H: ChannelMessageHandler + ?Sized>(self, handler: &H, peer: PublicKey) {
                match self {
                    $(ChannelMessage::$variant(msg) => channel_messages!(@call handler, $handle, peer, msg, $pass),)*
                    ChannelMessage::StartBatch(_) => unreachable!("Inbox keeps start_batch"),
                }
            }
        }

        channel_messages!(@forward_impl $($variant($message) => $handle($pass)),*);
        channel_messages!(@delegate_impl $($message => $handle($pass)),*);
    };
    (@delegate_impl $($message:ty => $handle:ident($pass:ident)),*) => {
        impl<H> ChannelMessageHandler for crate::backend::SplitHandler<H>
        where
            H: std::ops::Deref + Send + Sync + 'static,
            H::Target: ChannelMessageHandler,
        {
            $(channel_messages!(@delegate $message, $handle, $pass);)*

            fn handle_commitment_signed_batch(
                &self,
                their_node_id: PublicKey,
                channel_id: ChannelId,
                batch: Vec<msgs::CommitmentSigned>,
            ) {
                self.handler().handle_commitment_signed_batch(their_node_id, channel_id, batch)
            }

            fn get_chain_hashes(&self) -> Option<Vec<ChainHash>> {
                self.handler().get_chain_hashes()
            }

            fn message_received(&self) {
                self.handler().message_received()
            }
        }
    };
    (@delegate $message:ty, $handle:ident, by_ref) => {
        fn $handle(&self, their_node_id: PublicKey, msg: &$message) {
            self.handler().$handle(their_node_id, msg)
        }
    };
    (@delegate $message:ty, $handle:ident, by_value) => {
        fn $handle(&self, their_node_id: PublicKey, msg: $message) {
            self.handler().$handle(their_node_id, msg)
        }
    };
    (@forward_impl $($variant:ident($message:ty) => $handle:ident($pass:ident)),*) => {
        impl<T: ForwardTarget> ChannelMessageHandler for Forwarder<T> {
            $(channel_messages!(@method $variant, $message, $handle, $pass);)*

            fn handle_commitment_signed_batch(
                &self,
                their_node_id: PublicKey,
                channel_id: ChannelId,
                batch: Vec<msgs::CommitmentSigned>,
            ) {
                for message in batch_messages(channel_id, batch) {
                    self.0.forward(their_node_id, message);
                }
            }

            fn get_chain_hashes(&self) -> Option<Vec<ChainHash>> {
                self.0.chain_hashes()
            }

            fn message_received(&self) {
                self.0.message_received()
            }
        }
    };
    (@method $variant:ident, $message:ty, $handle:ident, by_ref) => {
        fn $handle(&self, their_node_id: PublicKey, msg: &$message) {
            self.0.forward(their_node_id, ChannelMessage::$variant(msg.clone()));
        }
    };
    (@method $variant:ident, $message:ty, $handle:ident, by_value) => {
        fn $handle(&self, their_node_id: PublicKey, msg: $message) {
            self.0.forward(their_node_id, ChannelMessage::$variant(msg));
        }
    };
    (@call $handler:ident, $handle:ident, $peer:ident, $msg:ident, by_ref) => {
        $handler.$handle($peer, &$msg)
    };
    (@call $handler:ident, $handle:ident, $peer:ident, $msg:ident, by_value) => {
        $handler.$handle($peer, $msg)
    };
}

channel_messages! {
    OpenChannel(msgs::OpenChannel) = types::OPEN_CHANNEL => handle_open_channel(by_ref),
    OpenChannelV2(msgs::OpenChannelV2) = types::OPEN_CHANNEL_V2 => handle_open_channel_v2(by_ref),
    AcceptChannel(msgs::AcceptChannel) = types::ACCEPT_CHANNEL => handle_accept_channel(by_ref),
    AcceptChannelV2(msgs::AcceptChannelV2) = types::ACCEPT_CHANNEL_V2 => handle_accept_channel_v2(by_ref),
    FundingCreated(msgs::FundingCreated) = types::FUNDING_CREATED => handle_funding_created(by_ref),
    FundingSigned(msgs::FundingSigned) = types::FUNDING_SIGNED => handle_funding_signed(by_ref),
    ChannelReady(msgs::ChannelReady) = types::CHANNEL_READY => handle_channel_ready(by_ref),
    PeerStorage(msgs::PeerStorage) = types::PEER_STORAGE => handle_peer_storage(by_value),
    PeerStorageRetrieval(msgs::PeerStorageRetrieval) = types::PEER_STORAGE_RETRIEVAL => handle_peer_storage_retrieval(by_value),
    Shutdown(msgs::Shutdown) = types::SHUTDOWN => handle_shutdown(by_ref),
    ClosingSigned(msgs::ClosingSigned) = types::CLOSING_SIGNED => handle_closing_signed(by_ref),
    Stfu(msgs::Stfu) = types::STFU => handle_stfu(by_ref),
    SpliceInit(msgs::SpliceInit) = types::SPLICE_INIT => handle_splice_init(by_ref),
    SpliceAck(msgs::SpliceAck) = types::SPLICE_ACK => handle_splice_ack(by_ref),
    SpliceLocked(msgs::SpliceLocked) = types::SPLICE_LOCKED => handle_splice_locked(by_ref),
    TxAddInput(msgs::TxAddInput) = types::TX_ADD_INPUT => handle_tx_add_input(by_ref),
    TxAddOutput(msgs::TxAddOutput) = types::TX_ADD_OUTPUT => handle_tx_add_output(by_ref),
    TxRemoveInput(msgs::TxRemoveInput) = types::TX_REMOVE_INPUT => handle_tx_remove_input(by_ref),
    TxRemoveOutput(msgs::TxRemoveOutput) = types::TX_REMOVE_OUTPUT => handle_tx_remove_output(by_ref),
    TxComplete(msgs::TxComplete) = types::TX_COMPLETE => handle_tx_complete(by_ref),
    TxSignatures(msgs::TxSignatures) = types::TX_SIGNATURES => handle_tx_signatures(by_ref),
    TxInitRbf(msgs::TxInitRbf) = types::TX_INIT_RBF => handle_tx_init_rbf(by_ref),
    TxAckRbf(msgs::TxAckRbf) = types::TX_ACK_RBF => handle_tx_ack_rbf(by_ref),
    TxAbort(msgs::TxAbort) = types::TX_ABORT => handle_tx_abort(by_ref),
    UpdateAddHtlc(msgs::UpdateAddHTLC) = types::UPDATE_ADD_HTLC => handle_update_add_htlc(by_ref),
    UpdateFulfillHtlc(msgs::UpdateFulfillHTLC) = types::UPDATE_FULFILL_HTLC => handle_update_fulfill_htlc(by_value),
    UpdateFailHtlc(msgs::UpdateFailHTLC) = types::UPDATE_FAIL_HTLC => handle_update_fail_htlc(by_ref),
    UpdateFailMalformedHtlc(msgs::UpdateFailMalformedHTLC) = types::UPDATE_FAIL_MALFORMED_HTLC => handle_update_fail_malformed_htlc(by_ref),
    CommitmentSigned(msgs::CommitmentSigned) = types::COMMITMENT_SIGNED => handle_commitment_signed(by_ref),
    RevokeAndAck(msgs::RevokeAndACK) = types::REVOKE_AND_ACK => handle_revoke_and_ack(by_ref),
    UpdateFee(msgs::UpdateFee) = types::UPDATE_FEE => handle_update_fee(by_ref),
    AnnouncementSignatures(msgs::AnnouncementSignatures) = types::ANNOUNCEMENT_SIGNATURES => handle_announcement_signatures(by_ref),
    ChannelReestablish(msgs::ChannelReestablish) = types::CHANNEL_REESTABLISH => handle_channel_reestablish(by_ref),
    ChannelUpdate(msgs::ChannelUpdate) = types::CHANNEL_UPDATE => handle_channel_update(by_ref),
    Error(msgs::ErrorMessage) = types::ERROR => handle_error(by_ref),
}

/// The most `commitment_signed` in one batch (`PeerManager`'s own limit).
const MAX_BATCH: usize = 20;

/// One session's incoming channel messages, in order: each goes to the handler as it
/// comes, but a `start_batch` and the `commitment_signed`s it announces, which go as one
/// `handle_commitment_signed_batch` call.
#[derive(Debug, Default)]
pub struct Inbox {
    batch: Option<Batch>,
}

#[derive(Debug)]
struct Batch {
    channel_id: ChannelId,
    size: usize,
    messages: Vec<msgs::CommitmentSigned>,
}

impl Inbox {
    /// Hands `message`, from `peer`, to `handler`. An error is a session that broke the
    /// protocol (a batch out of order): close it.
    pub fn deliver<H: ChannelMessageHandler + ?Sized>(
        &mut self,
        handler: &H,
        peer: PublicKey,
        message: ChannelMessage,
    ) -> Result<(), LinkError> {
        match (message, &mut self.batch) {
            (ChannelMessage::StartBatch(start), None) => {
                let size = usize::from(start.batch_size);
                if !(2..=MAX_BATCH).contains(&size)
                    || start.message_type != Some(types::COMMITMENT_SIGNED)
                {
                    return Err(LinkError::Protocol(format!(
                        "a start_batch of {size} messages of type {:?}",
                        start.message_type
                    )));
                }
                self.batch = Some(Batch {
                    channel_id: start.channel_id,
                    size,
                    messages: Vec::with_capacity(size),
                });
                Ok(())
            }
            (ChannelMessage::CommitmentSigned(signed), Some(batch)) => {
                if signed.channel_id != batch.channel_id {
                    return Err(LinkError::Protocol(
                        "a batched commitment_signed for another channel".into(),
                    ));
                }
                batch.messages.push(signed);
                if batch.messages.len() == batch.size {
                    let batch = self.batch.take().expect("a batch in progress");
                    handler.handle_commitment_signed_batch(peer, batch.channel_id, batch.messages);
                }
                Ok(())
            }
            (other, Some(_)) => Err(LinkError::Protocol(format!(
                "a message of type {} inside a commitment_signed batch",
                other.wire().message_type
            ))),
            (other, None) => {
                other.hand_to(handler, peer);
                Ok(())
            }
        }
    }
}

/// How the front forwards a batch `PeerManager` assembled: `start_batch`, then each
/// `commitment_signed` (what [`Inbox`] takes apart again).
pub fn batch_messages(
    channel_id: ChannelId,
    batch: Vec<msgs::CommitmentSigned>,
) -> Vec<ChannelMessage> {
    let mut messages = Vec::with_capacity(batch.len() + 1);
    messages.push(ChannelMessage::StartBatch(msgs::StartBatch {
        channel_id,
        batch_size: u16::try_from(batch.len()).unwrap_or(u16::MAX),
        message_type: Some(types::COMMITMENT_SIGNED),
    }));
    messages.extend(batch.into_iter().map(ChannelMessage::CommitmentSigned));
    messages
}

/// Where a [`Forwarder`] sends what LDK's `PeerManager` hands it: the link, on a front.
pub trait ForwardTarget: BaseMessageHandler {
    /// One message from `peer`, in the order the peer sent it. Must not block: it runs
    /// inside `PeerManager::read_event`.
    fn forward(&self, peer: PublicKey, message: ChannelMessage);
    /// The chains the node runs on (`PeerManager` refuses peers of other chains).
    fn chain_hashes(&self) -> Option<Vec<ChainHash>>;
    /// Called before every message from any peer.
    fn message_received(&self) {}
}

/// A `ChannelMessageHandler` that turns each call into a [`ChannelMessage`] for its
/// target (a `commitment_signed` batch into `start_batch` and its messages), and leaves
/// the rest of the handler's duties (connections, features, events) to the target.
pub struct Forwarder<T>(pub T);

impl<T: ForwardTarget> BaseMessageHandler for Forwarder<T> {
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        self.0.get_and_clear_pending_msg_events()
    }

    fn peer_disconnected(&self, their_node_id: PublicKey) {
        self.0.peer_disconnected(their_node_id)
    }

    fn provided_node_features(&self) -> NodeFeatures {
        self.0.provided_node_features()
    }

    fn provided_init_features(&self, their_node_id: PublicKey) -> InitFeatures {
        self.0.provided_init_features(their_node_id)
    }

    fn peer_connected(
        &self,
        their_node_id: PublicKey,
        msg: &Init,
        inbound: bool,
    ) -> Result<(), ()> {
        self.0.peer_connected(their_node_id, msg, inbound)
    }
}

impl<T: ForwardTarget + ?Sized> ForwardTarget for std::sync::Arc<T> {
    fn forward(&self, peer: PublicKey, message: ChannelMessage) {
        (**self).forward(peer, message)
    }
    fn chain_hashes(&self) -> Option<Vec<ChainHash>> {
        (**self).chain_hashes()
    }
    fn message_received(&self) {
        (**self).message_received()
    }
}
