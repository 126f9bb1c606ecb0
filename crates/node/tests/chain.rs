//! The chain client against the regtest chain, through the same RPC/REST clients it uses
//! against bitcoind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::{Amount, Network};
use lightning::chain::chaininterface::{
    BroadcasterInterface, ConfirmationTarget, FeeEstimator, TransactionType,
};
use lightning_block_sync::BlockSource;
use phalanx_node::chain::{ChainClient, ChainError};
use phalanx_node::config::ChainConfig;
use phalanx_regtest::{ChainSettings, Regtest, RegtestConfig};

fn config(regtest: &Regtest, rest: bool) -> ChainConfig {
    ChainConfig {
        rpc_url: regtest.rpc_url(),
        rpc_user: regtest.rpc_user().into(),
        rpc_password: regtest.rpc_password().into(),
        rest_url: rest.then(|| regtest.rest_url().trim_end_matches('/').to_owned()),
        esplora_url: None,
        poll_interval: Duration::from_millis(100),
    }
}

async fn regtest() -> Regtest {
    Regtest::start(RegtestConfig {
        chain: ChainSettings {
            fee_rate: bitcoin::FeeRate::from_sat_per_vb_u32(12),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_estimates_fees_and_serves_blocks_over_rpc_and_rest() {
    let regtest = regtest().await;
    regtest.mine(3, None);
    for rest in [false, true] {
        let client = ChainClient::connect(
            &config(&regtest, rest),
            Network::Regtest,
            tokio::runtime::Handle::current(),
        )
        .await
        .unwrap();
        // 12 sat/vB = 3000 sat per 1000 weight.
        assert_eq!(
            client.get_est_sat_per_1000_weight(ConfirmationTarget::NonAnchorChannelFee),
            3000
        );
        let (tip, height) = client.get_best_block().await.unwrap();
        assert_eq!((tip, height), (regtest.chain().tip(), Some(3)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_network_credentials_and_address_are_clear_errors() {
    let regtest = regtest().await;
    let err = ChainClient::connect(
        &config(&regtest, false),
        Network::Signet,
        tokio::runtime::Handle::current(),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, ChainError::WrongNetwork { .. }), "{err}");
    assert!(err.to_string().contains("runs chain \"regtest\""), "{err}");

    let mut wrong = config(&regtest, false);
    wrong.rpc_password = "nope".into();
    let err = ChainClient::connect(&wrong, Network::Regtest, tokio::runtime::Handle::current())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ChainError::Unauthorized { .. }), "{err}");

    let mut closed = config(&regtest, false);
    closed.rpc_url = format!("http://127.0.0.1:{}", phalanx_testkit_free_port());
    let started = Instant::now();
    let err = ChainClient::connect(&closed, Network::Regtest, tokio::runtime::Handle::current())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ChainError::Unreachable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

fn phalanx_testkit_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_single_transactions_and_packages_until_stopped() {
    let regtest = regtest().await;
    regtest.mine(101, None);
    let client: Arc<ChainClient> = ChainClient::connect(
        &config(&regtest, false),
        Network::Regtest,
        tokio::runtime::Handle::current(),
    )
    .await
    .unwrap();
    let to_wallet = regtest.chain().wallet().default_address().script_pubkey();

    let single = regtest
        .chain()
        .build_send(&to_wallet, Amount::from_sat(50_000))
        .unwrap();
    assert_eq!(
        client.broadcast(vec![single.clone()]).await.unwrap(),
        vec![single.compute_txid()]
    );
    assert!(regtest.chain().mempool().contains(&single.compute_txid()));
    regtest.mine(1, None);

    // A package handed child first: the client sorts it and submits it as one.
    let parent = regtest
        .chain()
        .build_send(&to_wallet, Amount::from_sat(80_000))
        .unwrap();
    let vout = parent
        .output
        .iter()
        .position(|o| o.value == Amount::from_sat(80_000))
        .unwrap();
    let mut child = bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![bitcoin::TxIn {
            previous_output: bitcoin::OutPoint::new(parent.compute_txid(), vout as u32),
            ..Default::default()
        }],
        output: vec![bitcoin::TxOut {
            value: Amount::from_sat(70_000),
            script_pubkey: to_wallet.clone(),
        }],
    };
    regtest
        .chain()
        .wallet()
        .sign(&mut child, &[parent.output[vout].clone()]);
    let ids = client
        .broadcast(vec![child.clone(), parent.clone()])
        .await
        .unwrap();
    assert_eq!(ids, vec![parent.compute_txid(), child.compute_txid()]);
    assert!(regtest.chain().mempool().contains(&child.compute_txid()));

    // Stopped: nothing more reaches the chain, through either entry point.
    client.stop_broadcasting();
    assert!(!client.is_broadcasting());
    let late = regtest
        .chain()
        .build_send(&to_wallet, Amount::from_sat(30_000))
        .unwrap();
    client.broadcast_transactions(&[(&late, TransactionType::Sweep { channels: vec![] })]);
    assert!(matches!(
        client.broadcast(vec![late.clone()]).await,
        Err(ChainError::BroadcastStopped)
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!regtest.chain().history().contains(&late.compute_txid()));
}

/// An Esplora endpoint that records what it is sent and answers `status` with the txid.
async fn recording_esplora(status: u16) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then a body of Content-Length bytes.
            let (head, length) = loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&request[..end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    break (head, end + 4 + length);
                }
            };
            while request.len() < length {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            assert!(head.starts_with("POST /api/tx "), "{head}");
            let hex = String::from_utf8_lossy(&request[head.len() + 4..length]).to_string();
            let tx: bitcoin::Transaction =
                bitcoin::consensus::encode::deserialize_hex(&hex).unwrap();
            recorded.lock().unwrap().push(hex);
            let answer = tx.compute_txid().to_string();
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    (url, seen)
}

/// A client of `regtest` with a recording Esplora (answering `status`) as second source.
async fn client_with_esplora(
    regtest: &Regtest,
    status: u16,
) -> (Arc<ChainClient>, Arc<std::sync::Mutex<Vec<String>>>) {
    let (url, seen) = recording_esplora(status).await;
    let mut with_esplora = config(regtest, false);
    with_esplora.esplora_url = Some(url);
    let client = ChainClient::connect(
        &with_esplora,
        Network::Regtest,
        tokio::runtime::Handle::current(),
    )
    .await
    .unwrap();
    (client, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broadcast_also_goes_to_esplora_when_configured() {
    let regtest = regtest().await;
    regtest.mine(101, None);
    let to_wallet = regtest.chain().wallet().default_address().script_pubkey();

    let (client, seen) = client_with_esplora(&regtest, 200).await;
    let tx = regtest
        .chain()
        .build_send(&to_wallet, Amount::from_sat(40_000))
        .unwrap();
    assert_eq!(
        client.broadcast(vec![tx.clone()]).await.unwrap(),
        vec![tx.compute_txid()]
    );
    assert!(
        regtest.chain().mempool().contains(&tx.compute_txid()),
        "bitcoind got it"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![bitcoin::consensus::encode::serialize_hex(&tx)],
        "esplora got it"
    );

    // An Esplora that refuses does not undo what bitcoind accepted.
    let (client, seen) = client_with_esplora(&regtest, 400).await;
    let tx = regtest
        .chain()
        .build_send(&to_wallet, Amount::from_sat(30_000))
        .unwrap();
    assert_eq!(
        client.broadcast(vec![tx.clone()]).await.unwrap(),
        vec![tx.compute_txid()]
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Bad Esplora URLs are refused when the client is made.
    for bad in ["ftp://esplora.example/api", "not a url", "http://"] {
        let mut wrong = config(&regtest, false);
        wrong.esplora_url = Some(bad.into());
        let err = ChainClient::connect(&wrong, Network::Regtest, tokio::runtime::Handle::current())
            .await
            .err()
            .unwrap_or_else(|| panic!("{bad} was accepted"));
        let message = err.to_string();
        // Esplora's failures are its own, never reported as bitcoind's.
        assert!(message.contains(bad), "{message}");
        assert!(message.contains("Esplora"), "{message}");
        assert!(!message.contains("bitcoind"), "{message}");
    }
}

/// Switched off, `broadcast` says that nothing was sent, instead of an empty success a
/// caller would take for "sent"; and bitcoind's answers are told apart by what they
/// mean for the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcaster_switched_off_reports_that_nothing_was_sent() {
    use phalanx_node::chain::BroadcastOutcome;
    let regtest = regtest().await;
    let client = ChainClient::connect(
        &config(&regtest, false),
        Network::Regtest,
        tokio::runtime::Handle::current(),
    )
    .await
    .unwrap();
    let tx = bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![],
        output: vec![],
    };
    // A transaction bitcoind refuses outright is a refusal.
    let refused = client.broadcast(vec![tx.clone()]).await.unwrap_err();
    assert_eq!(
        refused.broadcast_outcome(),
        BroadcastOutcome::Refused,
        "{refused}"
    );
    client.stop_broadcasting();
    let err = client.broadcast(vec![tx]).await.unwrap_err();
    assert!(matches!(err, ChainError::BroadcastStopped), "{err}");
    assert_eq!(err.broadcast_outcome(), BroadcastOutcome::Refused);
}

/// A frozen VM: its monotonic clock stood still, so its leadership's local deadline has
/// not passed, yet a standby took the lease meanwhile. Each broadcast first asks the
/// store, so the thawed instance sends nothing and stops broadcasting for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_over_meanwhile_stops_the_broadcast() {
    use phalanx_store::testing::{must_win, win_within};
    use phalanx_store::{ClusterName, StoreOptions};
    let regtest = regtest().await;
    regtest.mine(101, None);
    let client = ChainClient::connect(
        &config(&regtest, false),
        Network::Regtest,
        tokio::runtime::Handle::current(),
    )
    .await
    .unwrap();
    let url = phalanx_testkit::postgres::shared()
        .fresh_database()
        .unwrap();
    let options = StoreOptions::new(ClusterName::new("thaw").unwrap());
    let open = |options| phalanx_store_postgres::PostgresStore::open(&url, options);
    let frozen = Arc::new(open(options.clone()).await.unwrap());
    let standby = Arc::new(open(options).await.unwrap());
    let ttl = Duration::from_secs(1);
    let lease = must_win(frozen.as_ref(), "frozen", ttl).await;
    client.confirm_lease_with(
        frozen.clone(),
        lease.token().epoch(),
        tokio::runtime::Handle::current(),
    );
    let to_wallet = regtest.chain().wallet().default_address().script_pubkey();
    let send = |sat| {
        regtest
            .chain()
            .build_send(&to_wallet, Amount::from_sat(sat))
            .unwrap()
    };

    let before = send(40_000);
    client.broadcast(vec![before.clone()]).await.unwrap();
    assert!(regtest.chain().mempool().contains(&before.compute_txid()));

    // The lease is not renewed (the VM is paused); the standby wins after the TTL.
    let _taken = win_within(standby.as_ref(), "standby", ttl, Duration::from_secs(30)).await;
    let after = send(30_000);
    let err = client.broadcast(vec![after.clone()]).await.unwrap_err();
    assert!(
        matches!(err, ChainError::LeaseNotConfirmed(ref why) if why.contains("standby holds epoch")),
        "{err}"
    );
    assert!(
        !client.is_broadcasting(),
        "a lost lease switches broadcasting off"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!regtest.chain().history().contains(&after.compute_txid()));
    drop(lease);
}
