//! The HTTP/1.1 server: JSON-RPC on `POST /` (Basic auth, Bitcoin Core's legacy and 2.0
//! reply shapes and status codes), REST on `GET /rest/...` when enabled.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use bitcoin::{Address, BlockHash};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::chain::{Chain, ChainSettings};
use crate::rpc::{self, AfterCall, RpcError, codes};

/// Largest request body accepted (Core's default is 32 MiB for RPC too).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How to start a regtest node.
#[derive(Clone, Debug)]
pub struct RegtestConfig {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub bind: SocketAddr,
    /// RPC user name.
    pub rpc_user: String,
    /// RPC password.
    pub rpc_password: String,
    /// Serve Bitcoin Core's REST interface under `/rest/`.
    pub rest: bool,
    /// Chain settings (fee rate, mock time).
    pub chain: ChainSettings,
}

impl Default for RegtestConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            rpc_user: "phalanx".into(),
            rpc_password: "phalanx".into(),
            rest: true,
            chain: ChainSettings::default(),
        }
    }
}

struct Shared {
    chain: Mutex<Chain>,
    authorization: String,
    rest: bool,
    stop: watch::Sender<bool>,
}

/// A running regtest chain with its RPC/REST server. Stops when dropped.
pub struct Regtest {
    addr: SocketAddr,
    config: RegtestConfig,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Regtest {
    /// Starts the chain (genesis only) and its server.
    pub async fn start(config: RegtestConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let credentials = format!("{}:{}", config.rpc_user, config.rpc_password);
        let shared = Arc::new(Shared {
            chain: Mutex::new(Chain::new(config.chain.clone())),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            rest: config.rest,
            stop: watch::channel(false).0,
        });
        let server = tokio::spawn(serve(listener, Arc::clone(&shared)));
        tracing::info!(%addr, rest = config.rest, "regtest chain serving");
        Ok(Self {
            addr,
            config,
            shared,
            server,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (the RPC endpoint, without credentials).
    pub fn rpc_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://user:password@127.0.0.1:<port>`.
    pub fn rpc_url_with_credentials(&self) -> String {
        format!(
            "http://{}:{}@{}",
            self.config.rpc_user, self.config.rpc_password, self.addr
        )
    }

    /// `http://127.0.0.1:<port>/rest/`.
    pub fn rest_url(&self) -> String {
        format!("http://{}/rest/", self.addr)
    }

    /// RPC user name.
    pub fn rpc_user(&self) -> &str {
        &self.config.rpc_user
    }

    /// RPC password.
    pub fn rpc_password(&self) -> &str {
        &self.config.rpc_password
    }

    /// The chain, locked, for tests to inspect or drive directly.
    pub fn chain(&self) -> MutexGuard<'_, Chain> {
        self.shared.chain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mines `count` blocks paying `to` (the built-in wallet when `None`).
    pub fn mine(&self, count: u32, to: Option<&Address>) -> Vec<BlockHash> {
        let mut chain = self.chain();
        let payout = match to {
            Some(address) => address.script_pubkey(),
            None => chain.wallet().default_address().script_pubkey(),
        };
        (0..count)
            .map(|_| {
                chain
                    .mine_block(&payout, None)
                    .expect("mining on the tip succeeds")
            })
            .collect()
    }

    /// Resolves when the `stop` RPC was called.
    pub async fn stopped(&self) {
        let mut stop = self.shared.stop.subscribe();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }
}

impl Drop for Regtest {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, std::convert::Infallible>(handle(&shared, request).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
}

fn response(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    // Said explicitly: some clients (bitreq, under LDK's block sync) reuse a connection
    // only when told, and stop using it before the server's idle timeout (hyper's 30 s).
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("keep-alive"),
    );
    headers.insert("keep-alive", HeaderValue::from_static("timeout=30"));
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    if let Some(rest_path) = path.strip_prefix("/rest/") {
        if !shared.rest || request.method() != Method::GET {
            return response(StatusCode::NOT_FOUND, None, Bytes::new());
        }
        let query = request.uri().query().map(str::to_owned);
        let chain = shared.chain.lock().unwrap_or_else(|e| e.into_inner());
        let answer = crate::rest::handle(&chain, rest_path, query.as_deref());
        let status =
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return response(status, Some(answer.content_type), answer.body);
    }
    if path != "/" && !path.starts_with("/wallet/") {
        return response(StatusCode::NOT_FOUND, None, Bytes::new());
    }
    if request.method() != Method::POST {
        return response(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            "JSONRPC server handles only POST requests",
        );
    }
    let authorized = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == shared.authorization);
    if !authorized {
        let mut unauthorized = response(StatusCode::UNAUTHORIZED, None, Bytes::new());
        unauthorized.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"jsonrpc\""),
        );
        return unauthorized;
    }
    let body = match http_body_util::Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return response(StatusCode::PAYLOAD_TOO_LARGE, None, Bytes::new()),
    };
    let (status, reply) = jsonrpc(shared, &body);
    match reply {
        Some(reply) => response(status, Some("application/json"), format!("{reply}\n")),
        None => response(StatusCode::NO_CONTENT, None, Bytes::new()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    Legacy,
    V2,
}

/// One request object, executed. `None` for a JSON-RPC 2.0 notification.
fn execute(shared: &Shared, request: &Value) -> (Option<Value>, Version, Option<RpcError>) {
    let Value::Object(object) = request else {
        return (
            Some(error_reply(
                Version::Legacy,
                &RpcError::new(codes::INVALID_REQUEST, "Invalid Request object"),
                Some(&Value::Null),
            )),
            Version::Legacy,
            Some(RpcError::new(
                codes::INVALID_REQUEST,
                "Invalid Request object",
            )),
        );
    };
    let id = object.get("id");
    let version = match object.get("jsonrpc") {
        None => Ok(Version::Legacy),
        Some(Value::String(v)) if v == "1.0" => Ok(Version::Legacy),
        Some(Value::String(v)) if v == "2.0" => Ok(Version::V2),
        Some(Value::String(_)) => Err(RpcError::new(
            codes::INVALID_REQUEST,
            "JSON-RPC version not supported",
        )),
        Some(_) => Err(RpcError::new(
            codes::INVALID_REQUEST,
            "jsonrpc field must be a string",
        )),
    };
    let version_or_legacy = *version.as_ref().unwrap_or(&Version::Legacy);
    let parsed = version.and_then(|version| {
        let method = match object.get("method") {
            None | Some(Value::Null) => {
                return Err(RpcError::new(codes::INVALID_REQUEST, "Missing method"));
            }
            Some(Value::String(method)) => method.clone(),
            Some(_) => {
                return Err(RpcError::new(
                    codes::INVALID_REQUEST,
                    "Method must be a string",
                ));
            }
        };
        let params = match object.get("params") {
            None | Some(Value::Null) => Value::Array(Vec::new()),
            Some(params @ (Value::Array(_) | Value::Object(_))) => params.clone(),
            Some(_) => {
                return Err(RpcError::new(
                    codes::INVALID_REQUEST,
                    "Params must be an array or object",
                ));
            }
        };
        Ok((version, method, params))
    });
    let (version, method, params) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            return (
                Some(error_reply(version_or_legacy, &err, id)),
                version_or_legacy,
                Some(err),
            );
        }
    };
    let outcome = {
        let mut chain = shared.chain.lock().unwrap_or_else(|e| e.into_inner());
        rpc::call(&mut chain, &method, &params)
    };
    let notification = version == Version::V2 && id.is_none();
    match outcome {
        Ok((result, after)) => {
            if after == AfterCall::Stop {
                let _ = shared.stop.send(true);
            }
            let reply = (!notification).then(|| success_reply(version, result, id));
            (reply, version, None)
        }
        Err(err) => {
            tracing::debug!(%method, code = err.code, message = %err.message, "RPC error");
            let reply = (!notification).then(|| error_reply(version, &err, id));
            (reply, version, Some(err))
        }
    }
}

