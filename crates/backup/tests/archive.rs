//! Snapshot backups of a running node on PostgreSQL: written and read back whole, every
//! damaged or foreign backup refused, and a state whose manager is older than its
//! monitors found unsafe by the offline check.

use std::sync::Arc;
use std::time::Duration;

use phalanx_backup::archive::{self, HEADER_FILE, PAYLOAD_FILE};
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes;
use phalanx_node::Node;
use phalanx_node::config::SeedSource;
use phalanx_node::identity;
use phalanx_node::offline::check_state;
use phalanx_secrets::{FileSeedProvider, Seed, SeedProvider};
use phalanx_store::{ClusterName, Store, StoreOptions};

/// Pays, trying again until a route is there (the channel's updates may still be on
/// their way).
async fn pay(from: &Node, to: &Node, msat: u64) {
    nodes::wait_for("a payment to succeed", Duration::from_secs(60), || async {
        phalanx_devnet::stream::pay_once(from, to, msat, "backup")
            .await
            .ok()
            .map(drop)
    })
    .await;
}

async fn seed_of(config: &phalanx_node::config::NodeConfig) -> Seed {
    let SeedSource::File { path } = &config.seed.source else {
        panic!("the harness gives nodes seed files")
    };
    FileSeedProvider::new(path.clone(), false)
        .seed()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_of_a_running_node_read_back_and_damage_or_staleness_is_refused() {
    phalanx_testkit::init_tracing();
    let chain = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bob_config = nodes::node_config(&chain, dir.path(), "bob", None);
    let bob = nodes::start(&bob_config).await;
    let url = phalanx_testkit::postgres::shared()
        .fresh_database()
        .expect("a PostgreSQL database");
    let config = nodes::node_config(&chain, dir.path(), "alice", Some(url.clone()));
    let alice = nodes::start(&config).await;
    nodes::fund(&chain, &alice, bitcoin::Amount::from_sat(2_000_000)).await;
    nodes::open_channel(&chain, &alice, &bob, 1_000_000, 400_000_000).await;
    pay(&alice, &bob, 50_000).await;

    // A second handle on the store, as `phalanx backup create` opens one.
    let store: Arc<dyn Store> =
        phalanx_store_connect::connect(&url, StoreOptions::new(ClusterName::new("alice").unwrap()))
            .await
            .unwrap();
    let seed = seed_of(&config).await;
    let node = identity::read_identity(&*store).await.unwrap().unwrap();
    let before = store.snapshot().await.unwrap();
    let report = check_state(&before, &seed).expect("a live snapshot is a safe state");
    assert_eq!((report.monitors, report.channels.len()), (1, 1));
    assert!(report.channels[0].our_balance_sat > 500_000, "{report:?}");

    let backup = dir.path().join("backup-1");
    archive::write(&backup, &seed, &node, "alice", 7, &before).unwrap();
    let read = archive::read(&backup, &seed).unwrap();
    assert_eq!(read.entries, before, "read back byte for byte");
    assert_eq!(
        (read.manifest.epoch, read.manifest.cluster.as_str()),
        (7, "alice")
    );
    // The values are not in the file in clear.
    let sealed = std::fs::read(backup.join(PAYLOAD_FILE)).unwrap();
    let manager = &before.iter().find(|(k, _)| k.key() == "manager").unwrap().1;
    assert!(!sealed.windows(32).any(|w| w == &manager[..32]));
    let err = archive::write(&backup, &seed, &node, "alice", 7, &before).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");

    // Damage of every kind is refused, naming the problem.
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for file in [HEADER_FILE, PAYLOAD_FILE] {
            std::fs::copy(backup.join(file), to.join(file)).unwrap();
        }
        to
    };
    let flipped = copy("flipped");
    let mut bytes = std::fs::read(flipped.join(PAYLOAD_FILE)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(flipped.join(PAYLOAD_FILE), bytes).unwrap();
    let err = archive::read(&flipped, &seed).unwrap_err().to_string();
    assert!(err.contains("does not decrypt"), "{err}");
    let truncated = copy("truncated");
    let bytes = std::fs::read(truncated.join(PAYLOAD_FILE)).unwrap();
    std::fs::write(truncated.join(PAYLOAD_FILE), &bytes[..bytes.len() - 100]).unwrap();
    let err = archive::read(&truncated, &seed).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    let header = copy("header");
    let text = std::fs::read_to_string(header.join(HEADER_FILE)).unwrap();
    std::fs::write(
        header.join(HEADER_FILE),
        text.replace("\"alice\"", "\"mallory\""),
    )
    .unwrap();
    let err = archive::read(&header, &seed).unwrap_err().to_string();
    assert!(err.contains("does not decrypt"), "{err}");
    let bob_seed = seed_of(&bob_config).await;
    let err = archive::read(&backup, &bob_seed).unwrap_err().to_string();
    assert!(
        err.contains(&format!("it is node {}'s backup", alice.node_id())),
        "{err}"
    );
    assert!(archive::read(&dir.path().join("none"), &seed).is_err());

    // The manager of before, the monitors of after: a start would force-close.
    for _ in 0..3 {
        pay(&alice, &bob, 50_000).await;
        pay(&bob, &alice, 20_000).await;
    }
    let after = store.snapshot().await.unwrap();
    check_state(&after, &seed).expect("a later snapshot is safe too");
    let stale: Vec<_> = after
        .iter()
        .map(|(key, value)| {
            if key.key() == "manager" && key.primary().is_empty() {
                (key.clone(), manager.clone())
            } else {
                (key.clone(), value.clone())
            }
        })
        .collect();
    let err = check_state(&stale, &seed).unwrap_err();
    assert!(err.contains("stale"), "{err}");
    let without_manager: Vec<_> = after
        .iter()
        .filter(|(key, _)| !(key.key() == "manager" && key.primary().is_empty()))
        .cloned()
        .collect();
    let err = check_state(&without_manager, &seed).unwrap_err();
    assert!(err.contains("no channel manager"), "{err}");
    assert!(
        check_state(&after, &bob_seed).is_err(),
        "another seed's keys"
    );
    // An update missing in the middle of a monitor's: refused, not a panic inside LDK.
    let mut updates: Vec<_> = after
        .iter()
        .filter(|(key, _)| key.primary() == "monitor_updates")
        .map(|(key, _)| key.clone())
        .collect();
    updates.sort_by_key(|key| key.key().parse::<u64>().unwrap());
    assert!(
        updates.len() >= 2,
        "the payments left monitor updates: {updates:?}"
    );
    let gap: Vec<_> = after
        .iter()
        .filter(|(key, _)| *key != updates[0])
        .cloned()
        .collect();
    let err = check_state(&gap, &seed).unwrap_err();
    assert!(err.contains("is missing"), "{err}");

    alice.shutdown().await;
    bob.shutdown().await;
}
