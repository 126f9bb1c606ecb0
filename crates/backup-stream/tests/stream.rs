//! The backup stream over a real SQLite store: what the log replays to is what the
//! store holds, writes reordered or superseded included; a torn last record is skipped;
//! another seed's log, a changed byte, or a stream that cannot be written are errors.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use phalanx_backup_stream::{BackedUpStore, replay};
use phalanx_secrets::Seed;
use phalanx_store::testing::must_win;
use phalanx_store::{BatchOp, ClusterName, ErrorKind, StateStore, Store, StoreKey, StoreOptions};

fn key(name: &str) -> StoreKey {
    StoreKey::new("monitors", "", name).unwrap()
}

async fn sqlite(dir: &std::path::Path) -> Arc<dyn Store> {
    phalanx_store_connect::connect(
        &format!("sqlite://{}/node.db", dir.display()),
        StoreOptions::new(ClusterName::new("node").unwrap()),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_replays_to_what_the_store_holds() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream");
    let seed = Seed::generate().unwrap();
    let store = Arc::new(BackedUpStore::new(
        sqlite(dir.path()).await,
        stream.clone(),
        seed.clone(),
    ));
    let lease = must_win(store.as_ref(), "a", Duration::from_secs(30)).await;
    let token = lease.token();
    store
        .write(token, &key("a"), b"one".to_vec())
        .await
        .unwrap();
    store
        .apply(
            token,
            vec![
                BatchOp::Put {
                    key: key("b"),
                    value: vec![2; 5000],
                },
                BatchOp::Put {
                    key: key("c"),
                    value: b"three".to_vec(),
                },
                BatchOp::Delete { key: key("a") },
            ],
        )
        .await
        .unwrap();
    // A late write of an older sequence: the store keeps the newer value; so must the log.
    store
        .write(token.sequenced(9), &key("d"), b"nine".to_vec())
        .await
        .unwrap();
    store
        .write(token.sequenced(4), &key("d"), b"four, late".to_vec())
        .await
        .unwrap();
    assert_eq!(store.read(&key("d")).await.unwrap(), b"nine");
    store.remove(token, &key("c")).await.unwrap();
    let replayed = replay(&stream, &seed).unwrap();
    assert_eq!(replayed.entries, store.snapshot().await.unwrap());
    assert_eq!(
        (replayed.records, replayed.torn, replayed.segments),
        (5, 0, 1)
    );

    // A new leadership writes a segment of its own; the log still replays to the store.
    drop(lease);
    let lease = must_win(store.as_ref(), "a", Duration::from_secs(30)).await;
    store
        .write(lease.token(), &key("b"), b"epoch two".to_vec())
        .await
        .unwrap();
    let replayed = replay(&stream, &seed).unwrap();
    assert_eq!(replayed.segments, 2);
    assert_eq!(replayed.entries, store.snapshot().await.unwrap());

    // A record cut short at the end (a crash while appending): skipped.
    let last = std::fs::read_dir(&stream)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    file.write_all(&[0, 0, 1, 0, 9, 9, 9]).unwrap();
    let replayed = replay(&stream, &seed).unwrap();
    assert_eq!(replayed.torn, 1);
    assert_eq!(replayed.entries, store.snapshot().await.unwrap());

    // Another seed's log, or a byte changed inside: an error, not a silent state.
    let err = replay(&stream, &Seed::generate().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not decrypt"), "{err}");
    let first = std::fs::read_dir(&stream)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&first, bytes).unwrap();
    let err = replay(&stream, &seed).unwrap_err().to_string();
    assert!(err.contains("does not decrypt"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_be_written_fails_the_write() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be.
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let store = BackedUpStore::new(sqlite(dir.path()).await, blocked, Seed::generate().unwrap());
    let lease = must_win(&store, "a", Duration::from_secs(30)).await;
    let err = store
        .write(lease.token(), &key("a"), b"v".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("backup stream"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_are_all_in_the_log_when_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream");
    let seed = Seed::generate().unwrap();
    let postgres = phalanx_testkit::postgres::shared()
        .fresh_database()
        .expect("a PostgreSQL database");
    let inner = phalanx_store_connect::connect(
        &postgres,
        StoreOptions::new(ClusterName::new("node").unwrap()),
    )
    .await
    .unwrap();
    let store = Arc::new(BackedUpStore::new(inner, stream.clone(), seed.clone()));
    let lease = must_win(store.as_ref(), "a", Duration::from_secs(30)).await;
    let token = lease.token();
    // Many writers at once (appends that arrive together are synced together); each
    // checks, once its write returned, that the log already holds it.
    let writers: Vec<_> = (0..64u32)
        .map(|i| {
            let (store, stream, seed) = (store.clone(), stream.clone(), seed.clone());
            tokio::spawn(async move {
                let k = key(&format!("k{i:02}"));
                store
                    .write(token, &k, i.to_be_bytes().to_vec())
                    .await
                    .unwrap();
                let replayed = tokio::task::spawn_blocking(move || replay(&stream, &seed).unwrap())
                    .await
                    .unwrap();
                assert!(
                    replayed.entries.iter().any(|(found, _)| *found == k),
                    "write {i} returned before its record was in the log"
                );
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let replayed = replay(&stream, &seed).unwrap();
    assert_eq!(replayed.records, 64);
    assert_eq!(replayed.entries, store.snapshot().await.unwrap());
}
