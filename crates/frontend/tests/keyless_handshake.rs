//! A peer completes the BOLT 8 handshake with a front that holds no key: LDK's own
//! `PeerManager` on both sides, over TCP, the front's ECDH answered by the node's signer
//! elsewhere (here a `KeysManager` standing in for the backend across the link).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::secp256k1::PublicKey;
use bitcoin::secp256k1::ecdh::SharedSecret;
use lightning::sign::{KeysManager, NodeSigner, Recipient};
use phalanx_frontend::testing::{HandshakeOnly, handshake_only, listen};
use phalanx_frontend::{EcdhSource, EcdhUnavailable, KeylessSigner};

/// The backend's side of the link: counts the questions, or refuses them all.
struct Backend {
    keys: Arc<KeysManager>,
    asked: AtomicUsize,
    refuse: bool,
}

impl EcdhSource for Backend {
    fn ecdh(&self, point: &PublicKey) -> Result<SharedSecret, EcdhUnavailable> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if self.refuse {
            return Err(EcdhUnavailable("refused".into()));
        }
        self.keys
            .ecdh(Recipient::Node, point, None)
            .map_err(|()| EcdhUnavailable("the keys refused".into()))
    }
}

fn keys(byte: u8) -> Arc<KeysManager> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Arc::new(KeysManager::new(
        &[byte; 32],
        now.as_secs(),
        now.subsec_nanos(),
        true,
    ))
}

/// A keyless front for `node_id` asking `source`, listening on loopback, and a peer
/// dialling the node at the front's address. Returns the front's and the peer's
/// managers, and the peer's connection (it ends when the connection closes).
async fn dial_through_a_front<S: EcdhSource + 'static>(
    node_id: PublicKey,
    source: S,
) -> (
    Arc<HandshakeOnly<KeylessSigner<S>>>,
    Arc<HandshakeOnly<KeysManager>>,
    impl std::future::Future<Output = ()>,
) {
    let front = handshake_only(Arc::new(KeylessSigner::new(node_id, source)), [1; 32]);
    let address = listen(Arc::clone(&front)).await.unwrap();
    let peer = handshake_only(keys(9), [2; 32]);
    let connection = lightning_net_tokio::connect_outbound(Arc::clone(&peer), node_id, address)
        .await
        .expect("the TCP connection opens");
    (front, peer, connection)
}

