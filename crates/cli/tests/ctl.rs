//! `phalanx ctl` against the API served in-process over a fake node.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx_api::fake::{FAKE_NODE_ID, FakeNode};
use phalanx_api::{ApiToken, ServerState, load_or_create_token};
use serde_json::Value;
use tokio::sync::oneshot;

const PEER: &str = "02aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

struct Api {
    node: Arc<FakeNode>,
    url: String,
    token: ApiToken,
    token_file: PathBuf,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Api {
    let dir = phalanx_testkit::process::scratch_dir("ctl").unwrap();
    let token_file = dir.join("api.token");
    let token = load_or_create_token(&token_file).unwrap();
    let node = Arc::new(FakeNode::new());
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
}

#[tokio::test]
async fn getinfo_round_trips() {
    let api = start().await;
    let info = api.ok(&["getinfo"]).await;
    assert_eq!(info["node_id"], FAKE_NODE_ID);
    assert_eq!(info["network"], "regtest");
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
    assert_eq!(run.json()["node_id"], FAKE_NODE_ID);
    let run = phalanx(
        &["ctl", "getinfo"],
        &[
            ("PHALANX_API", &api.url),
            ("PHALANX_API_TOKEN_FILE", api.token_file.to_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
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
}

#[tokio::test]
async fn every_command_works() {
    let api = start().await;
    let address = api.ok(&["newaddress"]).await["address"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        api.ok(&["balance"]).await["onchain_confirmed_sat"],
        1_000_000
    );
    let sent = api
        .ok(&["sendonchain", &address, "1000", "--fee-rate", "3"])
        .await;
    assert_eq!(sent["txid"].as_str().unwrap().len(), 64);
    assert_eq!(
        api.node.last_call().unwrap().args,
        serde_json::json!({"address": address, "amount_sat": 1000, "send_all": false, "fee_rate_sat_per_vb": 3})
    );
    let run = api.ctl(&["sendonchain", "tb1qother", "1000"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.error()["error"]["code"], "invalid_address");

    let uri = format!("{PEER}@127.0.0.1:9735");
    assert_eq!(api.ok(&["connect", &uri]).await["node_id"], PEER);
    assert_eq!(api.ok(&["peers"]).await["peers"][0]["node_id"], PEER);

    let opened = api
        .ok(&[
            "openchannel",
            &uri,
            "100000",
            "--push-msat",
            "1000",
            "--public",
        ])
        .await;
    let channel_id = opened["channel_id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.node.last_call().unwrap().args,
        serde_json::json!({"node_id": PEER, "address": "127.0.0.1:9735", "amount_sat": 100000, "push_msat": 1000, "public": true})
    );
    api.ok(&["openchannel", PEER, "50000"]).await;
    let channels = api.ok(&["channels"]).await;
    assert_eq!(channels["channels"].as_array().unwrap().len(), 2);
    assert_eq!(
        api.ok(&["closechannel", &channel_id, "--force"]).await,
        serde_json::json!({})
    );
    assert_eq!(api.node.last_call().unwrap().args["req"]["force"], true);
    let run = api.ctl(&["closechannel", &"00".repeat(32)]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.error()["error"]["code"], "unknown_channel");

    let invoice = api
        .ok(&[
            "invoice",
            "21000",
            "--description",
            "coffee",
            "--expiry",
            "600",
        ])
        .await;
    assert_eq!(
        api.node.last_call().unwrap().args,
        serde_json::json!({"amount_msat": 21000, "description": "coffee", "expiry_secs": 600})
    );
    api.ok(&["invoice"]).await;
    let paid = api
        .ok(&[
            "pay",
            invoice["invoice"].as_str().unwrap(),
            "--timeout",
            "5",
        ])
        .await;
    assert_eq!(paid["status"], "succeeded");
    assert_eq!(paid["payment_hash"], invoice["payment_hash"]);
    let failed = api
        .ctl(&["pay", "lnbcrt1failme", "--amount-msat", "5"])
        .await;
    assert_eq!(failed.code, 4, "{}", failed.stderr);
    assert_eq!(failed.json()["status"], "failed");
    let again = api
        .ctl(&["pay", invoice["invoice"].as_str().unwrap()])
        .await;
    assert_eq!(again.code, 1);
    assert_eq!(again.error()["error"]["code"], "payment_failed");

    let keysend = api.ok(&["keysend", PEER, "5000", "--no-wait"]).await;
    assert_eq!(keysend["status"], "pending");
    assert_eq!(api.node.last_call().unwrap().args["wait"], false);
    let hash = keysend["payment_hash"].as_str().unwrap();
    assert_eq!(api.ok(&["payment", hash]).await, keysend);
    let payments = api.ok(&["payments"]).await;
    assert_eq!(payments["payments"][0], keysend);
    let run = api.ctl(&["payment", &"cd".repeat(32)]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.error()["error"]["code"], "unknown_payment");

    assert_eq!(api.ok(&["disconnect", PEER]).await, serde_json::json!({}));
    assert_eq!(api.ok(&["peers"]).await, serde_json::json!({"peers": []}));
    assert_eq!(
        api.ok(&["sendonchain", &address, "--all"]).await["txid"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
}
