//! PostgreSQL-specific behaviour; the shared contract is checked by `phalanx-conformance`.

use std::time::{Duration, Instant};

use phalanx_store::{Acquisition, ClusterName, ErrorKind, HolderId, StoreKey};
use phalanx_testkit::blackhole::Blackhole;
use phalanx_testkit::postgres::{self, PostgresOptions, PostgresServer};
use phalanx_testkit::tls::TestPki;

use phalanx_store::testing::must_win;

use super::*;

fn options() -> StoreOptions {
    let mut options = StoreOptions::new(ClusterName::new("test").unwrap());
    options.connect_timeout = Duration::from_secs(2);
    options.operation_timeout = Duration::from_secs(3);
    options
}

#[tokio::test]
async fn a_dead_holder_session_frees_the_lease_before_its_ttl() {
    let url = postgres::shared().fresh_database().unwrap();
    let first = PostgresStore::open(&url, options()).await.unwrap();
    let second = PostgresStore::open(&url, options()).await.unwrap();
    let lease = must_win(&first, "a", Duration::from_secs(60)).await;
    let mut lost = lease
        .session_lost()
        .expect("PostgreSQL reports session loss");

    let attempt = second
        .try_acquire(&HolderId::new("b").unwrap(), Duration::from_secs(60))
        .await
        .unwrap();
    let Acquisition::Held(Some(info)) = attempt else {
        panic!("lease should be held: {attempt:?}")
    };
    assert_eq!((info.holder.as_str(), info.epoch), ("a", Epoch(1)));

    // Kill the holder's session from the server side, as a crash of its process would.
    let db = url.rsplit('/').next().unwrap();
    postgres::shared()
        .psql(
            db,
            "SELECT pg_terminate_backend(holder_pid) FROM phalanx_lease WHERE cluster = 'test'",
        )
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), lost.wait_for(|closed| *closed))
        .await
        .expect("the holder learns its session closed")
        .unwrap();

    let started = Instant::now();
    let lease_b = must_win(&second, "b", Duration::from_secs(60)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "no TTL wait");
    assert_eq!(lease_b.token().epoch(), Epoch(2));
    let key = StoreKey::new("ns", "", "k").unwrap();
    let err = first.write(lease.token(), &key, vec![1]).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(err.to_string().contains("cluster is at epoch 2"), "{err}");
}

#[tokio::test]
async fn renewal_keeps_the_lease_and_resign_frees_it() {
    let url = postgres::shared().fresh_database().unwrap();
    let first = PostgresStore::open(&url, options()).await.unwrap();
    let second = PostgresStore::open(&url, options()).await.unwrap();
    let mut lease = must_win(&first, "a", Duration::from_millis(1500)).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lease.renew().await.unwrap();
    }
    // 2 s after winning a 1.5 s lease: still held thanks to the renewals.
    let held = second
        .try_acquire(&HolderId::new("b").unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(held, Acquisition::Held(_)), "{held:?}");
    lease.resign().await.unwrap();
    assert_eq!(
        must_win(&second, "b", Duration::from_secs(5))
            .await
            .token()
            .epoch(),
        Epoch(2)
    );
}

