//! The axum server: routes, authentication, the standby guard, JSON errors, logs.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn, from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::control::NodeControl;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::token::AcceptedTokens;
use crate::types::{
    CloseChannelRequest, ConnectPeerRequest, CreateInvoiceRequest, CreateOfferRequest, Empty,
    KeysendRequest, ListChannelsResponse, ListPaymentsResponse, ListPeersResponse,
    OpenChannelRequest, PayInvoiceRequest, PayOfferRequest, SendOnchainRequest, ServerState,
    StateResponse,
};
use crate::validate;

/// The largest request body read, in bytes; requests are small.
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024;

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests
/// under way (a payment waiting for its outcome holds the shutdown up to its timeout).
pub async fn serve<N: NodeControl>(
    listener: tokio::net::TcpListener,
    node: Arc<N>,
    tokens: impl Into<AcceptedTokens>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(target: "phalanx_api", %addr, "API listening");
    }
    axum::serve(listener, router(node, tokens))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API's routes over `node`, every one but `GET /v1/state` behind `token`.
///
/// | route | node method |
/// |-------|-------------|
/// | `GET /v1/state` (no token) | [`state`](NodeControl::state) |
/// | `GET /v1/ready` (no token) | [`state`](NodeControl::state): 200 if `SERVER_ACTIVE`, else 503 |
/// | `GET /metrics` (token, any state) | [`metrics`](NodeControl::metrics) |
/// | `GET /v1/info` | [`info`](NodeControl::info) |
/// | `POST /v1/onchain/address` | [`new_address`](NodeControl::new_address) |
/// | `GET /v1/onchain/balance` | [`balance`](NodeControl::balance) |
/// | `POST /v1/onchain/send` | [`send_onchain`](NodeControl::send_onchain) |
/// | `GET /v1/peers` | [`list_peers`](NodeControl::list_peers) |
/// | `POST /v1/peers` | [`connect_peer`](NodeControl::connect_peer) |
/// | `DELETE /v1/peers/{node_id}` | [`disconnect_peer`](NodeControl::disconnect_peer) |
/// | `POST /v1/channels` | [`open_channel`](NodeControl::open_channel) |
/// | `GET /v1/channels` | [`list_channels`](NodeControl::list_channels) |
/// | `POST /v1/channels/{channel_id}/close` | [`close_channel`](NodeControl::close_channel) |
/// | `POST /v1/invoices` | [`create_invoice`](NodeControl::create_invoice) |
/// | `POST /v1/payments` | [`pay_invoice`](NodeControl::pay_invoice) |
/// | `POST /v1/offers` | [`create_offer`](NodeControl::create_offer) |
/// | `POST /v1/payments/offer` | [`pay_offer`](NodeControl::pay_offer) |
/// | `POST /v1/payments/keysend` | [`keysend`](NodeControl::keysend) |
/// | `POST /v1/backups` | [`create_backup`](NodeControl::create_backup) |
/// | `GET /v1/payments` | [`list_payments`](NodeControl::list_payments) |
/// | `GET /v1/payments/{payment_hash}` | [`get_payment`](NodeControl::get_payment) |
/// | `GET /v1/payments/id/{payment_id}` | [`get_payment_by_id`](NodeControl::get_payment_by_id) |
///
/// An authenticated request is checked in this order: the token (`401
/// unauthorized`), the instance's state (`503 not_active` unless `SERVER_ACTIVE`), the
/// body (`400 invalid_request`), then the node is called. Unknown routes answer `404
/// not_found` and known routes with another method `405 method_not_allowed`, token or
/// not. Every error body is `{"error":{"code":...,"message":...}}`.
pub fn router<N: NodeControl>(node: Arc<N>, tokens: impl Into<AcceptedTokens>) -> Router {
    let state = AppState {
        node,
        tokens: tokens.into(),
    };
    let authenticated = Router::new()
        .route("/v1/info", get(info::<N>))
        .route("/v1/onchain/address", post(new_address::<N>))
        .route("/v1/onchain/balance", get(balance::<N>))
        .route("/v1/onchain/send", post(send_onchain::<N>))
        .route("/v1/peers", get(list_peers::<N>).post(connect_peer::<N>))
        .route("/v1/peers/{node_id}", delete(disconnect_peer::<N>))
        .route(
            "/v1/channels",
            get(list_channels::<N>).post(open_channel::<N>),
        )
        .route("/v1/channels/{channel_id}/close", post(close_channel::<N>))
        .route("/v1/invoices", post(create_invoice::<N>))
        .route(
            "/v1/payments",
            get(list_payments::<N>).post(pay_invoice::<N>),
        )
        .route("/v1/offers", post(create_offer::<N>))
        .route("/v1/payments/offer", post(pay_offer::<N>))
        .route("/v1/payments/keysend", post(keysend::<N>))
        .route("/v1/backups", post(create_backup::<N>))
        .route("/v1/payments/{payment_hash}", get(get_payment::<N>))
        .route("/v1/payments/id/{payment_id}", get(get_payment_by_id::<N>))
        // The last layer added runs first: the token, then the state.
        .route_layer(from_fn_with_state(state.clone(), require_active::<N>))
        .route_layer(from_fn_with_state(state.clone(), require_token::<N>));
    // Metrics need the token but not the lease: a standby reports its own.
    let metrics = Router::new()
        .route("/metrics", get(metrics::<N>))
        .route_layer(from_fn_with_state(state.clone(), require_token::<N>));
    Router::new()
        .route("/v1/state", get(server_state::<N>))
        .merge(metrics)
        .route("/v1/ready", get(ready::<N>))
        .merge(authenticated)
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(map_response(errors_as_json))
        .layer(from_fn(log_request))
        .with_state(state)
}

