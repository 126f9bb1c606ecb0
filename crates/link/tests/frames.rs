//! The link's frames: every one round-trips, their numbering is pinned, and bytes from a
//! broken or hostile process give errors, never panics or large allocations.

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use phalanx_link::ldk::WireMessage;
use phalanx_link::ldk::gossip::{FundingLookupFailure, FundingOutput, VerifiedGossip};
use phalanx_link::ldk::outbound::{Broadcast, PeerEvent};
use phalanx_link::{
    ActiveBackend, Frame, Hello, LINK_VERSION, LinkCodec, LinkError, MAX_FRAME_BYTES, Role,
    SessionId,
};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder, Framed};

fn key(byte: u8) -> PublicKey {
    let secret = SecretKey::from_slice(&[byte.max(1); 32]).unwrap();
    PublicKey::from_secret_key(&Secp256k1::new(), &secret)
}

/// One frame of each kind, in the order of their numbers on the wire.
fn one_of_each() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello::new(Role::Front, "front-1")),
        Frame::PeerConnected {
            session: SessionId(7),
            peer: key(2),
            init: vec![0, 16, 0, 0],
            inbound: true,
        },
        Frame::PeerDisconnected {
            session: SessionId(7),
            peer: key(2),
        },
        Frame::PeerMessage {
            session: SessionId(7),
            peer: key(2),
            message: WireMessage {
                message_type: 128,
                body: vec![9; 300],
            },
        },
        Frame::EcdhRequest {
            request: 1,
            point: key(3),
        },
        Frame::EcdhResponse {
            request: 1,
            shared_secret: Some([5; 32]),
        },
        Frame::LinkPing { nonce: 42 },
        Frame::LinkPong { nonce: 42 },
        Frame::Active(ActiveBackend {
            node_id: key(4),
            chain_hash: [6; 32],
            init_features: vec![0x02, 0xa0],
            node_features: vec![0x02],
        }),
        Frame::PeerEvent {
            session: SessionId(7),
            peer: key(2),
            event: PeerEvent::Disconnect {
                last: Some(WireMessage {
                    message_type: 17,
                    body: vec![1; 34],
                }),
            },
        },
        Frame::Broadcast(Broadcast::NodeAnnouncement {
            announcement: WireMessage {
                message_type: 257,
                body: vec![3; 140],
            },
        }),
        Frame::ConnectPeer {
            peer: key(5),
            address: "203.0.113.7:9735".into(),
        },
        Frame::FundingOutputRequest {
            request: 3,
            short_channel_id: 0x0000_6f00_0001_0002,
        },
        Frame::FundingOutputResponse {
            request: 3,
            output: Ok(FundingOutput {
                value_sat: 20_000,
                script_pubkey: vec![0x00, 0x20, 7, 7],
            }),
        },
        Frame::Gossip(VerifiedGossip::ChannelUpdate {
            contents: vec![4; 100],
        }),
        Frame::PublicAddress {
            address: "pay.example.com:9735".into(),
        },
    ]
}

#[test]
fn every_frame_round_trips_and_its_number_is_pinned() {
    for (number, frame) in one_of_each().into_iter().enumerate() {
        let bytes = frame.encode();
        // postcard numbers variants by their order: moving one would change the wire.
        assert_eq!(bytes[0] as usize, number, "{} moved", frame.kind());
        assert_eq!(Frame::decode(&bytes).unwrap(), frame);
    }
}

#[test]
fn trailing_bytes_and_truncations_are_malformed() {
    for frame in one_of_each() {
        let mut bytes = frame.encode();
        for cut in 0..bytes.len() {
            let err = Frame::decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, LinkError::Malformed(_)),
                "{}: {err}",
                frame.kind()
            );
        }
        bytes.push(0);
        let err = Frame::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("after the frame"), "{err}");
    }
}

#[test]
fn an_overlong_number_is_malformed() {
    // 54 (a hello's version, here) as a varint is one byte, 0x36; 0xb6 0x00 spells it
    // again in two. Found by the fuzz target.
    let err = Frame::decode(&[0x00, 0xb6, 0x00, 0x00, 0x01, 0x20]).unwrap_err();
    assert!(err.to_string().contains("canonical"), "{err}");
    assert_eq!(Frame::LinkPing { nonce: 54 }.encode(), [6, 0x36]);
    assert!(Frame::decode(&[6, 0xb6, 0x00]).is_err());
}

