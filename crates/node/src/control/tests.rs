//! Tests of the parent module.

use super::*;
use phalanx_store::StoreError;

fn peer() -> PublicKey {
    PublicKey::from_str("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
        .unwrap()
}

#[test]
fn node_errors_map_to_their_codes() {
    let io = |kind| lightning::io::Error::new(kind, "x");
    let cases: Vec<(NodeError, ErrorCode)> = vec![
        (
            NodeError::InvalidInvoice("bad".into()),
            ErrorCode::InvalidInvoice,
        ),
        (
            NodeError::InsufficientFunds("poor".into()),
            ErrorCode::InsufficientFunds,
        ),
        (
            NodeError::UnknownChannel("00".into()),
            ErrorCode::UnknownChannel,
        ),
        (
            NodeError::UnknownPayment("00".into()),
            ErrorCode::UnknownPayment,
        ),
        (NodeError::PeerNotConnected(peer()), ErrorCode::UnknownPeer),
        (
            NodeError::Peer(PeerError::Unreachable {
                node_id: peer(),
                address: "127.0.0.1:1".parse().unwrap(),
                reason: "refused".into(),
            }),
            ErrorCode::PeerUnreachable,
        ),
        (
            NodeError::Peer(PeerError::Store {
                node_id: peer(),
                source: io(lightning::io::ErrorKind::TimedOut),
            }),
            ErrorCode::StoreUnavailable,
        ),
        (
            NodeError::Store(StoreError::Transient {
                op: "write",
                message: "down".into(),
                source: None,
            }),
            ErrorCode::StoreUnavailable,
        ),
        (
            NodeError::Store(StoreError::fenced("epoch 3 < 4")),
            ErrorCode::NotActive,
        ),
        (
            NodeError::Persist(io(lightning::io::ErrorKind::TimedOut)),
            ErrorCode::StoreUnavailable,
        ),
        (
            NodeError::Persist(StoreError::fenced("stale").into()),
            ErrorCode::NotActive,
        ),
        (
            NodeError::Chain(ChainError::Unreachable {
                url: "http://127.0.0.1:1".into(),
                message: "refused".into(),
            }),
            ErrorCode::ChainUnavailable,
        ),
        (NodeError::Stopped("fenced".into()), ErrorCode::NotActive),
        (
            NodeError::Wallet(WalletError::InvalidAddress("tb1...".into())),
            ErrorCode::InvalidAddress,
        ),
        (
            NodeError::Wallet(WalletError::InsufficientFunds {
                needed_sat: 2,
                available_sat: 1,
            }),
            ErrorCode::InsufficientFunds,
        ),
        (
            NodeError::Wallet(WalletError::Build("dust".into())),
            ErrorCode::InvalidRequest,
        ),
        (
            NodeError::Wallet(WalletError::Store(io(
                lightning::io::ErrorKind::PermissionDenied,
            ))),
            ErrorCode::NotActive,
        ),
        (
            NodeError::Wallet(WalletError::Sign("no key".into())),
            ErrorCode::Internal,
        ),
        (
            NodeError::PaymentFailed("already paid".into()),
            ErrorCode::PaymentFailed,
        ),
        (
            NodeError::InvalidRequest("nope".into()),
            ErrorCode::InvalidRequest,
        ),
        (
            NodeError::Lightning {
                op: "open",
                err: APIError::APIMisuseError {
                    err: "too small".into(),
                },
            },
            ErrorCode::InvalidRequest,
        ),
        (
            NodeError::Lightning {
                op: "close",
                err: APIError::ChannelUnavailable {
                    err: "peer gone".into(),
                },
            },
            ErrorCode::InvalidRequest,
        ),
        (
            NodeError::Lightning {
                op: "close",
                err: APIError::MonitorUpdateInProgress,
            },
            ErrorCode::StoreUnavailable,
        ),
        (
            NodeError::Invoice(lightning_invoice::SignOrCreationError::SignError(())),
            ErrorCode::Internal,
        ),
    ];
    for (err, code) in cases {
        assert_eq!(error_code(&err), code, "{err:?}");
    }
}

#[test]
fn channel_states_follow_the_channel_life() {
    let facts = |is_channel_ready, funded, shutting_down| ChannelFacts {
        is_channel_ready,
        funded,
        shutting_down,
    };
    // Negotiating: no funding transaction.
    assert_eq!(
        channel_state(facts(false, false, false)),
        ChannelState::PendingOpen
    );
    // Funded, waiting for confirmations (or the peer's channel_ready).
    assert_eq!(
        channel_state(facts(false, true, false)),
        ChannelState::AwaitingConfirmation
    );
    // Ready, usable or not (a disconnected peer): usability is its own field.
    assert_eq!(channel_state(facts(true, true, false)), ChannelState::Ready);
    // Shutting down, before or after being ready.
    assert_eq!(
        channel_state(facts(true, true, true)),
        ChannelState::Closing
    );
    assert_eq!(
        channel_state(facts(false, true, true)),
        ChannelState::Closing
    );
}

#[test]
fn short_channel_ids_read_block_tx_output() {
    let scid = (700_123u64 << 40) | (42 << 16) | 1;
    assert_eq!(format_scid(scid), "700123x42x1");
}

#[test]
fn held_payments_show_as_pending() {
    let mut record = PaymentRecord::pending(Direction::Inbound, "aa".into(), "aa".into());
    record.status = PaymentStatus::Accepted;
    record.amount_msat = Some(5);
    let dto = payment(record);
    assert_eq!(dto.status, phalanx_api::PaymentStatus::Pending);
    assert_eq!(dto.direction, PaymentDirection::Inbound);
    assert_eq!(dto.amount_msat, Some(5));
}

#[test]
fn without_a_node_the_service_waits_and_refuses() {
    let service = NodeService::new();
    assert_eq!(service.state(), ServerState::WaitingToStart);
    let err = service.active().err().unwrap();
    assert_eq!(err.code, ErrorCode::NotActive);
    assert_eq!(err.state, Some(ServerState::WaitingToStart));
    service.set_stopping();
    assert_eq!(service.state(), ServerState::WaitingToStart);
}

#[test]
fn a_service_whose_lease_is_won_reports_loading_and_refuses() {
    let service = NodeService::new();
    service.set_loading();
    assert_eq!(service.state(), ServerState::RpcActive);
    let err = service.active().err().unwrap();
    assert_eq!(err.code, ErrorCode::NotActive);
    assert_eq!(err.state, Some(ServerState::RpcActive));
    // Stopping while loading is the standby's state again.
    service.set_stopping();
    assert_eq!(service.state(), ServerState::WaitingToStart);
}
