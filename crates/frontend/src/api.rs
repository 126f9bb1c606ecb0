//! A front's `GET /v1/state`, `GET /v1/ready` and `GET /metrics` (no other route, no
//! token: nothing here acts, and nothing here is secret).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::front::{Front, FrontPeerManager};
use crate::gossip::FrontGraph;
use crate::state::FrontState;

/// `GET /v1/state` of a front.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct FrontStateResponse {
    /// `FRONT_ATTACHED` (serving peers for the active backend) or `FRONT_WAITING` (no
    /// active backend reached: peers are refused).
    pub state: String,
    /// The node's id (none until the front first attached: it learns it then).
    pub node_id: Option<String>,
    /// The backend instance attached to.
    pub backend: Option<String>,
    /// Peers connected to the front.
    pub peers: usize,
    /// Peers with a session at the backend.
    pub sessions: usize,
    /// The link's last round trip, in milliseconds.
    pub link_rtt_ms: Option<f64>,
    /// Channels in the front's network graph.
    pub graph_channels: usize,
    /// Nodes in the front's network graph.
    pub graph_nodes: usize,
    /// New, verified gossip messages handed to the backend.
    pub gossip_to_backend: u64,
    /// Onion messages from peers forwarded to the backend.
    pub onion_to_backend: u64,
    /// Onion messages from the backend queued for peers.
    pub onion_from_backend: u64,
}

struct Served {
    state: Arc<FrontState>,
    peer_manager: Arc<FrontPeerManager>,
    graph: Arc<FrontGraph>,
}

impl Served {
    /// Channels and nodes in the front's graph.
    fn graph_size(&self) -> (usize, usize) {
        let graph = self.graph.read_only();
        (graph.channels().len(), graph.nodes().len())
    }
}

/// Where the API finds its front: empty while the front waits for its first active
/// backend (it learns the node's id from it), so that the API can answer from the start.
#[derive(Clone, Default)]
pub struct FrontSlot(Arc<OnceLock<Served>>);

impl FrontSlot {
    /// An empty slot: the API answers `FRONT_WAITING` and 503 until it is filled.
    pub fn new() -> Self {
        Self::default()
    }

    /// The front has started: the API serves its state from now on.
    pub fn fill(&self, front: &Front) {
        let _ = self.0.set(Served {
            state: Arc::clone(front.state()),
            peer_manager: Arc::clone(front.peer_manager()),
            graph: Arc::clone(front.graph()),
        });
    }
}

/// Serves the state and metrics of the front `slot` holds (or will), until the task is
/// dropped.
pub async fn serve(slot: FrontSlot, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let router = Router::new()
        .route("/v1/state", get(front_state))
        .route("/v1/ready", get(front_ready))
        .route("/metrics", get(front_metrics))
        .with_state(slot);
    axum::serve(listener, router).await
}

/// Binds the front's API address.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

fn rtt_ms(state: &FrontState) -> Option<f64> {
    match state.counters().link_rtt_micros.load(Ordering::Relaxed) {
        0 => None,
        micros => Some(micros as f64 / 1000.0),
    }
}

async fn front_state(State(slot): State<FrontSlot>) -> impl IntoResponse {
    let body = match slot.0.get() {
        Some(served) => {
            let backend = served.state.attached_to();
            let (graph_channels, graph_nodes) = served.graph_size();
            FrontStateResponse {
                state: if backend.is_some() {
                    "FRONT_ATTACHED"
                } else {
                    "FRONT_WAITING"
                }
                .into(),
                node_id: Some(served.state.node_id().to_string()),
                backend,
                peers: served.peer_manager.list_peers().len(),
                sessions: served.state.sessions(),
                link_rtt_ms: rtt_ms(&served.state),
                graph_channels,
                graph_nodes,
                gossip_to_backend: served
                    .state
                    .counters()
                    .gossip_to_backend
                    .load(Ordering::Relaxed),
                onion_to_backend: served
                    .state
                    .counters()
                    .onion_to_backend
                    .load(Ordering::Relaxed),
                onion_from_backend: served
                    .state
                    .counters()
                    .onion_from_backend
                    .load(Ordering::Relaxed),
            }
        }
        None => FrontStateResponse {
            state: "FRONT_WAITING".into(),
            node_id: None,
            backend: None,
            peers: 0,
            sessions: 0,
            link_rtt_ms: None,
            graph_channels: 0,
            graph_nodes: 0,
            gossip_to_backend: 0,
            onion_to_backend: 0,
            onion_from_backend: 0,
        },
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).expect("the state encodes"),
    )
}

