//! Lightning messages and LDK's events across the link: each message is typed as LDK
//! types it and decodes to itself, the channel handler gets what the peer sent (batches
//! included), and each event the backend's handler emits becomes the same event on the
//! front, through the link's own frames.

use std::sync::Mutex;

use bitcoin::constants::ChainHash;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::{Network, ScriptBuf, Txid};
use lightning::ln::msgs::{
    self, BaseMessageHandler, ChannelMessageHandler, CommitmentUpdate, ErrorAction, Init,
    MessageSendEvent,
};
use lightning::ln::types::ChannelId;
use lightning::routing::gossip::NodeId;
use lightning::types::features::{InitFeatures, NodeFeatures};
use lightning::types::payment::PaymentPreimage;
use lightning::util::logger::Level;
use phalanx_link::ldk::inbound::{ChannelMessage, ForwardTarget, Forwarder, Inbox};
use phalanx_link::ldk::outbound::{PeerEvent, Route, route};
use phalanx_link::ldk::{WireMessage, types};
use phalanx_link::{Frame, LinkError, SessionId};

fn key(byte: u8) -> PublicKey {
    PublicKey::from_secret_key(
        &Secp256k1::new(),
        &SecretKey::from_slice(&[byte; 32]).unwrap(),
    )
}

fn signature(byte: u8) -> bitcoin::secp256k1::ecdsa::Signature {
    Secp256k1::new().sign_ecdsa(
        &Message::from_digest([byte; 32]),
        &SecretKey::from_slice(&[7; 32]).unwrap(),
    )
}

fn channel(byte: u8) -> ChannelId {
    ChannelId([byte; 32])
}

fn commitment_signed(byte: u8) -> msgs::CommitmentSigned {
    msgs::CommitmentSigned {
        channel_id: channel(1),
        signature: signature(byte),
        htlc_signatures: vec![signature(byte + 1)],
        funding_txid: None,
    }
}

fn channel_update() -> msgs::ChannelUpdate {
    msgs::ChannelUpdate {
        signature: signature(9),
        contents: msgs::UnsignedChannelUpdate {
            chain_hash: ChainHash::using_genesis_block(Network::Regtest),
            short_channel_id: 42,
            timestamp: 1_700_000_000,
            message_flags: 1,
            channel_flags: 0,
            cltv_expiry_delta: 144,
            htlc_minimum_msat: 1,
            htlc_maximum_msat: 1_000_000,
            fee_base_msat: 1000,
            fee_proportional_millionths: 100,
            excess_data: Vec::new(),
        },
    }
}

