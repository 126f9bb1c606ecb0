//! Gossip at the edge: a front checks a peer's gossip (signatures, and funding outputs
//! through the backend's chain source) in its own graph, and the backend's router gets
//! what was new, once, without the signatures.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lightning::ln::peer_handler::ErroringMessageHandler;
use phalanx_e2e::chain::TestChain;
use phalanx_frontend::{Front, FrontConfig};
use phalanx_gossip_sim::{ReplayPeer, Shape, SyntheticGraph};
use phalanx_link::backend::{FundingAnswer, GossipBackend, LinkServer};
use phalanx_link::ldk::gossip::{FundingLookupFailure, FundingOutput, VerifiedGossip};
use phalanx_link::{ActiveBackend, Role};
use phalanx_node::Node;

mod common;
use common::{front, fronted_bob};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn to_backend(front: &Front) -> u64 {
    front
        .state()
        .counters()
        .gossip_to_backend
        .load(Ordering::Relaxed)
}

fn graph_size(node: &Node) -> (usize, usize) {
    let graph = node.network_graph().read_only();
    (graph.channels().len(), graph.nodes().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_checks_gossip_and_hands_the_backend_only_what_is_new() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (bob, ca) = fronted_bob(&regtest, dir.path()).await;
    let shape = Shape {
        bad_signatures: 4,
        unfunded: 3,
        ..Shape::new(30, 90)
    };
    let graph = Arc::new(SyntheticGraph::build(shape, &mut regtest.chain()).unwrap());
    let good = graph.good_channels().to_vec();
    let bad = graph.bad_channels();
    assert_eq!((good.len(), bad.len()), (90, 7));
    // Every good channel, both its updates, every node.
    let new_messages = (90 + 90 * 2 + 30) as u64;

    let front = front(&ca, "front-1", &bob).await;
    let peer = ReplayPeer::new(Arc::clone(&graph), [7; 32]);
    assert!(peer.connect(bob.node_id(), front.address()).await);
    // Everything of the good channels, updates included, reaches the backend: an update
    // or a node announcement never overtakes the announcement it needs.
    wait_for("the backend's graph to hold the synthetic graph", || {
        let graph = bob.network_graph().read_only();
        graph.nodes().len() == 30
            && graph
                .nodes()
                .unordered_iter()
                .all(|(_, node)| node.announcement_info.is_some())
            && good.iter().all(|scid| {
                graph
                    .channel(*scid)
                    .is_some_and(|c| c.one_to_two.is_some() && c.two_to_one.is_some())
            })
    })
    .await;
    assert_eq!(graph_size(&bob), (90, 30));
    assert_eq!(to_backend(&front), new_messages);

    for (name, graph) in [
        ("backend", bob.network_graph().read_only()),
        ("front", front.graph().read_only()),
    ] {
        for scid in &good {
            let channel = graph
                .channel(*scid)
                .unwrap_or_else(|| panic!("{name} lacks {scid}"));
            // The capacity the front found on chain reached the backend with the channel.
            assert_eq!(channel.capacity_sats, Some(shape.capacity_sat), "{name}");
            assert!(
                channel.one_to_two.is_some() && channel.two_to_one.is_some(),
                "{name}: {scid}"
            );
        }
        for scid in &bad {
            assert!(
                graph.channel(*scid).is_none(),
                "{name} took bad channel {scid}"
            );
        }
    }
    // Signatures are the front's work: the backend keeps no announcement to relay.
    let backend_graph = bob.network_graph().read_only();
    assert!(
        backend_graph
            .channel(good[0])
            .unwrap()
            .announcement_message
            .is_none()
    );
    assert!(
        front
            .graph()
            .read_only()
            .channel(good[0])
            .unwrap()
            .announcement_message
            .is_some()
    );
    drop(backend_graph);
    let counters = front.state().counters();
    // Gossip goes to the router only: no update crossed as a channel message (the
    // replaying peer has no channel with the node).
    assert_eq!(counters.messages_to_backend.load(Ordering::Relaxed), 0);
    // Each funded or unfunded announcement with good signatures was looked up; the
    // unfunded ones found nothing.
    assert!(counters.funding_checks.load(Ordering::Relaxed) >= 93);
    assert!(counters.funding_checks_failed.load(Ordering::Relaxed) >= 3);

    // A second peer sends the same graph: all of it duplicates, none reaches the backend.
    let again = ReplayPeer::new(Arc::clone(&graph), [8; 32]);
    assert!(again.connect(bob.node_id(), front.address()).await);
    wait_for("the second replay to arrive", || {
        counters.gossip_duplicate.load(Ordering::Relaxed) >= new_messages
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(to_backend(&front), new_messages);
    assert_eq!(graph_size(&bob), (90, 30));
}

/// A link server standing in for a backend of node `node_id`, serving fronts on a
/// loopback port with `gossip` behind it; its ECDH answers with `ecdh`.
async fn serve_stand_in(
    ca: &phalanx_link::pki::LinkCa,
    name: &str,
    node_id: bitcoin::secp256k1::PublicKey,
    ecdh: phalanx_link::backend::EcdhFn,
    gossip: Arc<dyn GossipBackend>,
) -> (
    Arc<LinkServer<Arc<ErroringMessageHandler>>>,
    std::net::SocketAddr,
) {
    let server = Arc::new(LinkServer::new(
        Arc::new(ErroringMessageHandler::new()),
        name,
        ActiveBackend {
            node_id,
            chain_hash: *bitcoin::constants::ChainHash::REGTEST.as_bytes(),
            init_features: lightning::types::features::InitFeatures::empty()
                .le_flags()
                .to_vec(),
            node_features: Vec::new(),
        },
        ecdh,
    ));
    server.set_gossip(gossip);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let identity = ca.identity(Role::Backend, name).unwrap();
    let serving = Arc::clone(&server);
    tokio::spawn(async move { serving.serve(listener, &identity).await });
    (server, address)
}

/// A stand-in backend of the same node: it records the gossip it is handed.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<&'static str>>);

impl GossipBackend for Recorder {
    fn funding_output(&self, _short_channel_id: u64, answer: FundingAnswer) {
        answer(Err(FundingLookupFailure::UnknownTx));
    }

    fn verified(&self, _front: &str, gossip: VerifiedGossip) {
        self.0.lock().unwrap().push(gossip.kind());
    }
}

impl Recorder {
    fn count(&self, kind: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|k| **k == kind)
            .count()
    }
}

/// A backend that takes over has only the graph it last persisted: the front hands it
/// its whole graph when it attaches, and the peer that only gossips stays connected
/// through the change of backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_hands_its_graph_to_the_next_backend_and_keeps_its_gossip_peers() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (bob, ca) = fronted_bob(&regtest, dir.path()).await;
    let graph = Arc::new(SyntheticGraph::build(Shape::new(20, 60), &mut regtest.chain()).unwrap());

    // The next backend: a link server of the same node, recording what it gets.
    let recorder = Arc::new(Recorder::default());
    let (stand_in, stand_in_address) = serve_stand_in(
        &ca,
        "stand-in",
        bob.node_id(),
        Box::new(|_| None),
        Arc::clone(&recorder) as Arc<dyn GossipBackend>,
    )
    .await;

    let front = Front::start(FrontConfig {
        name: "front-1".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        backends: vec![bob.link_address().unwrap(), stand_in_address],
        identity: ca.identity(Role::Front, "front-1").unwrap(),
        ecdh_timeout: Duration::from_secs(5),
        node_key: None,
        public_address: None,
    })
    .await
    .unwrap();
    assert_eq!(front.state().attached_to().as_deref(), Some("bob-1"));
    let peer = ReplayPeer::new(Arc::clone(&graph), [9; 32]);
    assert!(peer.connect(bob.node_id(), front.address()).await);
    let new_messages = (60 + 60 * 2 + 20) as u64;
    wait_for("the front to hand bob the graph", || {
        to_backend(&front) == new_messages
    })
    .await;

    bob.shutdown().await;
    wait_for("the stand-in to get the front's whole graph", || {
        recorder.count("channel_announcement") == 60
            && recorder.count("channel_update") == 120
            && recorder.count("node_announcement") == 20
    })
    .await;
    assert_eq!(front.state().attached_to().as_deref(), Some("stand-in"));
    assert!(
        peer.is_connected(&bob.node_id()),
        "the gossip-only peer was kept"
    );
    assert_eq!(peer.disconnections(), 0);
    // It has a session at the stand-in: the front introduced it again.
    wait_for("the kept peer's session at the stand-in", || {
        stand_in.peers().len() == 1
    })
    .await;
}

/// The node announces itself at its fronts' public address (the balancer's): the front
/// tells the backend, which signs the announcement and sends it out through the front.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_announces_its_fronts_public_address() {
    let regtest = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = phalanx_e2e::nodes::start(&phalanx_e2e::nodes::node_config(
        &regtest,
        dir.path(),
        "alice",
        None,
    ))
    .await;
    let (bob, ca) = fronted_bob(&regtest, dir.path()).await;
    let public = "203.0.113.5:9735";
    let front = Front::start(FrontConfig {
        name: "front-1".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        backends: vec![bob.link_address().unwrap()],
        identity: ca.identity(Role::Front, "front-1").unwrap(),
        ecdh_timeout: Duration::from_secs(5),
        node_key: None,
        public_address: Some(public.into()),
    })
    .await
    .unwrap();
    // A public channel from Alice to Bob, through the front; announced after six blocks.
    phalanx_e2e::nodes::fund(&regtest, &alice, bitcoin::Amount::from_sat(2_000_000)).await;
    alice
        .open_channel(bob.node_id(), Some(front.address()), 1_000_000, 0, true)
        .await
        .unwrap();
    let bob_id = lightning::routing::gossip::NodeId::from_pubkey(&bob.node_id());
    for _ in 0..12 {
        phalanx_devnet::harness::mine(regtest.control(), &[&alice, &bob], 1)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for("alice to learn bob's address from his announcement", || {
        alice
            .network_graph()
            .read_only()
            .node(&bob_id)
            .and_then(|node| node.announcement_info.clone())
            .is_some_and(|info| info.addresses().iter().any(|a| a.to_string() == public))
    })
    .await;
}

/// A backend that finds every channel's output, but not the one its announcement names
/// (another script): no channel is taken, and the front counts each as found and not
/// taken, by channel, which is how a check lost between the backend's answer and the
/// graph shows too.
struct WrongOutputs;

impl GossipBackend for WrongOutputs {
    fn funding_output(&self, _short_channel_id: u64, answer: FundingAnswer) {
        answer(Ok(FundingOutput {
            value_sat: 1_000_000,
            script_pubkey: vec![0x00, 0x20].into_iter().chain([7; 32]).collect(),
        }));
    }

    fn verified(&self, _front: &str, _gossip: VerifiedGossip) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_found_output_that_does_not_match_its_announcement_is_counted_and_not_taken() {
    let regtest = TestChain::start().await;
    let graph = Arc::new(SyntheticGraph::build(Shape::new(10, 30), &mut regtest.chain()).unwrap());
    let ca = phalanx_link::pki::LinkCa::generate("wrong-outputs").unwrap();
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let node_secret = bitcoin::secp256k1::SecretKey::from_slice(&[42; 32]).unwrap();
    let node_id = node_secret.public_key(&secp);
    let (_backend, address) = serve_stand_in(
        &ca,
        "backend-1",
        node_id,
        Box::new(move |point| {
            Some(bitcoin::secp256k1::ecdh::SharedSecret::new(point, &node_secret).secret_bytes())
        }),
        Arc::new(WrongOutputs),
    )
    .await;
    let front = Front::start(FrontConfig {
        name: "front-1".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        backends: vec![address],
        identity: ca.identity(Role::Front, "front-1").unwrap(),
        ecdh_timeout: Duration::from_secs(5),
        node_key: None,
        public_address: None,
    })
    .await
    .unwrap();
    let peer = ReplayPeer::new(Arc::clone(&graph), [3; 32]);
    assert!(peer.connect(node_id, front.address()).await);
    let counters = front.state().counters();
    wait_for("every channel's output to be found and refused", || {
        counters.funding_found_not_taken.load(Ordering::Relaxed) == 30
    })
    .await;
    assert_eq!(counters.funding_checks.load(Ordering::Relaxed), 30);
    assert_eq!(counters.funding_checks_failed.load(Ordering::Relaxed), 0);
    assert_eq!(to_backend(&front), 0);
}