/// 200 while attached to an active backend, 503 otherwise: what a load balancer's
/// health check asks, so that it sends peers only to fronts that can serve them.
async fn front_ready(State(slot): State<FrontSlot>) -> impl IntoResponse {
    let attached = slot
        .0
        .get()
        .is_some_and(|served| served.state.attached_to().is_some());
    let status = if attached {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"ready\":{attached}}}"),
    )
}

async fn front_metrics(State(slot): State<FrontSlot>) -> impl IntoResponse {
    let mut registry = Registry::with_prefix("phalanx_front");
    let Some(served) = slot.0.get() else {
        // Waiting for the first backend: only that.
        registry.register(
            "backend_attached",
            "1 while the front is attached to an active backend",
            ConstGauge::new(0i64),
        );
        return encoded(&registry);
    };
    let counters = served.state.counters();
    let gauge = |value: i64| ConstGauge::new(value);
    registry.register(
        "peers",
        "Peers connected to the front",
        gauge(served.peer_manager.list_peers().len() as i64),
    );
    registry.register(
        "sessions",
        "Peers with a session at the backend",
        gauge(served.state.sessions() as i64),
    );
    registry.register(
        "backend_attached",
        "1 while the front is attached to an active backend",
        gauge(i64::from(served.state.attached_to().is_some())),
    );
    registry.register(
        "messages_to_backend",
        "Peer messages forwarded to the backend",
        ConstCounter::new(counters.messages_to_backend.load(Ordering::Relaxed)),
    );
    registry.register(
        "events_from_backend",
        "Events the backend sent for peers",
        ConstCounter::new(counters.events_from_backend.load(Ordering::Relaxed)),
    );
    registry.register(
        "attachments",
        "Times the front attached to an active backend",
        ConstCounter::new(counters.attachments.load(Ordering::Relaxed)),
    );
    registry.register(
        "link_rtt_seconds",
        "The link's last ping round trip",
        ConstGauge::new(rtt_ms(&served.state).unwrap_or(0.0) / 1000.0),
    );
    let counter =
        |value: &std::sync::atomic::AtomicU64| ConstCounter::new(value.load(Ordering::Relaxed));
    registry.register(
        "gossip_received",
        "Gossip messages (announcements, updates) received from peers",
        counter(&counters.gossip_received),
    );
    registry.register(
        "gossip_duplicate",
        "Gossip messages received that the front's graph had already",
        counter(&counters.gossip_duplicate),
    );
    registry.register(
        "gossip_not_taken",
        "Gossip messages refused, or held while their funding output was checked",
        counter(&counters.gossip_not_taken),
    );
    registry.register(
        "gossip_to_backend",
        "New, verified gossip messages handed to the backend",
        counter(&counters.gossip_to_backend),
    );
    registry.register(
        "onion_to_backend",
        "Onion messages from peers forwarded to the backend",
        counter(&counters.onion_to_backend),
    );
    registry.register(
        "onion_from_backend",
        "Onion messages from the backend queued for peers",
        counter(&counters.onion_from_backend),
    );
    registry.register(
        "onion_dropped",
        "Onion messages dropped: no backend to take them, a full queue, a session gone",
        counter(&counters.onion_dropped),
    );
    registry.register(
        "funding_checks",
        "Funding outputs asked of the backend",
        counter(&counters.funding_checks),
    );
    registry.register(
        "funding_checks_failed",
        "Funding-output checks that found no output, failed or timed out",
        counter(&counters.funding_checks_failed),
    );
    registry.register(
        "funding_found_not_taken",
        "Funding outputs found whose channel did not then enter the front's graph",
        counter(&counters.funding_found_not_taken),
    );
    let (channels, nodes) = served.graph_size();
    registry.register(
        "graph_channels",
        "Channels in the front's network graph",
        gauge(channels as i64),
    );
    registry.register(
        "graph_nodes",
        "Nodes in the front's network graph",
        gauge(nodes as i64),
    );
    encoded(&registry)
}

fn encoded(registry: &Registry) -> axum::response::Response {
    let mut text = String::new();
    if encode(&mut text, registry).is_err() {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