/// Messages of many kinds, with the BOLT type each must carry.
fn samples() -> Vec<(ChannelMessage, u16)> {
    use ChannelMessage as M;
    vec![
        (
            M::Stfu(msgs::Stfu {
                channel_id: channel(1),
                initiator: true,
            }),
            types::STFU,
        ),
        (
            M::TxComplete(msgs::TxComplete {
                channel_id: channel(1),
            }),
            types::TX_COMPLETE,
        ),
        (
            M::TxAbort(msgs::TxAbort {
                channel_id: channel(1),
                data: b"no".to_vec(),
            }),
            types::TX_ABORT,
        ),
        (
            M::TxRemoveInput(msgs::TxRemoveInput {
                channel_id: channel(1),
                serial_id: 4,
            }),
            types::TX_REMOVE_INPUT,
        ),
        (
            M::Shutdown(msgs::Shutdown {
                channel_id: channel(1),
                scriptpubkey: ScriptBuf::from_bytes(
                    vec![0x00, 0x14].into_iter().chain([3; 20]).collect(),
                ),
            }),
            types::SHUTDOWN,
        ),
        (
            M::UpdateFee(msgs::UpdateFee {
                channel_id: channel(1),
                feerate_per_kw: 2500,
            }),
            types::UPDATE_FEE,
        ),
        (
            M::Error(msgs::ErrorMessage {
                channel_id: channel(1),
                data: "bad".into(),
            }),
            types::ERROR,
        ),
        (
            M::PeerStorage(msgs::PeerStorage { data: vec![1; 50] }),
            types::PEER_STORAGE,
        ),
        (
            M::PeerStorageRetrieval(msgs::PeerStorageRetrieval { data: vec![2; 50] }),
            types::PEER_STORAGE_RETRIEVAL,
        ),
        (
            M::UpdateFulfillHtlc(msgs::UpdateFulfillHTLC {
                channel_id: channel(1),
                htlc_id: 3,
                payment_preimage: PaymentPreimage([5; 32]),
                attribution_data: None,
            }),
            types::UPDATE_FULFILL_HTLC,
        ),
        (
            M::RevokeAndAck(msgs::RevokeAndACK {
                channel_id: channel(1),
                per_commitment_secret: [6; 32],
                next_per_commitment_point: key(3),
                release_htlc_message_paths: Vec::new(),
            }),
            types::REVOKE_AND_ACK,
        ),
        (
            M::CommitmentSigned(commitment_signed(10)),
            types::COMMITMENT_SIGNED,
        ),
        (
            M::ChannelReady(msgs::ChannelReady {
                channel_id: channel(1),
                next_per_commitment_point: key(4),
                short_channel_id_alias: Some(77),
            }),
            types::CHANNEL_READY,
        ),
        (
            M::SpliceLocked(msgs::SpliceLocked {
                channel_id: channel(1),
                splice_txid: Txid::from_byte_array([8; 32]),
            }),
            types::SPLICE_LOCKED,
        ),
        (
            M::ClosingSigned(msgs::ClosingSigned {
                channel_id: channel(1),
                fee_satoshis: 300,
                signature: signature(11),
                fee_range: None,
            }),
            types::CLOSING_SIGNED,
        ),
        (M::ChannelUpdate(channel_update()), types::CHANNEL_UPDATE),
        (
            M::StartBatch(msgs::StartBatch {
                channel_id: channel(1),
                batch_size: 2,
                message_type: Some(types::COMMITMENT_SIGNED),
            }),
            types::START_BATCH,
        ),
    ]
}

#[test]
fn each_message_carries_ldks_own_type_and_decodes_to_itself() {
    for (message, expected) in samples() {
        let wire = message.wire();
        assert_eq!(wire.message_type, expected, "{message:?}");
        assert_eq!(ChannelMessage::decode(&wire).unwrap(), Some(message));
    }
}

#[test]
fn unknown_types_are_left_to_the_caller_and_bad_bodies_are_malformed() {
    let ping = WireMessage {
        message_type: 18,
        body: vec![0, 1, 0, 0],
    };
    assert_eq!(ChannelMessage::decode(&ping).unwrap(), None);
    for (message, _) in samples() {
        let mut wire = message.wire();
        wire.body.truncate(wire.body.len().min(20));
        let err = ChannelMessage::decode(&wire).unwrap_err();
        assert!(matches!(err, LinkError::Malformed(_)), "{err}");
        assert!(
            err.to_string().contains(&wire.message_type.to_string()),
            "{err}"
        );
    }
}

/// A handler target that records what it is given.
#[derive(Default)]
struct Recorder {
    messages: Mutex<Vec<(PublicKey, ChannelMessage)>>,
}

