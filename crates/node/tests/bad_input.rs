//! Bad input gets a clear error and changes nothing.

use std::time::Duration;

use bitcoin::Amount;
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use lightning::ln::channelmanager::PaymentId;
use lightning::ln::types::ChannelId;
use phalanx_api::ErrorCode;
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;
use phalanx_node::NodeError;
use phalanx_node::control::error_code;
use phalanx_node::payments::{Direction, PaymentStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_refused_and_change_nothing() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = start(&node_config(&regtest, dir.path(), "alice", None)).await;
    let bob = start(&node_config(&regtest, dir.path(), "bob", None)).await;
    fund(&regtest, &alice, Amount::from_sat(300_000)).await;
    open_channel(&regtest, &alice, &bob, 200_000, 0).await;
    let channels_before = alice.list_channels().len();
    let payments_before = alice.list_payments();
    let wallet_before = alice.onchain_balance();

    // Malformed invoices.
    for garbage in [
        "",
        "lnbc1garbage",
        "not an invoice at all",
        &"x".repeat(5000),
    ] {
        let err = alice.pay_invoice(garbage, None).await.unwrap_err();
        assert!(
            matches!(err, NodeError::InvalidInvoice(_)),
            "{garbage:.20}: {err}"
        );
    }
    // A valid invoice for another network.
    let mainnet = mainnet_invoice();
    let err = alice.pay_invoice(&mainnet, None).await.unwrap_err();
    assert!(
        matches!(&err, NodeError::InvalidInvoice(m) if m.contains("bitcoin")),
        "{err}"
    );
    // Our own invoice.
    let own = alice
        .create_invoice(Some(1_000), "self", None)
        .await
        .unwrap();
    let err = alice.pay_invoice(&own.to_string(), None).await.unwrap_err();
    assert!(matches!(err, NodeError::InvalidInvoice(_)), "{err}");
    // A zero-amount invoice without an amount, and an amount given twice.
    let open = bob.create_invoice(None, "any amount", None).await.unwrap();
    let err = alice
        .pay_invoice(&open.to_string(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::InvalidRequest(_)), "{err}");
    let fixed = bob
        .create_invoice(Some(5_000), "fixed", None)
        .await
        .unwrap();
    let err = alice
        .pay_invoice(&fixed.to_string(), Some(6_000))
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::InvalidRequest(_)), "{err}");
    // More than the channel can carry: the payment fails, funds stay.
    let huge = bob
        .create_invoice(Some(10_000_000_000), "too much", None)
        .await
        .unwrap();
    let err = alice
        .pay_invoice(&huge.to_string(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::PaymentFailed(_)), "{err}");
    let failed = alice
        .outbound_payment(PaymentId(huge.payment_hash().0))
        .unwrap();
    assert_eq!(failed.status, PaymentStatus::Failed);

    // Unknown peers.
    let stranger =
        PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[9; 32]).unwrap());
    let err = alice.keysend(stranger, 1_000).await.unwrap_err();
    assert!(matches!(err, NodeError::PaymentFailed(_)), "{err}");
    let err = alice
        .open_channel(stranger, None, 50_000, 0, false)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::PeerNotConnected(_)), "{err}");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = alice.connect_peer(stranger, closed_port).await.unwrap_err();
    assert!(matches!(err, NodeError::Peer(_)), "{err}");
    assert!(matches!(
        alice.disconnect_peer(stranger).unwrap_err(),
        NodeError::PeerNotConnected(_)
    ));

    // Amounts over the balance.
    let err = alice
        .open_channel(bob.node_id(), None, 10_000_000, 0, false)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::InsufficientFunds(_)), "{err}");
    let err = alice
        .open_channel(bob.node_id(), None, 50_000, 60_000_000, false)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::InvalidRequest(_)), "{err}");
    // A channel LDK itself refuses (under its 1000 sat minimum) is the caller's mistake,
    // not the node's failure: `invalid_request`, never `internal`.
    let err = alice
        .open_channel(bob.node_id(), None, 500, 0, false)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Lightning { .. }), "{err}");
    assert_eq!(error_code(&err), ErrorCode::InvalidRequest, "{err}");
    let address = bob.new_address().unwrap().to_string();
    let err = alice
        .send_onchain(&address, Some(Amount::from_sat(50_000_000)), None)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Wallet(_)), "{err}");
    let err = alice
        .send_onchain("bc1qnotanaddress", Some(Amount::from_sat(1_000)), None)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::Wallet(_)), "{err}");
    // Unknown channels.
    assert!(matches!(
        alice
            .close_channel(&ChannelId([0; 32]), false)
            .await
            .unwrap_err(),
        NodeError::UnknownChannel(_)
    ));
    // A channel id that is not 32 bytes of hex never reaches the node: the API refuses
    // it (phalanx-api's `bad_requests_are_invalid_request_json`).

    // Nothing changed: the channel, the wallet, and the payments (but the one failed attempt).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alice.list_channels().len(), channels_before);
    assert!(alice.list_channels().iter().all(|c| c.is_usable));
    assert_eq!(alice.onchain_balance().total_sat, wallet_before.total_sat);
    let new_payments: Vec<_> = alice
        .list_payments()
        .into_iter()
        .filter(|p| p.direction == Direction::Outbound && !payments_before.contains(p))
        .collect();
    assert!(
        new_payments
            .iter()
            .all(|p| p.status == PaymentStatus::Failed),
        "{new_payments:?}"
    );

    // And the node still works.
    let invoice = bob
        .create_invoice(Some(10_000), "still fine", None)
        .await
        .unwrap();
    let id = alice.pay_invoice(&invoice.to_string(), None).await.unwrap();
    assert_eq!(
        alice
            .wait_payment(id, Duration::from_secs(30))
            .await
            .unwrap()
            .status,
        PaymentStatus::Succeeded
    );
    alice.shutdown().await;
    bob.shutdown().await;
}

/// A correctly signed invoice for mainnet.
fn mainnet_invoice() -> String {
    use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[3; 32]).unwrap();
    InvoiceBuilder::new(Currency::Bitcoin)
        .description("elsewhere".into())
        .payment_hash(lightning_invoice::PaymentHash([1; 32]))
        .payment_secret(PaymentSecret([2; 32]))
        .current_timestamp()
        .min_final_cltv_expiry_delta(144)
        .amount_milli_satoshis(1_000)
        .build_signed(|hash| secp.sign_ecdsa_recoverable(hash, &key))
        .unwrap()
        .to_string()
}