struct AppState<N> {
    node: Arc<N>,
    tokens: AcceptedTokens,
}

impl<N> Clone for AppState<N> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            tokens: self.tokens.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let unauthorized = self.code == ErrorCode::Unauthorized;
        let mut response = (status, JsonOk(ErrorBody { error: self })).into_response();
        if unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A 200 answer with a JSON body.
struct JsonOk<T>(T);

impl<T: Serialize> IntoResponse for JsonOk<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(err) => {
                tracing::error!(target: "phalanx_api", error = %err, "cannot encode an answer");
                ApiError::internal("cannot encode the answer").into_response()
            }
        }
    }
}

type ApiResult<T> = Result<JsonOk<T>, ApiError>;

/// Reads a JSON body. An empty body reads as `{}`, so requests whose fields all have
/// defaults need none; otherwise the content type must be JSON.
async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let bytes = Limited::new(body, MAX_REQUEST_BODY_BYTES)
        .collect()
        .await
        .map_err(|err| {
            ApiError::invalid_request(format!(
                "cannot read the request body (at most {MAX_REQUEST_BODY_BYTES} bytes): {err}"
            ))
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}")
            .map_err(|err| ApiError::invalid_request(format!("the request body is empty: {err}")));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.len() > 5 && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
        });
    if !json {
        return Err(ApiError::invalid_request(
            "the request body must be JSON, sent with `Content-Type: application/json`",
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::invalid_request(format!("malformed JSON body: {err}")))
}

fn path_param(param: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    param
        .map(|Path(value)| value)
        .map_err(|err| ApiError::invalid_request(format!("bad path: {}", err.body_text())))
}

async fn require_token<N: NodeControl>(
    State(state): State<AppState<N>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .and_then(|value| {
            let (scheme, token) = value.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| token.trim_ascii())
        });
    match presented {
        None => ApiError::new(
            ErrorCode::Unauthorized,
            "missing `Authorization: Bearer <token>` header",
        )
        .into_response(),
        Some(token) if !state.tokens.matches(token) => {
            ApiError::new(ErrorCode::Unauthorized, "wrong API token").into_response()
        }
        Some(_) => next.run(request).await,
    }
}

async fn require_active<N: NodeControl>(
    State(state): State<AppState<N>>,
    request: Request,
    next: Next,
) -> Response {
    match state.node.state() {
        ServerState::ServerActive => next.run(request).await,
        other => ApiError::not_active(other).into_response(),
    }
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route {method} {}", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} does not take {method}", uri.path()),
    )
}

/// The safety net: an error answer that is not JSON yet (one of axum's own) gets the
/// API's error shape, its status kept.
async fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        s if s.is_client_error() => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    };
    let (mut parts, body) = response.into_parts();
    let text = match Limited::new(body, 4096).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let message = if text.trim().is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text.trim().to_owned()
    };
    let body = serde_json::to_vec(&ErrorBody {
        error: ApiError::new(code, message),
    })
    .unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// One line per request: method, path, status, latency. Headers (the token) are never
/// logged. The state probe logs at debug level: load balancers poll it.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if path == "/v1/state" && status == 200 {
        tracing::debug!(target: "phalanx_api", %method, %path, status, latency_ms, "request");
    } else {
        tracing::info!(target: "phalanx_api", %method, %path, status, latency_ms, "request");
    }
    response
}

async fn server_state<N: NodeControl>(State(state): State<AppState<N>>) -> JsonOk<StateResponse> {
    JsonOk(StateResponse {
        state: state.node.state(),
    })
}

async fn metrics<N: NodeControl>(State(state): State<AppState<N>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.node.metrics(),
    )
        .into_response()
}

/// For readiness probes and load balancers, which look at the status code: 200 on the
/// active instance only, 503 `not_active` with the state everywhere else.
async fn ready<N: NodeControl>(State(state): State<AppState<N>>) -> Response {
    match state.node.state() {
        ServerState::ServerActive => JsonOk(StateResponse {
            state: ServerState::ServerActive,
        })
        .into_response(),
        other => ApiError::not_active(other).into_response(),
    }
}