impl BaseMessageHandler for Recorder {
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

impl ForwardTarget for Recorder {
    fn forward(&self, peer: PublicKey, message: ChannelMessage) {
        self.messages.lock().unwrap().push((peer, message));
    }
    fn chain_hashes(&self) -> Option<Vec<ChainHash>> {
        None
    }
}

impl Recorder {
    fn take(&self) -> Vec<(PublicKey, ChannelMessage)> {
        std::mem::take(&mut *self.messages.lock().unwrap())
    }
}

#[test]
fn the_handler_gets_each_message_by_its_own_method_and_batches_whole() {
    let peer = key(2);
    let handler = Forwarder(Recorder::default());
    let mut inbox = Inbox::default();
    // Every message but start_batch reaches the handler method of its kind (the
    // forwarder turns the call back into the message it stands for).
    for (message, _) in samples() {
        if matches!(message, ChannelMessage::StartBatch(_)) {
            continue;
        }
        inbox.deliver(&handler, peer, message.clone()).unwrap();
        assert_eq!(handler.0.take(), vec![(peer, message)]);
    }

    // A batch, as a front's PeerManager hands it over, crosses as start_batch and its
    // messages, and reaches the backend's handler as one batch call.
    let front = Forwarder(Recorder::default());
    let batch = vec![commitment_signed(20), commitment_signed(30)];
    front.handle_commitment_signed_batch(peer, channel(1), batch.clone());
    let forwarded = front.0.take();
    assert_eq!(forwarded.len(), 3);
    for (i, (_, message)) in forwarded.into_iter().enumerate() {
        inbox.deliver(&handler, peer, message).unwrap();
        assert_eq!(handler.0.take().len(), if i == 2 { 3 } else { 0 });
    }
}

#[test]
fn a_batch_out_of_order_is_a_protocol_error() {
    let peer = key(2);
    let handler = Forwarder(Recorder::default());
    let start = |size: u16, message_type| {
        ChannelMessage::StartBatch(msgs::StartBatch {
            channel_id: channel(1),
            batch_size: size,
            message_type,
        })
    };
    for bad in [
        start(1, Some(types::COMMITMENT_SIGNED)),
        start(21, Some(types::COMMITMENT_SIGNED)),
        start(2, Some(types::UPDATE_FEE)),
        start(2, None),
    ] {
        let err = Inbox::default().deliver(&handler, peer, bad).unwrap_err();
        assert!(matches!(err, LinkError::Protocol(_)), "{err}");
    }
    let mut inbox = Inbox::default();
    inbox
        .deliver(&handler, peer, start(2, Some(types::COMMITMENT_SIGNED)))
        .unwrap();
    let other_channel = msgs::CommitmentSigned {
        channel_id: channel(9),
        ..commitment_signed(1)
    };
    let err = inbox
        .deliver(
            &handler,
            peer,
            ChannelMessage::CommitmentSigned(other_channel),
        )
        .unwrap_err();
    assert!(err.to_string().contains("another channel"), "{err}");
    let mut inbox = Inbox::default();
    inbox
        .deliver(&handler, peer, start(2, Some(types::COMMITMENT_SIGNED)))
        .unwrap();
    let fee = samples().swap_remove(5).0;
    let err = inbox.deliver(&handler, peer, fee).unwrap_err();
    assert!(
        err.to_string().contains("inside a commitment_signed batch"),
        "{err}"
    );
    assert!(handler.0.take().is_empty(), "nothing reached the handler");
}

fn error(data: &str) -> msgs::ErrorMessage {
    msgs::ErrorMessage {
        channel_id: channel(1),
        data: data.into(),
    }
}

fn warning(data: &str) -> msgs::WarningMessage {
    msgs::WarningMessage {
        channel_id: channel(1),
        data: data.into(),
    }
}

/// Events of many kinds, as the backend's channel manager emits them.
fn events(node_id: PublicKey) -> Vec<MessageSendEvent> {
    use MessageSendEvent as E;
    vec![
        E::SendStfu {
            node_id,
            msg: msgs::Stfu {
                channel_id: channel(1),
                initiator: false,
            },
        },
        E::SendChannelReady {
            node_id,
            msg: msgs::ChannelReady {
                channel_id: channel(1),
                next_per_commitment_point: key(4),
                short_channel_id_alias: None,
            },
        },
        E::UpdateHTLCs {
            node_id,
            channel_id: channel(1),
            updates: CommitmentUpdate {
                update_add_htlcs: Vec::new(),
                update_fulfill_htlcs: vec![msgs::UpdateFulfillHTLC {
                    channel_id: channel(1),
                    htlc_id: 1,
                    payment_preimage: PaymentPreimage([3; 32]),
                    attribution_data: None,
                }],
                update_fail_htlcs: Vec::new(),
                update_fail_malformed_htlcs: Vec::new(),
                update_fee: Some(msgs::UpdateFee {
                    channel_id: channel(1),
                    feerate_per_kw: 300,
                }),
                commitment_signed: vec![commitment_signed(40), commitment_signed(50)],
            },
        },
        E::SendRevokeAndACK {
            node_id,
            msg: msgs::RevokeAndACK {
                channel_id: channel(1),
                per_commitment_secret: [1; 32],
                next_per_commitment_point: key(5),
                release_htlc_message_paths: Vec::new(),
            },
        },
        E::SendShutdown {
            node_id,
            msg: msgs::Shutdown {
                channel_id: channel(1),
                scriptpubkey: ScriptBuf::new(),
            },
        },
        E::SendChannelUpdate {
            node_id,
            msg: channel_update(),
        },
        E::SendPeerStorageRetrieval {
            node_id,
            msg: msgs::PeerStorageRetrieval { data: vec![4; 10] },
        },
        E::HandleError {
            node_id,
            action: ErrorAction::DisconnectPeer { msg: None },
        },
        E::HandleError {
            node_id,
            action: ErrorAction::DisconnectPeer {
                msg: Some(error("bye")),
            },
        },
        E::HandleError {
            node_id,
            action: ErrorAction::DisconnectPeerWithWarning {
                msg: warning("careful, bye"),
            },
        },
        E::HandleError {
            node_id,
            action: ErrorAction::SendErrorMessage { msg: error("no") },
        },
        E::HandleError {
            node_id,
            action: ErrorAction::SendWarningMessage {
                msg: warning("hm"),
                log_level: Level::Info,
            },
        },
        E::BroadcastChannelUpdate {
            msg: channel_update(),
            node_id_1: NodeId::from_pubkey(&key(1)),
            node_id_2: NodeId::from_pubkey(&node_id),
        },
    ]
}

#[test]
fn each_event_is_the_same_event_on_the_front() {
    let peer = key(2);
    for event in events(peer) {
        let expected = format!("{event:?}");
        // Across the link as its frame, then back into LDK's event.
        let back = match route(event) {
            Route::Peer { node_id, event } => {
                assert_eq!(node_id, peer);
                let frame = Frame::PeerEvent {
                    session: SessionId(3),
                    peer,
                    event,
                };
                let Frame::PeerEvent { event, .. } = Frame::decode(&frame.encode()).unwrap() else {
                    unreachable!()
                };
                event.into_event(peer).unwrap().expect("an event")
            }
            Route::Broadcast(broadcast) => {
                let frame = Frame::Broadcast(broadcast);
                let Frame::Broadcast(broadcast) = Frame::decode(&frame.encode()).unwrap() else {
                    unreachable!()
                };
                broadcast.into_event().unwrap()
            }
            Route::Nowhere => panic!("{expected} went nowhere"),
        };
        assert_eq!(format!("{back:?}"), expected);
    }
    let ignored = MessageSendEvent::HandleError {
        node_id: peer,
        action: ErrorAction::IgnoreAndLog(Level::Debug),
    };
    assert_eq!(route(ignored), Route::Nowhere);
}

#[test]
fn events_that_no_handler_emits_are_refused() {
    let peer = key(2);
    let fee = WireMessage::of(&msgs::UpdateFee {
        channel_id: channel(1),
        feerate_per_kw: 300,
    });
    let signed = WireMessage::of(&commitment_signed(1));
    let ping = WireMessage {
        message_type: 18,
        body: vec![0, 1, 0, 0],
    };
    let bad = [
        // commitment_signed before an update, two fees.
        PeerEvent::Send(vec![signed.clone(), fee.clone()]),
        PeerEvent::Send(vec![fee.clone(), fee.clone(), signed]),
        // A ping is the front's own business, and two unrelated messages are no event.
        PeerEvent::Send(vec![ping.clone()]),
        PeerEvent::Send(vec![
            WireMessage::of(&error("a")),
            WireMessage::of(&error("b")),
        ]),
        PeerEvent::Disconnect { last: Some(ping) },
    ];
    for event in bad {
        let err = event.clone().into_event(peer).unwrap_err();
        assert!(matches!(err, LinkError::Malformed(_)), "{event:?}: {err}");
    }
    assert!(
        PeerEvent::Send(Vec::new())
            .into_event(peer)
            .unwrap()
            .is_none()
    );
}

mod garbage {
    //! Bytes from a broken or hostile process (a front's forwarded message, a backend's
    //! event) give errors, never panics. Until `cargo fuzz` targets exist, these
    //! properties stand in for fuzzing the decoders.

