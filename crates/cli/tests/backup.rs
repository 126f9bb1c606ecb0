//! `phalanx backup create|verify` and `phalanx restore` as an operator runs them, against
//! a node on PostgreSQL (or on SQLite, where the running node takes the snapshot itself)
//! that keeps paying meanwhile; the restored node runs on etcd.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes;
use phalanx_e2e::process::ConfigFile;
use phalanx_node::Node;
use phalanx_node::payments::PaymentStatus;

fn phalanx(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(args)
        .env_remove("PHALANX_CONFIG")
        .output()
        .expect("phalanx runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Payments both ways in the background, counted, until stopped.
struct Payments {
    stop: Arc<AtomicBool>,
    paid: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Payments {
    /// Runs `both_ways` (true when a payment each way succeeded) again and again, and
    /// returns once two round trips are through.
    async fn start<F, Fut>(both_ways: F, limit: Duration) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let paid = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, paid) = (stop.clone(), paid.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if both_ways().await {
                        paid.fetch_add(2, Ordering::Relaxed);
                    }
                }
            })
        };
        let payments = Self { stop, paid, task };
        payments.wait_for_more("payments to flow", 4, limit).await;
        payments
    }

    async fn wait_for_more(&self, what: &str, more: usize, limit: Duration) {
        let before = self.paid.load(Ordering::Relaxed);
        nodes::wait_for(what, limit, || async {
            (self.paid.load(Ordering::Relaxed) >= before + more).then_some(())
        })
        .await;
    }

    /// Two more round trips, then stop.
    async fn finish(self, limit: Duration) {
        self.wait_for_more("payments after the backup", 4, limit)
            .await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
    }
}

/// `phalanx backup create --config CONFIG --to TO`, off the async threads so that the
/// payments go on meanwhile.
async fn create_backup(config: &str, to: &std::path::Path) -> (Option<i32>, String, String) {
    let (config, to) = (config.to_owned(), to.to_owned());
    tokio::task::spawn_blocking(move || {
        phalanx(&[
            "backup",
            "create",
            "--config",
            &config,
            "--to",
            to.to_str().unwrap(),
        ])
    })
    .await
    .unwrap()
}

/// One payment, succeeded on both sides (the project's `pay_once`).
async fn pay(from: &Node, to: &Node, msat: u64) -> bool {
    phalanx_devnet::stream::pay_once(from, to, msat, "stream")
        .await
        .is_ok()
}

