//! A front: accepts peers (BOLT 8, with the keyless signer), forwards their channel
//! messages to the active backend and relays its events back, and finds the active
//! backend again when the one it is attached to goes away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use lightning::ln::peer_handler::{IgnoringMessageHandler, MessageHandler, PeerManager};
use lightning::util::logger::{Level, Logger, Record};
use lightning_net_tokio::SocketDescriptor;
use phalanx_link::ldk::inbound::Forwarder;
use phalanx_link::runtime::OwnRuntime;
use phalanx_link::tls::{LinkIdentity, expected_name};
use phalanx_link::{ActiveBackend, Frame, Hello, LinkCodec, LinkError, Role};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_util::codec::Framed;

use crate::gossip::{EdgeGossip, FrontGraph};
use crate::onion::OnionRelay;
use crate::signer::{EcdhSource, KeylessSigner, NodeKey};
use crate::state::FrontState;

/// How long dialling a backend, or its greeting, may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the front pings the backend; a link silent for [`LINK_SILENCE`] is dead
/// (a backend whose host vanished sends no reset).
const LINK_PING: Duration = Duration::from_millis(500);
const LINK_SILENCE: Duration = Duration::from_secs(3);
/// The pause between rounds of dialling every backend.
const REDIAL_PAUSE: Duration = Duration::from_millis(200);
/// How long a funding-output check may wait for the backend (LDK advises a few seconds:
/// pending checks hold gossip processing back).
const FUNDING_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the front's graph drops channels not updated for two weeks.
const GRAPH_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A front's settings.
#[derive(Debug)]
pub struct FrontConfig {
    /// The front's name (its certificate's), for logs and the backend's.
    pub name: String,
    /// Where peers connect.
    pub listen: SocketAddr,
    /// The link addresses of every backend instance of the node.
    pub backends: Vec<SocketAddr>,
    /// The front's link certificate.
    pub identity: LinkIdentity,
    /// How long a handshake waits for the backend's ECDH.
    pub ecdh_timeout: Duration,
    /// The node key, if this front holds it (`[front] key_provider`): handshakes are
    /// then answered locally. `None`, the default: keyless.
    pub node_key: Option<NodeKey>,
    /// Where peers reach the node through this front (its balancer's `host:port`), told
    /// to each backend it attaches to, for the node's announcement.
    pub public_address: Option<String>,
}

/// Why a front cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// The peer address cannot be bound.
    #[error("cannot listen for peers on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The link cannot be set up (certificates, runtime).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// No backend was configured.
    #[error("a front needs at least one backend address")]
    NoBackends,
    /// The front was given the key of another node than the backend runs.
    #[error("the front holds the key of node {held}, but the backend runs node {backend}")]
    WrongNodeKey {
        /// The node id of the key the front was given.
        held: bitcoin::secp256k1::PublicKey,
        /// The backend's.
        backend: bitcoin::secp256k1::PublicKey,
    },
}

/// LDK's log lines, through `tracing`.
pub struct LdkTracing;

impl Logger for LdkTracing {
    fn log(&self, record: Record) {
        let peer = record.peer_id.map(|p| p.to_string()).unwrap_or_default();
        match record.level {
            Level::Gossip | Level::Trace => {
                tracing::trace!(target: "ldk", %peer, "{}", record.args)
            }
            Level::Debug => tracing::debug!(target: "ldk", %peer, "{}", record.args),
            Level::Info => tracing::info!(target: "ldk", %peer, "{}", record.args),
            Level::Warn => tracing::warn!(target: "ldk", %peer, "{}", record.args),
            Level::Error => tracing::error!(target: "ldk", %peer, "{}", record.args),
        }
    }
}

/// The front's `PeerManager`: channel and onion messages forwarded, gossip at the edge,
/// no key.
pub type FrontPeerManager = PeerManager<
    SocketDescriptor,
    Arc<Forwarder<Arc<FrontState>>>,
    Arc<EdgeGossip>,
    Arc<OnionRelay>,
    Arc<LdkTracing>,
    Arc<IgnoringMessageHandler>,
    Arc<KeylessSigner<Arc<dyn EcdhSource>>>,
    Arc<IgnoringMessageHandler>,
>;

type LinkStream = Framed<tokio_rustls::client::TlsStream<TcpStream>, LinkCodec>;

/// A running front; dropping it stops it.
pub struct Front {
    state: Arc<FrontState>,
    holds_key: bool,
    gossip: Arc<EdgeGossip>,
    peer_manager: Arc<FrontPeerManager>,
    address: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// The link's runtime (see [`Front::start`]).
    _link_runtime: OwnRuntime,
}

impl Drop for Front {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.peer_manager.disconnect_all_peers();
    }
}