    use super::*;
    use phalanx_link::ldk::outbound::Broadcast;
    use proptest::prelude::*;

    /// A known type most of the time, with bytes that are random or a valid body
    /// with a byte changed, cut or extended.
    fn message() -> impl Strategy<Value = WireMessage> {
        let known: Vec<u16> = samples()
            .iter()
            .map(|(_, t)| *t)
            .chain([
                types::OPEN_CHANNEL,
                types::ACCEPT_CHANNEL,
                types::FUNDING_CREATED,
                types::UPDATE_ADD_HTLC,
                types::UPDATE_FAIL_HTLC,
                types::CHANNEL_REESTABLISH,
                types::CHANNEL_ANNOUNCEMENT,
                types::NODE_ANNOUNCEMENT,
                types::WARNING,
            ])
            .collect();
        let valid: Vec<WireMessage> = samples().iter().map(|(m, _)| m.wire()).collect();
        prop_oneof![
            (
                prop::sample::select(known),
                prop::collection::vec(any::<u8>(), 0..1600)
            )
                .prop_map(|(message_type, body)| WireMessage { message_type, body }),
            (
                prop::sample::select(valid),
                any::<prop::sample::Index>(),
                any::<u8>(),
                0usize..3
            )
                .prop_map(|(mut message, at, byte, how)| {
                    let at = at.index(message.body.len().max(1));
                    match how {
                        0 if !message.body.is_empty() => message.body[at] ^= byte | 1,
                        1 => message.body.truncate(at),
                        _ => message.body.extend([byte; 7]),
                    }
                    message
                }),
            (any::<u16>(), prop::collection::vec(any::<u8>(), 0..200))
                .prop_map(|(message_type, body)| WireMessage { message_type, body }),
        ]
    }

