//! SQLite-specific behaviour; the shared contract is checked by `phalanx-conformance`.

use std::time::Duration;

use phalanx_store::{
    Acquisition, ClusterName, HolderId, LeaseStore, Namespace, StateStore, StoreKey,
};

use phalanx_store::testing::must_win;

use super::*;

fn options() -> StoreOptions {
    StoreOptions::new(ClusterName::new("test").unwrap())
}

fn holder(name: &str) -> HolderId {
    HolderId::new(name).unwrap()
}

#[tokio::test]
async fn second_handle_cannot_lead_or_read_while_the_lock_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/node.db", dir.path().display());
    let first = SqliteStore::open(&url, options()).await.unwrap();
    let second = SqliteStore::open(&url, options()).await.unwrap();

    let lease = must_win(&first, "a", Duration::from_secs(5)).await;
    let key = StoreKey::new("ns", "", "k").unwrap();
    first
        .write(lease.token(), &key, b"v".to_vec())
        .await
        .unwrap();

    let attempt = second
        .try_acquire(&holder("b"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(attempt, Acquisition::Held(_)), "{attempt:?}");
    let err = second.read(&key).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("locked"), "{err}");
    // The second handle has no lock: its writes are fenced whatever token it presents.
    let err = second
        .write(lease.token(), &key, b"x".to_vec())
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");

    lease.resign().await.unwrap();
    let lease_b = must_win(&second, "b", Duration::from_secs(5)).await;
    assert_eq!(lease_b.token().epoch(), Epoch(2));
    assert_eq!(second.read(&key).await.unwrap(), b"v");
    let history = second.epoch_history(10).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|r| (r.epoch.0, r.holder.as_str()))
            .collect::<Vec<_>>(),
        [(2, "b"), (1, "a")]
    );
}

#[tokio::test]
async fn dropping_the_lease_frees_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/node.db", dir.path().display());
    let first = SqliteStore::open(&url, options()).await.unwrap();
    let second = SqliteStore::open(&url, options()).await.unwrap();
    let lease = must_win(&first, "a", Duration::from_secs(5)).await;
    let token = lease.token();
    drop(lease);
    let err = first
        .write(token, &StoreKey::new("ns", "", "k").unwrap(), vec![1])
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert_eq!(
        must_win(&second, "b", Duration::from_secs(5))
            .await
            .token()
            .epoch(),
        Epoch(2)
    );
}