impl Front {
    /// Binds the peer address, attaches to the active backend (waiting for one), and
    /// starts serving peers on the current runtime. The link runs on a runtime of its
    /// own: the handshake's ECDH blocks a thread of this one while it waits for the link
    /// (docs/fronts-ldk.md).
    pub async fn start(config: FrontConfig) -> Result<Self, FrontError> {
        if config.backends.is_empty() {
            return Err(FrontError::NoBackends);
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| FrontError::Listen {
                address: config.listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| FrontError::Listen {
            address: config.listen,
            source,
        })?;
        let client = config.identity.client_config()?;
        // Dropped without blocking: `start` may be cancelled while it waits (a SIGTERM).
        let link_runtime = OwnRuntime::new("phalanx-front-link", 1).map_err(LinkError::Io)?;
        // The node's id comes from the first active backend: the keyless signer must
        // know it before the PeerManager exists.
        let first = link_runtime
            .spawn(dial_any(
                Arc::clone(&client),
                config.name.clone(),
                config.backends.clone(),
            ))
            .await
            .map_err(|_| LinkError::Protocol("the link's runtime stopped".into()))?;
        if let Some(key) = &config.node_key
            && key.node_id() != first.1.node_id
        {
            return Err(FrontError::WrongNodeKey {
                held: key.node_id(),
                backend: first.1.node_id,
            });
        }
        let network = bitcoin::Network::from_chain_hash(bitcoin::constants::ChainHash::from(
            first.1.chain_hash,
        ))
        .ok_or_else(|| {
            LinkError::Protocol("the backend runs a chain this front does not know".into())
        })?;
        let (mut state, mut dial_requests) = FrontState::new(first.1.node_id, config.ecdh_timeout);
        state.public_address = config.public_address.clone();
        let state = Arc::new(state);
        let graph = Arc::new(FrontGraph::new(network, Arc::new(LdkTracing)));
        let gossip = Arc::new(EdgeGossip::new(graph, Arc::clone(&state)));
        let (attached, first_attach) = tokio::sync::oneshot::channel();
        link_runtime.spawn(link_loop(
            Arc::clone(&state),
            client,
            config.name.clone(),
            config.backends.clone(),
            first,
            attached,
        ));
        // Serving peers before the link is attached would fail their handshakes.
        first_attach
            .await
            .map_err(|_| LinkError::Protocol("the first backend could not be attached".into()))?;
        let holds_key = config.node_key.is_some();
        let ecdh: Arc<dyn EcdhSource> = match config.node_key {
            Some(key) => Arc::new(key),
            None => Arc::clone(&state) as Arc<dyn EcdhSource>,
        };
        let signer = Arc::new(KeylessSigner::new(state.node_id(), ecdh));
        let ignoring = Arc::new(IgnoringMessageHandler {});
        let peer_manager = Arc::new(PeerManager::new(
            MessageHandler {
                chan_handler: Arc::new(Forwarder(Arc::clone(&state))),
                route_handler: Arc::clone(&gossip),
                onion_message_handler: Arc::new(OnionRelay::new(Arc::clone(&state))),
                custom_message_handler: Arc::clone(&ignoring),
                send_only_message_handler: ignoring,
            },
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(0),
            &rand::random::<[u8; 32]>(),
            Arc::new(LdkTracing),
            signer,
        ));
        let mut tasks = Vec::new();
        let accepting = Arc::clone(&peer_manager);
        tasks.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, _)) => {
                        let _ = tcp.set_nodelay(true);
                        if let Ok(tcp) = tcp.into_std() {
                            tokio::spawn(lightning_net_tokio::setup_inbound(
                                Arc::clone(&accepting),
                                tcp,
                            ));
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "accepting a peer failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
        let (events, processing) = (Arc::clone(&state), Arc::clone(&peer_manager));
        tasks.push(tokio::spawn(async move {
            loop {
                events.events_ready.notified().await;
                processing.process_events();
            }
        }));
        let dialling = Arc::clone(&peer_manager);
        tasks.push(tokio::spawn(async move {
            while let Some((peer, address)) = dial_requests.recv().await {
                if dialling.peer_by_node_id(&peer).is_some() {
                    continue;
                }
                let dialling = Arc::clone(&dialling);
                tokio::spawn(async move { dial_peer(dialling, peer, &address).await });
            }
        }));
        let ticking = Arc::clone(&peer_manager);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                ticking.timer_tick_occurred();
            }
        }));
        // Announcements whose funding check completed wait in the gossip handler's events.
        let (checked, processing) = (Arc::clone(&gossip), Arc::clone(&peer_manager));
        tasks.push(tokio::spawn(async move {
            loop {
                checked.checks_completed().await;
                processing.process_events();
            }
        }));
        // Each backend attached to gets the front's graph (see `replay_graph_to_backend`).
        let (attaching, replaying) = (Arc::clone(&state), Arc::clone(&gossip));
        tasks.push(tokio::spawn(async move {
            loop {
                attaching.attached_notify.notified().await;
                let replaying = Arc::clone(&replaying);
                if let Ok(sent) =
                    tokio::task::spawn_blocking(move || replaying.replay_graph_to_backend()).await
                {
                    tracing::info!(messages = sent, "handed the front's graph to the backend");
                }
            }
        }));
        let (expiring, pruning) = (Arc::clone(&state), Arc::clone(&gossip));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut pruned = std::time::Instant::now();
            loop {
                tick.tick().await;
                if let Some(deadline) = std::time::Instant::now().checked_sub(FUNDING_CHECK_TIMEOUT)
                {
                    expiring.expire_funding_checks(deadline);
                }
                pruning.settle_missing();
                if pruned.elapsed() >= GRAPH_PRUNE_EVERY {
                    pruning.graph().remove_stale_channels_and_tracking();
                    pruned = std::time::Instant::now();
                }
            }
        }));
        tracing::info!(front = %config.name, %address, node_id = %state.node_id(), holds_key, "front serving peers");
        Ok(Self {
            state,
            holds_key,
            gossip,
            peer_manager,
            address,
            tasks,
            _link_runtime: link_runtime,
        })
    }

    /// Where peers connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The front's state (attachment, sessions, counters).
    pub fn state(&self) -> &Arc<FrontState> {
        &self.state
    }

    /// Whether the front holds the node key (rather than asking the backend).
    pub fn holds_key(&self) -> bool {
        self.holds_key
    }

    /// The front's network graph.
    pub fn graph(&self) -> &Arc<FrontGraph> {
        self.gossip.graph()
    }

    /// The front's peer manager.
    pub fn peer_manager(&self) -> &Arc<FrontPeerManager> {
        &self.peer_manager
    }
}

