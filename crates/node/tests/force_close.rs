//! Force close with an HTLC in flight: the HTLC is resolved on chain, and every output
//! comes back to the wallets (the broadcaster's after the CSV delay, through the sweeper).

use std::time::Duration;

use bitcoin::Amount;
use lightning::types::payment::{PaymentHash, PaymentPreimage};
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;
use phalanx_node::payments::PaymentStatus;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_close_resolves_the_in_flight_htlc_on_chain_and_sweeps_to_the_wallet() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = start(&node_config(&regtest, dir.path(), "alice", None)).await;
    let bob = start(&node_config(&regtest, dir.path(), "bob", None)).await;
    fund(&regtest, &alice, Amount::from_sat(1_000_000)).await;
    // Bob needs coins too: with anchor channels his HTLC claims are fee-bumped from his wallet.
    fund(&regtest, &bob, Amount::from_sat(200_000)).await;
    open_channel(&regtest, &alice, &bob, 500_000, 0).await;

    // An HTLC Bob holds (a hold invoice), in flight when Alice force-closes.
    let preimage = PaymentPreimage([7; 32]);
    let hash: PaymentHash = preimage.into();
    let htlc_msat = 50_000_000;
    let invoice = bob
        .create_hold_invoice(Some(htlc_msat), hash, "held", None)
        .await
        .unwrap();
    let id = alice.pay_invoice(&invoice.to_string(), None).await.unwrap();
    wait_for("bob to hold the HTLC", WAIT, || async {
        bob.inbound_payment(hash)
            .filter(|r| r.status == PaymentStatus::Accepted)
    })
    .await;
    // Settling an invoice that is not held is refused.
    assert!(bob.settle_hold_invoice(PaymentPreimage([8; 32])).is_err());

    let alice_wallet_before = alice.onchain_balance().total_sat;
    let channel = alice.list_channels().pop().unwrap();
    let funding = channel.funding_txo.unwrap().into_bitcoin_outpoint();
    alice
        .close_channel(&channel.channel_id, true)
        .await
        .unwrap();
    let commitment = wait_for("alice's commitment transaction", WAIT, || async {
        let chain = regtest.chain();
        chain
            .history()
            .transactions()
            .iter()
            .find(|seen| seen.tx.input.iter().any(|i| i.previous_output == funding))
            .map(|seen| seen.tx.clone())
    })
    .await;
    // An anchor commitment pays no fee itself: it confirms through a child from the wallet.
    mine(&regtest, &[&alice, &bob], 1).await;
    wait_for("the commitment to confirm", WAIT, || async {
        let chain = regtest.chain();
        chain.confirmed_tx(&commitment.compute_txid()).map(|_| ())
    })
    .await;

    // Bob settles after the close: his monitor claims the HTLC on chain with the preimage,
    // and Alice learns the preimage from the chain.
    bob.settle_hold_invoice(preimage).unwrap();
    let paid = wait_for("alice to learn the preimage on chain", WAIT, || async {
        regtest.mine(1, None);
        alice
            .outbound_payment(id)
            .filter(|r| r.status == PaymentStatus::Succeeded)
    })
    .await;
    assert_eq!(
        paid.preimage.as_deref(),
        Some(preimage.to_string().as_str())
    );
    wait_for("bob to record the payment", WAIT, || async {
        bob.inbound_payment(hash)
            .filter(|r| r.status == PaymentStatus::Succeeded)
    })
    .await;

    // Past Alice's CSV delay (144 blocks): her to_local output is swept to her wallet, and
    // neither side has anything left to claim.
    mine(&regtest, &[&alice, &bob], 150).await;
    wait_for("every output to be claimed", WAIT, || async {
        regtest.mine(1, None);
        (claimable_balances(&alice) == 0 && claimable_balances(&bob) == 0).then_some(())
    })
    .await;
    let alice_wallet = wait_for(
        "alice's channel balance back in her wallet",
        WAIT,
        || async {
            regtest.mine(1, None);
            let balance = alice.onchain_balance();
            (balance.unconfirmed_sat == 0 && balance.total_sat > alice_wallet_before + 400_000)
                .then_some(balance.total_sat)
        },
    )
    .await;
    // Alice had 500_000 in the channel, paid 50_000 to Bob, and paid on-chain fees.
    let recovered = alice_wallet - alice_wallet_before;
    assert!(
        recovered > 430_000 && recovered < 450_000,
        "recovered {recovered}"
    );
    // Bob got the HTLC amount on chain, minus his claim's fees.
    let bob_wallet = bob.onchain_balance().total_sat;
    assert!(
        bob_wallet > 200_000 + 40_000 && bob_wallet < 200_000 + 50_000,
        "bob holds {bob_wallet}"
    );
    assert!(alice.list_channels().is_empty() && bob.list_channels().is_empty());

    alice.shutdown().await;
    bob.shutdown().await;
}