/// One payment each way between a node process (its API) and Bob: the id of Alice's
/// payment to Bob and the hash of Bob's to Alice, each if it succeeded on the payer's side.
async fn round_trip(api: &phalanx_api::ApiClient, bob: &Node) -> (Option<String>, Option<String>) {
    use phalanx_api::{CreateInvoiceRequest, PayInvoiceRequest};
    let to_bob = async {
        let invoice = bob.create_invoice(Some(4_000), "to bob", None).await.ok()?;
        let paid = api
            .pay_invoice(&PayInvoiceRequest {
                invoice: invoice.to_string(),
                amount_msat: None,
                wait: true,
                timeout_secs: Some(10),
            })
            .await
            .ok()?;
        (paid.status == phalanx_api::PaymentStatus::Succeeded).then_some(paid.payment_id)
    };
    let to_bob = to_bob.await;
    let to_alice = async {
        let invoice = api
            .create_invoice(&CreateInvoiceRequest {
                amount_msat: Some(3_000),
                description: "to alice".into(),
                expiry_secs: None,
            })
            .await
            .ok()?;
        let id = bob.pay_invoice(&invoice.invoice, None).await.ok()?;
        let record = bob.wait_payment(id, Duration::from_secs(10)).await.ok()?;
        (record.status == PaymentStatus::Succeeded).then_some(invoice.payment_hash)
    };
    (to_bob, to_alice.await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_during_payments_verifies_and_restores_onto_another_backend() {
    phalanx_testkit::init_tracing();
    let chain = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bob = nodes::start(&nodes::node_config(&chain, dir.path(), "bob", None)).await;
    let postgres = phalanx_testkit::postgres::shared()
        .fresh_database()
        .expect("a PostgreSQL database");
    let alice_config = nodes::node_config(&chain, dir.path(), "alice", Some(postgres.clone()));
    let alice = nodes::start(&alice_config).await;
    nodes::fund(&chain, &alice, bitcoin::Amount::from_sat(2_000_000)).await;
    nodes::open_channel(&chain, &alice, &bob, 1_000_000, 400_000_000).await;
    nodes::wait_for("a first payment", Duration::from_secs(60), || async {
        pay(&alice, &bob, 10_000).await.then_some(())
    })
    .await;
    let config = ConfigFile::new(
        &dir.path().join("alice"),
        &postgres,
        "alice",
        chain.config(),
    )
    .write_uninitialized();
    let config = config.to_str().unwrap().to_owned();

    // Payments both ways, all along the backup.
    let payments = {
        let (alice, bob) = (alice.clone(), bob.clone());
        Payments::start(
            move || {
                let (alice, bob) = (alice.clone(), bob.clone());
                async move { pay(&alice, &bob, 5_000).await && pay(&bob, &alice, 3_000).await }
            },
            Duration::from_secs(30),
        )
        .await
    };
    let during = dir.path().join("during");
    let (status, out, err) = create_backup(&config, &during).await;
    assert_eq!(status, Some(0), "{err}");
    assert!(
        out.starts_with(&format!(
            "backup {} node_id={}",
            during.display(),
            alice.node_id()
        )),
        "{out}"
    );
    payments.finish(Duration::from_secs(30)).await;

    let (status, out, err) = phalanx(&[
        "backup",
        "verify",
        "--config",
        &config,
        during.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(0), "{err}");
    assert!(out.contains("is good"), "{out}");
    assert!(out.contains("1 channel monitors, 1 channels"), "{out}");
    assert!(out.contains(&format!("peer {}", bob.node_id())), "{out}");

    // The backup taken during the stream restores into etcd (it is older than the node:
    // it is not started; the quiescent one below is).
    let etcd = phalanx_testkit::etcd::shared();
    let stale_target = etcd.url(&phalanx_testkit::unique_name("during"));
    let (status, out, err) = phalanx(&[
        "restore",
        "--config",
        &config,
        "--from",
        during.to_str().unwrap(),
        "--to",
        &stale_target,
    ]);
    assert_eq!(status, Some(0), "{err}");
    assert!(
        out.starts_with(&format!("restored node_id={}", alice.node_id())),
        "{out}"
    );
    // Not twice into the same store; not a damaged backup.
    let (status, _, err) = phalanx(&[
        "restore",
        "--config",
        &config,
        "--from",
        during.to_str().unwrap(),
        "--to",
        &stale_target,
    ]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("only into an empty store"), "{err}");
    let damaged = dir.path().join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    for file in ["phalanx-backup.json", "backup.bin"] {
        std::fs::copy(during.join(file), damaged.join(file)).unwrap();
    }
    let mut bytes = std::fs::read(damaged.join("backup.bin")).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(damaged.join("backup.bin"), bytes).unwrap();
    let empty_target = etcd.url(&phalanx_testkit::unique_name("damaged"));
    for args in [
        vec![
            "backup",
            "verify",
            "--config",
            &config,
            damaged.to_str().unwrap(),
        ],
        vec![
            "restore",
            "--config",
            &config,
            "--from",
            damaged.to_str().unwrap(),
            "--to",
            &empty_target,
        ],
    ] {
        let (status, _, err) = phalanx(&args);
        assert_eq!(status, Some(2), "{args:?}: {err}");
        assert!(err.contains("truncated"), "{err}");
    }

    // A quiescent backup, restored into etcd: the node runs there and pays.
    let quiet = dir.path().join("quiet");
    let (status, _, err) = phalanx(&[
        "backup",
        "create",
        "--config",
        &config,
        "--to",
        quiet.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(0), "{err}");
    alice.shutdown().await;
    let target = etcd.url(&phalanx_testkit::unique_name("restored"));
    let (status, _, err) = phalanx(&[
        "restore",
        "--config",
        &config,
        "--from",
        quiet.to_str().unwrap(),
        "--to",
        &target,
    ]);
    assert_eq!(status, Some(0), "{err}");
    let restored_config = nodes::node_config(&chain, dir.path(), "alice", Some(target));
    let restored = nodes::start(&restored_config).await;
    assert_eq!(restored.node_id(), alice.node_id());
    nodes::wait_for(
        "payments from the restored node",
        Duration::from_secs(60),
        || async {
            (pay(&restored, &bob, 7_000).await && pay(&bob, &restored, 2_000).await).then_some(())
        },
    )
    .await;
    assert_eq!(
        restored.list_channels().len(),
        1,
        "the channel was not closed"
    );
    restored.shutdown().await;
    bob.shutdown().await;
}

/// `hex` as LDK's payment hash.
fn hash_of(hex_text: &str) -> lightning::types::payment::PaymentHash {
    let bytes: [u8; 32] = hex::decode(hex_text).unwrap().try_into().unwrap();
    lightning::types::payment::PaymentHash(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_during_payments_the_node_is_restored_from_its_backup_stream_alone() {
    use phalanx_e2e::world::{Channel, World};

    phalanx_testkit::init_tracing();
    let postgres = phalanx_testkit::postgres::shared()
        .fresh_database()
        .expect("a PostgreSQL database");
    let world = World::set_up("stream", |_| postgres.clone()).await;
    let stream_dir = world.dir.join("stream");
    let config = ConfigFile::new(
        &world.dir.join("alice"),
        &postgres,
        "alice",
        world.chain.config(),
    )
    .write_uninitialized();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}\n[backup]\nurl = \"file://{}\"\n",
            stream_dir.display()
        ),
    )
    .unwrap();
    let binary = phalanx_e2e::process::NodeBinary::new(env!("CARGO_BIN_EXE_phalanx"));
    phalanx_e2e::process::initialize(&binary, &config);
    let mut alice = phalanx_e2e::process::node(&binary, "alice", &config, &[]);
    let (_, api) = alice.api().await;
    let started = alice.started().await;
    world.fund_alice(&api).await;
    Channel::open(&world, &api).await;
    // A snapshot from before the payments: the stream will be newer.
    let early = world.dir.join("early-snapshot");
    let (status, _, err) = phalanx(&[
        "backup",
        "create",
        "--config",
        config.to_str().unwrap(),
        "--to",
        early.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(0), "{err}");

    // Payments both ways until alice is killed; each side records what it saw succeed.
    let seen = Arc::new(std::sync::Mutex::new((
        Vec::<String>::new(),
        Vec::<String>::new(),
    )));
    let stream = {
        let (api, bob, seen) = (api.clone(), world.bob.clone(), seen.clone());
        tokio::spawn(async move {
            let mut failures = 0;
            while failures < 20 {
                let (sent, received) = round_trip(&api, &bob).await;
                match sent {
                    Some(id) => seen.lock().unwrap().0.push(id),
                    None => failures += 1,
                }
                match received {
                    Some(hash) => seen.lock().unwrap().1.push(hash),
                    None => failures += 1,
                }
            }
        })
    };
    nodes::wait_for("payments to flow", Duration::from_secs(60), || async {
        let seen = seen.lock().unwrap();
        (seen.0.len() >= 5 && seen.1.len() >= 5).then_some(())
    })
    .await;
    let status = alice.kill().await;
    assert_eq!(status.signal(), Some(9));
    stream.await.unwrap();
    let (alice_sent, alice_received) = seen.lock().unwrap().clone();

    // The early snapshot is older than the stream: refused, with what a stale state
    // risks, unless --allow-stale.
    let stale_target = phalanx_testkit::etcd::shared().url(&phalanx_testkit::unique_name("stale"));
    let restore_early = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--config",
            config.to_str().unwrap(),
            "--from",
            early.to_str().unwrap(),
            "--to",
            &stale_target,
        ];
        args.extend_from_slice(extra);
        phalanx(&args)
    };
    let (status, _, err) = restore_early(&[]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("is older than the backup stream"), "{err}");
    assert!(err.contains("revoked commitment"), "{err}");
    assert!(err.contains("--allow-stale"), "{err}");
    let (status, out, err) = restore_early(&["--allow-stale"]);
    assert_eq!(status, Some(0), "{err}");
    assert!(out.contains("STALE"), "{out}");

    // The stream alone, into etcd.
    let target = phalanx_testkit::etcd::shared().url(&phalanx_testkit::unique_name("from-stream"));
    let config_text = config.to_str().unwrap();
    let (status, out, err) = phalanx(&[
        "restore",
        "--config",
        config_text,
        "--from",
        stream_dir.to_str().unwrap(),
        "--to",
        &target,
    ]);
    assert_eq!(status, Some(0), "{err}");
    assert!(out.contains("from the backup stream"), "{out}");

    let restored = nodes::start(&nodes::node_config(
        &world.chain,
        &world.dir,
        "alice",
        Some(target),
    ))
    .await;
    assert_eq!(restored.node_id().to_string(), started.node_id);
    for id in &alice_sent {
        let bytes: [u8; 32] = hex::decode(id).unwrap().try_into().unwrap();
        let record = restored
            .outbound_payment(lightning::ln::channelmanager::PaymentId(bytes))
            .unwrap_or_else(|| panic!("alice's payment {id} is not in the restored node"));
        assert_eq!(record.status, PaymentStatus::Succeeded, "{id}");
    }
    for hash in &alice_received {
        let record = restored
            .inbound_payment(hash_of(hash))
            .unwrap_or_else(|| panic!("the payment {hash} bob made is not in the restored node"));
        assert_eq!(record.status, PaymentStatus::Succeeded, "{hash}");
    }
    nodes::wait_for(
        "the channel to be usable",
        Duration::from_secs(60),
        || async { nodes::usable_with(&restored, world.bob.node_id()).then_some(()) },
    )
    .await;
    nodes::wait_for(
        "a payment from the restored node",
        Duration::from_secs(60),
        || async { pay(&restored, &world.bob, 6_000).await.then_some(()) },
    )
    .await;
    assert_eq!(restored.list_channels().len(), 1, "no force close");
    assert_eq!(
        world.bob.list_channels().len(),
        1,
        "no force close on bob's side"
    );
    restored.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_node_on_sqlite_takes_its_own_backup_while_it_pays() {
    use phalanx_e2e::world::{Channel, World};

    phalanx_testkit::init_tracing();
    let world = World::set_up("sqlite-backup", |dir| {
        format!("sqlite://{}/alice/node.db", dir.display())
    })
    .await;
    // A fixed API port, as an operator's: `backup create` finds the node by it.
    let api_port = phalanx_testkit::process::free_port();
    let config = ConfigFile::new(
        &world.dir.join("alice"),
        &world.store_url,
        "alice",
        world.chain.config(),
    )
    .api_listen(std::net::SocketAddr::from(([127, 0, 0, 1], api_port)))
    .write_uninitialized();
    let config_text = config.to_str().unwrap().to_owned();
    let binary = phalanx_e2e::process::NodeBinary::new(env!("CARGO_BIN_EXE_phalanx"));
    phalanx_e2e::process::initialize(&binary, &config);
    let mut alice = phalanx_e2e::process::node(&binary, "alice", &config, &[]);
    let (_, api) = alice.api().await;
    let started = alice.started().await;
    world.fund_alice(&api).await;
    Channel::open(&world, &api).await;

    // Payments both ways, all along the backup.
    let payments = {
        let (api, bob) = (api.clone(), world.bob.clone());
        Payments::start(
            move || {
                let (api, bob) = (api.clone(), bob.clone());
                async move { matches!(round_trip(&api, &bob).await, (Some(_), Some(_))) }
            },
            Duration::from_secs(60),
        )
        .await
    };
    // The node holds its SQLite file's exclusive lock: no other process can read it, so
    // the node takes the snapshot itself.
    let during = world.dir.join("during");
    let (status, out, err) = create_backup(&config_text, &during).await;
    assert_eq!(status, Some(0), "{err}");
    assert!(out.contains("(taken by the running node)"), "{out}");
    assert!(out.contains(&started.node_id), "{out}");
    payments.finish(Duration::from_secs(60)).await;

    let (status, out, err) = phalanx(&[
        "backup",
        "verify",
        "--config",
        &config_text,
        during.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(0), "{err}");
    assert!(out.contains("1 channel monitors, 1 channels"), "{out}");
    let target =
        phalanx_testkit::etcd::shared().url(&phalanx_testkit::unique_name("sqlite-during"));
    let (status, out, err) = phalanx(&[
        "restore",
        "--config",
        &config_text,
        "--from",
        during.to_str().unwrap(),
        "--to",
        &target,
    ]);
    assert_eq!(status, Some(0), "{err}");
    assert!(
        out.contains(&format!("restored node_id={}", started.node_id)),
        "{out}"
    );

    // A directory that is not empty: the node refuses, and writes nothing into it.
    let (status, _, err) = phalanx(&[
        "backup",
        "create",
        "--config",
        &config_text,
        "--to",
        during.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("not empty"), "{err}");

    // With the node gone, no API answers, and the file is read directly.
    alice.kill().await;
    let after = world.dir.join("after");
    let (status, out, err) = phalanx(&[
        "backup",
        "create",
        "--config",
        &config_text,
        "--to",
        after.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(0), "{err}");
    assert!(!out.contains("taken by the running node"), "{out}");
    let (status, _, err) = phalanx(&[
        "backup",
        "verify",
        "--config",
        &config_text,
        after.to_str().unwrap(),
    ]);
    assert_eq!(status, Some(0), "{err}");
}