/// Dials `peer` at `address` for the backend, and runs the connection.
async fn dial_peer(
    peer_manager: Arc<FrontPeerManager>,
    peer: bitcoin::secp256k1::PublicKey,
    address: &str,
) {
    let resolved = match tokio::net::lookup_host(address).await {
        Ok(mut addresses) => addresses.next(),
        Err(err) => {
            tracing::warn!(%peer, address, error = %err, "cannot resolve a peer's address");
            return;
        }
    };
    let Some(resolved) = resolved else {
        tracing::warn!(%peer, address, "a peer's address resolves to nothing");
        return;
    };
    let connected = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(resolved)).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::warn!(%peer, address, error = %err, "cannot connect to a peer");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, address, "connecting to a peer timed out");
            return;
        }
    };
    // LDK writes each message as it is ready; Nagle would hold the small ones back for
    // the peer's delayed ACK (lightning-net-tokio's own `connect_outbound` leaves it on).
    let _ = stream.set_nodelay(true);
    match stream.into_std() {
        Ok(stream) => {
            tracing::info!(%peer, address, "dialled a peer for the backend");
            lightning_net_tokio::setup_outbound(peer_manager, peer, stream).await;
        }
        Err(err) => tracing::warn!(%peer, address, error = %err, "cannot take the connection"),
    }
}

/// Dials each backend in turn, round after round, until one greets as active.
async fn dial_any(
    client: Arc<ClientConfig>,
    name: String,
    backends: Vec<SocketAddr>,
) -> (String, ActiveBackend, LinkStream) {
    let mut refusals = Refusals::default();
    loop {
        for address in &backends {
            match tokio::time::timeout(DIAL_TIMEOUT, dial(&client, &name, *address)).await {
                Ok(Ok(attached)) => return attached,
                Ok(Err(err)) => refusals.failed(*address, &err),
                Err(_) => tracing::debug!(backend = %address, "backend did not greet in time"),
            }
        }
        tokio::time::sleep(REDIAL_PAUSE).await;
    }
}

/// What the front says of backends it could not attach to, while it looks for the
/// active one. A backend that is down, stopping or a standby (whose link does not
/// listen) is how a cluster looks during a failover: debug. Anything else (a certificate
/// of another CA either way, another link version, a backend that says it is a front)
/// does not heal by dialling again and needs the operator: a warning, once per backend
/// until its error changes, not every round. (An address where something else listens
/// and hangs up, say a front's peer port, looks like a lost connection: debug.)
#[derive(Default)]
struct Refusals {
    warned: std::collections::HashMap<SocketAddr, String>,
}

