//! etcd-specific behaviour; the shared contract is checked by `phalanx-conformance`.

use std::time::{Duration, Instant};

use phalanx_store::{Acquisition, ClusterName, ErrorKind, HolderId, StoreKey};
use phalanx_testkit::blackhole::Blackhole;
use phalanx_testkit::etcd::{self, EtcdOptions, EtcdServer, EtcdTls};
use phalanx_testkit::tls::TestPki;
use phalanx_testkit::unique_name;

use phalanx_store::testing::must_win;

use super::*;

fn options() -> StoreOptions {
    let mut options = StoreOptions::new(ClusterName::new("test").unwrap());
    options.connect_timeout = Duration::from_secs(2);
    options.operation_timeout = Duration::from_secs(3);
    options
}

#[tokio::test]
async fn server_limits_are_named_in_the_error() {
    let server = EtcdServer::start_with(EtcdOptions {
        phalanx_flags: false,
        ..Default::default()
    })
    .unwrap();
    let store = EtcdStore::open(&server.url("p"), options()).await.unwrap();
    let lease = must_win(&store, "a", Duration::from_secs(5)).await;
    let key = StoreKey::new("ns", "", "big").unwrap();
    let err = store
        .write(lease.token(), &key, vec![7u8; 32 * 1024 * 1024])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("--max-request-bytes"), "{err}");

    let ops = (0..200)
        .map(|i| BatchOp::Put {
            key: StoreKey::new("ns", "", &format!("k{i}")).unwrap(),
            value: vec![1],
        })
        .collect();
    let err = store.apply(lease.token(), ops).await.unwrap_err();
    assert!(err.to_string().contains("--max-txn-ops"), "{err}");
    // Neither refused request left anything behind.
    assert!(
        store
            .list(&Namespace::new("ns", "").unwrap())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn resign_wakes_a_watching_campaigner_at_once() {
    let url = etcd::shared().url(&unique_name("p"));
    let first = EtcdStore::open(&url, options()).await.unwrap();
    let second = EtcdStore::open(&url, options()).await.unwrap();
    let lease = must_win(&first, "a", Duration::from_secs(30)).await;
    let first_epoch = lease.token().epoch();
    let held = second
        .try_acquire(&HolderId::new("b").unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    let Acquisition::Held(Some(info)) = held else {
        panic!("{held:?}")
    };
    assert_eq!((info.holder.as_str(), info.epoch), ("a", first_epoch));

    let resign = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        lease.resign().await.unwrap();
    });
    let started = Instant::now();
    second.wait_for_change(Duration::from_secs(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    resign.await.unwrap();
    assert!(
        must_win(&second, "b", Duration::from_secs(30))
            .await
            .token()
            .epoch()
            > first_epoch
    );
}

#[tokio::test]
async fn unrenewed_lease_expires_and_keepalive_holds_it() {
    let url = etcd::shared().url(&unique_name("p"));
    let first = EtcdStore::open(&url, options()).await.unwrap();
    let second = EtcdStore::open(&url, options()).await.unwrap();
    let mut lease = must_win(&first, "a", Duration::from_secs(1)).await;
    let first_epoch = lease.token().epoch();
    let ttl = lease.granted_ttl();
    for _ in 0..6 {
        tokio::time::sleep(ttl / 3).await;
        lease.renew().await.unwrap();
    }
    let info = second.current_lease().await.unwrap().unwrap();
    assert_eq!(info.holder, "a");
    assert!(info.expires_in.unwrap() <= ttl);

    // Stop renewing: the leader key goes with the lease, and the other side wins.
    let started = Instant::now();
    let epoch_b = loop {
        match second
            .try_acquire(&HolderId::new("b").unwrap(), Duration::from_secs(1))
            .await
            .unwrap()
        {
            Acquisition::Won(lease_b) => {
                assert!(lease_b.token().epoch() > first_epoch);
                break lease_b.token().epoch();
            }
            Acquisition::Held(_) => second.wait_for_change(Duration::from_secs(1)).await,
        }
        assert!(
            started.elapsed() < ttl * 4,
            "no takeover after {:?}",
            started.elapsed()
        );
    };
    let err = lease.renew().await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    let err = first
        .write(
            lease.token(),
            &StoreKey::new("ns", "", "k").unwrap(),
            vec![1],
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("cluster is at epoch {epoch_b}")),
        "{err}"
    );
}

#[tokio::test]
async fn authentication_and_tls() {
    let pki = TestPki::generate("root").unwrap();
    let server = EtcdServer::start_with(EtcdOptions {
        tls: Some(EtcdTls {
            cert: pki.server_cert_path(),
            key: pki.server_key_path(),
            ca: pki.ca_path(),
            client_cert_auth: true,
        }),
        root_password: Some("s3cret".into()),
        ..Default::default()
    })
    .unwrap();
    let hosts = server.url("p").trim_start_matches("etcd://").to_owned();
    let tls_query = format!(
        "cacert={}&cert={}&key={}&domain=localhost",
        pki.ca_path().display(),
        pki.client_cert_path().display(),
        pki.client_key_path().display()
    );

    let good = format!("etcds://root:s3cret@{hosts}?{tls_query}");
    let store = EtcdStore::open(&good, options()).await.unwrap();
    let lease = must_win(&store, "a", Duration::from_secs(5)).await;
    let key = StoreKey::new("ns", "", "k").unwrap();
    store
        .write(lease.token(), &key, b"secure".to_vec())
        .await
        .unwrap();
    assert_eq!(store.read(&key).await.unwrap(), b"secure");

    let wrong_password = format!("etcds://root:wrong@{hosts}?{tls_query}");
    let err = EtcdStore::open(&wrong_password, options())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");

    let other = TestPki::generate("root").unwrap();
    let wrong_ca = format!(
        "etcds://root:s3cret@{hosts}?cacert={}&cert={}&key={}&domain=localhost",
        other.ca_path().display(),
        pki.client_cert_path().display(),
        pki.client_key_path().display()
    );
    let started = Instant::now();
    let err = EtcdStore::open(&wrong_ca, options()).await.err().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!err.report().is_empty());
}

