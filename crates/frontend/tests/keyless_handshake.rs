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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_front_asks_the_backend_over_the_mutual_tls_link() {
    use phalanx_link::Role;
    use phalanx_link::ecdh::{EcdhClient, serve_ecdh};
    use phalanx_link::pki::LinkCa;
    use phalanx_link::tls::LinkIdentity;

    let ca = LinkCa::generate("test").unwrap();
    let identity = |role, name| {
        let cert = ca.issue(role, name).unwrap();
        LinkIdentity::from_pem(&cert.cert_pem, &cert.key_pem, &ca.cert_pem()).unwrap()
    };
    // The backend: the node key, and the link's listener answering ECDH with it.
    let node_keys = keys(7);
    let node_id = node_keys.get_node_id(Recipient::Node).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let link_address = listener.local_addr().unwrap();
    let backend_identity = identity(Role::Backend, "backend-1");
    let answering = Arc::clone(&node_keys);
    let asked = Arc::new(AtomicUsize::new(0));
    let counting = Arc::clone(&asked);
    tokio::spawn(async move {
        serve_ecdh(
            listener,
            &backend_identity,
            "backend-1".into(),
            move |point| {
                counting.fetch_add(1, Ordering::SeqCst);
                answering
                    .ecdh(Recipient::Node, point, None)
                    .ok()
                    .map(|secret| secret.secret_bytes())
            },
        )
        .await
    });

    // The front: no key, the link to the backend.
    let link = EcdhClient::connect(
        &identity(Role::Front, "front-1"),
        "front-1",
        link_address,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let (front, peer, _connection) = dial_through_a_front(node_id, link).await;
    assert!(
        connected(&front, &peer, &node_id).await,
        "the peer sees the node through the keyless front"
    );
    assert!(
        asked.load(Ordering::SeqCst) >= 1,
        "the backend answered the ECDH"
    );
}
