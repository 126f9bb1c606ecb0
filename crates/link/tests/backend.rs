//! The backend's end of the link, with fronts played by raw TLS clients: a peer has one
//! session at a time across fronts (the newest wins; the old one's frames, disconnect
//! included, are ignored), the handler sees connects and disconnects paired, refusals
//! and broken messages end only their session, and a lost front disconnects its peers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::constants::ChainHash;
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use futures::{SinkExt, StreamExt};
use lightning::ln::msgs::{self, BaseMessageHandler, Init, MessageSendEvent};
use lightning::ln::types::ChannelId;
use lightning::types::features::{InitFeatures, NodeFeatures};
use lightning::util::ser::Writeable;
use phalanx_link::backend::LinkServer;
use phalanx_link::ldk::WireMessage;
use phalanx_link::ldk::inbound::{ChannelMessage, ForwardTarget, Forwarder};
use phalanx_link::ldk::outbound::PeerEvent;
use phalanx_link::pki::LinkCa;
use phalanx_link::tls::{LinkIdentity, expected_name};
use phalanx_link::{ActiveBackend, Frame, Hello, LinkCodec, Role, SessionId};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

fn key(byte: u8) -> PublicKey {
    PublicKey::from_secret_key(
        &Secp256k1::new(),
        &SecretKey::from_slice(&[byte; 32]).unwrap(),
    )
}

/// What the node's channel handler was told, in order.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
    refuse: Option<PublicKey>,
}

impl Recorder {
    fn record(&self, what: String) {
        self.seen.lock().unwrap().push(what);
    }
}

impl BaseMessageHandler for Recorder {
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        Vec::new()
    }
    fn peer_disconnected(&self, peer: PublicKey) {
        self.record(format!("disconnect {}", name(&peer)));
    }
    fn provided_node_features(&self) -> NodeFeatures {
        NodeFeatures::empty()
    }
    fn provided_init_features(&self, _: PublicKey) -> InitFeatures {
        InitFeatures::empty()
    }
    fn peer_connected(&self, peer: PublicKey, _: &Init, inbound: bool) -> Result<(), ()> {
        if self.refuse == Some(peer) {
            return Err(());
        }
        self.record(format!("connect {} inbound={inbound}", name(&peer)));
        Ok(())
    }
}

impl ForwardTarget for Recorder {
    fn forward(&self, peer: PublicKey, message: ChannelMessage) {
        let ChannelMessage::Stfu(stfu) = message else {
            panic!("{message:?}")
        };
        self.record(format!("stfu {} {}", name(&peer), stfu.channel_id.0[0]));
    }
    fn chain_hashes(&self) -> Option<Vec<ChainHash>> {
        None
    }
}

fn name(peer: &PublicKey) -> &'static str {
    match peer {
        p if *p == key(1) => "P",
        p if *p == key(2) => "Q",
        _ => "?",
    }
}

type Handler = Arc<Forwarder<Recorder>>;

struct Backend {
    server: Arc<LinkServer<Handler>>,
    handler: Handler,
    address: std::net::SocketAddr,
    ca: LinkCa,
}

