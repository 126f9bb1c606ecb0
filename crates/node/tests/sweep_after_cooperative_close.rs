//! Outputs of a force close are swept after the node had a cooperative close: the
//! closing output already pays the wallet and must not poison every later sweep.

use std::time::Duration;

use bitcoin::Amount;
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_force_close_after_a_cooperative_close_is_swept_to_the_wallet() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = start(&node_config(&regtest, dir.path(), "alice", None)).await;
    let bob = start(&node_config(&regtest, dir.path(), "bob", None)).await;
    fund(&regtest, &alice, Amount::from_sat(1_000_000)).await;
    // Bob's force close needs his wallet for the anchor's fee.
    fund(&regtest, &bob, Amount::from_sat(200_000)).await;
    open_channel(&regtest, &alice, &bob, 200_000, 0).await;
    let first = alice.list_channels().pop().unwrap();

    // A cooperative close, deep enough that LDK hands its output to the node.
    alice.close_channel(&first.channel_id, false).await.unwrap();
    wait_for("the cooperative close", WAIT, || async {
        regtest.mine(1, None);
        alice.list_channels().is_empty().then_some(())
    })
    .await;
    mine(&regtest, &[&alice, &bob], 10).await;

    // A second channel, force-closed by Bob: Alice's side (to_remote) is hers to sweep.
    open_channel(&regtest, &alice, &bob, 300_000, 0).await;
    let second = bob.list_channels().pop().unwrap();
    let wallet_before = alice.onchain_balance().total_sat;
    bob.close_channel(&second.channel_id, true).await.unwrap();
    let swept = wait_for("alice's side swept to her wallet", WAIT, || async {
        mine(&regtest, &[&alice, &bob], 1).await;
        let balance = alice.onchain_balance();
        (claimable_balances(&alice) == 0
            && balance.unconfirmed_sat == 0
            && balance.total_sat > wallet_before + 290_000)
            .then_some(balance.total_sat - wallet_before)
    })
    .await;
    assert!(swept < 300_000, "swept {swept}");

    alice.shutdown().await;
    bob.shutdown().await;
}
