//! `phalanx ctl` against the API served in-process over a scripted node ([`StubNode`]):
//! each test scripts the node's answers, then checks what `ctl` prints and exits with,
//! and that the node received exactly the request `ctl` was asked to make.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx_api::stub::{Method, StubCall, StubNode};
use phalanx_api::{
    ApiError, ApiToken, Balance, Channel, ChannelState, ErrorCode, Invoice, NewAddress, NodeInfo,
    OpenChannelResponse, Payment, PaymentDirection, PaymentStatus, Peer, SendOnchainResponse,
    ServerState, load_or_create_token,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The node's id (the generator point: a valid compressed key).
const NODE_ID: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
/// A peer's id (twice the generator).
const PEER: &str = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5";
const ADDRESS: &str = "bcrt1qs758ursh4q9z627kt3pp5yysm78ddny6txaqgw";
const TXID: &str = "a1075db55d416d3ca199f55b6084e2115b9345e16c5cf302fc80e9d5fbf5d48d";
const CHANNEL_ID: &str = "3f2a9c1e7b5d4a6f8e0c2b4d6a8f1e3c5b7d9a0e2c4f6b8d1a3e5c7f9b0d2e4a";
const PAYMENT_HASH: &str = "5b2f8e1d4c7a0b3e6d9f2a5c8b1e4d7a0c3f6b9e2d5a8c1f4b7e0d3a6c9f2b5e";
const INVOICE: &str = "lnbcrt210n1pn8xq3ypp5tvhcu8fx8g9n4k0x8f7ryq2v4tuk9pz7nqd3q8j0ww0cxqrrssrzjqgkjyd3q5dv6gllh77kygly9c3kfy0d9xwyjyxsq9nq";

struct Api {
    node: Arc<StubNode>,
    url: String,
    token: ApiToken,
    token_file: PathBuf,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Api {
    let dir = phalanx_testkit::process::scratch_dir("ctl").unwrap();
    let token_file = dir.join("api.token");
    let token = load_or_create_token(&token_file).unwrap();
    let node = Arc::new(StubNode::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(phalanx_api::serve(
        listener,
        node.clone(),
        token.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Api {
        node,
        url,
        token,
        token_file,
        _stop: stop,
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    fn error(&self) -> Value {
        serde_json::from_str(&self.stderr)
            .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {}", self.stderr))
    }
}

async fn phalanx(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_phalanx"));
    command
        .args(args)
        .env_remove("PHALANX_API")
        .env_remove("PHALANX_API_TOKEN")
        .env_remove("PHALANX_API_TOKEN_FILE")
        .env_remove("PHALANX_API_TIMEOUT_SECS");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("phalanx ends")
        .expect("run phalanx");
    Run {
        code: output.status.code().expect("an exit code"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Api {
    /// `phalanx ctl --api URL --token-file FILE <args>`.
    async fn ctl(&self, args: &[&str]) -> Run {
        let file = self.token_file.to_str().unwrap();
        let mut all = vec!["ctl", "--api", &self.url, "--token-file", file];
        all.extend_from_slice(args);
        phalanx(&all, &[]).await
    }

    async fn ok(&self, args: &[&str]) -> Value {
        let run = self.ctl(args).await;
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        run.json()
    }

    /// `ctl` exits 1 with exactly `error` on stderr.
    async fn refused(&self, args: &[&str], error: &ApiError) {
        let run = self.ctl(args).await;
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
        assert_eq!(run.error(), json!({ "error": error }), "{args:?}");
    }

    /// Queues the node's answer to the next call of `method`.
    fn script(&self, method: Method, answer: impl Serialize) {
        self.node.reply(method, Ok(answer));
    }

    /// Queues the node's refusal of the next call of `method`.
    fn refuse(&self, method: Method, error: &ApiError) {
        self.node.reply_json(method, Err(error.clone()));
    }

    /// The last call the node received is `method` with exactly `args`.
    #[track_caller]
    fn assert_called(&self, method: Method, args: Value) {
        assert_eq!(self.node.last_call(), Some(StubCall { method, args }));
    }
}

fn value(answer: impl Serialize) -> Value {
    serde_json::to_value(answer).unwrap()
}

fn node_info() -> NodeInfo {
    NodeInfo {
        node_id: NODE_ID.into(),
        alias: "phalanx-test".into(),
        network: "regtest".into(),
        block_height: 144,
        block_hash: "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206".into(),
        num_peers: 1,
        num_channels: 1,
        num_usable_channels: 1,
        listen_addresses: vec!["127.0.0.1:9735".into()],
        epoch: 7,
        version: "0.1.0".into(),
    }
}

fn channel(channel_id: &str, state: ChannelState, capacity_sat: u64) -> Channel {
    let ready = state == ChannelState::Ready;
    Channel {
        channel_id: channel_id.into(),
        user_channel_id: "146379209481364289471203458349762351617".into(),
        counterparty_node_id: PEER.into(),
        funding_txid: ready.then(|| TXID.into()),
        funding_output_index: ready.then_some(0),
        short_channel_id: ready.then(|| "108x1x0".into()),
        capacity_sat,
        outbound_msat: capacity_sat * 1000 - 1000,
        inbound_msat: 1000,
        state,
        is_usable: ready,
        is_public: true,
        confirmations: ready.then_some(6),
        confirmations_required: Some(6),
    }
}

fn payment(payment_hash: &str, direction: PaymentDirection, status: PaymentStatus) -> Payment {
    Payment {
        payment_id: payment_hash.into(),
        payment_hash: payment_hash.into(),
        preimage: (status == PaymentStatus::Succeeded)
            .then(|| "c4e7a0d3b6f9c2e5a8d1b4f7e0c3a6d9b2f5e8a1c4d7b0e3f6a9c2d5b8e1f4a7".into()),
        direction,
        status,
        amount_msat: Some(21_000),
        fee_msat: (status == PaymentStatus::Succeeded).then_some(21),
        failure_reason: (status == PaymentStatus::Failed).then(|| "no route to the payee".into()),
        created_at: 1_717_171_717,
        updated_at: 1_717_171_720,
    }
}

#[tokio::test]
async fn getinfo_round_trips() {
    let api = start().await;
    for _ in 0..4 {
        api.script(Method::Info, node_info());
    }
    let info = api.ok(&["getinfo"]).await;
    assert_eq!(info, value(node_info()));
    assert_eq!(info["node_id"], NODE_ID);
    assert_eq!(info["epoch"], 7);
    // Pretty-printed.
    assert!(
        api.ctl(&["getinfo"])
            .await
            .stdout
            .contains("\n  \"node_id\"")
    );

    // The API and the token from the environment.
    let run = phalanx(
        &["ctl", "getinfo"],
        &[
            ("PHALANX_API", &api.url),
            ("PHALANX_API_TOKEN", api.token.expose()),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json(), info);
    let run = phalanx(
        &["ctl", "getinfo"],
        &[
            ("PHALANX_API", &api.url),
            ("PHALANX_API_TOKEN_FILE", api.token_file.to_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json(), info);
    let calls: Vec<_> = api.node.calls().into_iter().map(|c| c.method).collect();
    assert_eq!(calls, [Method::Info; 4]);
}

#[tokio::test]
async fn a_wrong_token_exits_1_with_the_json_error() {
    let api = start().await;
    let wrong = ApiToken::generate().unwrap();
    let run = phalanx(
        &[
            "ctl",
            "--api",
            &api.url,
            "--token",
            wrong.expose(),
            "getinfo",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_eq!(run.error()["error"]["code"], "unauthorized");
    assert!(!run.stderr.contains(wrong.expose()));
    assert!(api.node.calls().is_empty());
}

#[tokio::test]
async fn an_unreachable_api_exits_3_with_a_clear_message() {
    let port = phalanx_testkit::process::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let run = phalanx(
        &["ctl", "--api", &url, "--token", &"ab".repeat(32), "getinfo"],
        &[],
    )
    .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("cannot reach the API at {url}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("is the node running"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let api = start().await;
    // No token at all (state needs none).
    let run = phalanx(&["ctl", "--api", &api.url, "balance"], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no API token"), "{}", run.stderr);
    let run = phalanx(&["ctl", "--api", &api.url, "state"], &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json(), serde_json::json!({"state": "SERVER_ACTIVE"}));

    // A token file others can read.
    std::fs::set_permissions(&api.token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = api.ctl(&["balance"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
    std::fs::set_permissions(&api.token_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    for args in [
        &["sendonchain", "bcrt1qx"][..],
        &["sendonchain", "bcrt1qx", "5", "--all"],
        &["openchannel", PEER],
        &["nosuchcommand"],
        &["keysend", PEER, "lots"],
        &["payment"],
        &["payment", PEER, "--id", PEER],
    ] {
        let run = api.ctl(args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
    }
    let run = api.ctl(&["connect", "not-a-uri"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("node_id@host:port"), "{}", run.stderr);
    let run = phalanx(&["ctl", "--api", "https://x:1", "state"], &[]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(api.node.calls().is_empty(), "{:?}", api.node.calls());
}

#[tokio::test]
async fn a_standby_answers_not_active() {
    let api = start().await;
    api.node.set_state(ServerState::WaitingToStart);
    let run = api.ctl(&["balance"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let error = run.error();
    assert_eq!(error["error"]["code"], "not_active");
    assert_eq!(error["error"]["state"], "WAITING_TO_START");
    assert_eq!(api.ok(&["state"]).await["state"], "WAITING_TO_START");
    // The server refused: the node was never asked.
    assert!(api.node.calls().is_empty(), "{:?}", api.node.calls());
}

#[tokio::test]
async fn every_command_works() {
    let api = start().await;

    // On chain.
    let address = NewAddress {
        address: ADDRESS.into(),
    };
    api.script(Method::NewAddress, &address);
    assert_eq!(api.ok(&["newaddress"]).await, value(&address));
    api.assert_called(Method::NewAddress, Value::Null);
    let balance = Balance {
        onchain_confirmed_sat: 1_000_000,
        onchain_unconfirmed_sat: 25_000,
        onchain_total_sat: 1_025_000,
        lightning_outbound_msat: 99_000_000,
        lightning_inbound_msat: 1_000,
    };
    api.script(Method::Balance, &balance);
    assert_eq!(api.ok(&["balance"]).await, value(&balance));
    api.assert_called(Method::Balance, Value::Null);
    let sent = SendOnchainResponse { txid: TXID.into() };
    api.script(Method::SendOnchain, &sent);
    assert_eq!(
        api.ok(&["sendonchain", ADDRESS, "1000", "--fee-rate", "3"])
            .await,
        value(&sent)
    );
    api.assert_called(
        Method::SendOnchain,
        json!({"address": ADDRESS, "amount_sat": 1000, "send_all": false, "fee_rate_sat_per_vb": 3}),
    );
    let wrong_network = ApiError::new(
        ErrorCode::InvalidAddress,
        "`tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx` is a testnet address, the node is on regtest",
    );
    api.refuse(Method::SendOnchain, &wrong_network);
    api.refused(
        &[
            "sendonchain",
            "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",
            "1000",
        ],
        &wrong_network,
    )
    .await;
    api.assert_called(
        Method::SendOnchain,
        json!({"address": "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "amount_sat": 1000, "send_all": false}),
    );

    // Peers.
    let uri = format!("{PEER}@127.0.0.1:9735");
    let peer = Peer {
        node_id: PEER.into(),
        address: Some("127.0.0.1:9735".into()),
        inbound: false,
    };
    api.script(Method::ConnectPeer, &peer);
    assert_eq!(api.ok(&["connect", &uri]).await, value(&peer));
    api.assert_called(
        Method::ConnectPeer,
        json!({"node_id": PEER, "address": "127.0.0.1:9735"}),
    );
    api.script(Method::ListPeers, [&peer]);
    assert_eq!(api.ok(&["peers"]).await, json!({ "peers": [&peer] }));
    api.assert_called(Method::ListPeers, Value::Null);

    // Channels: with an address, `openchannel` has the node connect first.
    let opened = OpenChannelResponse {
        channel_id: "8d1f3b5a7c9e0d2f4a6c8e1b3d5f7a9c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d1f".into(),
        user_channel_id: "146379209481364289471203458349762351617".into(),
    };
    api.script(Method::OpenChannel, &opened);
    let answer = api
        .ok(&[
            "openchannel",
            &uri,
            "100000",
            "--push-msat",
            "1000",
            "--public",
        ])
        .await;
    assert_eq!(answer, value(&opened));
    api.assert_called(
        Method::OpenChannel,
        json!({"node_id": PEER, "address": "127.0.0.1:9735", "amount_sat": 100000, "push_msat": 1000, "public": true}),
    );
    api.script(Method::OpenChannel, &opened);
    api.ok(&["openchannel", PEER, "50000"]).await;
    api.assert_called(
        Method::OpenChannel,
        json!({"node_id": PEER, "amount_sat": 50000, "push_msat": 0, "public": false}),
    );
    let channels = [
        channel(CHANNEL_ID, ChannelState::Ready, 100_000),
        channel(&opened.channel_id, ChannelState::PendingOpen, 50_000),
    ];
    api.script(Method::ListChannels, &channels);
    assert_eq!(api.ok(&["channels"]).await, json!({ "channels": channels }));
    api.assert_called(Method::ListChannels, Value::Null);
    api.script(Method::CloseChannel, ());
    assert_eq!(
        api.ok(&["closechannel", &CHANNEL_ID.to_uppercase(), "--force"])
            .await,
        json!({})
    );
    api.assert_called(
        Method::CloseChannel,
        json!({"channel_id": CHANNEL_ID, "req": {"force": true}}),
    );
    let no_channel = ApiError::new(
        ErrorCode::UnknownChannel,
        format!("no channel {}", "00".repeat(32)),
    );
    api.refuse(Method::CloseChannel, &no_channel);
    api.refused(&["closechannel", &"00".repeat(32)], &no_channel)
        .await;
    api.assert_called(
        Method::CloseChannel,
        json!({"channel_id": "00".repeat(32), "req": {"force": false}}),
    );

    // Invoices and payments.
    let invoice = Invoice {
        invoice: INVOICE.into(),
        payment_hash: PAYMENT_HASH.into(),
        expires_at: 1_717_172_317,
    };
    api.script(Method::CreateInvoice, &invoice);
    let created = api
        .ok(&[
            "invoice",
            "21000",
            "--description",
            "coffee",
            "--expiry",
            "600",
        ])
        .await;
    assert_eq!(created, value(&invoice));
    api.assert_called(
        Method::CreateInvoice,
        json!({"amount_msat": 21000, "description": "coffee", "expiry_secs": 600}),
    );
    api.script(Method::CreateInvoice, &invoice);
    api.ok(&["invoice"]).await;
    api.assert_called(Method::CreateInvoice, json!({"description": ""}));
    let paid = payment(
        PAYMENT_HASH,
        PaymentDirection::Outbound,
        PaymentStatus::Succeeded,
    );
    api.script(Method::PayInvoice, &paid);
    assert_eq!(
        api.ok(&["pay", INVOICE, "--timeout", "5"]).await,
        value(&paid)
    );
    api.assert_called(
        Method::PayInvoice,
        json!({"invoice": INVOICE, "wait": true, "timeout_secs": 5}),
    );
    // A payment that was made and failed: its JSON on stdout, exit 4.
    let failed_hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let failed = payment(
        failed_hash,
        PaymentDirection::Outbound,
        PaymentStatus::Failed,
    );
    api.script(Method::PayInvoice, &failed);
    let run = api
        .ctl(&["pay", "lnbcrt1pn8xq3ysp5anyamount", "--amount-msat", "5"])
        .await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert_eq!(run.json(), value(&failed));
    api.assert_called(
        Method::PayInvoice,
        json!({"invoice": "lnbcrt1pn8xq3ysp5anyamount", "amount_msat": 5, "wait": true}),
    );
    let paid_already = ApiError::new(
        ErrorCode::PaymentFailed,
        "this invoice is already paid or being paid",
    );
    api.refuse(Method::PayInvoice, &paid_already);
    api.refused(&["pay", INVOICE], &paid_already).await;
    api.assert_called(
        Method::PayInvoice,
        json!({"invoice": INVOICE, "wait": true}),
    );

    // Offers.
    let offer = "lno1qgsqvgnwgcg35z6ee2h3yczraddm72xrfua9uve2rlrm9deu7xyfzrcgqgn3qzsyvfkx26qkyypvr5hfx60h9w9k934lt8s2n6zc0wwtgqlulw7dythr83dqx8tzumg";
    api.script(Method::CreateOffer, json!({ "offer": offer }));
    assert_eq!(
        api.ok(&["offer", "21000", "--description", "coffee"]).await,
        json!({ "offer": offer })
    );
    api.assert_called(
        Method::CreateOffer,
        json!({"amount_msat": 21000, "description": "coffee"}),
    );
    api.script(Method::PayOffer, &paid);
    assert_eq!(
        api.ok(&["payoffer", offer, "--timeout", "5"]).await,
        value(&paid)
    );
    api.assert_called(
        Method::PayOffer,
        json!({"offer": offer, "wait": true, "timeout_secs": 5}),
    );
    let expired = ApiError::new(
        ErrorCode::InvalidOffer,
        "invalid offer: the offer has expired",
    );
    api.refuse(Method::PayOffer, &expired);
    api.refused(&["payoffer", offer, "--amount-msat", "7"], &expired)
        .await;
    api.assert_called(
        Method::PayOffer,
        json!({"offer": offer, "amount_msat": 7, "wait": true}),
    );

    let keysend_hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let pending = payment(
        keysend_hash,
        PaymentDirection::Outbound,
        PaymentStatus::Pending,
    );
    api.script(Method::Keysend, &pending);
    assert_eq!(
        api.ok(&["keysend", PEER, "5000", "--no-wait"]).await,
        value(&pending)
    );
    api.assert_called(
        Method::Keysend,
        json!({"node_id": PEER, "amount_msat": 5000, "wait": false}),
    );
    api.script(Method::GetPayment, &pending);
    assert_eq!(api.ok(&["payment", keysend_hash]).await, value(&pending));
    api.assert_called(Method::GetPayment, json!(keysend_hash));
    api.script(Method::GetPaymentById, &pending);
    assert_eq!(
        api.ok(&["payment", "--id", &"ab".repeat(32)]).await,
        value(&pending)
    );
    api.assert_called(Method::GetPaymentById, json!("ab".repeat(32)));
    let payments = [pending, failed, paid];
    api.script(Method::ListPayments, &payments);
    assert_eq!(api.ok(&["payments"]).await, json!({ "payments": payments }));
    api.assert_called(Method::ListPayments, Value::Null);
    let unknown = ApiError::new(
        ErrorCode::UnknownPayment,
        format!("no payment with hash {}", "cd".repeat(32)),
    );
    api.refuse(Method::GetPayment, &unknown);
    api.refused(&["payment", &"cd".repeat(32)], &unknown).await;
    api.assert_called(Method::GetPayment, json!("cd".repeat(32)));

    api.script(Method::DisconnectPeer, ());
    assert_eq!(api.ok(&["disconnect", PEER]).await, json!({}));
    api.assert_called(Method::DisconnectPeer, json!(PEER));
    api.script(Method::ListPeers, Vec::<Peer>::new());
    assert_eq!(api.ok(&["peers"]).await, json!({"peers": []}));
    api.script(Method::SendOnchain, &sent);
    assert_eq!(
        api.ok(&["sendonchain", ADDRESS, "--all"]).await,
        value(&sent)
    );
    api.assert_called(
        Method::SendOnchain,
        json!({"address": ADDRESS, "send_all": true}),
    );

    // One call of the node per command.
    assert_eq!(api.node.calls().len(), 27, "{:?}", api.node.calls());
}
