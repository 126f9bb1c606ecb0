//! The API over real TCP: the server with a fake node, through `ApiClient` and through
//! raw HTTP requests.

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
use phalanx_api::fake::{FAKE_NODE_ID, FakeNode, UNREACHABLE_HOST};
use phalanx_api::*;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const PEER: &str = "02aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

struct Harness {
    node: Arc<FakeNode>,
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
        let node = Arc::new(FakeNode::new());
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
}

/// Every authenticated route with a body that would be accepted.
fn authenticated_routes() -> Vec<(&'static str, String, String)> {
    let hash = "ab".repeat(32);
    vec![
        ("GET", "/v1/info".into(), String::new()),
        ("POST", "/v1/onchain/address".into(), String::new()),
        ("GET", "/v1/onchain/balance".into(), String::new()),
        (
            "POST",
            "/v1/onchain/send".into(),
            r#"{"address":"bcrt1qx","amount_sat":1000}"#.into(),
        ),
        ("GET", "/v1/peers".into(), String::new()),
        (
            "POST",
            "/v1/peers".into(),
            format!(r#"{{"uri":"{PEER}@127.0.0.1:9735"}}"#),
        ),
        ("DELETE", format!("/v1/peers/{PEER}"), String::new()),
        (
            "POST",
            "/v1/channels".into(),
            format!(r#"{{"node_id":"{PEER}","amount_sat":100000}}"#),
        ),
        ("GET", "/v1/channels".into(), String::new()),
        ("POST", format!("/v1/channels/{hash}/close"), "{}".into()),
        ("POST", "/v1/invoices".into(), "{}".into()),
        (
            "POST",
            "/v1/payments".into(),
            r#"{"invoice":"lnbcrt1x"}"#.into(),
        ),
        (
            "POST",
            "/v1/payments/keysend".into(),
            format!(r#"{{"node_id":"{PEER}","amount_msat":1000}}"#),
        ),
        ("GET", "/v1/payments".into(), String::new()),
        ("GET", format!("/v1/payments/{hash}"), String::new()),
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
        text.contains("fake_state{state=\"WAITING_TO_START\"} 1"),
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
    for (method, path, body) in authenticated_routes() {
        for auth in [None, Some(wrong.as_str()), Some(&basic), Some(&bare)] {
            let answer = h
                .raw(method, &path, auth, Some("application/json"), &body)
                .await;
            assert_error(&answer, 401, "unauthorized");
            assert_eq!(answer.headers[header::WWW_AUTHENTICATE], "Bearer");
        }
        // The scheme is case-insensitive.
        let lower = format!("bearer {}", h.token.expose());
        let answer = h
            .raw(method, &path, Some(&lower), Some("application/json"), &body)
            .await;
        assert_ne!(answer.status, 401, "{method} {path}: {}", answer.body);
    }
    let calls = h.node.calls();
    assert_eq!(calls.len(), authenticated_routes().len(), "{calls:?}");

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
        for (method, path, body) in authenticated_routes() {
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
    h.node.set_state(ServerState::ServerActive);
    h.client().balance().await.unwrap();
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
    h.stop().await;
}

#[tokio::test]
async fn every_code_has_its_status() {
    let h = Harness::start().await;
    let expected = [
        ("unauthorized", 401),
        ("invalid_request", 400),
        ("invalid_invoice", 400),
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

        h.node.fail_next(ApiError::new(code, "again"));
        match h.client().list_channels().await {
            Err(ClientError::Api { status: s, error }) => {
                assert_eq!(s, status);
                assert_eq!(error, ApiError::new(code, "again"));
            }
            other => panic!("{other:?}"),
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn every_route_round_trips() {
    let h = Harness::start().await;
    let c = h.client();

    let info = c.info().await.unwrap();
    assert_eq!(info.node_id, FAKE_NODE_ID);
    assert_eq!(info.epoch, 7);
    assert_eq!(info.listen_addresses, vec!["127.0.0.1:9735"]);

    let address = c.new_address().await.unwrap().address;
    assert!(address.starts_with("bcrt1q"));
    assert_ne!(c.new_address().await.unwrap().address, address);

    let balance = c.balance().await.unwrap();
    assert_eq!(balance.onchain_confirmed_sat, 1_000_000);

    let sent = c
        .send_onchain(&SendOnchainRequest {
            address: address.clone(),
            amount_sat: Some(1000),
            send_all: false,
            fee_rate_sat_per_vb: Some(2),
        })
        .await
        .unwrap();
    assert_eq!(sent.txid.len(), 64);
    assert_eq!(
        h.node.last_call().unwrap().args,
        json!({"address": address, "amount_sat": 1000, "send_all": false, "fee_rate_sat_per_vb": 2})
    );
    assert_eq!(c.balance().await.unwrap().onchain_confirmed_sat, 999_000);
    let err = c
        .send_onchain(&SendOnchainRequest {
            address: "tb1qwrongnetwork".into(),
            amount_sat: Some(1),
            send_all: false,
            fee_rate_sat_per_vb: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 400, error } if error.code == ErrorCode::InvalidAddress),
        "{err:?}"
    );

    // Peers: the node receives the node id lowercased.
    let upper = PEER.to_uppercase();
    let peer = c
        .connect_peer(&ConnectPeerRequest {
            node_id: upper.clone(),
            address: "127.0.0.1:9735".into(),
        })
        .await
        .unwrap();
    assert_eq!(peer.node_id, PEER);
    assert_eq!(
        h.node.last_call().unwrap().args,
        json!({"node_id": PEER, "address": "127.0.0.1:9735"})
    );
    assert_eq!(c.list_peers().await.unwrap(), vec![peer.clone()]);
    let err = c
        .connect_peer(
            &ConnectPeerRequest::from_uri(&format!("{PEER}@{UNREACHABLE_HOST}:9735")).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 502, error } if error.code == ErrorCode::PeerUnreachable),
        "{err:?}"
    );

    // Channels.
    let opened = c
        .open_channel(&OpenChannelRequest {
            node_id: PEER.into(),
            address: None,
            amount_sat: 100_000,
            push_msat: 5_000,
            public: true,
        })
        .await
        .unwrap();
    assert_eq!(opened.channel_id.len(), 64);
    let channels = c.list_channels().await.unwrap();
    assert_eq!(channels.len(), 1);
    let channel = &channels[0];
    assert_eq!(channel.channel_id, opened.channel_id);
    assert_eq!(channel.user_channel_id, opened.user_channel_id);
    assert_eq!(channel.state, ChannelState::PendingOpen);
    assert_eq!(channel.capacity_sat, 100_000);
    assert_eq!(channel.inbound_msat, 5_000);
    assert!(channel.is_public);
    c.close_channel(
        &opened.channel_id.to_uppercase(),
        &CloseChannelRequest { force: true },
    )
    .await
    .unwrap();
    assert_eq!(
        h.node.last_call().unwrap().args,
        json!({"channel_id": opened.channel_id, "req": {"force": true}})
    );
    assert_eq!(
        c.list_channels().await.unwrap()[0].state,
        ChannelState::Closing
    );
    let err = c
        .close_channel(&"00".repeat(32), &CloseChannelRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 404, error } if error.code == ErrorCode::UnknownChannel),
        "{err:?}"
    );
    // An empty body is a cooperative close.
    let answer = h
        .raw(
            "POST",
            &format!("/v1/channels/{}/close", opened.channel_id),
            Some(&format!("Bearer {}", h.token.expose())),
            None,
            "",
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, json!({}));
    assert_eq!(
        h.node.last_call().unwrap().args["req"],
        json!({"force": false})
    );

    c.disconnect_peer(PEER).await.unwrap();
    assert!(c.list_peers().await.unwrap().is_empty());
    let err = c.disconnect_peer(PEER).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 404, error } if error.code == ErrorCode::UnknownPeer),
        "{err:?}"
    );

    // Invoices and payments.
    let invoice = c
        .create_invoice(&CreateInvoiceRequest {
            amount_msat: Some(21_000),
            description: "coffee".into(),
            expiry_secs: Some(600),
        })
        .await
        .unwrap();
    assert!(invoice.invoice.starts_with("lnbcrt"));
    assert!(invoice.expires_at > 1_700_000_000);
    let inbound = c.get_payment(&invoice.payment_hash).await.unwrap();
    assert_eq!(inbound.direction, PaymentDirection::Inbound);
    assert_eq!(inbound.status, PaymentStatus::Pending);
    assert_eq!(inbound.amount_msat, Some(21_000));

    let paid = c
        .pay_invoice(&PayInvoiceRequest {
            invoice: format!("lightning:{}", invoice.invoice),
            amount_msat: None,
            wait: true,
            timeout_secs: Some(30),
        })
        .await
        .unwrap();
    assert_eq!(paid.status, PaymentStatus::Succeeded);
    assert_eq!(paid.direction, PaymentDirection::Outbound);
    assert_eq!(paid.payment_hash, invoice.payment_hash);
    assert!(paid.preimage.is_some());
    assert_eq!(
        h.node.last_call().unwrap().args["invoice"],
        invoice.invoice,
        "the URI scheme is stripped"
    );
    let again = c
        .pay_invoice(&PayInvoiceRequest {
            invoice: invoice.invoice.clone(),
            amount_msat: None,
            wait: true,
            timeout_secs: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&again, ClientError::Api { status: 409, error } if error.code == ErrorCode::PaymentFailed),
        "{again:?}"
    );
    let failed = c
        .pay_invoice(&PayInvoiceRequest {
            invoice: "lnbcrt1failme".into(),
            amount_msat: Some(1),
            wait: true,
            timeout_secs: None,
        })
        .await
        .unwrap();
    assert_eq!(failed.status, PaymentStatus::Failed);
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("no route to the payee")
    );
    let err = c
        .pay_invoice(&PayInvoiceRequest {
            invoice: "lnbc-mainnet".into(),
            amount_msat: None,
            wait: false,
            timeout_secs: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 400, error } if error.code == ErrorCode::InvalidInvoice),
        "{err:?}"
    );

    let sent = c
        .keysend(&KeysendRequest {
            node_id: PEER.into(),
            amount_msat: 5_000,
            wait: false,
            timeout_secs: None,
        })
        .await
        .unwrap();
    assert_eq!(sent.status, PaymentStatus::Pending);
    assert_eq!(h.node.last_call().unwrap().args["wait"], false);

    let payments = c.list_payments().await.unwrap();
    assert_eq!(payments.len(), 4);
    assert_eq!(payments[0], sent, "newest first");
    assert_eq!(c.get_payment(&sent.payment_hash).await.unwrap(), sent);
    let err = c.get_payment(&"cd".repeat(32)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 404, error } if error.code == ErrorCode::UnknownPayment),
        "{err:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn the_wire_format_is_snake_case_with_units() {
    let h = Harness::start().await;
    let answer = h.authed("GET", "/v1/onchain/balance", "").await;
    assert_eq!(
        answer.body,
        json!({
            "onchain_confirmed_sat": 1_000_000,
            "onchain_unconfirmed_sat": 0,
            "onchain_total_sat": 1_000_000,
            "lightning_outbound_msat": 0,
            "lightning_inbound_msat": 0,
        })
    );
    let answer = h
        .authed(
            "POST",
            "/v1/channels",
            &format!(r#"{{"node_id":"{PEER}","address":"127.0.0.1:9735","amount_sat":50000}}"#),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body["channel_id"].is_string());
    assert!(answer.body["user_channel_id"].is_string());
    assert_eq!(
        h.node.last_call().unwrap().args,
        json!({"node_id": PEER, "address": "127.0.0.1:9735", "amount_sat": 50000, "push_msat": 0, "public": false})
    );
    let answer = h.authed("GET", "/v1/channels", "").await;
    let channel = &answer.body["channels"][0];
    assert_eq!(channel["state"], "pending_open");
    for field in [
        "channel_id",
        "user_channel_id",
        "counterparty_node_id",
        "funding_txid",
        "funding_output_index",
        "short_channel_id",
        "capacity_sat",
        "outbound_msat",
        "inbound_msat",
        "is_usable",
        "is_public",
        "confirmations",
        "confirmations_required",
    ] {
        assert!(channel.get(field).is_some(), "{field} missing: {channel}");
    }
    let answer = h.authed("GET", "/v1/peers", "").await;
    assert_eq!(
        answer.body,
        json!({"peers": [{"node_id": PEER, "address": "127.0.0.1:9735", "inbound": false}]})
    );
    let answer = h
        .authed(
            "POST",
            "/v1/payments/keysend",
            &format!(r#"{{"node_id":"{PEER}","amount_msat":7}}"#),
        )
        .await;
    assert_eq!(answer.body["direction"], "outbound");
    assert_eq!(answer.body["status"], "succeeded", "wait defaults to true");
    assert_eq!(answer.body["amount_msat"], 7);
    let answer = h.authed("GET", "/v1/payments", "").await;
    assert_eq!(answer.body["payments"].as_array().unwrap().len(), 1);
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