#[tokio::test]
async fn wrong_credentials_database_and_addresses_are_clear_errors() {
    let server = PostgresServer::start_with(PostgresOptions {
        password: Some("right".into()),
        ..Default::default()
    })
    .unwrap();
    let wrong_password = server.url("postgres").replace(":right@", ":wrong@");
    let err = PostgresStore::open(&wrong_password, options())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );

    let missing_db = server.url("no_such_db");
    let err = PostgresStore::open(&missing_db, options())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Nothing listens: refused at once, a transient error naming the address.
    let closed_port = phalanx_testkit::process::free_port();
    let started = Instant::now();
    let err = PostgresStore::open(
        &format!("postgres://u@127.0.0.1:{closed_port}/db"),
        options(),
    )
    .await
    .err()
    .unwrap();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{closed_port}")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Something accepts and never answers: the connect timeout bounds the wait.
    let blackhole = Blackhole::start().unwrap();
    let started = Instant::now();
    let err = PostgresStore::open(&format!("postgres://u@{}/db", blackhole.addr()), options())
        .await
        .err()
        .unwrap();
    assert!(err.is_transient(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn tls_is_verified_against_the_given_root() {
    let pki = TestPki::generate("client").unwrap();
    let server = PostgresServer::start_with(PostgresOptions {
        password: Some("pw".into()),
        tls: Some(pki.server().clone()),
        require_tls: true,
        ..Default::default()
    })
    .unwrap();
    let db_url = server.url("postgres").replace("127.0.0.1", "localhost");

    let good = format!(
        "{db_url}?sslmode=verify-full&sslrootcert={}",
        pki.ca_path().display()
    );
    let store = PostgresStore::open(&good, options()).await.unwrap();
    let lease = must_win(&store, "a", Duration::from_secs(5)).await;
    let key = StoreKey::new("ns", "", "k").unwrap();
    store
        .write(lease.token(), &key, b"over tls".to_vec())
        .await
        .unwrap();
    assert_eq!(store.read(&key).await.unwrap(), b"over tls");

    let other_ca = TestPki::generate("client").unwrap();
    let wrong_root = format!(
        "{db_url}?sslmode=require&sslrootcert={}",
        other_ca.ca_path().display()
    );
    let err = PostgresStore::open(&wrong_root, options())
        .await
        .err()
        .unwrap();
    assert!(
        err.report().to_lowercase().contains("certificate"),
        "{}",
        err.report()
    );

    let plain = PostgresStore::open(&db_url, options()).await.err().unwrap();
    assert!(plain.to_string().contains("pg_hba.conf"), "{plain}");
}

#[tokio::test]
async fn two_instances_migrate_the_same_database_at_once() {
    let url = postgres::shared().fresh_database().unwrap();
    let (first, second) = tokio::join!(
        PostgresStore::open(&url, options()),
        PostgresStore::open(&url, options()),
    );
    first.unwrap();
    second.unwrap();
}

/// With a synchronous standby, a write is acknowledged only once the standby has it; with
/// the standby gone, writes fail as transient (outcome unknown) instead of being
/// acknowledged, and they succeed again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_the_synchronous_standby() {
    let primary = PostgresServer::start_with(PostgresOptions {
        settings: vec![
            ("synchronous_standby_names".into(), "*".into()),
            // remote_apply, so the test can read the write on the standby at once;
            // production uses `on` (flushed on the standby), the same wait.
            ("synchronous_commit".into(), "remote_apply".into()),
        ],
        ..Default::default()
    })
    .unwrap();
    let standby = primary.start_standby().unwrap();
    primary
        .wait_for_synchronous_standby(Duration::from_secs(30))
        .unwrap();
    let url = primary.fresh_database().unwrap();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let store = PostgresStore::open(&url, options()).await.unwrap();
    let lease = must_win(&store, "a", Duration::from_secs(600)).await;
    let on_standby = |key: &str| {
        standby
            .psql(
                &db,
                &format!("SELECT count(*) FROM phalanx_kv WHERE key = '{key}'"),
            )
            .unwrap()
    };

    store
        .write(
            lease.token(),
            &StoreKey::new("ns", "", "k1").unwrap(),
            vec![1],
        )
        .await
        .unwrap();
    assert_eq!(
        on_standby("k1"),
        "1",
        "acknowledged before the standby had it"
    );

    standby.stop().unwrap();
    let started = Instant::now();
    let err = store
        .write(
            lease.token(),
            &StoreKey::new("ns", "", "k2").unwrap(),
            vec![2],
        )
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    standby.start_again().unwrap();
    primary
        .wait_for_synchronous_standby(Duration::from_secs(30))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store
            .write(
                lease.token(),
                &StoreKey::new("ns", "", "k3").unwrap(),
                vec![3],
            )
            .await
        {
            Ok(()) => break,
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("write after the standby came back: {}", err.report()),
        }
    }
    assert_eq!(on_standby("k3"), "1");
}