async fn info<N: NodeControl>(
    State(state): State<AppState<N>>,
) -> ApiResult<crate::types::NodeInfo> {
    state.node.info().await.map(JsonOk)
}

async fn new_address<N: NodeControl>(
    State(state): State<AppState<N>>,
) -> ApiResult<crate::types::NewAddress> {
    state.node.new_address().await.map(JsonOk)
}

async fn balance<N: NodeControl>(
    State(state): State<AppState<N>>,
) -> ApiResult<crate::types::Balance> {
    state.node.balance().await.map(JsonOk)
}

async fn send_onchain<N: NodeControl>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<crate::types::SendOnchainResponse> {
    let mut req: SendOnchainRequest = json_body(&headers, body).await?;
    req.validate()?;
    state.node.send_onchain(req).await.map(JsonOk)
}

async fn list_peers<N: NodeControl>(
    State(state): State<AppState<N>>,
) -> ApiResult<ListPeersResponse> {
    let peers = state.node.list_peers().await?;
    Ok(JsonOk(ListPeersResponse { peers }))
}

async fn create_backup<N: NodeControl>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<crate::types::BackupCreated> {
    let mut req: crate::types::CreateBackupRequest = json_body(&headers, body).await?;
    req.validate()?;
    state.node.create_backup(req).await.map(JsonOk)
}

async fn connect_peer<N: NodeControl>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<crate::types::Peer> {
    let mut req: ConnectPeerRequest = json_body(&headers, body).await?;
    req.validate()?;
    state.node.connect_peer(req).await.map(JsonOk)
}

async fn disconnect_peer<N: NodeControl>(
    State(state): State<AppState<N>>,
    node_id: Result<Path<String>, PathRejection>,
) -> ApiResult<Empty> {
    let node_id = validate::node_id(&path_param(node_id)?)?;
    state.node.disconnect_peer(node_id).await?;
    Ok(JsonOk(Empty {}))
}

async fn open_channel<N: NodeControl>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<crate::types::OpenChannelResponse> {
    let mut req: OpenChannelRequest = json_body(&headers, body).await?;
    req.validate()?;
    state.node.open_channel(req).await.map(JsonOk)
}

async fn list_channels<N: NodeControl>(
    State(state): State<AppState<N>>,
) -> ApiResult<ListChannelsResponse> {
    let channels = state.node.list_channels().await?;
    Ok(JsonOk(ListChannelsResponse { channels }))
}

async fn close_channel<N: NodeControl>(
    State(state): State<AppState<N>>,
    channel_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Empty> {
    let channel_id = validate::hex32(&path_param(channel_id)?, "channel id")?;
    let req: CloseChannelRequest = json_body(&headers, body).await?;
    state.node.close_channel(channel_id, req).await?;
    Ok(JsonOk(Empty {}))
}

async fn create_invoice<N: NodeControl>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<crate::types::Invoice> {
    let mut req: CreateInvoiceRequest = json_body(&headers, body).await?;
    req.validate()?;
    state.node.create_invoice(req).await.map(JsonOk)
}

async fn pay_invoice<N: NodeControl>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<crate::types::Payment> {
    let mut req: PayInvoiceRequest = json_body(&headers, body).await?;
    req.validate()?;
    state.node.pay_invoice(req).await.map(JsonOk)
}

async fn create_offer<N: NodeControl>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<crate::types::Offer> {
    let mut req: CreateOfferRequest = json_body(&headers, body).await?;
    req.validate()?;
    state.node.create_offer(req).await.map(JsonOk)
}

async fn pay_offer<N: NodeControl>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<crate::types::Payment> {
    let mut req: PayOfferRequest = json_body(&headers, body).await?;
    req.validate()?;
    state.node.pay_offer(req).await.map(JsonOk)
}

async fn keysend<N: NodeControl>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<crate::types::Payment> {
    let mut req: KeysendRequest = json_body(&headers, body).await?;
    req.validate()?;
    state.node.keysend(req).await.map(JsonOk)
}

async fn list_payments<N: NodeControl>(
    State(state): State<AppState<N>>,
) -> ApiResult<ListPaymentsResponse> {
    let payments = state.node.list_payments().await?;
    Ok(JsonOk(ListPaymentsResponse { payments }))
}

async fn get_payment<N: NodeControl>(
    State(state): State<AppState<N>>,
    payment_hash: Result<Path<String>, PathRejection>,
) -> ApiResult<crate::types::Payment> {
    let payment_hash = validate::hex32(&path_param(payment_hash)?, "payment hash")?;
    state.node.get_payment(payment_hash).await.map(JsonOk)
}

async fn get_payment_by_id<N: NodeControl>(
    State(state): State<AppState<N>>,
    payment_id: Result<Path<String>, PathRejection>,
) -> ApiResult<crate::types::Payment> {
    let payment_id = validate::hex32(&path_param(payment_id)?, "payment id")?;
    state.node.get_payment_by_id(payment_id).await.map(JsonOk)
}