    proptest! {
        #[test]
        fn decoding_a_forwarded_message_never_panics(message in message()) {
            if let Ok(Some(decoded)) = ChannelMessage::decode(&message) {
                // What decodes, re-encodes to a message of the same type.
                prop_assert_eq!(decoded.wire().message_type, message.message_type);
            }
        }

        #[test]
        fn rebuilding_an_event_never_panics(
            messages in prop::collection::vec(message(), 0..4),
            disconnect in any::<bool>(),
        ) {
            let peer = key(2);
            let event = if disconnect {
                PeerEvent::Disconnect { last: messages.first().cloned() }
            } else {
                PeerEvent::Send(messages.clone())
            };
            let _ = event.into_event(peer);
            if let [first, rest @ ..] = &messages[..] {
                let _ = Broadcast::ChannelAnnouncement {
                    announcement: first.clone(),
                    update: rest.first().cloned(),
                }
                .into_event();
                let _ = Broadcast::NodeAnnouncement { announcement: first.clone() }.into_event();
                let _ = Broadcast::ChannelUpdate {
                    update: first.clone(),
                    node_ids: (first.body.clone(), vec![2; 33]),
                }
                .into_event();
            }
        }

        #[test]
        fn an_inbox_fed_anything_decodable_never_panics(
            messages in prop::collection::vec(message(), 0..12),
        ) {
            let handler = Forwarder(Recorder::default());
            let mut inbox = Inbox::default();
            for message in messages {
                if let Ok(Some(decoded)) = ChannelMessage::decode(&message) {
                    let _ = inbox.deliver(&handler, key(2), decoded);
                }
            }
        }
    }
}

/// The funding output the backend rebuilds from an announcement's key bytes is the one
/// LDK's `make_funding_redeemscript` builds from the parsed keys, whichever key sorts
/// first.
#[test]
fn the_funding_output_from_key_bytes_is_ldks() {
    for seed in 1..=40u8 {
        let (a, b) = (key(seed), key(seed + 100));
        for (key_1, key_2) in [(a, b), (b, a)] {
            let announcement = lightning::ln::msgs::UnsignedChannelAnnouncement {
                features: lightning::types::features::ChannelFeatures::empty(),
                chain_hash: ChainHash::using_genesis_block(Network::Regtest),
                short_channel_id: 42,
                node_id_1: NodeId::from_pubkey(&key(200)),
                node_id_2: NodeId::from_pubkey(&key(201)),
                bitcoin_key_1: NodeId::from_pubkey(&key_1),
                bitcoin_key_2: NodeId::from_pubkey(&key_2),
                excess_data: Vec::new(),
            };
            let output = phalanx_link::ldk::gossip::funding_output_of(&announcement, 50_000);
            assert_eq!(
                output.script_pubkey,
                lightning::ln::chan_utils::make_funding_redeemscript(&key_1, &key_2).to_p2wsh()
            );
            assert_eq!(output.value.to_sat(), 50_000);
        }
    }
}
