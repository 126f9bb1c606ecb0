//! The API over real TCP: the server in front of a scripted node ([`StubNode`]), through
//! `ApiClient` and through raw HTTP requests. The stub has no behaviour of its own: each
//! test scripts the node's answers, then checks that the client gets exactly those and
//! that the node receives exactly the request made. What the node itself answers is the
//! contract suite's (`phalanx_api::contract`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::{HeaderMap, Method, Request, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use phalanx_api::stub::{self, StubCall, StubNode};
use phalanx_api::*;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The node's id (the generator point: a valid compressed key).
const NODE_ID: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
/// A peer's id (twice the generator).
const PEER: &str = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5";
/// Another peer's id (three times the generator).
const OTHER_PEER: &str = "02f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9";
const ADDRESS: &str = "bcrt1qs758ursh4q9z627kt3pp5yysm78ddny6txaqgw";
const TXID: &str = "a1075db55d416d3ca199f55b6084e2115b9345e16c5cf302fc80e9d5fbf5d48d";
const CHANNEL_ID: &str = "3f2a9c1e7b5d4a6f8e0c2b4d6a8f1e3c5b7d9a0e2c4f6b8d1a3e5c7f9b0d2e4a";
const TEMPORARY_CHANNEL_ID: &str =
    "8d1f3b5a7c9e0d2f4a6c8e1b3d5f7a9c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d1f";
const USER_CHANNEL_ID: &str = "146379209481364289471203458349762351617";
const PAYMENT_HASH: &str = "5b2f8e1d4c7a0b3e6d9f2a5c8b1e4d7a0c3f6b9e2d5a8c1f4b7e0d3a6c9f2b5e";
const OFFER: &str = "lno1qgsqvgnwgcg35z6ee2h3yczraddm72xrfua9uve2rlrm9deu7xyfzrcgqgn3qzsyvfkx26qkyypvr5hfx60h9w9k934lt8s2n6zc0wwtgqlulw7dythr83dqx8tzumg";
const PREIMAGE: &str = "c4e7a0d3b6f9c2e5a8d1b4f7e0c3a6d9b2f5e8a1c4d7b0e3f6a9c2d5b8e1f4a7";
const INVOICE: &str = "lnbcrt210n1pn8xq3ypp5tvhcu8fx8g9n4k0x8f7ryq2v4tuk9pz7nqd3q8j0ww0cxqrrssrzjqgkjyd3q5dv6gllh77kygly9c3kfy0d9xwyjyxsq9nq";

struct Harness {
    node: Arc<StubNode>,
    addr: SocketAddr,
    token: ApiToken,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// An answer: status, headers, JSON body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Harness {
    async fn start() -> Self {
        let node = Arc::new(StubNode::new());
        let token = ApiToken::generate().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, node.clone(), token.clone(), async move {
            let _ = rx.await;
        }));
        Self {
            node,
            addr,
            token,
            shutdown: Some(tx),
            server,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(&self.url())
            .unwrap()
            .with_token(self.token.clone())
    }

    /// A raw request; `auth` is the whole `Authorization` header.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        content_type: Option<&str>,
        body: &str,
    ) -> Answer {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(format!("{}{path}", self.url()));
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.http.request(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: HTTP {status} with a non-JSON body ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A raw JSON request with the right token.
    async fn authed(&self, method: &str, path: &str, body: &str) -> Answer {
        let auth = format!("Bearer {}", self.token.expose());
        self.raw(method, path, Some(&auth), Some("application/json"), body)
            .await
    }

    async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }

    /// Queues the node's answer to the next call of `method`.
    fn script(&self, method: stub::Method, answer: impl Serialize) {
        self.node.reply(method, Ok(answer));
    }

    /// Queues the node's refusal of the next call of `method`.
    fn refuse(&self, method: stub::Method, error: &ApiError) {
        self.node.reply_json(method, Err(error.clone()));
    }

    /// The last call the node received is `method` with exactly `args`.
    #[track_caller]
    fn assert_called(&self, method: stub::Method, args: Value) {
        assert_eq!(self.node.last_call(), Some(StubCall { method, args }));
    }
}