#[test]
fn a_key_that_is_not_a_point_is_refused() {
    let mut bytes = Frame::PeerDisconnected {
        session: SessionId(1),
        peer: key(2),
    }
    .encode();
    // The key's 33 bytes end the frame; 0x05 is no valid key prefix.
    let start = bytes.len() - 33;
    bytes[start] = 0x05;
    let err = Frame::decode(&bytes).unwrap_err();
    assert!(matches!(err, LinkError::Malformed(_)), "{err}");
}

#[test]
fn hellos_of_another_version_or_role_are_refused() {
    let front = Hello::new(Role::Front, "front-1");
    front.check(Role::Front).unwrap();
    let err = front.check(Role::Backend).unwrap_err();
    assert!(matches!(err, LinkError::Protocol(_)), "{err}");
    let newer = Hello {
        version: LINK_VERSION + 1,
        ..front
    };
    let err = newer.check(Role::Front).unwrap_err();
    assert!(
        matches!(err, LinkError::Version { theirs, .. } if theirs == LINK_VERSION + 1),
        "{err}"
    );
    assert!(!err.is_transient());
}

#[test]
fn an_oversized_length_is_refused_before_the_frame_is_buffered() {
    let mut codec = LinkCodec::default();
    let mut src = BytesMut::new();
    src.extend_from_slice(&((MAX_FRAME_BYTES + 1) as u32).to_be_bytes());
    src.extend_from_slice(&[0; 16]);
    let err = codec.decode(&mut src).unwrap_err();
    assert!(matches!(err, LinkError::TooLarge { .. }), "{err}");

    let huge = Frame::PeerMessage {
        session: SessionId(1),
        peer: key(2),
        message: WireMessage {
            message_type: 128,
            body: vec![0; MAX_FRAME_BYTES],
        },
    };
    let err = LinkCodec::default()
        .encode(huge, &mut BytesMut::new())
        .unwrap_err();
    assert!(matches!(err, LinkError::TooLarge { .. }), "{err}");
}

#[test]
fn a_stream_that_ends_inside_a_frame_is_an_error() {
    let mut codec = LinkCodec::default();
    let mut src = BytesMut::new();
    codec
        .encode(Frame::LinkPing { nonce: 1 }, &mut src)
        .unwrap();
    src.truncate(src.len() - 1);
    assert!(codec.decode(&mut src).unwrap().is_none());
    let err = codec.decode_eof(&mut src).unwrap_err();
    assert!(
        err.to_string().contains("in the middle of a frame"),
        "{err}"
    );
}

#[tokio::test]
async fn frames_cross_a_stream_in_order() {
    let (a, b) = tokio::io::duplex(64);
    let mut sender = Framed::new(a, LinkCodec::default());
    let mut receiver = Framed::new(b, LinkCodec::default());
    let frames = one_of_each();
    let sent = frames.clone();
    let sending = tokio::spawn(async move {
        for frame in sent {
            sender.send(frame).await.unwrap();
        }
    });
    for expected in frames {
        assert_eq!(receiver.next().await.unwrap().unwrap(), expected);
    }
    sending.await.unwrap();
    assert!(receiver.next().await.is_none(), "the stream ends cleanly");
}