#[tokio::test]
async fn replica_gets_every_write_and_is_recreated_when_the_lease_is_won() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("node.db");
    let replica = dir.path().join("replica.db");
    let url = format!("sqlite://{}?replica={}", main.display(), replica.display());
    let store = SqliteStore::open(&url, options()).await.unwrap();
    let lease = must_win(&store, "a", Duration::from_secs(5)).await;
    for i in 0..20u32 {
        let key = StoreKey::new("ns", "", &format!("k{i}")).unwrap();
        store
            .write(lease.token(), &key, i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    lease.resign().await.unwrap();

    // Both files hold every write and pass SQLite's integrity check.
    for path in [&main, &replica] {
        let conn = Connection::open(path).unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM phalanx_kv", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 20, "{}", path.display());
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    // A replica that drifted (here: written behind our back) is replaced from the main
    // file when the lease is next won.
    Connection::open(&replica)
        .unwrap()
        .execute("DELETE FROM phalanx_kv", [])
        .unwrap();
    let lease = must_win(&store, "a", Duration::from_secs(5)).await;
    lease.resign().await.unwrap();
    let count: i64 = Connection::open(&replica)
        .unwrap()
        .query_row("SELECT count(*) FROM phalanx_kv", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 20);
}

#[tokio::test]
async fn bad_paths_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}/no/such/dir/node.db", dir.path().display());
    let err = SqliteStore::open(&missing, options()).await.err().unwrap();
    assert!(err.to_string().contains("does not exist"), "{err}");

    let not_db = dir.path().join("garbage.db");
    std::fs::write(&not_db, vec![0x42u8; 8192]).unwrap();
    let err = SqliteStore::open(&format!("sqlite://{}", not_db.display()), options())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a SQLite database"), "{err}");

    let same = format!(
        "sqlite://{}/a.db?replica={}/a.db",
        dir.path().display(),
        dir.path().display()
    );
    let err = SqliteStore::open(&same, options()).await.err().unwrap();
    assert!(err.to_string().contains("different file"), "{err}");

    let err = SqliteStore::open(&format!("sqlite://{}", dir.path().display()), options())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let store = SqliteStore::open(&format!("sqlite://{}", path.display()), options())
        .await
        .unwrap();
    let err = store
        .try_acquire(&holder("a"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer Phalanx"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_that_outlives_its_timeout_leaves_the_lock_free() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}/node.db?replica={}/replica.db",
        dir.path().display(),
        dir.path().display()
    );
    // Enough data that copying it to the replica takes longer than the timeout below.
    {
        let store = SqliteStore::open(&url, options()).await.unwrap();
        let lease = must_win(&store, "a", Duration::from_secs(5)).await;
        for i in 0..6 {
            let key = StoreKey::new("ns", "", &format!("k{i}")).unwrap();
            store
                .write(lease.token(), &key, vec![i as u8; 8 * 1024 * 1024])
                .await
                .unwrap();
        }
        lease.resign().await.unwrap();
    }
    let mut impatient = options();
    impatient.operation_timeout = Duration::from_millis(1);
    let store = SqliteStore::open(&url, impatient).await.unwrap();
    let err = store
        .try_acquire(&holder("b"), Duration::from_secs(5))
        .await
        .expect_err("the acquire outlived its timeout");
    assert!(err.is_transient(), "{err}");
    // Whatever the abandoned acquire did, the next campaign can win.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut patient = options();
        patient.operation_timeout = Duration::from_secs(10);
        let retry = SqliteStore::open(&url, patient).await.unwrap();
        match retry
            .try_acquire(&holder("b"), Duration::from_secs(5))
            .await
        {
            Ok(Acquisition::Won(lease)) => {
                assert_eq!(
                    lease.token().epoch(),
                    Epoch(3),
                    "the abandoned epoch stays used"
                );
                break;
            }
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lock stayed taken by an acquire nobody saw: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // The impatient handle itself does not believe it leads.
    let attempt = store
        .try_acquire(&holder("b"), Duration::from_secs(5))
        .await;
    assert!(
        !matches!(attempt, Ok(Acquisition::Held(Some(ref info))) if info.holder == "b"),
        "{attempt:?}"
    );
}

/// A reader that has the file open at the instant of a campaign (a standby peeking at the
/// lease, `phalanx store check`) delays the campaign; it does not make nobody win.
#[tokio::test]
async fn a_brief_reader_does_not_make_a_campaign_lose() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/node.db", dir.path().display());
    let path = dir.path().join("node.db");
    let store = SqliteStore::open(&url, options()).await.unwrap();
    must_win(&store, "a", Duration::from_secs(5))
        .await
        .resign()
        .await
        .unwrap();

    let (reading, read_started) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        let _: i64 = tx
            .query_row("SELECT count(*) FROM phalanx_kv", [], |row| row.get(0))
            .unwrap();
        reading.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        tx.commit().unwrap();
    });
    read_started.recv().unwrap();
    let attempt = store
        .try_acquire(&holder("b"), Duration::from_secs(5))
        .await
        .unwrap();
    reader.join().unwrap();
    assert!(
        matches!(attempt, Acquisition::Won(_)),
        "a reader's shared lock lost the round: {attempt:?}"
    );
}

async fn write_keys(store: &SqliteStore, holder: &str, range: std::ops::Range<u32>) {
    let lease = must_win(store, holder, Duration::from_secs(5)).await;
    for i in range {
        let key = StoreKey::new("ns", "", &format!("k{i}")).unwrap();
        store
            .write(lease.token(), &key, i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    lease.resign().await.unwrap();
}

fn rows(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM phalanx_kv", [], |r| r.get(0))
        .unwrap()
}

async fn refused_acquire(url: &str) -> StoreError {
    let store = SqliteStore::open(url, options()).await.unwrap();
    let err = store
        .try_acquire(&holder("b"), Duration::from_secs(5))
        .await
        .expect_err("the start is refused");
    assert!(!err.is_transient() && !err.is_fenced(), "{err}");
    err
}

/// A lost main disk (the file missing, or an empty file in its place) never erases the
/// replica that holds the node's state.
#[tokio::test]
async fn a_missing_or_empty_main_file_never_erases_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("node.db");
    let replica = dir.path().join("replica.db");
    let url = format!("sqlite://{}?replica={}", main.display(), replica.display());
    let store = SqliteStore::open(&url, options()).await.unwrap();
    write_keys(&store, "a", 0..20).await;
    drop(store);

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", main.display()));
    }
    let err = refused_acquire(&url).await;
    let message = err.to_string();
    assert!(message.contains("holds no Phalanx data"), "{message}");
    assert!(
        message.contains(&format!("copy {} to {}", replica.display(), main.display())),
        "{message}"
    );
    assert!(!main.exists(), "the refused start created no main file");
    assert_eq!(rows(&replica), 20);

    std::fs::write(&main, b"").unwrap();
    let message = refused_acquire(&url).await.to_string();
    assert!(message.contains("holds no Phalanx data"), "{message}");
    assert_eq!(rows(&replica), 20);

    // The recovery the message names works: the replica's copy becomes the main file.
    std::fs::copy(&replica, &main).unwrap();
    let store = SqliteStore::open(&url, options()).await.unwrap();
    write_keys(&store, "b", 20..21).await;
    assert_eq!(rows(&main), 21);
    assert_eq!(rows(&replica), 21);
}

