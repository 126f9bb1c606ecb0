//! A node whose peer reaches it only through a keyless front: the channel opens, payments
//! flow both ways, the front's loss is the peer's disconnection, and the peer comes back
//! through another front with the channel intact.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::Amount;
use phalanx_devnet::harness;
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes::*;
use phalanx_node::Node;
use phalanx_node::payments::PaymentStatus;

mod common;
use common::{front, fronted_bob};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn pay(payer: &Node, payee: &Node, amount_msat: u64) {
    let invoice = payee
        .create_invoice(Some(amount_msat), "through a front", None)
        .await
        .unwrap();
    let id = payer.pay_invoice(&invoice.to_string(), None).await.unwrap();
    let record = payer.wait_payment(id, TIMEOUT).await.unwrap();
    assert_eq!(record.status, PaymentStatus::Succeeded, "{record:?}");
}

/// The status and body of the answer to `GET path`.
async fn get_status(address: &str, path: &str) -> (u16, String) {
    phalanx_testkit::http::get(address, path).await.unwrap()
}

/// The body of a 200 answer to `GET path`.
async fn get(address: &str, path: &str) -> String {
    let (status, body) = get_status(address, path).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_on_a_front_opens_pays_both_ways_and_comes_back_through_another_front() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = start(&node_config(&regtest, dir.path(), "alice", None)).await;
    let (bob, ca) = fronted_bob(&regtest, dir.path()).await;
    let first = front(&ca, "front-1", &bob).await;
    assert_eq!(
        first.state().node_id(),
        bob.node_id(),
        "learnt from the backend"
    );
    assert_eq!(first.state().attached_to().as_deref(), Some("bob-1"));

    // Alice knows bob only by the front's address: the handshake's ECDH, the channel's
    // opening and its confirmation all cross the front.
    fund(&regtest, &alice, Amount::from_sat(2_000_000)).await;
    harness::open_channel_at(
        regtest.control(),
        &alice,
        &bob,
        first.address(),
        1_000_000,
        300_000_000,
    )
    .await
    .unwrap();
    let peers = bob.list_peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].node_id, alice.node_id());
    assert_eq!(peers[0].address.as_deref(), Some("front:front-1"));
    assert_eq!(first.state().sessions(), 1);
    let gauges = bob.gauges();
    assert_eq!(
        (gauges.fronts, gauges.peers_on_fronts, gauges.peers),
        (1, 1, 1)
    );

    for _ in 0..5 {
        pay(&alice, &bob, 10_000_000).await;
        pay(&bob, &alice, 3_000_000).await;
    }
    let balance = channel_balance_msat(&bob, alice.node_id());

    // The front's own state and metrics.
    let listener = phalanx_frontend::api::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let slot = phalanx_frontend::api::FrontSlot::new();
    slot.fill(&first);
    let serving = tokio::spawn(phalanx_frontend::api::serve(slot, listener));
    let state: phalanx_frontend::api::FrontStateResponse =
        serde_json::from_str(&get(&api, "/v1/state").await).unwrap();
    assert_eq!(state.state, "FRONT_ATTACHED");
    assert_eq!(state.node_id, Some(bob.node_id().to_string()));
    assert_eq!(state.backend.as_deref(), Some("bob-1"));
    assert_eq!((state.peers, state.sessions), (1, 1));
    let metrics = get(&api, "/metrics").await;
    let sent: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("phalanx_front_messages_to_backend_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(sent > 20, "{metrics}");
    assert!(
        metrics.contains("phalanx_front_backend_attached 1"),
        "{metrics}"
    );
    assert_eq!(get_status(&api, "/v1/ready").await.0, 200);
    serving.abort();

    // The front goes away: to bob, alice is disconnected (its channel is kept, not
    // usable); through a second front she reconnects and the channel carries on.
    drop(first);
    wait_for("bob to see alice gone", TIMEOUT, || async {
        bob.list_peers().is_empty().then_some(())
    })
    .await;
    wait_for("alice to see bob gone", TIMEOUT, || async {
        (!harness::usable_with(&alice, bob.node_id())).then_some(())
    })
    .await;
    let second = front(&ca, "front-2", &bob).await;
    alice
        .connect_peer(bob.node_id(), second.address())
        .await
        .unwrap();
    wait_for("the channel to be usable again", TIMEOUT, || async {
        (harness::usable_with(&alice, bob.node_id()) && harness::usable_with(&bob, alice.node_id()))
            .then_some(())
    })
    .await;
    assert_eq!(channel_balance_msat(&bob, alice.node_id()), balance);
    pay(&alice, &bob, 10_000_000).await;
    pay(&bob, &alice, 3_000_000).await;
    assert_eq!(
        bob.list_peers()[0].address.as_deref(),
        Some("front:front-2")
    );
    assert!(alice.list_channels().len() == 1 && bob.list_channels().len() == 1);

    // The backend goes away: the front detaches, disconnects its peers, and says it is
    // not ready (a balancer's health check then sends peers elsewhere).
    let listener = phalanx_frontend::api::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let slot = phalanx_frontend::api::FrontSlot::new();
    slot.fill(&second);
    tokio::spawn(phalanx_frontend::api::serve(slot, listener));
    assert_eq!(get_status(&api, "/v1/ready").await.0, 200);
    bob.shutdown().await;
    wait_for("the front to detach", TIMEOUT, || async {
        (get_status(&api, "/v1/ready").await.0 == 503).then_some(())
    })
    .await;
    let state: phalanx_frontend::api::FrontStateResponse =
        serde_json::from_str(&get(&api, "/v1/state").await).unwrap();
    assert_eq!(state.state, "FRONT_WAITING");
    assert_eq!(state.backend, None);
    wait_for("the front to drop its peers", TIMEOUT, || async {
        second.peer_manager().list_peers().is_empty().then_some(())
    })
    .await;
    let _keep: Arc<Node> = alice;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_front_dials_its_peers_through_it() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = start(&node_config(&regtest, dir.path(), "alice", None)).await;
    let (bob, ca) = fronted_bob(&regtest, dir.path()).await;
    let front = front(&ca, "front-1", &bob).await;

    // Bob opens a channel to Alice by her address: the front dials her, and to Alice
    // the connection comes from the front's side, not Bob's own.
    fund(&regtest, &bob, Amount::from_sat(2_000_000)).await;
    harness::open_channel(regtest.control(), &bob, &alice, 1_000_000, 300_000_000)
        .await
        .unwrap();
    let on_bob = bob.list_peers();
    assert_eq!(on_bob.len(), 1, "{on_bob:?}");
    assert_eq!(on_bob[0].address.as_deref(), Some("front:front-1"));
    assert!(!on_bob[0].inbound, "the front dialled out");
    assert_eq!(front.state().sessions(), 1);
    pay(&bob, &alice, 10_000_000).await;
    pay(&alice, &bob, 3_000_000).await;
}
