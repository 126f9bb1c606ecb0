//! Justice: a counterparty that broadcasts a revoked commitment loses the channel to a
//! penalty transaction.

use std::time::Duration;

use bitcoin::Amount;
use lightning::util::ser::Writeable;
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;
use phalanx_node::config::SeedSource;
use phalanx_node::payments::PaymentStatus;
use phalanx_secrets::{FileSeedProvider, SeedProvider};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_commitment_on_chain_is_punished() {
    punish(false).await;
}

/// The closing output of a cooperative close pays Bob's wallet; it must not keep the
/// sweeper from claiming his side of a later cheat (it did, every sweep failing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_commitment_after_a_cooperative_close_is_punished() {
    punish(true).await;
}

async fn punish(cooperative_close_first: bool) {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mallory_config = node_config(&regtest, dir.path(), "mallory", None);
    let mallory = start(&mallory_config).await;
    let bob = start(&node_config(&regtest, dir.path(), "bob", None)).await;
    fund(&regtest, &mallory, Amount::from_sat(1_000_000)).await;
    if cooperative_close_first {
        // A channel that gives Bob 100_000 sat, closed cooperatively, deep enough that
        // LDK hands its closing output to the node.
        open_channel(&regtest, &mallory, &bob, 250_000, 100_000_000).await;
        let first = bob.list_channels().pop().unwrap();
        let wallet_before = bob.onchain_balance().total_sat;
        bob.close_channel(&first.channel_id, false).await.unwrap();
        wait_for("the cooperative close", WAIT, || async {
            regtest.mine(1, None);
            let closed = bob.list_channels().is_empty() && mallory.list_channels().is_empty();
            let paid = bob.onchain_balance().confirmed_sat >= wallet_before + 99_000;
            (closed && paid).then_some(())
        })
        .await;
        mine(&regtest, &[&mallory, &bob], 10).await;
    }
    let channel_sat = 500_000;
    open_channel(&regtest, &mallory, &bob, channel_sat, 0).await;

    // Mallory keeps a copy of her monitor while all the channel is hers...
    let channel = mallory.list_channels().pop().unwrap();
    let snapshot = mallory
        .chain_monitor()
        .get_monitor(channel.channel_id)
        .unwrap()
        .encode();
    // ...then pays Bob, revoking that state.
    for i in 0..4 {
        let invoice = bob
            .create_invoice(Some(50_000_000), &format!("honest {i}"), None)
            .await
            .unwrap();
        let id = mallory
            .pay_invoice(&invoice.to_string(), None)
            .await
            .unwrap();
        assert_eq!(
            mallory.wait_payment(id, WAIT).await.unwrap().status,
            PaymentStatus::Succeeded
        );
    }
    let bob_wallet_before = bob.onchain_balance().total_sat;
    mallory.shutdown().await;

    // The cheat: the revoked commitment, signed with Mallory's keys, on chain.
    let SeedSource::File { path } = &mallory_config.seed.source else {
        panic!("the harness gives nodes seed files");
    };
    let seed = FileSeedProvider::new(path.clone(), false)
        .seed()
        .await
        .unwrap();
    let revoked = phalanx_cheater::revoked_commitment(&snapshot, &seed).unwrap();
    assert!(!revoked.is_empty());
    let commitment = revoked[0].clone();
    bob.chain()
        .broadcast(vec![commitment.clone()])
        .await
        .expect("the revoked commitment is valid on chain");
    mine(&regtest, &[&bob], 1).await;

    // Bob's monitor claims Mallory's revoked output with a justice transaction.
    let justice = wait_for("a justice transaction", WAIT, || async {
        regtest.mine(1, None);
        let chain = regtest.chain();
        chain
            .history()
            .transactions()
            .iter()
            .find(|seen| {
                seen.tx
                    .input
                    .iter()
                    .any(|i| i.previous_output.txid == commitment.compute_txid())
            })
            .map(|seen| seen.tx.clone())
    })
    .await;
    let to_mallory = commitment
        .output
        .iter()
        .map(|o| o.value.to_sat())
        .max()
        .unwrap();
    assert!(
        to_mallory > 250_000,
        "the revoked state gave Mallory the channel ({to_mallory} sat)"
    );
    assert!(justice.output.iter().map(|o| o.value.to_sat()).sum::<u64>() > 0);

    // Everything ends in Bob's wallet: his 200_000 and Mallory's revoked balance.
    let bob_wallet = wait_for("bob's wallet to hold the channel", WAIT, || async {
        regtest.mine(1, None);
        let balance = bob.onchain_balance();
        let done = bob.chain_monitor().get_claimable_balances(&[]).is_empty()
            && balance.unconfirmed_sat == 0;
        (done && balance.total_sat > bob_wallet_before + 450_000).then_some(balance.total_sat)
    })
    .await;
    assert!(
        bob_wallet < bob_wallet_before + channel_sat,
        "fees were paid: {bob_wallet}"
    );
    assert!(bob.list_channels().is_empty(), "the channel is closed");
    bob.shutdown().await;
}
