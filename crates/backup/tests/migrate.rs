//! `phalanx migrate` on real stores: a node moved SQLite → PostgreSQL → etcd → SQLite
//! runs on each and every hop is byte-identical; a migration stopped after any write
//! leaves the source usable and the target refused, and running it again finishes it.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::Network;
use phalanx_backup::{MigrateError, migrate};
use phalanx_cluster::LeaseTimings;
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::nodes;
use phalanx_node::Node;
use phalanx_node::identity::{self, IDENTITY_SCHEMA_VERSION, IdentityError, NodeIdentity};
use phalanx_secrets::Seed;
use phalanx_store::testing::{Faults, FaultyStore};
use phalanx_store::{
    BatchOp, ClusterName, HolderId, Store, StoreKey, StoreOptions, testing::must_win,
};

async fn open(url: &str, cluster: &str) -> Arc<dyn Store> {
    phalanx_store_connect::connect(url, StoreOptions::new(ClusterName::new(cluster).unwrap()))
        .await
        .unwrap_or_else(|err| panic!("open {url}: {err}"))
}

fn holder() -> HolderId {
    HolderId::new("phalanx-migrate").unwrap()
}

/// A store holding a node's identity record and 100 keys of state.
async fn seeded(url: &str) -> (Arc<dyn Store>, NodeIdentity) {
    let store = open(url, "node").await;
    let lease = must_win(store.as_ref(), "seeder", Duration::from_secs(30)).await;
    let identity = NodeIdentity {
        node_id: identity::node_id_of(&Seed::generate().unwrap()),
        network: Network::Regtest,
        created_at_unix: 1_800_000_000,
        schema_version: IDENTITY_SCHEMA_VERSION,
    };
    let mut ops = vec![BatchOp::Put {
        key: identity::identity_key(),
        value: identity.encode(),
    }];
    for i in 0..100u32 {
        ops.push(BatchOp::Put {
            key: StoreKey::new("monitors", "", &format!("m{i:03}")).unwrap(),
            value: i.to_be_bytes().repeat(100),
        });
    }
    for chunk in ops.chunks(30) {
        store.apply(lease.token(), chunk.to_vec()).await.unwrap();
    }
    lease.resign().await.unwrap();
    (store, identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_stopped_after_any_write_leaves_the_source_usable_and_is_finished_by_a_rerun() {
    phalanx_testkit::init_tracing();
    for allowed in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let source_url = format!("sqlite://{}/source.db", dir.path().display());
        let target_url = format!("sqlite://{}/target.db", dir.path().display());
        let (source, identity) = seeded(&source_url).await;
        let target = open(&target_url, "node").await;
        let before = source.snapshot().await.unwrap();

        // One budget of writes over both stores: the process dies after `allowed`.
        let faults = Arc::new(Faults::default());
        faults.allow_writes(Some(allowed));
        let outcome = migrate(
            Arc::new(FaultyStore::with_faults(source.clone(), faults.clone())),
            Arc::new(FaultyStore::with_faults(target.clone(), faults)),
            holder(),
            LeaseTimings::default(),
        )
        .await;
        if outcome.is_ok() {
            // Every run that stopped before this one was checked below.
            assert!(allowed >= 5, "a migration takes several writes");
            return;
        }
        match identity::read_identity(&*source).await {
            Ok(Some(found)) => {
                assert_eq!(found, identity, "after {allowed} writes");
                assert_eq!(
                    source.snapshot().await.unwrap(),
                    before,
                    "the source is untouched"
                );
                match identity::read_identity(&*target).await {
                    Ok(None) => assert_eq!(allowed, 0, "only before any write is it empty"),
                    Err(IdentityError::MigrationUnfinished { .. }) => {}
                    other => panic!("after {allowed} writes the target is not refused: {other:?}"),
                }
            }
            Err(IdentityError::Migrated { .. }) => {
                // Stopped between marking the source and finishing the target: both
                // are refused until a rerun, and the source was marked only once the
                // target held a whole, checked copy.
                assert!(matches!(
                    identity::read_identity(&*target).await,
                    Err(IdentityError::MigrationUnfinished { .. })
                ));
                let copied: Vec<_> = target
                    .snapshot()
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|(key, _)| *key != identity::migrating_key())
                    .collect();
                let body: Vec<_> = before
                    .iter()
                    .filter(|(key, _)| *key != identity::identity_key())
                    .cloned()
                    .collect();
                assert_eq!(
                    copied, body,
                    "the source was marked before the copy was whole"
                );
            }
            other => panic!("after {allowed} writes the source is {other:?}"),
        }

        let rerun = migrate(
            source.clone(),
            target.clone(),
            holder(),
            LeaseTimings::default(),
        )
        .await
        .unwrap_or_else(|err| panic!("the rerun after {allowed} writes: {err}"));
        assert_eq!(rerun.identity, identity);
        assert_eq!(target.snapshot().await.unwrap(), before, "byte-identical");
        assert!(matches!(
            identity::read_identity(&*source).await,
            Err(IdentityError::Migrated { .. })
        ));
        assert_eq!(
            identity::read_identity(&*target).await.unwrap(),
            Some(identity)
        );
    }
    panic!("the migration never finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_a_led_source_a_full_target_and_a_store_without_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("sqlite://{}/{name}.db", dir.path().display());
    let (source, _) = seeded(&url("source")).await;
    let (full, _) = seeded(&url("full")).await;
    let err = migrate(source.clone(), full, holder(), LeaseTimings::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MigrateError::TargetNotEmpty { keys: 101, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("only into an empty store"),
        "{err}"
    );
    assert!(identity::read_identity(&*source).await.unwrap().is_some());

    let empty = open(&url("empty"), "node").await;
    let err = migrate(empty, source.clone(), holder(), LeaseTimings::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("holds no node identity"), "{err}");

    // An instance leads the source: refused, nothing written.
    let lease = must_win(source.as_ref(), "instance-a", Duration::from_secs(30)).await;
    let target = open(&url("target"), "node").await;
    let err = migrate(
        source.clone(),
        target.clone(),
        holder(),
        LeaseTimings::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("held by"), "{err}");
    assert!(target.snapshot().await.unwrap().is_empty());
    drop(lease);
}

async fn pay_both_ways(alice: &Node, bob: &Node) {
    for (from, to) in [(alice, bob), (bob, alice)] {
        nodes::wait_for("a payment to succeed", Duration::from_secs(60), || async {
            phalanx_devnet::stream::pay_once(from, to, 20_000, "hop")
                .await
                .ok()
                .map(drop)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_moves_from_sqlite_to_postgres_to_etcd_to_sqlite_and_runs_on_each() {
    phalanx_testkit::init_tracing();
    let chain = TestChain::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bob = nodes::start(&nodes::node_config(&chain, dir.path(), "bob", None)).await;
    let stores = [
        format!("sqlite://{}", dir.path().join("alice-1.db").display()),
        phalanx_testkit::postgres::shared()
            .fresh_database()
            .expect("a PostgreSQL database"),
        phalanx_testkit::etcd::shared().url(&phalanx_testkit::unique_name("alice")),
        format!("sqlite://{}", dir.path().join("alice-2.db").display()),
    ];
    let config = |url: &str| nodes::node_config(&chain, dir.path(), "alice", Some(url.to_owned()));

    let alice = nodes::start(&config(&stores[0])).await;
    let node_id = alice.node_id();
    nodes::fund(&chain, &alice, bitcoin::Amount::from_sat(2_000_000)).await;
    nodes::open_channel(&chain, &alice, &bob, 1_000_000, 400_000_000).await;
    pay_both_ways(&alice, &bob).await;
    alice.shutdown().await;

    for hop in stores.windows(2) {
        let (from, to) = (&hop[0], &hop[1]);
        let cluster = config(from).store.cluster.as_str().to_owned();
        let source = open(from, &cluster).await;
        let target = open(to, &cluster).await;
        let mut before = source.snapshot().await.unwrap();
        let moved = migrate(
            source.clone(),
            target.clone(),
            holder(),
            LeaseTimings::default(),
        )
        .await
        .unwrap_or_else(|err| panic!("{from} -> {to}: {err}"));
        assert_eq!(moved.identity.node_id, node_id);
        assert_eq!(moved.keys, before.len());
        // Byte-identical, but for the mark on the source.
        assert_eq!(target.snapshot().await.unwrap(), before, "{from} -> {to}");
        before.push((identity::migrated_key(), Vec::new()));
        let marked = source.snapshot().await.unwrap();
        assert_eq!(
            marked.len(),
            before.len(),
            "only the mark was added to the source"
        );
        drop((source, target));

        // A node pointed at the old store refuses; on the new one it runs, and pays.
        let refused = phalanx_instance::start(&config(from), Arc::new(Default::default())).await;
        let err = refused.err().expect("the migrated store is refused");
        assert!(err.needs_operator(), "{err}");
        assert!(err.to_string().contains("was migrated"), "{err}");
        let alice = nodes::start(&config(to)).await;
        assert_eq!(alice.node_id(), node_id);
        nodes::wait_for(
            "the channel to be usable",
            Duration::from_secs(60),
            || async { nodes::usable_with(&alice, bob.node_id()).then_some(()) },
        )
        .await;
        pay_both_ways(&alice, &bob).await;
        assert_eq!(
            alice.list_channels().len(),
            1,
            "the channel came along, not closed"
        );
        alice.shutdown().await;
    }
}