/// Every authenticated route with a body that would be accepted, and the node method it
/// calls.
fn authenticated_routes() -> Vec<(&'static str, String, String, stub::Method)> {
    use stub::Method as M;
    vec![
        ("GET", "/v1/info".into(), String::new(), M::Info),
        (
            "POST",
            "/v1/onchain/address".into(),
            String::new(),
            M::NewAddress,
        ),
        (
            "GET",
            "/v1/onchain/balance".into(),
            String::new(),
            M::Balance,
        ),
        (
            "POST",
            "/v1/onchain/send".into(),
            format!(r#"{{"address":"{ADDRESS}","amount_sat":1000}}"#),
            M::SendOnchain,
        ),
        ("GET", "/v1/peers".into(), String::new(), M::ListPeers),
        (
            "POST",
            "/v1/peers".into(),
            format!(r#"{{"uri":"{PEER}@127.0.0.1:9735"}}"#),
            M::ConnectPeer,
        ),
        (
            "DELETE",
            format!("/v1/peers/{PEER}"),
            String::new(),
            M::DisconnectPeer,
        ),
        (
            "POST",
            "/v1/channels".into(),
            format!(r#"{{"node_id":"{PEER}","amount_sat":100000}}"#),
            M::OpenChannel,
        ),
        ("GET", "/v1/channels".into(), String::new(), M::ListChannels),
        (
            "POST",
            format!("/v1/channels/{CHANNEL_ID}/close"),
            "{}".into(),
            M::CloseChannel,
        ),
        ("POST", "/v1/invoices".into(), "{}".into(), M::CreateInvoice),
        (
            "POST",
            "/v1/payments".into(),
            format!(r#"{{"invoice":"{INVOICE}"}}"#),
            M::PayInvoice,
        ),
        (
            "POST",
            "/v1/payments/keysend".into(),
            format!(r#"{{"node_id":"{PEER}","amount_msat":1000}}"#),
            M::Keysend,
        ),
        ("POST", "/v1/offers".into(), "{}".into(), M::CreateOffer),
        (
            "POST",
            "/v1/payments/offer".into(),
            format!(r#"{{"offer":"{OFFER}"}}"#),
            M::PayOffer,
        ),
        ("GET", "/v1/payments".into(), String::new(), M::ListPayments),
        (
            "GET",
            format!("/v1/payments/{PAYMENT_HASH}"),
            String::new(),
            M::GetPayment,
        ),
        (
            "GET",
            format!("/v1/payments/id/{PAYMENT_HASH}"),
            String::new(),
            M::GetPaymentById,
        ),
        (
            "POST",
            "/v1/backups".into(),
            r#"{"to":"/var/backups/phalanx/1"}"#.into(),
            M::CreateBackup,
        ),
    ]
}

fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], code, "{}", answer.body);
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(!message.is_empty(), "{}", answer.body);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/json",
        "{}",
        answer.body
    );
}

/// The client got exactly `error`, with the HTTP status `status`.
#[track_caller]
fn assert_api_error<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    status: u16,
    error: &ApiError,
) {
    match result {
        Err(ClientError::Api {
            status: got,
            error: got_error,
        }) => {
            assert_eq!(got, status, "{got_error:?}");
            assert_eq!(&got_error, error);
        }
        other => panic!("expected HTTP {status} {error:?}, got {other:?}"),
    }
}

fn node_info() -> NodeInfo {
    NodeInfo {
        node_id: NODE_ID.into(),
        alias: "phalanx-test".into(),
        network: "regtest".into(),
        block_height: 144,
        block_hash: "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206".into(),
        num_peers: 2,
        num_channels: 2,
        num_usable_channels: 1,
        listen_addresses: vec!["127.0.0.1:9735".into(), "[::1]:9735".into()],
        epoch: 7,
        version: "0.1.0".into(),
    }
}

fn balance() -> Balance {
    Balance {
        onchain_confirmed_sat: 1_000_000,
        onchain_unconfirmed_sat: 25_000,
        onchain_total_sat: 1_025_000,
        lightning_outbound_msat: 95_000_000,
        lightning_inbound_msat: 5_000_000,
    }
}

fn peer() -> Peer {
    Peer {
        node_id: PEER.into(),
        address: Some("127.0.0.1:9735".into()),
        inbound: false,
    }
}

fn opened() -> OpenChannelResponse {
    OpenChannelResponse {
        channel_id: TEMPORARY_CHANNEL_ID.into(),
        user_channel_id: USER_CHANNEL_ID.into(),
    }
}

/// A channel just opened: no funding transaction yet.
fn pending_channel() -> Channel {
    Channel {
        channel_id: TEMPORARY_CHANNEL_ID.into(),
        user_channel_id: USER_CHANNEL_ID.into(),
        counterparty_node_id: PEER.into(),
        funding_txid: None,
        funding_output_index: None,
        short_channel_id: None,
        capacity_sat: 100_000,
        outbound_msat: 95_000_000,
        inbound_msat: 5_000_000,
        state: ChannelState::PendingOpen,
        is_usable: false,
        is_public: true,
        confirmations: None,
        confirmations_required: Some(6),
    }
}

fn ready_channel() -> Channel {
    Channel {
        channel_id: CHANNEL_ID.into(),
        user_channel_id: "87263519283746501928374650192837465".into(),
        counterparty_node_id: OTHER_PEER.into(),
        funding_txid: Some(TXID.into()),
        funding_output_index: Some(1),
        short_channel_id: Some("108x1x1".into()),
        capacity_sat: 250_000,
        outbound_msat: 120_000_000,
        inbound_msat: 127_500_000,
        state: ChannelState::Ready,
        is_usable: true,
        is_public: false,
        confirmations: Some(37),
        confirmations_required: Some(6),
    }
}

fn invoice() -> Invoice {
    Invoice {
        invoice: INVOICE.into(),
        payment_hash: PAYMENT_HASH.into(),
        expires_at: 1_717_172_317,
    }
}

/// A payment as a node reports it: a preimage once succeeded, a fee once an outbound
/// payment succeeded, a reason once failed.
fn payment(
    payment_hash: &str,
    direction: PaymentDirection,
    status: PaymentStatus,
    amount_msat: u64,
) -> Payment {
    let outbound = direction == PaymentDirection::Outbound;
    Payment {
        payment_id: if outbound {
            payment_hash.chars().rev().collect()
        } else {
            payment_hash.into()
        },
        payment_hash: payment_hash.into(),
        preimage: (status == PaymentStatus::Succeeded).then(|| PREIMAGE.into()),
        direction,
        status,
        amount_msat: Some(amount_msat),
        fee_msat: (outbound && status == PaymentStatus::Succeeded).then_some(21),
        failure_reason: (status == PaymentStatus::Failed).then(|| "no route to the payee".into()),
        created_at: 1_717_171_717,
        updated_at: 1_717_171_720,
    }
}

/// A realistic answer of the node to `method`.
fn answer_of(method: stub::Method) -> Value {
    use stub::Method as M;
    let pending = || {
        payment(
            PAYMENT_HASH,
            PaymentDirection::Outbound,
            PaymentStatus::Pending,
            1_000,
        )
    };
    let answer = match method {
        M::Info => serde_json::to_value(node_info()),
        M::NewAddress => serde_json::to_value(NewAddress {
            address: ADDRESS.into(),
        }),
        M::Balance => serde_json::to_value(balance()),
        M::SendOnchain => serde_json::to_value(SendOnchainResponse { txid: TXID.into() }),
        M::ListPeers => serde_json::to_value(vec![peer()]),
        M::ConnectPeer => serde_json::to_value(peer()),
        M::DisconnectPeer | M::CloseChannel => Ok(Value::Null),
        M::OpenChannel => serde_json::to_value(opened()),
        M::ListChannels => serde_json::to_value(vec![ready_channel(), pending_channel()]),
        M::CreateInvoice => serde_json::to_value(invoice()),
        M::CreateOffer => serde_json::to_value(Offer {
            offer: OFFER.into(),
        }),
        M::PayInvoice | M::PayOffer | M::Keysend => serde_json::to_value(pending()),
        M::ListPayments => serde_json::to_value(vec![pending()]),
        M::GetPayment | M::GetPaymentById => serde_json::to_value(pending()),
        M::CreateBackup => serde_json::to_value(BackupCreated {
            dir: "/var/backups/phalanx/1".into(),
            node_id: PEER.into(),
            epoch: 7,
            keys: 12,
            bytes: 40_960,
            snapshot_ms: 3,
            created_at_unix: 1_717_171_717,
        }),
    };
    answer.unwrap()
}

#[tokio::test]
async fn the_state_needs_no_token_and_always_answers() {
    let h = Harness::start().await;
    let answer = h.raw("GET", "/v1/state", None, None, "").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({"state": "SERVER_ACTIVE"}));

    h.node.set_state(ServerState::WaitingToStart);
    let answer = h.raw("GET", "/v1/state", None, None, "").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({"state": "WAITING_TO_START"}));
    // With a wrong token too: the probe ignores it.
    let answer = h
        .raw("GET", "/v1/state", Some("Bearer nope"), None, "")
        .await;
    assert_eq!(answer.status, 200);

    let anonymous = ApiClient::new(&h.url()).unwrap();
    assert_eq!(
        anonymous.state().await.unwrap(),
        ServerState::WaitingToStart
    );
    assert!(h.node.calls().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn ready_is_200_on_the_active_instance_only() {
    let h = Harness::start().await;
    let answer = h.raw("GET", "/v1/ready", None, None, "").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({"state": "SERVER_ACTIVE"}));

    let anonymous = ApiClient::new(&h.url()).unwrap();
    for state in [
        ServerState::WaitingToStart,
        ServerState::Unlocked,
        ServerState::RpcActive,
    ] {
        h.node.set_state(state);
        let answer = h.raw("GET", "/v1/ready", None, None, "").await;
        assert_eq!(answer.status, 503, "{state:?}");
        assert_eq!(answer.body["error"]["code"], "not_active", "{state:?}");
        match anonymous.ready().await {
            Err(ClientError::Api { status: 503, error }) => assert_eq!(error.state, Some(state)),
            other => panic!("expected 503 for {state:?}, got {other:?}"),
        }
    }
    h.node.set_state(ServerState::ServerActive);
    assert_eq!(anonymous.ready().await.unwrap(), ServerState::ServerActive);
    assert!(h.node.calls().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn metrics_need_the_token_but_not_the_lease() {
    let h = Harness::start().await;
    let answer = h.raw("GET", "/metrics", None, None, "").await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["error"]["code"], "unauthorized");

    // A standby answers with its own metrics.
    h.node.set_state(ServerState::WaitingToStart);
    let text = h.client().metrics().await.unwrap();
    assert!(
        text.contains("stub_state{state=\"WAITING_TO_START\"} 1"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test]
async fn every_other_route_needs_the_token() {
    let h = Harness::start().await;
    let mut wrong = h.token.expose().as_bytes().to_vec();
    wrong[0] = if wrong[0] == b'a' { b'b' } else { b'a' };
    let wrong = format!("Bearer {}", String::from_utf8(wrong).unwrap());
    let basic = format!("Basic {}", h.token.expose());
    let bare = h.token.expose().to_owned();
    let mut called = Vec::new();
    for (method, path, body, node_method) in authenticated_routes() {
        for auth in [None, Some(wrong.as_str()), Some(&basic), Some(&bare)] {
            let answer = h
                .raw(method, &path, auth, Some("application/json"), &body)
                .await;
            assert_error(&answer, 401, "unauthorized");
            assert_eq!(answer.headers[header::WWW_AUTHENTICATE], "Bearer");
        }
        // The scheme is case-insensitive.
        h.node.reply_json(node_method, Ok(answer_of(node_method)));
        let lower = format!("bearer {}", h.token.expose());
        let answer = h
            .raw(method, &path, Some(&lower), Some("application/json"), &body)
            .await;
        assert_eq!(answer.status, 200, "{method} {path}: {}", answer.body);
        // The node was called once, by the authenticated request, on its method.
        called.push(node_method);
        let calls: Vec<_> = h.node.calls().into_iter().map(|c| c.method).collect();
        assert_eq!(calls, called, "{method} {path}");
    }

    let client = ApiClient::new(&h.url())
        .unwrap()
        .with_token(ApiToken::generate().unwrap());
    match client.info().await {
        Err(ClientError::Api { status: 401, error }) => {
            assert_eq!(error.code, ErrorCode::Unauthorized)
        }
        other => panic!("{other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn a_standby_serves_nothing() {
    let h = Harness::start().await;
    for state in [
        ServerState::WaitingToStart,
        ServerState::RpcActive,
        ServerState::NonExisting,
    ] {
        h.node.set_state(state);
        for (method, path, body, _) in authenticated_routes() {
            let answer = h.authed(method, &path, &body).await;
            assert_error(&answer, 503, "not_active");
            assert_eq!(answer.body["error"]["state"], state.as_str());
            // The token is checked first.
            let answer = h
                .raw(method, &path, None, Some("application/json"), &body)
                .await;
            assert_error(&answer, 401, "unauthorized");
        }
    }
    assert!(h.node.calls().is_empty(), "{:?}", h.node.calls());

    h.node.set_state(ServerState::WaitingToStart);
    match h.client().balance().await {
        Err(ClientError::Api { status: 503, error }) => {
            assert_eq!(error.code, ErrorCode::NotActive);
            assert_eq!(error.state, Some(ServerState::WaitingToStart));
            assert!(error.code.is_transient());
        }
        other => panic!("{other:?}"),
    }
    assert!(h.node.calls().is_empty(), "{:?}", h.node.calls());
    h.node.set_state(ServerState::ServerActive);
    h.script(stub::Method::Balance, balance());
    assert_eq!(h.client().balance().await.unwrap(), balance());
    h.stop().await;
}

#[tokio::test]
async fn bad_requests_are_invalid_request_json() {
    let h = Harness::start().await;
    let auth = format!("Bearer {}", h.token.expose());
    let json = Some("application/json");
    let hash = "ab".repeat(32);
    let cases: Vec<(&str, String, Option<&str>, String, &str)> = vec![
        (
            "POST",
            "/v1/channels".into(),
            json,
            "{not json".into(),
            "malformed JSON",
        ),
        (
            "POST",
            "/v1/channels".into(),
            json,
            "[1,2]".into(),
            "malformed JSON",
        ),
        (
            "POST",
            "/v1/channels".into(),
            json,
            format!(r#"{{"node_id":"{PEER}"}}"#),
            "missing field `amount_sat`",
        ),
        (
            "POST",
            "/v1/channels".into(),
            json,
            format!(r#"{{"node_id":"{PEER}","amount_sat":"lots"}}"#),
            "invalid type",
        ),
        (
            "POST",
            "/v1/channels".into(),
            json,
            format!(r#"{{"node_id":"{PEER}","amount_sat":1,"amount_sats":1}}"#),
            "unknown field `amount_sats`",
        ),
        (
            "POST",
            "/v1/channels".into(),
            json,
            r#"{"node_id":"02xyz","amount_sat":1}"#.into(),
            "is not a node id",
        ),
        (
            "POST",
            "/v1/channels".into(),
            Some("text/plain"),
            format!(r#"{{"node_id":"{PEER}","amount_sat":1}}"#),
            "Content-Type: application/json",
        ),
        (
            "POST",
            "/v1/channels".into(),
            None,
            format!(r#"{{"node_id":"{PEER}","amount_sat":1}}"#),
            "Content-Type: application/json",
        ),
        (
            "POST",
            "/v1/payments".into(),
            json,
            String::new(),
            "missing field `invoice`",
        ),
        (
            "POST",
            "/v1/onchain/send".into(),
            json,
            r#"{"address":"bcrt1q","amount_sat":5,"send_all":true}"#.into(),
            "not both",
        ),
        (
            "POST",
            "/v1/peers".into(),
            json,
            r#"{"uri":"nonsense"}"#.into(),
            "node_id@host:port",
        ),
        (
            "POST",
            "/v1/peers".into(),
            json,
            format!(r#"{{"node_id":"{PEER}","address":"no-port"}}"#),
            "not a peer address",
        ),
        (
            "POST",
            "/v1/channels/xyz/close".into(),
            json,
            "{}".into(),
            "not a channel id",
        ),
        (
            "GET",
            "/v1/payments/12345".into(),
            None,
            String::new(),
            "not a payment hash",
        ),
        (
            "GET",
            format!("/v1/payments/id/{}", &hash[2..]),
            None,
            String::new(),
            "not a payment id",
        ),
        (
            "DELETE",
            "/v1/peers/03zz".into(),
            None,
            String::new(),
            "not a node id",
        ),
        (
            "POST",
            format!("/v1/channels/{hash}/close"),
            json,
            r#"{"force":"yes"}"#.into(),
            "invalid type",
        ),
        (
            "POST",
            "/v1/invoices".into(),
            json,
            format!(r#"{{"description":"{}"}}"#, "x".repeat(640)),
            "640 bytes",
        ),
        (
            "POST",
            "/v1/backups".into(),
            json,
            r#"{"to":"backups/today"}"#.into(),
            "not an absolute path",
        ),
    ];
    for (method, path, content_type, body, needle) in cases {
        let answer = h.raw(method, &path, Some(&auth), content_type, &body).await;
        assert_error(&answer, 400, "invalid_request");
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{method} {path} {body}: {message}"
        );
    }
    // An oversized body.
    let big = format!(r#"{{"invoice":"{}"}}"#, "x".repeat(MAX_REQUEST_BODY_BYTES));
    let answer = h.authed("POST", "/v1/payments", &big).await;
    assert_error(&answer, 400, "invalid_request");
    assert!(h.node.calls().is_empty(), "{:?}", h.node.calls());
    h.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    let h = Harness::start().await;
    let auth = format!("Bearer {}", h.token.expose());
    for auth in [None, Some(auth.as_str())] {
        for path in ["/", "/v1", "/v1/nope", "/v2/info", "/v1/channels/x/open"] {
            let answer = h.raw("GET", path, auth, None, "").await;
            assert_error(&answer, 404, "not_found");
            assert_eq!(
                answer.body["error"]["message"],
                format!("no route GET {path}")
            );
        }
        for (method, path) in [
            ("DELETE", "/v1/info"),
            ("POST", "/v1/state"),
            ("PUT", "/v1/payments"),
            ("GET", "/v1/onchain/send"),
        ] {
            let answer = h.raw(method, path, auth, None, "").await;
            assert_error(&answer, 405, "method_not_allowed");
            assert_eq!(
                answer.body["error"]["message"],
                format!("{path} does not take {method}")
            );
        }
    }
    // An id cannot change the route: the client encodes path segments.
    match h.client().get_payment("../../v1/info").await {
        Err(ClientError::Api { status: 400, error }) => {
            assert_eq!(error.code, ErrorCode::InvalidRequest)
        }
        other => panic!("{other:?}"),
    }
    match h.client().get_payment_by_id("../../info").await {
        Err(ClientError::Api { status: 400, error }) => {
            assert_eq!(error.code, ErrorCode::InvalidRequest)
        }
        other => panic!("{other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn every_code_has_its_status() {
    let h = Harness::start().await;
    let expected = [
        ("unauthorized", 401),
        ("invalid_request", 400),
        ("invalid_invoice", 400),
        ("invalid_offer", 400),
        ("invalid_address", 400),
        ("insufficient_funds", 400),
        ("not_found", 404),
        ("unknown_peer", 404),
        ("unknown_channel", 404),
        ("unknown_payment", 404),
        ("method_not_allowed", 405),
        ("payment_failed", 409),
        ("internal", 500),
        ("peer_unreachable", 502),
        ("not_active", 503),
        ("store_unavailable", 503),
        ("chain_unavailable", 503),
    ];
    assert_eq!(expected.len(), ErrorCode::ALL.len());
    for (code, (name, status)) in ErrorCode::ALL.into_iter().zip(expected) {
        assert_eq!(code.as_str(), name);
        assert_eq!(code.status(), status, "{name}");
        h.node
            .fail_next(ApiError::new(code, format!("{name} from the node")));
        let answer = h.authed("GET", "/v1/info", "").await;
        assert_error(&answer, status, name);
        assert_eq!(
            answer.body["error"]["message"],
            format!("{name} from the node")
        );
        h.assert_called(stub::Method::Info, Value::Null);

        h.node.fail_next(ApiError::new(code, "again"));
        match h.client().list_channels().await {
            Err(ClientError::Api { status: s, error }) => {
                assert_eq!(s, status);
                assert_eq!(error, ApiError::new(code, "again"));
            }
            other => panic!("{other:?}"),
        }
        h.assert_called(stub::Method::ListChannels, Value::Null);
    }
    h.stop().await;
}

#[tokio::test]
async fn every_route_round_trips() {
    use stub::Method as M;
    let h = Harness::start().await;
    let c = h.client();
    let upper_peer = PEER.to_uppercase();

    // The node's answers reach the client whole.
    h.script(M::Info, node_info());
    assert_eq!(c.info().await.unwrap(), node_info());
    h.assert_called(M::Info, Value::Null);
    h.script(
        M::NewAddress,
        NewAddress {
            address: ADDRESS.into(),
        },
    );
    assert_eq!(c.new_address().await.unwrap().address, ADDRESS);
    h.assert_called(M::NewAddress, Value::Null);
    h.script(M::Balance, balance());
    assert_eq!(c.balance().await.unwrap(), balance());
    h.assert_called(M::Balance, Value::Null);

    // On chain: the request reaches the node as made, the address trimmed.
    h.script(M::SendOnchain, SendOnchainResponse { txid: TXID.into() });
    let sent = c
        .send_onchain(&SendOnchainRequest {
            address: ADDRESS.into(),
            amount_sat: Some(1000),
            send_all: false,
            fee_rate_sat_per_vb: Some(2),
        })
        .await
        .unwrap();
    assert_eq!(sent.txid, TXID);
    h.assert_called(
        M::SendOnchain,
        json!({"address": ADDRESS, "amount_sat": 1000, "send_all": false, "fee_rate_sat_per_vb": 2}),
    );
    h.script(M::SendOnchain, SendOnchainResponse { txid: TXID.into() });
    c.send_onchain(&SendOnchainRequest {
        address: format!(" {ADDRESS}\n"),
        amount_sat: None,
        send_all: true,
        fee_rate_sat_per_vb: None,
    })
    .await
    .unwrap();
    h.assert_called(
        M::SendOnchain,
        json!({"address": ADDRESS, "send_all": true}),
    );
    // The node's refusal reaches the client whole, with its status.
    let wrong_network = ApiError::new(
        ErrorCode::InvalidAddress,
        "`tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx` is a testnet address, the node is on regtest",
    );
    h.refuse(M::SendOnchain, &wrong_network);
    let refused = c
        .send_onchain(&SendOnchainRequest {
            address: "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx".into(),
            amount_sat: Some(1),
            send_all: false,
            fee_rate_sat_per_vb: None,
        })
        .await;
    assert_api_error(refused, 400, &wrong_network);
    h.assert_called(
        M::SendOnchain,
        json!({"address": "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "amount_sat": 1, "send_all": false}),
    );

    // Peers: the node receives the node id lowercased.
    h.script(M::ConnectPeer, peer());
    let connected = c
        .connect_peer(&ConnectPeerRequest {
            node_id: upper_peer.clone(),
            address: "127.0.0.1:9735".into(),
        })
        .await
        .unwrap();
    assert_eq!(connected, peer());
    h.assert_called(
        M::ConnectPeer,
        json!({"node_id": PEER, "address": "127.0.0.1:9735"}),
    );
    let peers = vec![
        peer(),
        Peer {
            node_id: OTHER_PEER.into(),
            address: None,
            inbound: true,
        },
    ];
    h.script(M::ListPeers, &peers);
    assert_eq!(c.list_peers().await.unwrap(), peers);
    h.assert_called(M::ListPeers, Value::Null);
    let unreachable = ApiError::new(
        ErrorCode::PeerUnreachable,
        format!("cannot connect to {PEER}@unreachable.invalid:9735: connection refused"),
    );
    h.refuse(M::ConnectPeer, &unreachable);
    let refused = c
        .connect_peer(
            &ConnectPeerRequest::from_uri(&format!("{PEER}@unreachable.invalid:9735")).unwrap(),
        )
        .await;
    assert_api_error(refused, 502, &unreachable);
    h.assert_called(
        M::ConnectPeer,
        json!({"node_id": PEER, "address": "unreachable.invalid:9735"}),
    );

    // Channels.
    h.script(M::OpenChannel, opened());
    let open = c
        .open_channel(&OpenChannelRequest {
            node_id: upper_peer.clone(),
            address: None,
            amount_sat: 100_000,
            push_msat: 5_000,
            public: true,
        })
        .await
        .unwrap();
    assert_eq!(open, opened());
    h.assert_called(
        M::OpenChannel,
        json!({"node_id": PEER, "amount_sat": 100000, "push_msat": 5000, "public": true}),
    );
    let channels = vec![ready_channel(), pending_channel()];
    h.script(M::ListChannels, &channels);
    assert_eq!(c.list_channels().await.unwrap(), channels);
    h.assert_called(M::ListChannels, Value::Null);
    // The node receives the channel id lowercased.
    h.script(M::CloseChannel, ());
    c.close_channel(
        &CHANNEL_ID.to_uppercase(),
        &CloseChannelRequest { force: true },
    )
    .await
    .unwrap();
    h.assert_called(
        M::CloseChannel,
        json!({"channel_id": CHANNEL_ID, "req": {"force": true}}),
    );
    let no_channel = ApiError::new(
        ErrorCode::UnknownChannel,
        format!("no channel {}", "00".repeat(32)),
    );
    h.refuse(M::CloseChannel, &no_channel);
    let refused = c
        .close_channel(&"00".repeat(32), &CloseChannelRequest::default())
        .await;
    assert_api_error(refused, 404, &no_channel);
    h.assert_called(
        M::CloseChannel,
        json!({"channel_id": "00".repeat(32), "req": {"force": false}}),
    );
    // An empty body is a cooperative close.
    h.script(M::CloseChannel, ());
    let answer = h
        .raw(
            "POST",
            &format!("/v1/channels/{CHANNEL_ID}/close"),
            Some(&format!("Bearer {}", h.token.expose())),
            None,
            "",
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, json!({}));
    h.assert_called(
        M::CloseChannel,
        json!({"channel_id": CHANNEL_ID, "req": {"force": false}}),
    );

    h.script(M::DisconnectPeer, ());
    c.disconnect_peer(&upper_peer).await.unwrap();
    h.assert_called(M::DisconnectPeer, json!(PEER));
    let not_connected = ApiError::new(ErrorCode::UnknownPeer, format!("not connected to {PEER}"));
    h.refuse(M::DisconnectPeer, &not_connected);
    assert_api_error(c.disconnect_peer(PEER).await, 404, &not_connected);
    h.assert_called(M::DisconnectPeer, json!(PEER));

    // Invoices and payments.
    h.script(M::CreateInvoice, invoice());
    let created = c
        .create_invoice(&CreateInvoiceRequest {
            amount_msat: Some(21_000),
            description: "coffee".into(),
            expiry_secs: Some(600),
        })
        .await
        .unwrap();
    assert_eq!(created, invoice());
    h.assert_called(
        M::CreateInvoice,
        json!({"amount_msat": 21000, "description": "coffee", "expiry_secs": 600}),
    );
    let inbound = payment(
        PAYMENT_HASH,
        PaymentDirection::Inbound,
        PaymentStatus::Pending,
        21_000,
    );
    h.script(M::GetPayment, &inbound);
    // The node receives the payment hash lowercased.
    let got = c.get_payment(&PAYMENT_HASH.to_uppercase()).await.unwrap();
    assert_eq!(got, inbound);
    h.assert_called(M::GetPayment, json!(PAYMENT_HASH));

    let paid = payment(
        PAYMENT_HASH,
        PaymentDirection::Outbound,
        PaymentStatus::Succeeded,
        21_000,
    );
    h.script(M::PayInvoice, &paid);
    let got = c
        .pay_invoice(&PayInvoiceRequest {
            invoice: format!("lightning:{INVOICE}"),
            amount_msat: None,
            wait: true,
            timeout_secs: Some(30),
        })
        .await
        .unwrap();
    assert_eq!(got, paid);
    // The URI scheme is stripped.
    h.assert_called(
        M::PayInvoice,
        json!({"invoice": INVOICE, "wait": true, "timeout_secs": 30}),
    );
    let paid_already = ApiError::new(
        ErrorCode::PaymentFailed,
        "this invoice is already paid or being paid",
    );
    h.refuse(M::PayInvoice, &paid_already);
    let again = c
        .pay_invoice(&PayInvoiceRequest {
            invoice: INVOICE.into(),
            amount_msat: None,
            wait: true,
            timeout_secs: None,
        })
        .await;
    assert_api_error(again, 409, &paid_already);
    h.assert_called(M::PayInvoice, json!({"invoice": INVOICE, "wait": true}));
    // A payment that was sent and failed is an answer, not an error.
    let failed_hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let failed = payment(
        failed_hash,
        PaymentDirection::Outbound,
        PaymentStatus::Failed,
        1,
    );
    h.script(M::PayInvoice, &failed);
    let got = c
        .pay_invoice(&PayInvoiceRequest {
            invoice: "lnbcrt1pn8xq3ysp5anyamount".into(),
            amount_msat: Some(1),
            wait: true,
            timeout_secs: None,
        })
        .await
        .unwrap();
    assert_eq!(got, failed);
    assert_eq!(got.failure_reason.as_deref(), Some("no route to the payee"));
    h.assert_called(
        M::PayInvoice,
        json!({"invoice": "lnbcrt1pn8xq3ysp5anyamount", "amount_msat": 1, "wait": true}),
    );
    let mainnet = ApiError::new(
        ErrorCode::InvalidInvoice,
        "the invoice is for bitcoin, the node is on regtest",
    );
    h.refuse(M::PayInvoice, &mainnet);
    let refused = c
        .pay_invoice(&PayInvoiceRequest {
            invoice: "lnbc10u1pn8xq3ypp5mainnet".into(),
            amount_msat: None,
            wait: false,
            timeout_secs: None,
        })
        .await;
    assert_api_error(refused, 400, &mainnet);
    h.assert_called(
        M::PayInvoice,
        json!({"invoice": "lnbc10u1pn8xq3ypp5mainnet", "wait": false}),
    );

    let keysend_hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let sent = payment(
        keysend_hash,
        PaymentDirection::Outbound,
        PaymentStatus::Pending,
        5_000,
    );
    h.script(M::Keysend, &sent);
    let got = c
        .keysend(&KeysendRequest {
            node_id: upper_peer.clone(),
            amount_msat: 5_000,
            wait: false,
            timeout_secs: None,
        })
        .await
        .unwrap();
    assert_eq!(got, sent);
    h.assert_called(
        M::Keysend,
        json!({"node_id": PEER, "amount_msat": 5000, "wait": false}),
    );

    // The list keeps the node's order.
    let payments = vec![sent, failed, paid, inbound];
    h.script(M::ListPayments, &payments);
    assert_eq!(c.list_payments().await.unwrap(), payments);
    h.assert_called(M::ListPayments, Value::Null);
    let unknown = ApiError::new(
        ErrorCode::UnknownPayment,
        format!("no payment with hash {}", "cd".repeat(32)),
    );
    h.refuse(M::GetPayment, &unknown);
    assert_api_error(c.get_payment(&"cd".repeat(32)).await, 404, &unknown);
    h.assert_called(M::GetPayment, json!("cd".repeat(32)));
    // By id: lowercased, and the node's refusal whole.
    h.script(M::GetPaymentById, &payments[2]);
    let by_id = c
        .get_payment_by_id(&PAYMENT_HASH.to_uppercase())
        .await
        .unwrap();
    assert_eq!(by_id, payments[2]);
    h.assert_called(M::GetPaymentById, json!(PAYMENT_HASH));
    let unknown = ApiError::new(
        ErrorCode::UnknownPayment,
        format!("no payment with id {}", "cd".repeat(32)),
    );
    h.refuse(M::GetPaymentById, &unknown);
    assert_api_error(c.get_payment_by_id(&"cd".repeat(32)).await, 404, &unknown);
    h.assert_called(M::GetPaymentById, json!("cd".repeat(32)));

    // One call of the node per request: the server neither skips nor repeats.
    assert_eq!(h.node.calls().len(), 27, "{:?}", h.node.calls());
    h.stop().await;
}

#[tokio::test]
async fn the_wire_format_is_snake_case_with_units() {
    use stub::Method as M;
    let h = Harness::start().await;
    h.script(M::Balance, balance());
    let answer = h.authed("GET", "/v1/onchain/balance", "").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        answer.body,
        json!({
            "onchain_confirmed_sat": 1_000_000,
            "onchain_unconfirmed_sat": 25_000,
            "onchain_total_sat": 1_025_000,
            "lightning_outbound_msat": 95_000_000,
            "lightning_inbound_msat": 5_000_000,
        })
    );

    // The node receives the request with its defaults filled in.
    h.script(M::OpenChannel, opened());
    let answer = h
        .authed(
            "POST",
            "/v1/channels",
            &format!(r#"{{"node_id":"{PEER}","address":"127.0.0.1:9735","amount_sat":50000}}"#),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"channel_id": TEMPORARY_CHANNEL_ID, "user_channel_id": USER_CHANNEL_ID})
    );
    h.assert_called(
        M::OpenChannel,
        json!({"node_id": PEER, "address": "127.0.0.1:9735", "amount_sat": 50000, "push_msat": 0, "public": false}),
    );

    // Unknown values are null, not left out.
    h.script(M::ListChannels, vec![pending_channel(), ready_channel()]);
    let answer = h.authed("GET", "/v1/channels", "").await;
    assert_eq!(
        answer.body,
        json!({"channels": [
            {
                "channel_id": TEMPORARY_CHANNEL_ID,
                "user_channel_id": USER_CHANNEL_ID,
                "counterparty_node_id": PEER,
                "funding_txid": null,
                "funding_output_index": null,
                "short_channel_id": null,
                "capacity_sat": 100_000,
                "outbound_msat": 95_000_000,
                "inbound_msat": 5_000_000,
                "state": "pending_open",
                "is_usable": false,
                "is_public": true,
                "confirmations": null,
                "confirmations_required": 6,
            },
            {
                "channel_id": CHANNEL_ID,
                "user_channel_id": "87263519283746501928374650192837465",
                "counterparty_node_id": OTHER_PEER,
                "funding_txid": TXID,
                "funding_output_index": 1,
                "short_channel_id": "108x1x1",
                "capacity_sat": 250_000,
                "outbound_msat": 120_000_000,
                "inbound_msat": 127_500_000,
                "state": "ready",
                "is_usable": true,
                "is_public": false,
                "confirmations": 37,
                "confirmations_required": 6,
            },
        ]})
    );

    h.script(M::ListPeers, vec![peer()]);
    let answer = h.authed("GET", "/v1/peers", "").await;
    assert_eq!(
        answer.body,
        json!({"peers": [{"node_id": PEER, "address": "127.0.0.1:9735", "inbound": false}]})
    );

    let sent = payment(
        PAYMENT_HASH,
        PaymentDirection::Outbound,
        PaymentStatus::Succeeded,
        7,
    );
    h.script(M::Keysend, &sent);
    let answer = h
        .authed(
            "POST",
            "/v1/payments/keysend",
            &format!(r#"{{"node_id":"{PEER}","amount_msat":7}}"#),
        )
        .await;
    h.assert_called(
        M::Keysend,
        json!({"node_id": PEER, "amount_msat": 7, "wait": true}),
    );
    let paid = json!({
        "payment_id": sent.payment_id,
        "payment_hash": PAYMENT_HASH,
        "preimage": PREIMAGE,
        "direction": "outbound",
        "status": "succeeded",
        "amount_msat": 7,
        "fee_msat": 21,
        "failure_reason": null,
        "created_at": 1_717_171_717,
        "updated_at": 1_717_171_720,
    });
    assert_eq!(answer.body, paid);

    // wait defaults to true; the URI scheme and the blanks around go.
    let pending = payment(
        PAYMENT_HASH,
        PaymentDirection::Outbound,
        PaymentStatus::Pending,
        21_000,
    );
    h.script(M::PayInvoice, &pending);
    let answer = h
        .authed(
            "POST",
            "/v1/payments",
            &format!(r#"{{"invoice":" lightning:{INVOICE} "}}"#),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["status"], "pending");
    assert_eq!(answer.body["preimage"], Value::Null);
    h.assert_called(M::PayInvoice, json!({"invoice": INVOICE, "wait": true}));

    h.script(M::ListPayments, vec![&sent]);
    let answer = h.authed("GET", "/v1/payments", "").await;
    assert_eq!(answer.body, json!({"payments": [paid]}));
    h.stop().await;
}

#[tokio::test]
async fn requests_are_logged_without_the_token() {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime is single-threaded: the server's tasks log through this too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::start().await;
    h.script(stub::Method::Info, node_info());
    h.client().info().await.unwrap();
    let _ = h
        .raw(
            "GET",
            "/v1/info",
            Some("Bearer wrong-token-0123456789"),
            None,
            "",
        )
        .await;
    let token = h.token.expose().to_owned();
    h.stop().await;
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("method=GET path=/v1/info status=200"),
        "{logs}"
    );
    assert!(logs.contains("status=401"), "{logs}");
    assert!(logs.contains("latency_ms="), "{logs}");
    assert!(!logs.contains(&token), "the token leaked: {logs}");
    assert!(
        !logs.contains("wrong-token"),
        "a presented token leaked: {logs}"
    );
}

#[tokio::test]
async fn client_failures_are_told_apart() {
    // Nothing listening.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = ApiClient::new(&format!("http://{closed}")).unwrap();
    match client.state().await {
        Err(ClientError::Connect { url, reason }) => {
            assert_eq!(url, format!("http://{closed}"));
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }

    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = silent.accept().await.unwrap();
            held.push(socket);
        }
    });
    let client = ApiClient::new(&format!("http://{silent_addr}/"))
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    match client.info().await {
        Err(ClientError::Timeout(d)) => assert_eq!(d, Duration::from_millis(300)),
        other => panic!("{other:?}"),
    }
    hold.abort();

    // A server that is not the API.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut socket, _) = other.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let body = "<html>bad gateway</html>";
            let _ = socket
                .write_all(
                    format!(
                        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    let client = ApiClient::new(&format!("http://{other_addr}")).unwrap();
    match client.balance().await {
        Err(ClientError::Decode {
            status: 502,
            reason,
        }) => {
            assert!(reason.contains("bad gateway"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    for url in [
        "https://127.0.0.1:1",
        "127.0.0.1:8080",
        "http://",
        "ftp://x",
    ] {
        assert!(
            matches!(ApiClient::new(url), Err(ClientError::InvalidUrl { .. })),
            "{url}"
        );
    }
}

#[tokio::test]
async fn a_base_url_with_a_path_prefix_works() {
    // The client keeps a prefix (for a proxy); the bare server has none, so it is 404.
    let h = Harness::start().await;
    let client = ApiClient::new(&format!("{}/prefix/", h.url()))
        .unwrap()
        .with_token(h.token.clone());
    assert_eq!(client.base_url(), format!("{}/prefix", h.url()));
    match client.info().await {
        Err(ClientError::Api { status: 404, error }) => {
            assert_eq!(error.code, ErrorCode::NotFound);
            assert!(
                error.message.contains("/prefix/v1/info"),
                "{}",
                error.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(h.node.calls().is_empty(), "{:?}", h.node.calls());
    h.stop().await;
}

#[test]
fn the_token_file_is_made_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.token");
    let token = load_or_create_token(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim(), token.expose());
    assert_eq!(token.expose().len(), 2 * TOKEN_BYTES);
    assert!(token.expose().bytes().all(|b| b.is_ascii_hexdigit()));

    assert_eq!(load_or_create_token(&path).unwrap(), token, "reused");
    assert_eq!(read_token(&path).unwrap(), token);
    assert_ne!(
        load_or_create_token(&dir.path().join("other.token")).unwrap(),
        token
    );

    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = load_or_create_token(&path).unwrap_err();
        assert!(matches!(err, TokenError::TooOpen { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains(&format!("{mode:o}")), "{message}");
        assert!(!message.contains(token.expose()), "{message}");
        assert!(matches!(read_token(&path), Err(TokenError::TooOpen { .. })));
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(
        load_or_create_token(&path).unwrap(),
        token,
        "read-only is fine"
    );

    // A file that is not a token is refused, not replaced.
    let junk = dir.path().join("junk.token");
    std::fs::write(&junk, "x").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        load_or_create_token(&junk),
        Err(TokenError::Invalid { .. })
    ));
    assert_eq!(std::fs::read_to_string(&junk).unwrap(), "x");

    // Reading never creates; a missing directory is an error.
    let missing = dir.path().join("missing.token");
    assert!(matches!(read_token(&missing), Err(TokenError::Io { .. })));
    assert!(!missing.exists());
    assert!(matches!(
        load_or_create_token(&dir.path().join("no/such/dir/api.token")),
        Err(TokenError::Io { .. })
    ));
}

#[tokio::test]
async fn offers_are_made_and_paid_through_the_api() {
    use stub::Method as M;
    let h = Harness::start().await;
    let c = h.client();

    h.script(
        M::CreateOffer,
        Offer {
            offer: OFFER.into(),
        },
    );
    let created = c
        .create_offer(&CreateOfferRequest {
            amount_msat: Some(21_000),
            description: "coffee".into(),
        })
        .await
        .unwrap();
    assert_eq!(created.offer, OFFER);
    h.assert_called(
        M::CreateOffer,
        json!({"amount_msat": 21000, "description": "coffee"}),
    );

    let paid = payment(
        PAYMENT_HASH,
        PaymentDirection::Outbound,
        PaymentStatus::Succeeded,
        21_000,
    );
    h.script(M::PayOffer, &paid);
    let got = c
        .pay_offer(&PayOfferRequest {
            offer: format!(" lightning:{OFFER} "),
            amount_msat: None,
            wait: true,
            timeout_secs: Some(30),
        })
        .await
        .unwrap();
    assert_eq!(got, paid);
    // The URI scheme and whitespace are stripped.
    h.assert_called(
        M::PayOffer,
        json!({"offer": OFFER, "wait": true, "timeout_secs": 30}),
    );

    // What only the node can judge comes back as `invalid_offer`, a 400.
    let expired = ApiError::new(
        ErrorCode::InvalidOffer,
        "invalid offer: the offer has expired",
    );
    h.refuse(M::PayOffer, &expired);
    let refused = c
        .pay_offer(&PayOfferRequest {
            offer: OFFER.into(),
            amount_msat: None,
            wait: false,
            timeout_secs: None,
        })
        .await;
    assert_api_error(refused, 400, &expired);

    // What the API can judge never reaches the node.
    let calls = h.node.calls().len();
    for (path, body) in [
        ("/v1/offers", r#"{"amount_msat":0}"#.to_owned()),
        (
            "/v1/offers",
            format!(r#"{{"description":"{}"}}"#, "x".repeat(700)),
        ),
        ("/v1/offers", r#"{"expiry_secs":60}"#.to_owned()),
        ("/v1/payments/offer", r#"{"offer":"  "}"#.to_owned()),
        ("/v1/payments/offer", r#"{"offer":"lightning:"}"#.to_owned()),
        (
            "/v1/payments/offer",
            format!(r#"{{"offer":"{OFFER}","amount_msat":0}}"#),
        ),
        (
            "/v1/payments/offer",
            format!(r#"{{"offer":"{OFFER}","timeout_secs":0}}"#),
        ),
        ("/v1/payments/offer", r#"{}"#.to_owned()),
    ] {
        let answer = h.authed("POST", path, &body).await;
        assert_error(&answer, 400, "invalid_request");
    }
    assert_eq!(h.node.calls().len(), calls);
    h.stop().await;
}