impl Backend {
    async fn start(refuse: Option<PublicKey>) -> Self {
        let ca = LinkCa::generate("backend-test").unwrap();
        let identity = ca.identity(Role::Backend, "backend-1").unwrap();
        let handler = Arc::new(Forwarder(Recorder {
            refuse,
            ..Recorder::default()
        }));
        let server = Arc::new(LinkServer::new(
            Arc::clone(&handler),
            "backend-1",
            ActiveBackend {
                node_id: key(9),
                chain_hash: [0; 32],
                init_features: Vec::new(),
                node_features: Vec::new(),
            },
            Box::new(|point| (*point == key(5)).then_some([7; 32])),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let serving = Arc::clone(&server);
        tokio::spawn(async move { serving.serve(listener, &identity).await });
        Self {
            server,
            handler,
            address,
            ca,
        }
    }

    /// A front's link, after the greetings.
    async fn front(
        &self,
        name: &str,
    ) -> Framed<tokio_rustls::client::TlsStream<TcpStream>, LinkCodec> {
        let issued = self.ca.issue(Role::Front, name).unwrap();
        let identity =
            LinkIdentity::from_pem(&issued.cert_pem, &issued.key_pem, &self.ca.cert_pem()).unwrap();
        let tcp = TcpStream::connect(self.address).await.unwrap();
        let tls = TlsConnector::from(identity.client_config().unwrap())
            .connect(expected_name(Role::Backend), tcp)
            .await
            .unwrap();
        let mut link = Framed::new(tls, LinkCodec::default());
        link.send(Frame::Hello(Hello::new(Role::Front, name)))
            .await
            .unwrap();
        assert!(matches!(link.next().await, Some(Ok(Frame::Hello(_)))));
        let Some(Ok(Frame::Active(active))) = link.next().await else {
            panic!("no active greeting")
        };
        assert_eq!(active.node_id, key(9));
        link
    }

    /// Waits until the handler was told `expected` (and nothing else) since last asked.
    async fn expect(&self, expected: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.handler.0.seen.lock().unwrap().clone();
            if seen.len() >= expected.len() || tokio::time::Instant::now() > deadline {
                assert_eq!(seen, expected);
                self.handler.0.seen.lock().unwrap().clear();
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn init() -> Vec<u8> {
    Init {
        features: InitFeatures::empty(),
        networks: None,
        remote_network_address: None,
    }
    .encode()
}

fn connected(session: u64, peer: PublicKey) -> Frame {
    Frame::PeerConnected {
        session: SessionId(session),
        peer,
        init: init(),
        inbound: true,
    }
}

fn stfu(session: u64, peer: PublicKey, marker: u8) -> Frame {
    Frame::PeerMessage {
        session: SessionId(session),
        peer,
        message: WireMessage::of(&msgs::Stfu {
            channel_id: ChannelId([marker; 32]),
            initiator: false,
        }),
    }
}

fn disconnected(session: u64, peer: PublicKey) -> Frame {
    Frame::PeerDisconnected {
        session: SessionId(session),
        peer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_session_on_another_front_wins_and_the_old_one_cannot_touch_it() {
    let backend = Backend::start(None).await;
    let p = key(1);
    let mut a = backend.front("front-a").await;
    let mut b = backend.front("front-b").await;

    a.send(connected(1, p)).await.unwrap();
    a.send(stfu(1, p, 1)).await.unwrap();
    backend
        .expect(&["connect P inbound=true", "stfu P 1"])
        .await;

    // The peer reconnects through front B before front A saw its old connection close.
    b.send(connected(1, p)).await.unwrap();
    backend
        .expect(&["disconnect P", "connect P inbound=true"])
        .await;
    // Front A is told to close the old connection.
    assert_eq!(a.next().await.unwrap().unwrap(), disconnected(1, p));
    // A's late message and late disconnect are about a session that is over.
    a.send(stfu(1, p, 2)).await.unwrap();
    a.send(disconnected(1, p)).await.unwrap();
    b.send(stfu(1, p, 3)).await.unwrap();
    backend.expect(&["stfu P 3"]).await;
    assert_eq!(backend.server.peers()[0].front, "front-b");

    // Events for the peer go to front B, the peer's; another peer's stay with the
    // backend's own PeerManager.
    let event = |node_id| MessageSendEvent::SendStfu {
        node_id,
        msg: msgs::Stfu {
            channel_id: ChannelId([4; 32]),
            initiator: true,
        },
    };
    let kept = backend.server.route_events(vec![event(p), event(key(2))]);
    assert_eq!(kept.len(), 1);
    assert!(matches!(&kept[0], MessageSendEvent::SendStfu { node_id, .. } if *node_id == key(2)));
    let Some(Ok(Frame::PeerEvent {
        session,
        peer,
        event: PeerEvent::Send(messages),
    })) = b.next().await
    else {
        panic!("no event on front B")
    };
    assert_eq!((session, peer, messages.len()), (SessionId(1), p, 1));

    // Front B's link goes: its peer is disconnected, once.
    drop(b);
    backend.expect(&["disconnect P"]).await;
    assert!(!backend.server.has_peer(&p));
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_broken_messages_end_only_their_session() {
    let q = key(2);
    let backend = Backend::start(Some(q)).await;
    let p = key(1);
    let mut a = backend.front("front-a").await;

    // The handler refuses Q: the front is told, and Q's disconnect is never paired.
    a.send(connected(1, q)).await.unwrap();
    assert_eq!(a.next().await.unwrap().unwrap(), disconnected(1, q));
    // An init that does not decode: refused before the handler hears of it.
    a.send(Frame::PeerConnected {
        session: SessionId(2),
        peer: p,
        init: vec![0xff],
        inbound: false,
    })
    .await
    .unwrap();
    assert_eq!(a.next().await.unwrap().unwrap(), disconnected(2, p));
    backend.expect(&[]).await;

    // An unknown odd type is ignored; an unknown even one, or a body that does not
    // decode, ends the session (and the handler hears the disconnect).
    for (session, message) in [
        (
            3,
            WireMessage {
                message_type: 32_769,
                body: vec![1, 2],
            },
        ),
        (
            4,
            WireMessage {
                message_type: 32_768,
                body: vec![1, 2],
            },
        ),
        (
            5,
            WireMessage {
                message_type: 2,
                body: vec![1],
            },
        ),
    ] {
        a.send(connected(session, p)).await.unwrap();
        a.send(Frame::PeerMessage {
            session: SessionId(session),
            peer: p,
            message,
        })
        .await
        .unwrap();
        if session == 3 {
            a.send(stfu(3, p, 8)).await.unwrap();
            backend
                .expect(&["connect P inbound=true", "stfu P 8"])
                .await;
            continue;
        }
        if session == 4 {
            // The new session replaced session 3.
            backend
                .expect(&["disconnect P", "connect P inbound=true", "disconnect P"])
                .await;
            assert_eq!(a.next().await.unwrap().unwrap(), disconnected(3, p));
        } else {
            backend
                .expect(&["connect P inbound=true", "disconnect P"])
                .await;
        }
        assert_eq!(
            a.next().await.unwrap().unwrap(),
            Frame::PeerEvent {
                session: SessionId(session),
                peer: p,
                event: PeerEvent::Disconnect { last: None },
            }
        );
    }

    // The ECDH of the node key, and a ping.
    a.send(Frame::EcdhRequest {
        request: 1,
        point: key(5),
    })
    .await
    .unwrap();
    a.send(Frame::EcdhRequest {
        request: 2,
        point: key(6),
    })
    .await
    .unwrap();
    a.send(Frame::LinkPing { nonce: 3 }).await.unwrap();
    assert_eq!(
        a.next().await.unwrap().unwrap(),
        Frame::EcdhResponse {
            request: 1,
            shared_secret: Some([7; 32])
        }
    );
    assert_eq!(
        a.next().await.unwrap().unwrap(),
        Frame::EcdhResponse {
            request: 2,
            shared_secret: None
        }
    );
    assert_eq!(
        a.next().await.unwrap().unwrap(),
        Frame::LinkPong { nonce: 3 }
    );

    // A front that sends what only a backend sends loses its link.
    a.send(Frame::LinkPong { nonce: 1 }).await.unwrap();
    a.send(Frame::Broadcast(
        phalanx_link::ldk::outbound::Broadcast::NodeAnnouncement {
            announcement: WireMessage {
                message_type: 257,
                body: Vec::new(),
            },
        },
    ))
    .await
    .unwrap();
    assert!(matches!(a.next().await, None | Some(Err(_))));
    assert_eq!(backend.server.fronts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_server_ends_its_links_and_hands_nothing_more_to_the_handler() {
    let backend = Backend::start(None).await;
    let p = key(1);
    let mut a = backend.front("front-a").await;
    a.send(connected(1, p)).await.unwrap();
    backend.expect(&["connect P inbound=true"]).await;

    // The node stops: its peers on fronts are disconnected at once, the link ends, and
    // neither a frame already on its way nor a new front gets anywhere.
    backend.server.close();
    backend.expect(&["disconnect P"]).await;
    let _ = a.send(stfu(1, p, 1)).await;
    loop {
        match a.next().await {
            None | Some(Err(_)) => break,
            Some(Ok(frame)) => assert!(
                matches!(frame, Frame::LinkPong { .. }),
                "nothing but what was under way: {frame:?}"
            ),
        }
    }
    assert_eq!(backend.server.fronts(), 0);
    assert!(!backend.server.has_peer(&p));
    let tcp = TcpStream::connect(backend.address).await;
    if let Ok(tcp) = tcp {
        // The listener may still accept the TCP connection; the link never opens.
        let identity = backend.ca.identity(Role::Front, "front-b").unwrap();
        let opened = TlsConnector::from(identity.client_config().unwrap())
            .connect(expected_name(Role::Backend), tcp)
            .await;
        if let Ok(tls) = opened {
            let mut link = Framed::new(tls, LinkCodec::default());
            let _ = link
                .send(Frame::Hello(Hello::new(Role::Front, "front-b")))
                .await;
            assert!(!matches!(link.next().await, Some(Ok(Frame::Hello(_)))));
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        backend.handler.0.seen.lock().unwrap().len(),
        0,
        "nothing more"
    );
}

/// The node's onion message handler: what it was told, and what it has for peers.
#[derive(Default)]
struct OnionRecorder {
    seen: Mutex<Vec<String>>,
    outbox: Mutex<Vec<(PublicKey, msgs::OnionMessage)>>,
}

impl BaseMessageHandler for OnionRecorder {
    fn get_and_clear_pending_msg_events(&self) -> Vec<MessageSendEvent> {
        Vec::new()
    }
    fn peer_disconnected(&self, peer: PublicKey) {
        self.seen
            .lock()
            .unwrap()
            .push(format!("disconnect {}", name(&peer)));
    }
    fn provided_node_features(&self) -> NodeFeatures {
        NodeFeatures::empty()
    }
    fn provided_init_features(&self, _: PublicKey) -> InitFeatures {
        InitFeatures::empty()
    }
    fn peer_connected(&self, peer: PublicKey, _: &Init, _: bool) -> Result<(), ()> {
        self.seen
            .lock()
            .unwrap()
            .push(format!("connect {}", name(&peer)));
        Ok(())
    }
}

impl msgs::OnionMessageHandler for OnionRecorder {
    fn handle_onion_message(&self, peer: PublicKey, msg: &msgs::OnionMessage) {
        self.seen.lock().unwrap().push(format!(
            "onion {} {}",
            name(&peer),
            msg.onion_routing_packet.hop_data[0]
        ));
    }
    fn next_onion_message_for_peer(&self, peer: PublicKey) -> Option<msgs::OnionMessage> {
        let mut outbox = self.outbox.lock().unwrap();
        let at = outbox.iter().position(|(to, _)| *to == peer)?;
        Some(outbox.remove(at).1)
    }
    fn timer_tick_occurred(&self) {}
}

fn onion_message(marker: u8) -> msgs::OnionMessage {
    msgs::OnionMessage {
        blinding_point: key(3),
        onion_routing_packet: lightning::onion_message::packet::Packet {
            version: 0,
            public_key: key(4),
            hop_data: vec![marker; 1300],
            hmac: [marker; 32],
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onion_messages_of_peers_on_fronts_reach_the_onion_handler_and_leave_down_their_link() {
    let backend = Backend::start(None).await;
    let onion = Arc::new(OnionRecorder::default());
    backend
        .server
        .set_onion_handler(Arc::clone(&onion) as phalanx_link::backend::OnionHandler);
    let onion_seen = |expected: &[&str]| {
        let seen = std::mem::take(&mut *onion.seen.lock().unwrap());
        assert_eq!(seen, expected);
    };
    let (p, q) = (key(1), key(2));
    let mut a = backend.front("front-a").await;

    a.send(connected(1, p)).await.unwrap();
    let message = WireMessage::of(&onion_message(7));
    assert_eq!(
        message.message_type,
        phalanx_link::ldk::types::ONION_MESSAGE
    );
    a.send(Frame::PeerMessage {
        session: SessionId(1),
        peer: p,
        message,
    })
    .await
    .unwrap();
    a.send(stfu(1, p, 1)).await.unwrap();
    backend
        .expect(&["connect P inbound=true", "stfu P 1"])
        .await;
    onion_seen(&["connect P", "onion P 7"]);

    // What the handler has for P leaves down P's link when events are processed; what
    // it has for Q, a peer on no front, stays with it (the backend's own PeerManager
    // pulls that).
    onion.outbox.lock().unwrap().extend([
        (q, onion_message(9)),
        (p, onion_message(8)),
        (p, onion_message(6)),
    ]);
    assert!(backend.server.route_events(Vec::new()).is_empty());
    for marker in [8, 6] {
        let frame = tokio::time::timeout(Duration::from_secs(10), a.next())
            .await
            .expect("P's onion messages leave down its link");
        assert_eq!(
            frame.unwrap().unwrap(),
            Frame::PeerMessage {
                session: SessionId(1),
                peer: p,
                message: WireMessage::of(&onion_message(marker)),
            }
        );
    }
    assert_eq!(onion.outbox.lock().unwrap().len(), 1);

    // An onion message that does not decode ends the session, for both handlers.
    a.send(Frame::PeerMessage {
        session: SessionId(1),
        peer: p,
        message: WireMessage {
            message_type: phalanx_link::ldk::types::ONION_MESSAGE,
            body: vec![1],
        },
    })
    .await
    .unwrap();
    assert_eq!(
        a.next().await.unwrap().unwrap(),
        Frame::PeerEvent {
            session: SessionId(1),
            peer: p,
            event: PeerEvent::Disconnect { last: None },
        }
    );
    backend.expect(&["disconnect P"]).await;
    onion_seen(&["disconnect P"]);

    // A session's end reaches the onion handler too.
    a.send(connected(2, p)).await.unwrap();
    a.send(disconnected(2, p)).await.unwrap();
    backend
        .expect(&["connect P inbound=true", "disconnect P"])
        .await;
    onion_seen(&["connect P", "disconnect P"]);
}