/// A main file restored from an older copy is refused instead of overwriting the newer
/// replica; a replica one commit ahead (a crash between the two commits) is not.
#[tokio::test]
async fn an_older_main_file_never_overwrites_a_newer_replica() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("node.db");
    let replica = dir.path().join("replica.db");
    let old_copy = dir.path().join("old.db");
    let url = format!("sqlite://{}?replica={}", main.display(), replica.display());
    let store = SqliteStore::open(&url, options()).await.unwrap();
    write_keys(&store, "a", 0..5).await;
    std::fs::copy(&main, &old_copy).unwrap();
    write_keys(&store, "a", 5..15).await;
    drop(store);

    std::fs::copy(&old_copy, &main).unwrap();
    let message = refused_acquire(&url).await.to_string();
    assert!(
        message.contains(&format!(
            "{} is newer than {}",
            replica.display(),
            main.display()
        )),
        "{message}"
    );
    assert_eq!(rows(&replica), 15, "the newer replica is intact");

    // The replica one commit ahead of the main file: the unacknowledged transaction of
    // a crash between the replica's commit and the main file's.
    std::fs::copy(&replica, &main).unwrap();
    let conn = Connection::open(&replica).unwrap();
    conn.execute("UPDATE phalanx_generation SET commits = commits + 1", [])
        .unwrap();
    drop(conn);
    let store = SqliteStore::open(&url, options()).await.unwrap();
    must_win(&store, "b", Duration::from_secs(5))
        .await
        .resign()
        .await
        .unwrap();
    assert_eq!(rows(&replica), 15);
}

/// Campaigners released at the same instant, round after round: exactly one wins each
/// round. Without the retries on a busy file, some rounds had no winner at all (each
/// kept the shared lock of its first read while waiting out the others').
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigners_that_collide_still_elect_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/node.db", dir.path().display());
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(SqliteStore::open(&url, options()).await.unwrap());
    }
    let mut empty_rounds = 0;
    for round in 0..12 {
        let barrier = Arc::new(std::sync::Barrier::new(stores.len()));
        let attempts: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let inner = Arc::clone(&store.inner);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    inner
                        .try_acquire(&holder(&format!("h{i}")), Duration::from_secs(30))
                        .unwrap()
                })
            })
            .collect();
        let winners: Vec<_> = attempts
            .into_iter()
            .map(|attempt| attempt.join().unwrap())
            .enumerate()
            .filter_map(|(i, outcome)| match outcome {
                Acquisition::Won(lease) => Some((i, lease.token().epoch())),
                Acquisition::Held(_) => None,
            })
            .collect();
        assert!(
            winners.len() <= 1,
            "round {round}: {} winners",
            winners.len()
        );
        if winners.is_empty() {
            empty_rounds += 1;
        }
        // What `resign` does.
        for (i, epoch) in winners {
            stores[i].inner.release(epoch);
        }
    }
    assert_eq!(empty_rounds, 0, "rounds in 12 that nobody won");
}

/// A transaction holds the leader's connections for as long as it runs: on a stalled
/// disk, as long as the disk stalls. No call waits for it past the operation timeout:
/// each fails as transient (the "bounded time" rule of `StateStore`), the renewal too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transaction_holds_up_no_call_past_the_timeout() {
    const STALL: Duration = Duration::from_secs(4);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/node.db", dir.path().display());
    let mut impatient = options();
    impatient.operation_timeout = Duration::from_millis(200);
    let bound = impatient.operation_timeout + Duration::from_millis(800);
    let store = SqliteStore::open(&url, impatient).await.unwrap();
    let mut lease = must_win(&store, "a", Duration::from_secs(30)).await;
    let token = lease.token();
    let key = StoreKey::new("ns", "", "k").unwrap();
    store.write(token, &key, b"v".to_vec()).await.unwrap();

    // What a transaction on a stalled disk does: hold the leader's connections.
    let (stalling, stalled) = std::sync::mpsc::channel();
    let staller = {
        let inner = Arc::clone(&store.inner);
        std::thread::spawn(move || {
            let _transaction = inner.leader();
            stalling.send(()).unwrap();
            std::thread::sleep(STALL);
        })
    };
    stalled.recv().unwrap();

    async fn answers_in_time<T>(
        what: &str,
        bound: Duration,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(STALL, call)
            .await
            .unwrap_or_else(|_| panic!("{what} waited for the stalled transaction"));
        let took = started.elapsed();
        assert!(took < bound, "{what} answered after {took:?}");
        match outcome {
            Ok(_) => panic!("{what} succeeded while the transaction stalled"),
            Err(err) => assert!(err.is_transient(), "{what}: {err}"),
        }
    }
    let ns = Namespace::new("ns", "").unwrap();
    answers_in_time("read", bound, store.read(&key)).await;
    answers_in_time("list", bound, store.list(&ns)).await;
    answers_in_time("write", bound, store.write(token, &key, b"v".to_vec())).await;
    answers_in_time("current_lease", bound, store.current_lease()).await;
    answers_in_time("epoch_history", bound, store.epoch_history(10)).await;
    answers_in_time(
        "try_acquire",
        bound,
        store.try_acquire(&holder("b"), Duration::from_secs(30)),
    )
    .await;
    answers_in_time("renew", bound, lease.renew()).await;
    answers_in_time("resign", bound, lease.resign()).await;
    staller.join().unwrap();
}

