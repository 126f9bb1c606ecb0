//! What the backend's channel handler sends peers: LDK's `MessageSendEvent`s, which are
//! not serializable, turned into link form on the backend ([`route`]) and back into the
//! same events on the front ([`PeerEvent::into_event`], [`Broadcast::into_event`]),
//! which its own `PeerManager` then sends as it would have.

use bitcoin::secp256k1::PublicKey;
use lightning::ln::msgs::{self, CommitmentUpdate, ErrorAction, MessageSendEvent};
use lightning::routing::gossip::NodeId;
use lightning::util::logger::Level;
use serde::{Deserialize, Serialize};

use super::{WireMessage, types};
use crate::LinkError;

/// What the handler wants done with one peer: one LDK event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerEvent {
    /// Send these messages, in this order (all the messages of one event).
    Send(Vec<WireMessage>),
    /// Send `last` (an `error` or a `warning`) if there is one, then close the connection.
    Disconnect {
        /// The message to try to send first.
        last: Option<WireMessage>,
    },
}

/// Gossip about the node's own channels and itself, for every peer of every front.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Broadcast {
    /// A `channel_announcement`, and the `channel_update` that follows it.
    ChannelAnnouncement {
        /// The announcement.
        announcement: WireMessage,
        /// The update.
        update: Option<WireMessage>,
    },
    /// A `channel_update`, with the channel's two ends (`PeerManager` sends an update of
    /// a channel of its peer past that peer's gossip filter).
    ChannelUpdate {
        /// The update.
        update: WireMessage,
        /// The channel's two node ids, as in the announcement.
        node_ids: (Vec<u8>, Vec<u8>),
    },
    /// The node's `node_announcement`.
    NodeAnnouncement {
        /// The announcement.
        announcement: WireMessage,
    },
}

/// Where one of the handler's events goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the front holding `node_id`'s connection.
    Peer {
        /// The peer.
        node_id: PublicKey,
        /// What to do.
        event: PeerEvent,
    },
    /// To every front.
    Broadcast(Broadcast),
    /// Nowhere: an error the handler only wants ignored (and it logged).
    Nowhere,
}

