//! Driving a node over its API while it may vanish (killed, restarting, failing over),
//! and the health check a load balancer makes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phalanx_api::{ApiClient, ClientError, ErrorCode};
use phalanx_testkit::proxy::TcpProxy;

/// The pause between two calls to a node that did not answer.
pub const POLL: Duration = Duration::from_millis(200);

/// Whether the node's API answers at all, for failure messages: a wedged node stops
/// answering, a node waiting on its peer does not.
pub async fn health(api: &ApiClient) -> String {
    let probe = api.clone().with_timeout(Duration::from_secs(5));
    match probe.info().await {
        Ok(info) => format!(
            "the API answers: height {}, {} peers, {} of {} channels usable",
            info.block_height, info.num_peers, info.num_usable_channels, info.num_channels
        ),
        Err(err) => format!("the API does not answer: {err}"),
    }
}

/// Whether the node could not answer: not running, starting, or killed mid-request.
pub fn unavailable(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Connect { .. }
            | ClientError::Timeout(_)
            | ClientError::Api { status: 503, .. }
    )
}

/// Whether the node answered that it has no such payment.
pub fn is_unknown_payment(err: &ClientError) -> bool {
    matches!(err, ClientError::Api { error, .. } if error.code == ErrorCode::UnknownPayment)
}

/// Calls `call` until the node answers, or `deadline` passes.
pub async fn when_up<T, F, Fut>(deadline: Instant, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    loop {
        match call().await {
            Err(err) if unavailable(&err) && Instant::now() < deadline => {
                tokio::time::sleep(POLL).await
            }
            answer => return answer,
        }
    }
}

/// The address of the instance whose `GET /v1/ready` answers 200, if one does: the
/// health check a load balancer makes.
pub async fn active_instance(instances: &[ApiClient]) -> Option<SocketAddr> {
    for api in instances {
        let probe = api.clone().with_timeout(Duration::from_secs(1));
        if probe.ready().await.is_ok() {
            return api.base_url().trim_start_matches("http://").parse().ok();
        }
    }
    None
}

/// A load balancer in front of `known` instances: each connection goes to the one whose
/// `GET /v1/ready` answers 200.
pub async fn ready_balancer(known: Arc<Mutex<Vec<(&'static str, ApiClient)>>>) -> TcpProxy {
    TcpProxy::start(Arc::new(move || {
        let instances: Vec<ApiClient> = known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, api)| api.clone())
            .collect();
        Box::pin(async move { active_instance(&instances).await })
    }))
    .await
    .expect("the balancer listens")
}