/// Whether the peer and the front see each other, waiting up to 5 s for the handshake
/// and `init` both ways (bounded; not a timing assertion).
async fn connected<S: NodeSigner, T: NodeSigner>(
    front: &HandshakeOnly<S>,
    peer: &HandshakeOnly<T>,
    node_id: &PublicKey,
) -> bool {
    for _ in 0..200 {
        if peer.peer_by_node_id(node_id).is_some() && front.list_peers().len() == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_completes_the_handshake_with_a_front_that_holds_no_key() {
    let backend = Arc::new(Backend {
        keys: keys(7),
        asked: AtomicUsize::new(0),
        refuse: false,
    });
    let node_id = backend.keys.get_node_id(Recipient::Node).unwrap();
    let (front, peer, _connection) = dial_through_a_front(node_id, Arc::clone(&backend)).await;
    assert!(
        connected(&front, &peer, &node_id).await,
        "the peer sees the node through the front"
    );
    // The peer authenticated the node's key, which only the backend holds: the front
    // asked it for the handshake's ECDH.
    assert!(backend.asked.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_answer_fails_the_handshake_only() {
    let backend = Arc::new(Backend {
        keys: keys(7),
        asked: AtomicUsize::new(0),
        refuse: true,
    });
    let node_id = backend.keys.get_node_id(Recipient::Node).unwrap();
    let (front, peer, connection) = dial_through_a_front(node_id, Arc::clone(&backend)).await;
    // The front drops the connection: the peer's connection future ends.
    tokio::time::timeout(Duration::from_secs(30), connection)
        .await
        .expect("the front closes the connection");
    assert!(backend.asked.load(Ordering::SeqCst) >= 1);
    assert!(peer.peer_by_node_id(&node_id).is_none());
    assert!(front.list_peers().is_empty());
}

/// A backend's link server with the node key `keys(7)`, counting the ECDH questions it
/// answers, and a `phalanx_frontend::Front` attached to it, given `node_key` or not; a
/// peer then dials the node at the front. Returns whether the peer saw the node, and how
/// many ECDH questions the backend answered.
async fn handshake_through_a_linked_front(
    node_key: Option<[u8; 32]>,
) -> Result<(bool, usize), phalanx_frontend::FrontError> {
    use lightning::ln::peer_handler::ErroringMessageHandler;
    use phalanx_frontend::{Front, FrontConfig, NodeKey};
    use phalanx_link::backend::LinkServer;
    use phalanx_link::pki::LinkCa;
    use phalanx_link::{ActiveBackend, Role};

    let ca = LinkCa::generate("test").unwrap();
    let identity = |role, name| ca.identity(role, name).unwrap();
    // The backend: the node key, and its link server answering ECDH with it (no channel
    // handler to speak of).
    let node_keys = keys(7);
    let node_id = node_keys.get_node_id(Recipient::Node).unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let (answering, counting) = (Arc::clone(&node_keys), Arc::clone(&asked));
    let server = Arc::new(LinkServer::new(
        Arc::new(ErroringMessageHandler::new()),
        "backend-1",
        ActiveBackend {
            node_id,
            chain_hash: *bitcoin::constants::ChainHash::REGTEST.as_bytes(),
            init_features: Vec::new(),
            node_features: Vec::new(),
        },
        Box::new(move |point| {
            counting.fetch_add(1, Ordering::SeqCst);
            answering
                .ecdh(Recipient::Node, point, None)
                .ok()
                .map(|secret| secret.secret_bytes())
        }),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let link_address = listener.local_addr().unwrap();
    let backend_identity = identity(Role::Backend, "backend-1");
    tokio::spawn(async move { server.serve(listener, &backend_identity).await });

    // The front: the link to the backend, the node id learnt from it.
    let front = Front::start(FrontConfig {
        name: "front-1".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        backends: vec![link_address],
        identity: identity(Role::Front, "front-1"),
        ecdh_timeout: Duration::from_secs(5),
        node_key: node_key.map(|seed| NodeKey::new(keys(seed[0]).get_node_secret_key())),
        public_address: None,
    })
    .await?;
    assert_eq!(front.state().node_id(), node_id);
    assert_eq!(front.holds_key(), node_key.is_some());
    let peer = handshake_only(keys(9), [2; 32]);
    let _connection =
        lightning_net_tokio::connect_outbound(Arc::clone(&peer), node_id, front.address())
            .await
            .expect("the TCP connection opens");
    let mut seen = false;
    for _ in 0..200 {
        if peer.peer_by_node_id(&node_id).is_some() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok((seen, asked.load(Ordering::SeqCst)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_front_asks_the_backend_over_the_mutual_tls_link() {
    let (seen, asked) = handshake_through_a_linked_front(None).await.unwrap();
    assert!(seen, "the peer sees the node through the keyless front");
    assert!(asked >= 1, "the backend answered the ECDH");
}

/// `[front] key_provider = "seed"`: the front answers the handshake with the node key
/// it holds, and asks the backend nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_given_the_node_key_answers_handshakes_itself() {
    let (seen, asked) = handshake_through_a_linked_front(Some([7; 32]))
        .await
        .unwrap();
    assert!(seen, "the peer sees the node through the keyed front");
    assert_eq!(asked, 0, "the backend was asked for an ECDH");
}

/// A front given another node's key refuses to serve: its handshakes would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_front_given_another_nodes_key_refuses_to_start() {
    let refused = handshake_through_a_linked_front(Some([8; 32])).await;
    assert!(
        matches!(
            refused,
            Err(phalanx_frontend::FrontError::WrongNodeKey { .. })
        ),
        "{refused:?}"
    );
}