#[tokio::test]
async fn unreachable_servers_fail_in_bounded_time() {
    let closed = phalanx_testkit::process::free_port();
    let started = Instant::now();
    let err = EtcdStore::open(&format!("etcd://127.0.0.1:{closed}/p"), options())
        .await
        .err()
        .unwrap();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{closed}")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    let blackhole = Blackhole::start().unwrap();
    let started = Instant::now();
    let err = EtcdStore::open(&format!("etcd://{}/p", blackhole.addr()), options())
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

/// The store's revision, as a client sees it.
async fn revision(server: &EtcdServer) -> i64 {
    let mut client = etcd_client::Client::connect(server.endpoints(), None)
        .await
        .unwrap();
    let response = client.get("phalanx-test-revision", None).await.unwrap();
    response.header().unwrap().revision()
}

/// Restored from a snapshot, etcd rolls the epoch counter back to the snapshot's; the
/// epochs issued since must never be issued again, or an old holder's token would pass
/// the fence. Restored as docs/operations.md says, with the revision moved past every
/// revision issued before (`etcdutl snapshot restore --bump-revision`; etcd 3.4's
/// `etcdctl` has no such flag, so the test moves the revision by as many writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_epoch_is_issued_twice_across_a_snapshot_restore() {
    let server = EtcdServer::start().unwrap();
    let url = server.url("restore");
    let snapshot = phalanx_testkit::process::scratch_dir("etcd-snapshot")
        .unwrap()
        .join("backup.db");
    let store = EtcdStore::open(&url, options()).await.unwrap();
    let first = must_win(&store, "a", Duration::from_secs(30)).await;
    let mut issued = vec![first.token().epoch()];
    first.resign().await.unwrap();
    let snapshot_revision = revision(&server).await;
    server.save_snapshot(&snapshot).unwrap();
    for holder in ["b", "c", "d"] {
        let lease = must_win(&store, holder, Duration::from_secs(30)).await;
        issued.push(lease.token().epoch());
        lease.resign().await.unwrap();
    }
    let bump = revision(&server).await - snapshot_revision + 1;
    drop(store);

    server.restore_snapshot(&snapshot).unwrap();
    let mut client = etcd_client::Client::connect(server.endpoints(), None)
        .await
        .unwrap();
    for _ in 0..bump {
        client.put("phalanx-test-bump", "x", None).await.unwrap();
    }
    let store = EtcdStore::open(&url, options()).await.unwrap();
    let after = must_win(&store, "e", Duration::from_secs(30)).await;
    let epoch = after.token().epoch();
    assert!(
        issued.iter().all(|old| epoch > *old),
        "epoch {epoch} after the restore; issued before: {issued:?}"
    );
}