fn any_key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_filter_map("a valid secret key", |bytes| {
        SecretKey::from_slice(&bytes)
            .ok()
            .map(|secret| PublicKey::from_secret_key(&Secp256k1::new(), &secret))
    })
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), prop::bool::ANY, ".{0,40}").prop_map(|(version, front, name)| {
            Frame::Hello(Hello {
                version,
                role: if front { Role::Front } else { Role::Backend },
                name,
            })
        }),
        (
            any::<u64>(),
            any_key(),
            prop::collection::vec(any::<u8>(), 0..200),
            prop::bool::ANY
        )
            .prop_map(|(session, peer, init, inbound)| Frame::PeerConnected {
                session: SessionId(session),
                peer,
                init,
                inbound
            }),
        (any::<u64>(), any_key()).prop_map(|(session, peer)| Frame::PeerDisconnected {
            session: SessionId(session),
            peer
        }),
        (
            any::<u64>(),
            any_key(),
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(session, peer, message_type, body)| Frame::PeerMessage {
                session: SessionId(session),
                peer,
                message: WireMessage { message_type, body },
            }),
        (any::<u64>(), any_key())
            .prop_map(|(request, point)| Frame::EcdhRequest { request, point }),
        (any::<u64>(), any::<Option<[u8; 32]>>()).prop_map(|(request, shared_secret)| {
            Frame::EcdhResponse {
                request,
                shared_secret,
            }
        }),
        any::<u64>().prop_map(|nonce| Frame::LinkPing { nonce }),
        any::<u64>().prop_map(|nonce| Frame::LinkPong { nonce }),
        (
            any_key(),
            any::<[u8; 32]>(),
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(node_id, chain_hash, init_features, node_features)| {
                Frame::Active(ActiveBackend {
                    node_id,
                    chain_hash,
                    init_features,
                    node_features,
                })
            }),
        (
            any::<u64>(),
            any_key(),
            prop::collection::vec(any_wire_message(), 0..4),
            prop::bool::ANY
        )
            .prop_map(
                |(session, peer, mut messages, disconnect)| Frame::PeerEvent {
                    session: SessionId(session),
                    peer,
                    event: if disconnect {
                        PeerEvent::Disconnect {
                            last: messages.pop(),
                        }
                    } else {
                        PeerEvent::Send(messages)
                    },
                }
            ),
        (any_key(), ".{0,60}").prop_map(|(peer, address)| Frame::ConnectPeer { peer, address }),
        (any::<u64>(), any::<u64>()).prop_map(|(request, short_channel_id)| {
            Frame::FundingOutputRequest {
                request,
                short_channel_id,
            }
        }),
        (
            any::<u64>(),
            prop::option::of((any::<u64>(), prop::collection::vec(any::<u8>(), 0..40))),
            any::<bool>()
        )
            .prop_map(
                |(request, found, other_chain)| Frame::FundingOutputResponse {
                    request,
                    output: match found {
                        Some((value_sat, script_pubkey)) => Ok(FundingOutput {
                            value_sat,
                            script_pubkey
                        }),
                        None if other_chain => Err(FundingLookupFailure::UnknownChain),
                        None => Err(FundingLookupFailure::UnknownTx),
                    },
                }
            ),
        ".{0,60}".prop_map(|address| Frame::PublicAddress { address }),
        (
            prop::collection::vec(any::<u8>(), 0..300),
            prop::option::of(any::<u64>()),
            0..3u8
        )
            .prop_map(|(contents, capacity_sat, kind)| Frame::Gossip(match kind {
                0 => VerifiedGossip::ChannelAnnouncement {
                    contents,
                    capacity_sat
                },
                1 => VerifiedGossip::ChannelUpdate { contents },
                _ => VerifiedGossip::NodeAnnouncement { contents },
            })),
        (any_wire_message(), prop::option::of(any_wire_message())).prop_map(
            |(announcement, update)| Frame::Broadcast(Broadcast::ChannelAnnouncement {
                announcement,
                update
            })
        ),
    ]
}

fn any_wire_message() -> impl Strategy<Value = WireMessage> {
    (any::<u16>(), prop::collection::vec(any::<u8>(), 0..300))
        .prop_map(|(message_type, body)| WireMessage { message_type, body })
}

proptest! {
    #[test]
    fn any_frames_round_trip_through_the_codec(frames in prop::collection::vec(any_frame(), 1..8)) {
        let mut codec = LinkCodec::default();
        let mut stream = BytesMut::new();
        for frame in &frames {
            codec.encode(frame.clone(), &mut stream).unwrap();
        }
        let mut decoded = Vec::new();
        while let Some(frame) = codec.decode(&mut stream).unwrap() {
            decoded.push(frame);
        }
        prop_assert_eq!(decoded, frames);
        prop_assert!(stream.is_empty());
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = Frame::decode(&bytes);
        let mut codec = LinkCodec::default();
        let mut stream = BytesMut::from(&bytes[..]);
        // Stops at the first error or when the bytes run out.
        while let Ok(Some(_)) = codec.decode(&mut stream) {}
    }

    #[test]
    fn a_flipped_byte_is_an_error_or_another_valid_frame(frame in any_frame(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = frame.encode();
        let at = at.index(bytes.len());
        bytes[at] ^= 1 << bit;
        if let Ok(decoded) = Frame::decode(&bytes) {
            // A postcard encoding is canonical: different bytes, different frame.
            prop_assert_ne!(decoded, frame);
        }
    }
}