impl Refusals {
    fn failed(&mut self, backend: SocketAddr, err: &LinkError) {
        if is_connection_failure(err) {
            tracing::debug!(%backend, error = %err, "backend not attachable");
            return;
        }
        let message = err.to_string();
        if self.warned.get(&backend) != Some(&message) {
            tracing::warn!(%backend, error = %message, "backend refused: dialling it again will not help until this is fixed");
            self.warned.insert(backend, message);
        }
    }
}

/// Whether a failed dial is the ordinary absence of a backend: nothing listening, the
/// connection lost, or the backend closing the link as it stops.
fn is_connection_failure(err: &LinkError) -> bool {
    use std::io::ErrorKind;
    match err {
        LinkError::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::NotConnected
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
                | ErrorKind::TimedOut
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

/// Opens the link to one backend: TLS, hellos, and its word that it is active (a
/// standby does not serve the link).
async fn dial(
    client: &Arc<ClientConfig>,
    name: &str,
    address: SocketAddr,
) -> Result<(String, ActiveBackend, LinkStream), LinkError> {
    let tcp = TcpStream::connect(address).await?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(Arc::clone(client))
        .connect(expected_name(Role::Backend), tcp)
        .await?;
    let mut link = Framed::new(tls, LinkCodec::default());
    link.send(Frame::Hello(Hello::new(Role::Front, name)))
        .await?;
    let backend = match link.next().await {
        Some(Ok(Frame::Hello(hello))) => {
            hello.check(Role::Backend)?;
            hello.name
        }
        Some(Ok(other)) => {
            return Err(LinkError::Protocol(format!(
                "the backend opened with {}",
                other.kind()
            )));
        }
        Some(Err(err)) => return Err(err),
        None => return Err(closed(format!("the backend at {address} closed the link"))),
    };
    match link.next().await {
        Some(Ok(Frame::Active(active))) => Ok((backend, active, link)),
        Some(Ok(other)) => Err(LinkError::Protocol(format!(
            "backend {backend} sent {} before saying it is active",
            other.kind()
        ))),
        Some(Err(err)) => Err(err),
        None => Err(closed(format!("backend {backend} closed the link"))),
    }
}

/// A link the backend ended before it was attached: as any lost connection (it stops, or
/// it is not the active instance any more).
fn closed(message: String) -> LinkError {
    LinkError::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        message,
    ))
}

/// Keeps the front attached: runs the link to the active backend until it fails, then
/// finds the active backend again, for as long as the front runs.
async fn link_loop(
    state: Arc<FrontState>,
    client: Arc<ClientConfig>,
    name: String,
    backends: Vec<SocketAddr>,
    first: (String, ActiveBackend, LinkStream),
    attached: tokio::sync::oneshot::Sender<()>,
) {
    let mut next = Some(first);
    let mut attached = Some(attached);
    loop {
        let (backend, active, link) = match next.take() {
            Some(attached) => attached,
            None => dial_any(Arc::clone(&client), name.clone(), backends.clone()).await,
        };
        run_attached(&state, backend, active, link, attached.take()).await;
        tokio::time::sleep(REDIAL_PAUSE).await;
    }
}

async fn run_attached(
    state: &Arc<FrontState>,
    backend: String,
    active: ActiveBackend,
    link: LinkStream,
    on_attach: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let (sink, mut stream) = link.split();
    let (frames, outgoing) = mpsc::unbounded_channel::<Frame>();
    if let Err(why) = state.attach(backend.clone(), active, frames.clone()) {
        tracing::error!(%backend, why, "refusing a backend");
        return;
    }
    if let Some(on_attach) = on_attach {
        let _ = on_attach.send(());
    }
    tracing::info!(%backend, "front attached to the active backend");
    let writer = tokio::spawn(phalanx_link::write_queued_frames(sink, outgoing));
    let pinger = {
        let state = Arc::clone(state);
        tokio::spawn(async move {
            let mut nonce = 0u64;
            loop {
                tokio::time::sleep(LINK_PING).await;
                nonce += 1;
                state.ping_sent(nonce);
                if frames.send(Frame::LinkPing { nonce }).is_err() {
                    break;
                }
            }
        })
    };
    loop {
        match tokio::time::timeout(LINK_SILENCE, stream.next()).await {
            Ok(Some(Ok(frame))) => {
                if let Err(err) = state.on_frame(frame) {
                    tracing::warn!(%backend, error = %err, "the backend broke the link's protocol");
                    break;
                }
            }
            Ok(Some(Err(err))) => {
                tracing::warn!(%backend, error = %err, "the link failed");
                break;
            }
            Ok(None) => {
                tracing::warn!(%backend, "the backend closed the link");
                break;
            }
            Err(_) => {
                tracing::warn!(%backend, "the link went silent");
                break;
            }
        }
    }
    pinger.abort();
    writer.abort();
    state.detach();
}
