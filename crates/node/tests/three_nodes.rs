//! Three nodes A-B-C: A pays C through B, and B earns its forwarding fee.

use std::time::Duration;

use bitcoin::Amount;
use lightning::types::payment::PaymentHash;
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;
use phalanx_node::payments::PaymentStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pays_c_through_b_and_b_earns_the_fee() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = start(&node_config(&regtest, dir.path(), "alice", None)).await;
    let bob = start(&node_config(&regtest, dir.path(), "bob", None)).await;
    let carol = start(&node_config(&regtest, dir.path(), "carol", None)).await;
    fund(&regtest, &alice, Amount::from_sat(1_000_000)).await;
    fund(&regtest, &bob, Amount::from_sat(1_000_000)).await;
    open_channel(&regtest, &alice, &bob, 500_000, 0).await;
    open_channel(&regtest, &bob, &carol, 500_000, 0).await;
    // Alice and Carol never connect: every payment goes through Bob.
    assert!(
        alice
            .list_peers()
            .iter()
            .all(|peer| peer.node_id != carol.node_id())
    );

    let mut fees_paid = 0;
    let amount_msat = 20_000_000;
    for i in 0..5 {
        let invoice = carol
            .create_invoice(Some(amount_msat), &format!("through bob {i}"), None)
            .await
            .unwrap();
        let id = alice.pay_invoice(&invoice.to_string(), None).await.unwrap();
        let paid = alice
            .wait_payment(id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(paid.status, PaymentStatus::Succeeded, "{paid:?}");
        let fee = paid.fee_msat.expect("a routed payment reports its fee");
        assert!(fee > 0, "bob forwards for a fee");
        fees_paid += fee;
        let hash = PaymentHash(invoice.payment_hash().0);
        let received = wait_for(
            "carol to record the payment",
            Duration::from_secs(30),
            || async {
                carol
                    .inbound_payment(hash)
                    .filter(|r| r.status == PaymentStatus::Succeeded)
            },
        )
        .await;
        assert_eq!(
            received.amount_msat,
            Some(amount_msat),
            "carol receives the invoice amount, not less"
        );
    }
    let (earned, forwarded) = wait_for(
        "bob to account the forwards",
        Duration::from_secs(30),
        || async {
            let stats = bob.forwarding_stats();
            (stats.payments == 5).then_some((stats.fees_msat, stats.payments))
        },
    )
    .await;
    assert_eq!(forwarded, 5);
    assert_eq!(
        earned, fees_paid,
        "bob earns exactly what alice paid in fees"
    );
    // Bob's balance on the Alice side grew by amount + fee; on the Carol side it shrank by amount.
    let bob_from_alice = channel_balance_msat(&bob, alice.node_id());
    assert_eq!(bob_from_alice, 5 * amount_msat + fees_paid);

    for node in [alice, bob, carol] {
        node.shutdown().await;
    }
}
