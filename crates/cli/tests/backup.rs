//! `phalanx backup create|verify` and `phalanx restore` as an operator runs them, against
//! a node on PostgreSQL that keeps paying meanwhile; the restored node runs on etcd.

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

async fn pay(from: &Node, to: &Node, msat: u64) -> bool {
    let Ok(invoice) = to.create_invoice(Some(msat), "stream", None).await else {
        return false;
    };
    let Ok(id) = from.pay_invoice(&invoice.to_string(), None).await else {
        return false;
    };
    matches!(
        from.wait_payment(id, Duration::from_secs(10)).await,
        Ok(record) if record.status == PaymentStatus::Succeeded
    )
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
    let stop = Arc::new(AtomicBool::new(false));
    let paid = Arc::new(AtomicUsize::new(0));
    let stream = {
        let (alice, bob, stop, paid) = (alice.clone(), bob.clone(), stop.clone(), paid.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if pay(&alice, &bob, 5_000).await && pay(&bob, &alice, 3_000).await {
                    paid.fetch_add(2, Ordering::Relaxed);
                }
            }
        })
    };
    nodes::wait_for("payments to flow", Duration::from_secs(30), || async {
        (paid.load(Ordering::Relaxed) >= 4).then_some(())
    })
    .await;
    let during = dir.path().join("during");
    let (status, out, err) = tokio::task::spawn_blocking({
        let (config, during) = (config.clone(), during.clone());
        move || {
            phalanx(&[
                "backup",
                "create",
                "--config",
                &config,
                "--to",
                during.to_str().unwrap(),
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(status, Some(0), "{err}");
    assert!(
        out.starts_with(&format!(
            "backup {} node_id={}",
            during.display(),
            alice.node_id()
        )),
        "{out}"
    );
    let before = paid.load(Ordering::Relaxed);
    nodes::wait_for(
        "payments after the backup",
        Duration::from_secs(30),
        || async { (paid.load(Ordering::Relaxed) >= before + 4).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    stream.await.unwrap();

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
