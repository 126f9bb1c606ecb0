//! BOLT 12 offers with a node whose peer reaches it only through a keyless front: every
//! invoice request and invoice is an onion message that crosses the front, which cannot
//! read it (it holds no key) and hands it to the backend's onion messenger; what the
//! backend sends back waits at the front until its `PeerManager` pulls it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bitcoin::Amount;
use phalanx_devnet::harness;
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;
use phalanx_node::Node;
use phalanx_node::NodeError;
use phalanx_node::payments::{PaymentRecord, PaymentStatus};

mod common;
use common::{front, fronted_bob};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Pays `offer` from `payer` and waits for the outcome; the payee must have received it.
async fn pay_offer(
    payer: &Node,
    payee: &Node,
    offer: &str,
    amount_msat: Option<u64>,
) -> PaymentRecord {
    let id = payer.pay_offer(offer, amount_msat).await.unwrap();
    let record = payer.wait_payment(id, TIMEOUT).await.unwrap();
    assert_eq!(record.status, PaymentStatus::Succeeded, "{record:?}");
    assert_eq!(record.offer.as_deref(), Some(offer));
    let hash = record.hash().expect("the hash, learnt from the invoice");
    let received = payee
        .wait_inbound(hash, TIMEOUT)
        .await
        .expect("the payee recorded the payment");
    assert_eq!(received.status, PaymentStatus::Succeeded, "{received:?}");
    // At least what was paid: when the payer is the introduction node of the payee's
    // blinded path, the fee the path budgets for it reaches the payee.
    assert!(
        received.amount_msat >= record.amount_msat,
        "{received:?} {record:?}"
    );
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offers_are_paid_both_ways_through_a_keyless_front() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = start(&node_config(&regtest, dir.path(), "alice", None)).await;
    let (bob, ca) = fronted_bob(&regtest, dir.path()).await;
    let front = front(&ca, "front-1", &bob).await;
    fund(&regtest, &alice, Amount::from_sat(2_000_000)).await;
    harness::open_channel_at(
        regtest.control(),
        &alice,
        &bob,
        front.address(),
        1_000_000,
        300_000_000,
    )
    .await
    .unwrap();

    // Alice pays Bob's offer: her invoice request goes in through the front, Bob's
    // invoice comes out through it.
    let offer = bob
        .create_offer(Some(50_000), "coffee")
        .unwrap()
        .to_string();
    let first = pay_offer(&alice, &bob, &offer, None).await;
    assert_eq!(first.amount_msat, Some(50_000));
    // An offer is paid again and again; each payment is its own.
    let second = pay_offer(&alice, &bob, &offer, None).await;
    assert_ne!(first.payment_hash, second.payment_hash);

    // Bob pays Alice's offer of any amount: his invoice request goes out through the
    // front, her invoice comes in through it.
    let tips = alice.create_offer(None, "tips").unwrap().to_string();
    let paid = pay_offer(&bob, &alice, &tips, Some(20_000)).await;
    assert_eq!(paid.amount_msat, Some(20_000));

    let counters = front.state().counters();
    let (to_backend, from_backend, dropped) = (
        counters.onion_to_backend.load(Ordering::Relaxed),
        counters.onion_from_backend.load(Ordering::Relaxed),
        counters.onion_dropped.load(Ordering::Relaxed),
    );
    // Two invoice requests and an invoice in, two invoices and a request out (at least:
    // LDK may send a request by more than one path).
    assert!(
        to_backend >= 3,
        "{to_backend} onion messages to the backend"
    );
    assert!(
        from_backend >= 3,
        "{from_backend} onion messages from the backend"
    );
    assert_eq!(dropped, 0);

    // Offers that cannot be paid are refused before anything is recorded or sent.
    let before = bob.list_payments().len();
    for (offer, amount, expected) in [
        ("lno1notanoffer", None, "invalid offer"),
        ("", None, "invalid offer"),
        (offer.as_str(), Some(1_000), "the offer has an amount"),
        (tips.as_str(), None, "the offer has no amount"),
        (tips.as_str(), Some(0), "must be positive"),
    ] {
        let err = bob.pay_offer(offer, amount).await.unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(expected),
            "{offer:?} {amount:?}: {message}"
        );
    }
    assert!(matches!(
        bob.create_offer(Some(0), "nothing"),
        Err(NodeError::InvalidRequest(_))
    ));
    assert_eq!(bob.list_payments().len(), before, "nothing recorded");
}
