//! A client of the API, for `phalanx ctl` and tests.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::{Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorBody};
use crate::token::ApiToken;
use crate::types::{
    BackupCreated, Balance, Channel, CloseChannelRequest, ConnectPeerRequest, CreateBackupRequest,
    CreateInvoiceRequest, CreateOfferRequest, Empty, Invoice, KeysendRequest, ListChannelsResponse,
    ListPaymentsResponse, ListPeersResponse, NewAddress, NodeInfo, Offer, OpenChannelRequest,
    OpenChannelResponse, PayInvoiceRequest, PayOfferRequest, Payment, Peer, SendOnchainRequest,
    SendOnchainResponse, ServerState, StateResponse,
};

/// How long a request may take, connecting included, unless
/// [`ApiClient::with_timeout`] says otherwise. Longer than a payment's default wait.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 120;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The API answered with an error.
    #[error("HTTP {status}: {error}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error in the body.
        error: ApiError,
    },
    /// The API could not be reached (nothing listening, connection refused or cut).
    #[error("cannot reach the API at {url}: {reason}")]
    Connect {
        /// The base URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The answer is not what the API sends (another server, a proxy's error page).
    #[error("unexpected answer from the API (HTTP {status}): {reason}")]
    Decode {
        /// The HTTP status.
        status: u16,
        /// What is wrong with it.
        reason: String,
    },
    /// No answer in time.
    #[error("the API did not answer within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// The request could not be encoded (a bug).
    #[error("cannot encode the request: {0}")]
    Encode(String),
    /// The base URL is not an `http://host:port` URL.
    #[error("invalid API URL {url}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A client of one node's API: a base URL (`http://127.0.0.1:8080`, maybe with a path
/// prefix) and the token. One method per route.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    token: Option<ApiToken>,
    timeout: Duration,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    /// A client of the API at `base_url`, without a token (only
    /// [`state`](Self::state) works without one: see [`with_token`](Self::with_token)).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let base = base_url.trim().trim_end_matches('/').to_owned();
        let uri: Uri = base.parse().map_err(|_| invalid("it does not parse"))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid(
                "only http:// is supported (put TLS in front with a proxy)",
            ));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("it names no host"));
        }
        if uri.query().is_some() {
            return Err(invalid("it has a query"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            base,
            token: None,
            timeout: Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS),
            http,
        })
    }

    /// Presents `token` with every request.
    pub fn with_token(mut self, token: ApiToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Gives up on a request after `timeout` (default
    /// [`DEFAULT_REQUEST_TIMEOUT_SECS`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/state` (needs no token).
    pub async fn state(&self) -> Result<ServerState, ClientError> {
        let answer: StateResponse = self.call(Method::GET, "/v1/state", None::<&()>).await?;
        Ok(answer.state)
    }

    /// `GET /v1/ready` (needs no token): `Ok` on the active instance only; elsewhere the
    /// 503 `not_active` error, which carries the state.
    pub async fn ready(&self) -> Result<ServerState, ClientError> {
        let answer: StateResponse = self.call(Method::GET, "/v1/ready", None::<&()>).await?;
        Ok(answer.state)
    }

    /// `GET /metrics`: the text, as served.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.call_text(Method::GET, "/metrics").await
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<NodeInfo, ClientError> {
        self.call(Method::GET, "/v1/info", None::<&()>).await
    }

    /// `POST /v1/onchain/address`.
    pub async fn new_address(&self) -> Result<NewAddress, ClientError> {
        self.call(Method::POST, "/v1/onchain/address", None::<&()>)
            .await
    }

    /// `GET /v1/onchain/balance`.
    pub async fn balance(&self) -> Result<Balance, ClientError> {
        self.call(Method::GET, "/v1/onchain/balance", None::<&()>)
            .await
    }

    /// `POST /v1/onchain/send`.
    pub async fn send_onchain(
        &self,
        req: &SendOnchainRequest,
    ) -> Result<SendOnchainResponse, ClientError> {
        self.call(Method::POST, "/v1/onchain/send", Some(req)).await
    }

    /// `GET /v1/peers`.
    pub async fn list_peers(&self) -> Result<Vec<Peer>, ClientError> {
        let answer: ListPeersResponse = self.call(Method::GET, "/v1/peers", None::<&()>).await?;
        Ok(answer.peers)
    }

    /// `POST /v1/peers`.
    pub async fn connect_peer(&self, req: &ConnectPeerRequest) -> Result<Peer, ClientError> {
        self.call(Method::POST, "/v1/peers", Some(req)).await
    }

    /// `DELETE /v1/peers/{node_id}`.
    pub async fn disconnect_peer(&self, node_id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/peers/{}", segment(node_id));
        let _: Empty = self.call(Method::DELETE, &path, None::<&()>).await?;
        Ok(())
    }

    /// `POST /v1/channels`.
    pub async fn open_channel(
        &self,
        req: &OpenChannelRequest,
    ) -> Result<OpenChannelResponse, ClientError> {
        self.call(Method::POST, "/v1/channels", Some(req)).await
    }

    /// `GET /v1/channels`.
    pub async fn list_channels(&self) -> Result<Vec<Channel>, ClientError> {
        let answer: ListChannelsResponse =
            self.call(Method::GET, "/v1/channels", None::<&()>).await?;
        Ok(answer.channels)
    }

    /// `POST /v1/channels/{channel_id}/close`.
    pub async fn close_channel(
        &self,
        channel_id: &str,
        req: &CloseChannelRequest,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/channels/{}/close", segment(channel_id));
        let _: Empty = self.call(Method::POST, &path, Some(req)).await?;
        Ok(())
    }

    /// `POST /v1/invoices`.
    pub async fn create_invoice(&self, req: &CreateInvoiceRequest) -> Result<Invoice, ClientError> {
        self.call(Method::POST, "/v1/invoices", Some(req)).await
    }

    /// `POST /v1/payments`.
    pub async fn pay_invoice(&self, req: &PayInvoiceRequest) -> Result<Payment, ClientError> {
        self.call(Method::POST, "/v1/payments", Some(req)).await
    }

    /// `POST /v1/offers`.
    pub async fn create_offer(&self, req: &CreateOfferRequest) -> Result<Offer, ClientError> {
        self.call(Method::POST, "/v1/offers", Some(req)).await
    }

    /// `POST /v1/payments/offer`.
    pub async fn pay_offer(&self, req: &PayOfferRequest) -> Result<Payment, ClientError> {
        self.call(Method::POST, "/v1/payments/offer", Some(req))
            .await
    }

    /// `POST /v1/backups`.
    pub async fn create_backup(
        &self,
        req: &CreateBackupRequest,
    ) -> Result<BackupCreated, ClientError> {
        self.call(Method::POST, "/v1/backups", Some(req)).await
    }

    /// `POST /v1/payments/keysend`.
    pub async fn keysend(&self, req: &KeysendRequest) -> Result<Payment, ClientError> {
        self.call(Method::POST, "/v1/payments/keysend", Some(req))
            .await
    }

    /// `GET /v1/payments`.
    pub async fn list_payments(&self) -> Result<Vec<Payment>, ClientError> {
        let answer: ListPaymentsResponse =
            self.call(Method::GET, "/v1/payments", None::<&()>).await?;
        Ok(answer.payments)
    }

    /// `GET /v1/payments/{payment_hash}`.
    pub async fn get_payment(&self, payment_hash: &str) -> Result<Payment, ClientError> {
        let path = format!("/v1/payments/{}", segment(payment_hash));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /v1/payments/id/{payment_id}`.
    pub async fn get_payment_by_id(&self, payment_id: &str) -> Result<Payment, ClientError> {
        let path = format!("/v1/payments/id/{}", segment(payment_id));
        self.call(Method::GET, &path, None::<&()>).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    /// A call whose successful answer is plain text.
    async fn call_text(&self, method: Method, path: &str) -> Result<String, ClientError> {
        let exchange = async {
            let (status, bytes) = self.exchange_raw(method, path, None::<&()>).await?;
            if status == StatusCode::OK {
                return Ok(String::from_utf8_lossy(&bytes).into_owned());
            }
            Err(api_error(status, &bytes))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    async fn exchange<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.exchange_raw(method, path, body).await?;
        if status == StatusCode::OK {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                status: status.as_u16(),
                reason: format!("{e}; body: {}", snippet(&bytes)),
            });
        }
        Err(api_error(status, &bytes))
    }

    async fn exchange_raw<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                serde_json::to_vec(body).map_err(|e| ClientError::Encode(e.to_string()))?
            }
            None => Vec::new(),
        };
        let request =
            request
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ClientError::InvalidUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        let connect = |reason: String| ClientError::Connect {
            url: self.base.clone(),
            reason,
        };
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| connect(error_chain(&e)))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| connect(format!("the answer was cut: {}", error_chain(&e))))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// The error an answer other than 200 carries.
fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(ErrorBody { error }) => ClientError::Api {
            status: status.as_u16(),
            error,
        },
        Err(_) => ClientError::Decode {
            status: status.as_u16(),
            reason: format!("not an API error: {}", snippet(bytes)),
        },
    }
}

/// Path segments are percent-encoded: an id never changes the route.
fn segment(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "(empty)".to_owned();
    }
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}