fn success_reply(version: Version, result: Value, id: Option<&Value>) -> Value {
    match version {
        Version::Legacy => {
            json!({ "result": result, "error": null, "id": id.cloned().unwrap_or(Value::Null) })
        }
        Version::V2 => {
            let mut reply = json!({ "jsonrpc": "2.0", "result": result });
            if let Some(id) = id {
                reply["id"] = id.clone();
            }
            reply
        }
    }
}

fn error_reply(version: Version, err: &RpcError, id: Option<&Value>) -> Value {
    let error = json!({ "code": err.code, "message": err.message });
    match version {
        Version::Legacy => {
            json!({ "result": null, "error": error, "id": id.cloned().unwrap_or(Value::Null) })
        }
        Version::V2 => {
            let mut reply = json!({ "jsonrpc": "2.0", "error": error });
            if let Some(id) = id {
                reply["id"] = id.clone();
            }
            reply
        }
    }
}

/// Bitcoin Core's status codes: 2.0 requests get 200 whatever the outcome (except a
/// malformed request object), legacy ones 500 for errors, 400 for an invalid request,
/// 404 for an unknown method. Batches always get 200.
fn jsonrpc(shared: &Shared, body: &[u8]) -> (StatusCode, Option<Value>) {
    let request: Value = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(_) => {
            let err = RpcError::new(codes::PARSE_ERROR, "Parse error");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(error_reply(Version::Legacy, &err, None)),
            );
        }
    };
    match &request {
        Value::Array(batch) => {
            let replies: Vec<Value> = batch
                .iter()
                .filter_map(|element| execute(shared, element).0)
                .collect();
            if replies.is_empty() && !batch.is_empty() {
                return (StatusCode::NO_CONTENT, None);
            }
            (StatusCode::OK, Some(Value::Array(replies)))
        }
        Value::Object(_) => {
            let (reply, version, error) = execute(shared, &request);
            let status = match (&error, version) {
                (None, _) => StatusCode::OK,
                (Some(err), _) if err.code == codes::INVALID_REQUEST => StatusCode::BAD_REQUEST,
                (Some(_), Version::V2) => StatusCode::OK,
                (Some(err), Version::Legacy) if err.code == codes::METHOD_NOT_FOUND => {
                    StatusCode::NOT_FOUND
                }
                (Some(_), Version::Legacy) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            match reply {
                Some(reply) => (status, Some(reply)),
                None => (StatusCode::NO_CONTENT, None),
            }
        }
        _ => {
            let err = RpcError::new(codes::PARSE_ERROR, "Top-level object parse error");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(error_reply(Version::Legacy, &err, None)),
            )
        }
    }
}
