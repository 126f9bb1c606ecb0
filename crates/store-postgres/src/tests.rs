//! PostgreSQL-specific behaviour; the shared contract is checked by `phalanx-conformance`.

use std::time::{Duration, Instant};

use phalanx_store::{Acquisition, ClusterName, ErrorKind, HolderId, LeaseStore, StoreKey};
use phalanx_testkit::blackhole::Blackhole;
use phalanx_testkit::postgres::{self, PostgresOptions, PostgresServer};
use phalanx_testkit::tls::TestPki;
use tokio_postgres::Client;

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

    // The client sees its session close a moment before the server's backend is gone
    // from `pg_stat_activity`: a campaign in between still finds the holder alive.
    let started = Instant::now();
    let lease_b = phalanx_store::testing::win_within(
        &second,
        "b",
        Duration::from_secs(60),
        Duration::from_secs(5),
    )
    .await;
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

/// A connection of the test's own, outside the store, as an operator's `psql` would be.
async fn raw_session(url: &str) -> Client {
    let config = PgUrl::parse(url, &options()).unwrap().config;
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_repeatable_read_default_cannot_let_a_write_slip_past_a_takeover() {
    let url = postgres::shared().fresh_database().unwrap();
    let db = url.rsplit('/').next().unwrap();
    // An operator's (or a managed service's) default that would make the fence read the
    // lease in a snapshot from before it waited for the takeover.
    postgres::shared()
        .psql(
            db,
            &format!("ALTER DATABASE {db} SET default_transaction_isolation = 'repeatable read'"),
        )
        .unwrap();
    let store = PostgresStore::open(&url, options()).await.unwrap();
    let lease = must_win(&store, "a", Duration::from_secs(60)).await;
    let key = StoreKey::new("ns", "", "k").unwrap();
    store
        .write(lease.token(), &key, b"before".to_vec())
        .await
        .unwrap();

    // A takeover in progress: it holds the cluster's lock exclusively, as
    // `phalanx_acquire` does, while the old holder's write arrives.
    let mut takeover = raw_session(&url).await;
    let tx = takeover.transaction().await.unwrap();
    tx.execute(
        "SELECT pg_advisory_xact_lock(1886152824, hashtext('test'))",
        &[],
    )
    .await
    .unwrap();
    let writer = store.clone();
    let (token, write_key) = (lease.token(), key.clone());
    let write =
        tokio::spawn(async move { writer.write(token, &write_key, b"stale".to_vec()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the write waits for the takeover");
    tx.execute(
        "UPDATE phalanx_lease SET epoch = epoch + 1, holder = 'b' WHERE cluster = 'test'",
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let err = write
        .await
        .unwrap()
        .expect_err("a write that waited for a takeover is fenced by it");
    assert!(err.is_fenced(), "{err}");
    assert_eq!(store.read(&key).await.unwrap(), b"before");
}

#[tokio::test]
async fn a_write_that_timed_out_cannot_land_over_a_newer_one() {
    let url = postgres::shared().fresh_database().unwrap();
    let server = format!("127.0.0.1:{}", postgres::shared().port());
    let proxy = phalanx_testkit::proxy::TcpProxy::to(server.parse().unwrap())
        .await
        .unwrap();
    let url = url.replace(&server, &proxy.addr().to_string());
    let mut options = options();
    options.operation_timeout = Duration::from_millis(700);
    let store = PostgresStore::open(&url, options).await.unwrap();
    let lease = must_win(&store, "a", Duration::from_secs(60)).await;
    let token = lease.token();
    let key = StoreKey::new("", "", "manager").unwrap();
    // Every write statement that reaches the server is recorded, landed or not.
    let db = url.rsplit('/').next().unwrap();
    postgres::shared()
        .psql(
            db,
            "CREATE TABLE write_attempts (id serial PRIMARY KEY, sequence bigint);
             CREATE FUNCTION record_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO write_attempts (sequence) VALUES (NEW.sequence); RETURN NEW; END $$;
             CREATE TRIGGER record_attempt BEFORE INSERT ON phalanx_kv
                 FOR EACH ROW EXECUTE FUNCTION record_attempt();",
        )
        .unwrap();
    store
        .write(token.sequenced(1), &key, b"first".to_vec())
        .await
        .unwrap();

    // The link delays the connection this write goes out on, past the client's timeout.
    let held = proxy.hold_open_connections();
    assert!(held.count() >= 1);
    let err = store
        .write(token.sequenced(2), &key, b"old".to_vec())
        .await
        .expect_err("the held write times out");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    // The retry of the same write goes out on a new connection and lands, and then the
    // writer's next write of the key.
    store
        .write(token.sequenced(2), &key, b"old".to_vec())
        .await
        .unwrap();
    store
        .write(token.sequenced(3), &key, b"new".to_vec())
        .await
        .unwrap();
    // Now the first attempt's bytes reach the server. Its epoch is still current, so the
    // fence alone would let it through.
    held.release();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempts = postgres::shared()
            .psql(
                &db,
                "SELECT string_agg(sequence::text, ',' ORDER BY id) FROM write_attempts",
            )
            .unwrap();
        if attempts == "1,2,3,2" {
            break; // The late statement ran, after the newer write.
        }
        assert!(Instant::now() < deadline, "write attempts seen: {attempts}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.read(&key).await.unwrap(), b"new");
}

/// A cancelled wait for the synchronous standby (here an operator's `pg_cancel_backend`)
/// commits on the primary alone; PostgreSQL reports success with a warning. The write
/// must report an unknown outcome, and its retry must wait for the standby again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_for_the_standby_is_an_unknown_outcome() {
    let primary = PostgresServer::start_with(PostgresOptions {
        settings: vec![("synchronous_standby_names".into(), "*".into())],
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
    standby.stop().unwrap();

    let key = StoreKey::new("ns", "", "k").unwrap();
    let token = lease.token().sequenced(7);
    let cancel_the_wait = || {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let cancelled = primary
                .psql(
                    &db,
                    "SELECT count(*) FROM (SELECT pg_cancel_backend(pid) FROM pg_stat_activity
                     WHERE wait_event = 'SyncRep') AS c",
                )
                .unwrap();
            if cancelled != "0" {
                return;
            }
            assert!(Instant::now() < deadline, "no write waited for the standby");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let write = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move { store.write(token, &key, b"v".to_vec()).await })
    };
    tokio::task::block_in_place(cancel_the_wait);
    let err = write
        .await
        .unwrap()
        .expect_err("a commit on the primary alone");
    assert!(err.is_transient(), "{}", err.report());
    assert!(err.to_string().contains("outcome is unknown"), "{err}");
    assert_eq!(
        primary
            .psql(&db, "SELECT count(*) FROM phalanx_kv WHERE key = 'k'")
            .unwrap(),
        "1",
        "the cancelled commit is on the primary"
    );

    // The retry of the same write waits for the standby again instead of finding its
    // row in place and reporting success.
    let retry = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move { store.write(token, &key, b"v".to_vec()).await })
    };
    tokio::task::block_in_place(cancel_the_wait);
    let err = retry.await.unwrap().expect_err("the retry waited too");
    assert!(err.is_transient(), "{}", err.report());

    standby.start_again().unwrap();
    primary
        .wait_for_synchronous_standby(Duration::from_secs(30))
        .unwrap();
    store.write(token, &key, b"v".to_vec()).await.unwrap();
}

#[test]
fn durability_settings_that_risk_acknowledged_writes_are_named() {
    assert!(durability_warnings("on", "standby1").is_empty());
    let warnings = durability_warnings("on", "");
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("synchronous_standby_names is empty"));
    assert_eq!(durability_warnings("local", " ").len(), 2);
}

/// One database role per instance, neither superuser nor `pg_read_all_stats`: each sees
/// the other's session in `pg_stat_activity` only by its pid. A live holder must still
/// look alive (no takeover while it renews), and a dead one gone (takeover before the TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_under_separate_roles_see_each_others_lease() {
    let server = postgres::shared();
    let url = server.fresh_database().unwrap();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let (role_a, role_b) = (
        phalanx_testkit::unique_name("node_a"),
        phalanx_testkit::unique_name("node_b"),
    );
    for role in [&role_a, &role_b] {
        server
            .psql(
                &db,
                &format!(
                    "CREATE ROLE {role} LOGIN; GRANT ALL ON SCHEMA public TO {role};
                     GRANT ALL ON DATABASE {db} TO {role};"
                ),
            )
            .unwrap();
    }
    let as_role = |role: &str| url.replacen("postgres@", &format!("{role}@"), 1);
    let first = PostgresStore::open(&as_role(&role_a), options())
        .await
        .unwrap();
    server
        .psql(
            &db,
            &format!(
                "GRANT ALL ON ALL TABLES IN SCHEMA public TO {role_b};
                 GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role_b};"
            ),
        )
        .unwrap();
    let second = PostgresStore::open(&as_role(&role_b), options())
        .await
        .unwrap();
    // The test's premise: the other role's session details are hidden.
    let hidden = server
        .psql(
            &db,
            &format!(
                "SET ROLE {role_b}; SELECT count(*) FROM pg_stat_activity
                 WHERE usename = '{role_a}' AND backend_start IS NULL"
            ),
        )
        .unwrap();
    assert_ne!(hidden.trim(), "0", "the other role's sessions are visible");

    let lease = must_win(&first, "a", Duration::from_secs(60)).await;
    for _ in 0..10 {
        let attempt = second
            .try_acquire(&HolderId::new("b").unwrap(), Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            matches!(attempt, Acquisition::Held(Some(ref info)) if info.holder == "a"),
            "the live holder looked gone: {attempt:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server
        .psql(
            &db,
            "SELECT pg_terminate_backend(holder_pid) FROM phalanx_lease WHERE cluster = 'test'",
        )
        .unwrap();
    let started = Instant::now();
    let taken = phalanx_store::testing::win_within(
        &second,
        "b",
        Duration::from_secs(60),
        Duration::from_secs(10),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "no TTL wait");
    assert!(taken.token().epoch() > lease.token().epoch());
}