/// Enough rows that a snapshot takes many steps (4 KiB each, so one or more pages each).
async fn fill(store: &SqliteStore, token: phalanx_store::FencingToken, rows: u32) {
    for n in 0..rows {
        let key = StoreKey::new("monitors", "", &format!("k{n:04}")).unwrap();
        store.write(token, &key, vec![n as u8; 4096]).await.unwrap();
    }
}

#[tokio::test]
async fn a_snapshot_lets_writes_through_between_its_steps_and_ends_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/node.db", dir.path().display());
    let store = SqliteStore::open(&url, options()).await.unwrap();
    let lease = must_win(&store, "a", Duration::from_secs(5)).await;
    fill(&store, lease.token(), 300).await;
    let key = |n: u32| StoreKey::new("monitors", "", &format!("k{n:04}")).unwrap();

    let run = snapshot::SnapshotRun::start(&store.inner)
        .unwrap()
        .expect("the leader snapshots through its own connection");
    assert_eq!(run.step(&store.inner).unwrap(), snapshot::Progress::Copying);
    // Mid-snapshot, the leader's writes go through (the step let go of the connection),
    // an update, a delete and a new key, in pages copied and pages still to copy.
    let writes = async {
        store
            .write(lease.token(), &key(0), b"updated".to_vec())
            .await
            .unwrap();
        store.remove(lease.token(), &key(299)).await.unwrap();
        store
            .write(lease.token(), &key(1000), b"new".to_vec())
            .await
            .unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), writes)
        .await
        .expect("writes wait for one step at most, not the whole snapshot");
    let mut steps = 1;
    while run.step(&store.inner).unwrap() == snapshot::Progress::Copying {
        steps += 1;
    }
    assert!(
        steps > 3,
        "300 rows of 4 KiB take several steps, took {steps}"
    );
    let copy = run.finish(&store.inner).unwrap();

    // The copy is the state after the last write: what the store itself reads now.
    let mut copied = store
        .inner
        .read_rows(&copy)
        .unwrap()
        .into_iter()
        .map(|(primary, secondary, key, value)| {
            (StoreKey::new(&primary, &secondary, &key).unwrap(), value)
        })
        .collect::<Vec<_>>();
    copied.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(copied.len(), 300);
    assert_eq!(copied[0], (key(0), b"updated".to_vec()));
    assert!(copied.iter().all(|(k, _)| *k != key(299)));
    assert!(copied.contains(&(key(1000), b"new".to_vec())));
    assert!(copied.contains(&(key(298), vec![42; 4096])));
    assert_eq!(copied, store.snapshot().await.unwrap());
}

#[tokio::test]
async fn a_snapshot_fails_when_the_lease_ends_during_it_and_a_new_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/node.db", dir.path().display());
    let store = SqliteStore::open(&url, options()).await.unwrap();
    let lease = must_win(&store, "a", Duration::from_secs(5)).await;
    fill(&store, lease.token(), 100).await;

    let run = snapshot::SnapshotRun::start(&store.inner).unwrap().unwrap();
    assert_eq!(run.step(&store.inner).unwrap(), snapshot::Progress::Copying);
    // Resigning closes the leader's connection, and the backup reading it with it.
    lease.resign().await.unwrap();
    let err = run.step(&store.inner).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("ended during the snapshot"),
        "{err}"
    );

    let lease = must_win(&store, "b", Duration::from_secs(5)).await;
    let entries = store.snapshot().await.unwrap();
    assert_eq!(entries.len(), 100);
    drop(lease);
    // Without the lease the file is read directly, in one statement.
    assert_eq!(store.snapshot().await.unwrap(), entries);
}