/// The link form of one of the handler's events.
pub fn route(event: MessageSendEvent) -> Route {
    use MessageSendEvent as E;
    let send = |node_id: PublicKey, messages: Vec<WireMessage>| Route::Peer {
        node_id,
        event: PeerEvent::Send(messages),
    };
    match event {
        E::SendAcceptChannel { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendAcceptChannelV2 { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendOpenChannel { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendOpenChannelV2 { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendFundingCreated { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendFundingSigned { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendStfu { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendSpliceInit { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendSpliceAck { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendSpliceLocked { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendTxAddInput { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendTxAddOutput { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendTxRemoveInput { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendTxRemoveOutput { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendTxComplete { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendTxSignatures { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendTxInitRbf { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendTxAckRbf { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendTxAbort { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendChannelReady { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendAnnouncementSignatures { node_id, msg } => {
            send(node_id, vec![WireMessage::of(&msg)])
        }
        E::UpdateHTLCs {
            node_id, updates, ..
        } => send(node_id, commitment_update_messages(updates)),
        E::SendRevokeAndACK { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendClosingSigned { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendShutdown { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendChannelReestablish { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendChannelAnnouncement {
            node_id,
            msg,
            update_msg,
        } => send(
            node_id,
            vec![WireMessage::of(&msg), WireMessage::of(&update_msg)],
        ),
        E::BroadcastChannelAnnouncement { msg, update_msg } => {
            Route::Broadcast(Broadcast::ChannelAnnouncement {
                announcement: WireMessage::of(&msg),
                update: update_msg.as_ref().map(WireMessage::of),
            })
        }
        E::BroadcastChannelUpdate {
            msg,
            node_id_1,
            node_id_2,
        } => Route::Broadcast(Broadcast::ChannelUpdate {
            update: WireMessage::of(&msg),
            node_ids: (node_id_1.as_slice().to_vec(), node_id_2.as_slice().to_vec()),
        }),
        E::BroadcastNodeAnnouncement { msg } => Route::Broadcast(Broadcast::NodeAnnouncement {
            announcement: WireMessage::of(&msg),
        }),
        E::SendChannelUpdate { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::HandleError { node_id, action } => match action {
            ErrorAction::DisconnectPeer { msg } => Route::Peer {
                node_id,
                event: PeerEvent::Disconnect {
                    last: msg.as_ref().map(WireMessage::of),
                },
            },
            ErrorAction::DisconnectPeerWithWarning { msg } => Route::Peer {
                node_id,
                event: PeerEvent::Disconnect {
                    last: Some(WireMessage::of(&msg)),
                },
            },
            ErrorAction::SendErrorMessage { msg } => send(node_id, vec![WireMessage::of(&msg)]),
            ErrorAction::SendWarningMessage { msg, .. } => {
                send(node_id, vec![WireMessage::of(&msg)])
            }
            ErrorAction::IgnoreError
            | ErrorAction::IgnoreAndLog(_)
            | ErrorAction::IgnoreDuplicateGossip => Route::Nowhere,
        },
        E::SendChannelRangeQuery { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendShortIdsQuery { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendReplyChannelRange { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendGossipTimestampFilter { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendPeerStorage { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
        E::SendPeerStorageRetrieval { node_id, msg } => send(node_id, vec![WireMessage::of(&msg)]),
    }
}

/// The messages of a commitment update, in the order `PeerManager` sends them
/// (`start_batch` is left out: the front's `PeerManager` adds it again).
fn commitment_update_messages(updates: CommitmentUpdate) -> Vec<WireMessage> {
    let CommitmentUpdate {
        update_add_htlcs,
        update_fulfill_htlcs,
        update_fail_htlcs,
        update_fail_malformed_htlcs,
        update_fee,
        commitment_signed,
    } = updates;
    let mut messages = Vec::new();
    messages.extend(update_add_htlcs.iter().map(WireMessage::of));
    messages.extend(update_fulfill_htlcs.iter().map(WireMessage::of));
    messages.extend(update_fail_htlcs.iter().map(WireMessage::of));
    messages.extend(update_fail_malformed_htlcs.iter().map(WireMessage::of));
    messages.extend(update_fee.iter().map(WireMessage::of));
    messages.extend(commitment_signed.iter().map(WireMessage::of));
    messages
}

fn is_commitment_update(message_type: u16) -> bool {
    matches!(
        message_type,
        types::UPDATE_ADD_HTLC
            | types::UPDATE_FULFILL_HTLC
            | types::UPDATE_FAIL_HTLC
            | types::UPDATE_FAIL_MALFORMED_HTLC
            | types::UPDATE_FEE
            | types::COMMITMENT_SIGNED
    )
}

fn malformed(what: String) -> LinkError {
    LinkError::Malformed(what)
}

impl PeerEvent {
    /// The LDK event for `node_id` that this stands for; `None` for nothing to send.
    pub fn into_event(self, node_id: PublicKey) -> Result<Option<MessageSendEvent>, LinkError> {
        use MessageSendEvent as E;
        let messages = match self {
            PeerEvent::Disconnect { last: None } => {
                return Ok(Some(E::HandleError {
                    node_id,
                    action: ErrorAction::DisconnectPeer { msg: None },
                }));
            }
            PeerEvent::Disconnect { last: Some(last) } => {
                let action = match last.message_type {
                    types::ERROR => ErrorAction::DisconnectPeer {
                        msg: Some(last.read()?),
                    },
                    types::WARNING => ErrorAction::DisconnectPeerWithWarning { msg: last.read()? },
                    other => {
                        return Err(malformed(format!(
                            "a disconnect after a message of type {other}"
                        )));
                    }
                };
                return Ok(Some(E::HandleError { node_id, action }));
            }
            PeerEvent::Send(messages) => messages,
        };
        let Some(first) = messages.first() else {
            return Ok(None);
        };
        if is_commitment_update(first.message_type) {
            return commitment_update(node_id, &messages).map(Some);
        }
        if let [announcement, update] = &messages[..]
            && announcement.message_type == types::CHANNEL_ANNOUNCEMENT
            && update.message_type == types::CHANNEL_UPDATE
        {
            return Ok(Some(E::SendChannelAnnouncement {
                node_id,
                msg: announcement.read()?,
                update_msg: update.read()?,
            }));
        }
        let [message] = &messages[..] else {
            return Err(malformed(format!(
                "{} messages in one event, starting with type {}",
                messages.len(),
                first.message_type
            )));
        };
        Ok(Some(match message.message_type {
            types::ACCEPT_CHANNEL => E::SendAcceptChannel {
                node_id,
                msg: message.read()?,
            },
            types::ACCEPT_CHANNEL_V2 => E::SendAcceptChannelV2 {
                node_id,
                msg: message.read()?,
            },
            types::OPEN_CHANNEL => E::SendOpenChannel {
                node_id,
                msg: message.read()?,
            },
            types::OPEN_CHANNEL_V2 => E::SendOpenChannelV2 {
                node_id,
                msg: message.read()?,
            },
            types::FUNDING_CREATED => E::SendFundingCreated {
                node_id,
                msg: message.read()?,
            },
            types::FUNDING_SIGNED => E::SendFundingSigned {
                node_id,
                msg: message.read()?,
            },
            types::STFU => E::SendStfu {
                node_id,
                msg: message.read()?,
            },
            types::SPLICE_INIT => E::SendSpliceInit {
                node_id,
                msg: message.read()?,
            },
            types::SPLICE_ACK => E::SendSpliceAck {
                node_id,
                msg: message.read()?,
            },
            types::SPLICE_LOCKED => E::SendSpliceLocked {
                node_id,
                msg: message.read()?,
            },
            types::TX_ADD_INPUT => E::SendTxAddInput {
                node_id,
                msg: message.read()?,
            },
            types::TX_ADD_OUTPUT => E::SendTxAddOutput {
                node_id,
                msg: message.read()?,
            },
            types::TX_REMOVE_INPUT => E::SendTxRemoveInput {
                node_id,
                msg: message.read()?,
            },
            types::TX_REMOVE_OUTPUT => E::SendTxRemoveOutput {
                node_id,
                msg: message.read()?,
            },
            types::TX_COMPLETE => E::SendTxComplete {
                node_id,
                msg: message.read()?,
            },
            types::TX_SIGNATURES => E::SendTxSignatures {
                node_id,
                msg: message.read()?,
            },
            types::TX_INIT_RBF => E::SendTxInitRbf {
                node_id,
                msg: message.read()?,
            },
            types::TX_ACK_RBF => E::SendTxAckRbf {
                node_id,
                msg: message.read()?,
            },
            types::TX_ABORT => E::SendTxAbort {
                node_id,
                msg: message.read()?,
            },
            types::CHANNEL_READY => E::SendChannelReady {
                node_id,
                msg: message.read()?,
            },
            types::ANNOUNCEMENT_SIGNATURES => E::SendAnnouncementSignatures {
                node_id,
                msg: message.read()?,
            },
            types::REVOKE_AND_ACK => E::SendRevokeAndACK {
                node_id,
                msg: message.read()?,
            },
            types::CLOSING_SIGNED => E::SendClosingSigned {
                node_id,
                msg: message.read()?,
            },
            types::SHUTDOWN => E::SendShutdown {
                node_id,
                msg: message.read()?,
            },
            types::CHANNEL_REESTABLISH => E::SendChannelReestablish {
                node_id,
                msg: message.read()?,
            },
            types::CHANNEL_UPDATE => E::SendChannelUpdate {
                node_id,
                msg: message.read()?,
            },
            types::ERROR => E::HandleError {
                node_id,
                action: ErrorAction::SendErrorMessage {
                    msg: message.read()?,
                },
            },
            types::WARNING => E::HandleError {
                node_id,
                action: ErrorAction::SendWarningMessage {
                    msg: message.read()?,
                    log_level: Level::Info,
                },
            },
            types::QUERY_CHANNEL_RANGE => E::SendChannelRangeQuery {
                node_id,
                msg: message.read()?,
            },
            types::QUERY_SHORT_CHANNEL_IDS => E::SendShortIdsQuery {
                node_id,
                msg: message.read()?,
            },
            types::REPLY_CHANNEL_RANGE => E::SendReplyChannelRange {
                node_id,
                msg: message.read()?,
            },
            types::GOSSIP_TIMESTAMP_FILTER => E::SendGossipTimestampFilter {
                node_id,
                msg: message.read()?,
            },
            types::PEER_STORAGE => E::SendPeerStorage {
                node_id,
                msg: message.read()?,
            },
            types::PEER_STORAGE_RETRIEVAL => E::SendPeerStorageRetrieval {
                node_id,
                msg: message.read()?,
            },
            other => {
                return Err(malformed(format!(
                    "no event sends a message of type {other}"
                )));
            }
        }))
    }
}

/// Rebuilds an `UpdateHTLCs` event from its messages, which must come in `PeerManager`'s
/// order (adds, fulfills, fails, malformed fails, fee, commitment_signed).
fn commitment_update(
    node_id: PublicKey,
    messages: &[WireMessage],
) -> Result<MessageSendEvent, LinkError> {
    let mut updates = CommitmentUpdate {
        update_add_htlcs: Vec::new(),
        update_fulfill_htlcs: Vec::new(),
        update_fail_htlcs: Vec::new(),
        update_fail_malformed_htlcs: Vec::new(),
        update_fee: None,
        commitment_signed: Vec::new(),
    };
    let mut channel_id = None;
    let mut last_rank = 0;
    for message in messages {
        let rank = match message.message_type {
            types::UPDATE_ADD_HTLC => 1,
            types::UPDATE_FULFILL_HTLC => 2,
            types::UPDATE_FAIL_HTLC => 3,
            types::UPDATE_FAIL_MALFORMED_HTLC => 4,
            types::UPDATE_FEE => 5,
            types::COMMITMENT_SIGNED => 6,
            other => {
                return Err(malformed(format!(
                    "a message of type {other} in a commitment update"
                )));
            }
        };
        if rank < last_rank || (rank == 5 && last_rank == 5) {
            return Err(malformed("a commitment update out of order".into()));
        }
        last_rank = rank;
        let id = match rank {
            1 => {
                let msg: msgs::UpdateAddHTLC = message.read()?;
                let id = msg.channel_id;
                updates.update_add_htlcs.push(msg);
                id
            }
            2 => {
                let msg: msgs::UpdateFulfillHTLC = message.read()?;
                let id = msg.channel_id;
                updates.update_fulfill_htlcs.push(msg);
                id
            }
            3 => {
                let msg: msgs::UpdateFailHTLC = message.read()?;
                let id = msg.channel_id;
                updates.update_fail_htlcs.push(msg);
                id
            }
            4 => {
                let msg: msgs::UpdateFailMalformedHTLC = message.read()?;
                let id = msg.channel_id;
                updates.update_fail_malformed_htlcs.push(msg);
                id
            }
            5 => {
                let msg: msgs::UpdateFee = message.read()?;
                let id = msg.channel_id;
                updates.update_fee = Some(msg);
                id
            }
            _ => {
                let msg: msgs::CommitmentSigned = message.read()?;
                let id = msg.channel_id;
                updates.commitment_signed.push(msg);
                id
            }
        };
        // A batch's commitment_signed may each name a channel of the splice; the
        // updates all name the event's channel, which the first message gives.
        channel_id.get_or_insert(id);
    }
    Ok(MessageSendEvent::UpdateHTLCs {
        node_id,
        channel_id: channel_id.expect("at least one message"),
        updates,
    })
}

impl Broadcast {
    /// The LDK event this stands for.
    pub fn into_event(self) -> Result<MessageSendEvent, LinkError> {
        Ok(match self {
            Broadcast::ChannelAnnouncement {
                announcement,
                update,
            } => MessageSendEvent::BroadcastChannelAnnouncement {
                msg: expect_type(&announcement, types::CHANNEL_ANNOUNCEMENT)?.read()?,
                update_msg: update
                    .map(|update| expect_type(&update, types::CHANNEL_UPDATE)?.read())
                    .transpose()?,
            },
            Broadcast::ChannelUpdate { update, node_ids } => {
                let node_id = |bytes: &[u8]| {
                    NodeId::from_slice(bytes)
                        .map_err(|_| malformed("a channel end that is not a node id".into()))
                };
                MessageSendEvent::BroadcastChannelUpdate {
                    msg: expect_type(&update, types::CHANNEL_UPDATE)?.read()?,
                    node_id_1: node_id(&node_ids.0)?,
                    node_id_2: node_id(&node_ids.1)?,
                }
            }
            Broadcast::NodeAnnouncement { announcement } => {
                MessageSendEvent::BroadcastNodeAnnouncement {
                    msg: expect_type(&announcement, types::NODE_ANNOUNCEMENT)?.read()?,
                }
            }
        })
    }
}

fn expect_type(message: &WireMessage, expected: u16) -> Result<&WireMessage, LinkError> {
    if message.message_type == expected {
        Ok(message)
    } else {
        Err(malformed(format!(
            "a message of type {} where type {expected} belongs",
            message.message_type
        )))
    }
}
