//! Two nodes on the regtest chain: fund, open, pay both ways, keysend, close.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::Amount;
use lightning::types::payment::PaymentHash;
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;
use phalanx_node::Node;
use phalanx_node::payments::{Direction, PaymentStatus};

const PAYMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Pays `count` invoices of `amount_msat` from `payer` to `payee`, `parallel` at a time;
/// returns the total paid.
async fn pay_invoices(
    payer: &Arc<Node>,
    payee: &Arc<Node>,
    count: usize,
    amount_msat: u64,
    parallel: usize,
) -> u64 {
    let mut total = 0;
    for chunk in (0..count).collect::<Vec<_>>().chunks(parallel) {
        let mut handles = Vec::new();
        for i in chunk {
            let (payer, payee) = (Arc::clone(payer), Arc::clone(payee));
            let description = format!("payment {i}");
            handles.push(tokio::spawn(async move {
                let invoice = payee
                    .create_invoice(Some(amount_msat), &description, None)
                    .await
                    .unwrap();
                let id = payer.pay_invoice(&invoice.to_string(), None).await.unwrap();
                let record = payer.wait_payment(id, PAYMENT_TIMEOUT).await.unwrap();
                assert_eq!(record.status, PaymentStatus::Succeeded, "{record:?}");
                assert_eq!(
                    record.fee_msat.unwrap_or(0),
                    0,
                    "a direct payment pays no routing fee"
                );
                PaymentHash(invoice.payment_hash().0)
            }));
        }
        for handle in handles {
            let hash = handle.await.unwrap();
            // The payee recorded it as received, once.
            wait_for(
                "the payee to record the payment",
                PAYMENT_TIMEOUT,
                || async {
                    let received = payee.payments_by_hash(hash);
                    (received.len() == 1 && received[0].status == PaymentStatus::Succeeded)
                        .then_some(())
                },
            )
            .await;
            total += amount_msat;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_open_pay_both_ways_keysend_and_close_cooperatively() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = start(&node_config(&regtest, dir.path(), "alice", None)).await;
    let bob = start(&node_config(&regtest, dir.path(), "bob", None)).await;
    assert_ne!(alice.node_id(), bob.node_id());

    fund(&regtest, &alice, Amount::from_sat(2_000_000)).await;
    assert_eq!(alice.onchain_balance().confirmed_sat, 2_000_000);

    let channel_sat = 1_000_000;
    let push_msat = 300_000_000;
    open_channel(&regtest, &alice, &bob, channel_sat, push_msat).await;
    let wallet_after_funding = alice.onchain_balance().total_sat;
    assert!(
        wallet_after_funding < 1_000_000 && wallet_after_funding > 990_000,
        "{wallet_after_funding}"
    );

    let to_bob = pay_invoices(&alice, &bob, 100, 1_000_000, 10).await;
    let to_alice = pay_invoices(&bob, &alice, 100, 500_000, 10).await;

    // Keysend, recorded on both sides under the same hash.
    let id = alice.keysend(bob.node_id(), 2_500_000).await.unwrap();
    let sent = alice.wait_payment(id, PAYMENT_TIMEOUT).await.unwrap();
    assert_eq!(sent.status, PaymentStatus::Succeeded, "{sent:?}");
    wait_for("bob to record the keysend", PAYMENT_TIMEOUT, || async {
        bob.inbound_payment(sent.hash().unwrap())
            .filter(|r| r.status == PaymentStatus::Succeeded)
    })
    .await;
    let keysend = 2_500_000;

    // One invoice paid by two concurrent calls (a client's retry racing its first try):
    // both get the one payment, which is never recorded as failed, and is paid once.
    let twice = 1_500_000;
    let invoice = bob
        .create_invoice(Some(twice), "paid by two calls", None)
        .await
        .unwrap()
        .to_string();
    let (first, second) = tokio::join!(
        alice.pay_invoice(&invoice, None),
        alice.pay_invoice(&invoice, None)
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first, second);
    let status = alice.outbound_payment(first).unwrap().status;
    assert_ne!(
        status,
        PaymentStatus::Failed,
        "an in-flight payment recorded as failed"
    );
    let paid = alice.wait_payment(first, PAYMENT_TIMEOUT).await.unwrap();
    assert_eq!(paid.status, PaymentStatus::Succeeded, "{paid:?}");
    wait_for("bob to record the payment", PAYMENT_TIMEOUT, || async {
        bob.inbound_payment(paid.hash().unwrap())
            .filter(|r| r.status == PaymentStatus::Succeeded)
    })
    .await;

    let bob_msat = push_msat + to_bob + keysend + twice - to_alice;
    assert_eq!(
        alice
            .list_payments()
            .iter()
            .filter(|p| p.direction == Direction::Outbound)
            .count(),
        102
    );
    assert_eq!(
        bob.list_payments()
            .iter()
            .filter(|p| p.direction == Direction::Inbound && p.status == PaymentStatus::Succeeded)
            .count(),
        102
    );

    // An API put in front of a node built elsewhere (as the devnet does) serves that
    // node's own metrics: its store transactions and payments, not a fresh set of zeros.
    let service = phalanx_node::control::NodeService::new();
    assert!(service.set_node(Arc::clone(&alice)).is_ok());
    let text = phalanx_api::NodeControl::metrics(&service);
    let committed = metric(
        &text,
        "phalanx_store_transactions_total{outcome=\"committed\"}",
    );
    assert!(
        committed >= 102,
        "{committed} store transactions after 102 payments:\n{text}"
    );
    assert_eq!(
        metric(
            &text,
            "phalanx_payments{direction=\"outbound\",status=\"succeeded\"}"
        ),
        102,
        "{text}"
    );
    assert_eq!(metric(&text, "phalanx_lease_held"), 1, "{text}");
    // What the store keeps, by kind: the manager, the monitors' updates and the payment
    // records were all written; no label names a channel or a payment.
    for kind in ["manager", "monitor_updates", "payments"] {
        let name = format!("phalanx_store_written_bytes_total{{kind=\"{kind}\"}}");
        assert!(metric(&text, &name) > 0, "no bytes of {kind}:\n{text}");
    }
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("phalanx_store_written_bytes_total{kind=\""))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(
        kinds.iter().all(|kind| kind.len() < 32),
        "a channel's or a payment's name as a label: {kinds:?}"
    );

    // Cooperative close: the funds come back on chain to both wallets.
    let channel = alice.list_channels().pop().unwrap();
    let funding = channel.funding_txo.unwrap();
    alice
        .close_channel(&channel.channel_id, false)
        .await
        .unwrap();
    let closing = wait_for(
        "the closing transaction in the mempool",
        Duration::from_secs(30),
        || async {
            let chain = regtest.chain();
            chain
                .history()
                .transactions()
                .iter()
                .find(|seen| {
                    seen.tx
                        .input
                        .iter()
                        .any(|i| i.previous_output == funding.into_bitcoin_outpoint())
                })
                .map(|seen| seen.tx.clone())
        },
    )
    .await;
    mine(&regtest, &[&alice, &bob], 1).await;
    wait_for(
        "both sides to forget the channel",
        Duration::from_secs(30),
        || async {
            (alice.list_channels().is_empty() && bob.list_channels().is_empty()).then_some(())
        },
    )
    .await;

    let bob_sat = bob_msat / 1000;
    let outputs: u64 = closing.output.iter().map(|o| o.value.to_sat()).sum();
    let closing_fee = channel_sat - outputs;
    assert!(
        closing_fee > 0 && closing_fee < 10_000,
        "closing fee {closing_fee}"
    );
    let values: Vec<u64> = closing.output.iter().map(|o| o.value.to_sat()).collect();
    assert!(
        values.contains(&bob_sat),
        "bob's {bob_sat} sat not among the closing outputs {values:?}"
    );
    let alice_sat = outputs - bob_sat;
    assert_eq!(
        alice_sat,
        (channel_sat * 1000 - bob_msat) / 1000 - closing_fee,
        "the funder pays the closing fee"
    );

    wait_for(
        "bob's wallet to hold his channel balance",
        Duration::from_secs(30),
        || async { (bob.onchain_balance().confirmed_sat == bob_sat).then_some(()) },
    )
    .await;
    wait_for(
        "alice's wallet to hold her channel balance",
        Duration::from_secs(30),
        || async {
            (alice.onchain_balance().confirmed_sat == wallet_after_funding + alice_sat)
                .then_some(())
        },
    )
    .await;

    alice.shutdown().await;
    bob.shutdown().await;
}

/// The value of the sample `name` (with its labels) in Prometheus text; 0 if absent.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}
