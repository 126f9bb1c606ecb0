//! A front's `GET /v1/state`, `GET /v1/ready` and `GET /metrics` (no other route, no
//! token: nothing here acts, and nothing here is secret).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
use crate::state::FrontState;

/// `GET /v1/state` of a front.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct FrontStateResponse {
    /// `FRONT_ATTACHED` (serving peers for the active backend) or `FRONT_WAITING` (no
    /// active backend reached: peers are refused).
    pub state: String,
    /// The node's id.
    pub node_id: String,
    /// The backend instance attached to.
    pub backend: Option<String>,
    /// Peers connected to the front.
    pub peers: usize,
    /// Peers with a session at the backend.
    pub sessions: usize,
    /// The link's last round trip, in milliseconds.
    pub link_rtt_ms: Option<f64>,
}

struct Served {
    state: Arc<FrontState>,
    peer_manager: Arc<FrontPeerManager>,
}

/// Serves `front`'s state and metrics on `listener` until the task is dropped.
pub async fn serve(front: &Front, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_parts(
        Arc::clone(front.state()),
        Arc::clone(front.peer_manager()),
        listener,
    )
    .await
}

/// [`serve`], from the front's parts (for a task that outlives a borrow of the front).
pub async fn serve_parts(
    state: Arc<FrontState>,
    peer_manager: Arc<FrontPeerManager>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    let served = Arc::new(Served {
        state,
        peer_manager,
    });
    let router = Router::new()
        .route("/v1/state", get(front_state))
        .route("/v1/ready", get(front_ready))
        .route("/metrics", get(front_metrics))
        .with_state(served);
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

async fn front_state(State(served): State<Arc<Served>>) -> impl IntoResponse {
    let backend = served.state.attached_to();
    let body = FrontStateResponse {
        state: if backend.is_some() {
            "FRONT_ATTACHED"
        } else {
            "FRONT_WAITING"
        }
        .into(),
        node_id: served.state.node_id().to_string(),
        backend,
        peers: served.peer_manager.list_peers().len(),
        sessions: served.state.sessions(),
        link_rtt_ms: rtt_ms(&served.state),
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).expect("the state encodes"),
    )
}

/// 200 while attached to an active backend, 503 otherwise: what a load balancer's
/// health check asks, so that it sends peers only to fronts that can serve them.
async fn front_ready(State(served): State<Arc<Served>>) -> impl IntoResponse {
    let attached = served.state.attached_to().is_some();
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

async fn front_metrics(State(served): State<Arc<Served>>) -> impl IntoResponse {
    let counters = served.state.counters();
    let mut registry = Registry::with_prefix("phalanx_front");
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
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
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
