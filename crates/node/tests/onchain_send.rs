//! On-chain sends whose outcome is unknown: kept, reported as such, and broadcast again,
//! also after a restart (a transaction recorded but never broadcast).

use std::time::Duration;

use bitcoin::Amount;
use bitcoin::hashes::Hash as _;
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;
use phalanx_node::NodeError;
use phalanx_testkit::proxy::{Mode, TcpProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_whose_answer_is_lost_is_kept_and_broadcast_again() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The node reaches bitcoind through a link the test can cut.
    let link = TcpProxy::to(regtest.addr()).await.unwrap();
    let mut config = node_config(&regtest, dir.path(), "alice", None);
    config.chain.rpc_url = format!("http://{}", link.addr());
    let alice = start(&config).await;
    fund(&regtest, &alice, Amount::from_sat(1_000_000)).await;
    // Someone else's address (anyone can spend it; nobody here will).
    let destination = bitcoin::Address::p2wsh(
        &bitcoin::ScriptBuf::from(vec![0x51]),
        bitcoin::Network::Regtest,
    );

    // The link drops the request: the node cannot know whether bitcoind got it.
    link.set_mode(Mode::Close);
    let err = alice
        .send_onchain(
            &destination.to_string(),
            Some(Amount::from_sat(200_000)),
            None,
        )
        .await
        .expect_err("the broadcast's answer was lost");
    let message = err.to_string();
    let NodeError::SendOutcomeUnknown { txid, .. } = err else {
        panic!("not reported as unknown: {message}");
    };
    assert!(message.contains(&txid.to_string()), "{message}");
    assert!(
        message.contains("look it up before sending again"),
        "{message}"
    );
    // Kept: its coins stay spent, so a retried withdrawal cannot pay twice from them.
    assert!(
        alice.onchain_balance().total_sat < 1_000_000 - 200_000,
        "{:?}",
        alice.onchain_balance()
    );

    // A restart (as after a kill -9 between recording and broadcasting): the new
    // instance broadcasts what the wallet holds unconfirmed.
    alice.shutdown().await;
    drop(alice);
    link.set_mode(Mode::Forward);
    let alice = start(&config).await;
    wait_for(
        "the kept transaction to reach bitcoind",
        Duration::from_secs(30),
        || async { regtest.chain().history().contains(&txid).then_some(()) },
    )
    .await;

    // Switched off, a broadcast is an error, never a txid that was not sent.
    alice.shutdown().await;
    let err = alice
        .send_onchain(
            &destination.to_string(),
            Some(Amount::from_sat(1_000)),
            None,
        )
        .await
        .expect_err("a stopped node sends nothing");
    assert!(
        !matches!(err, NodeError::SendOutcomeUnknown { .. }),
        "{err}"
    );
}

/// A funding transaction recorded for a channel that was never funded (a kill -9 after
/// the wallet signed it, before the peer signed the first commitment): the next start
/// never broadcasts it, which would lock its coins in a 2-of-2 output nobody can close,
/// and gives its coins back to the wallet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_funding_recorded_for_a_channel_never_funded_is_never_broadcast() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = node_config(&regtest, dir.path(), "alice", None);
    let alice = start(&config).await;
    fund(&regtest, &alice, Amount::from_sat(1_000_000)).await;
    // What the funding event handler records, with no channel behind it.
    let script = bitcoin::ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_byte_array([9; 32]));
    let funding = alice
        .wallet()
        .create_funding_transaction(
            script,
            Amount::from_sat(400_000),
            bitcoin::FeeRate::from_sat_per_vb_u32(2),
        )
        .unwrap();
    let txid = funding.compute_txid();
    assert!(alice.onchain_balance().total_sat < 1_000_000 - 400_000);

    alice.shutdown().await;
    drop(alice);
    let alice = start(&config).await;
    // Settled before the rebroadcaster's first pass: forgotten, so never sent.
    assert!(alice.wallet().funding_holds().is_empty());
    assert_eq!(
        alice.onchain_balance().total_sat,
        1_000_000,
        "its coins are the wallet's again"
    );
    assert!(alice.wallet().unconfirmed_sends().is_empty());
    assert!(
        !regtest.chain().history().contains(&txid),
        "the funding of a channel that does not exist reached the chain"
    );
    alice.shutdown().await;
}
