//! The backup stream over a real SQLite store: what the log replays to is what the
//! store holds, writes reordered or superseded included; a torn last record is skipped;
//! another seed's log, a changed byte, or a stream that cannot be written are errors;
//! each leadership starts from the whole store; compaction, and a crash in it, keep the
//! state; an alerting stream lets writes through and starts again.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use phalanx_backup_stream::{BackedUpStore, OnFailure, StreamOptions, replay};
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
    // The base the leadership began with, then five batches.
    assert_eq!(
        (replayed.records, replayed.torn, replayed.segments),
        (6, 0, 1)
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
    assert_eq!(replayed.records, 1 + 64);
    assert_eq!(replayed.entries, store.snapshot().await.unwrap());
}

/// Every file name in `dir`, sorted.
fn files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_leadership_starts_from_the_whole_store() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream");
    let seed = Seed::generate().unwrap();
    let inner = sqlite(dir.path()).await;

    // A node that ran without the stream: its keys are in the first base.
    let lease = must_win(inner.as_ref(), "a", Duration::from_secs(30)).await;
    inner
        .write(lease.token(), &key("before"), b"old".to_vec())
        .await
        .unwrap();
    drop(lease);
    let store = BackedUpStore::new(inner.clone(), stream.clone(), seed.clone());
    let lease = must_win(&store, "a", Duration::from_secs(30)).await;
    store
        .write(lease.token(), &key("a"), b"one".to_vec())
        .await
        .unwrap();
    assert_eq!(
        replay(&stream, &seed).unwrap().entries,
        store.snapshot().await.unwrap()
    );

    // A leader killed between its commit and its append: the store has the write, the
    // log never got it. The next leadership's base has it.
    inner
        .write(
            lease.token(),
            &key("missed"),
            b"committed, never appended".to_vec(),
        )
        .await
        .unwrap();
    assert!(
        !replay(&stream, &seed)
            .unwrap()
            .entries
            .iter()
            .any(|(k, _)| *k == key("missed"))
    );
    drop(lease);
    let store = BackedUpStore::new(inner.clone(), stream.clone(), seed.clone());
    let lease = must_win(&store, "b", Duration::from_secs(30)).await;
    store
        .write(lease.token(), &key("b"), b"two".to_vec())
        .await
        .unwrap();
    let replayed = replay(&stream, &seed).unwrap();
    assert_eq!(replayed.entries, store.snapshot().await.unwrap());
    assert!(replayed.entries.iter().any(|(k, _)| *k == key("missed")));
    assert!(replayed.entries.iter().any(|(k, _)| *k == key("before")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_keeps_the_state_and_a_crash_in_it_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream");
    let seed = Seed::generate().unwrap();
    let options = StreamOptions {
        compact_after_bytes: 4096,
        ..StreamOptions::default()
    };
    let store = Arc::new(BackedUpStore::with_options(
        sqlite(dir.path()).await,
        stream.clone(),
        seed.clone(),
        options,
    ));
    let lease = must_win(store.as_ref(), "a", Duration::from_secs(30)).await;
    let token = lease.token();
    // Writers at once, each putting, overwriting and deleting its keys, so that
    // segments are closed and compacted in the background while they write.
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..40u64 {
                    let k = key(&format!("w{w}-{}", i % 7));
                    let sequence = 1 + w * 1000 + i;
                    if i % 5 == 4 {
                        store.remove(token.sequenced(sequence), &k).await.unwrap();
                    } else {
                        store
                            .write(token.sequenced(sequence), &k, vec![i as u8; 300])
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let before = files(&stream);
    let compaction = store.compact().await.unwrap().expect("a compaction");
    assert!(compaction.segments_removed >= 1);
    let after = files(&stream);
    assert_eq!(
        after.iter().filter(|n| n.ends_with(".ckpt")).count(),
        1,
        "{after:?}"
    );
    assert_eq!(
        after.iter().filter(|n| n.ends_with(".log")).count(),
        1,
        "only the open segment is left: {after:?}"
    );
    let replayed = replay(&stream, &seed).unwrap();
    assert_eq!(replayed.entries, store.snapshot().await.unwrap());
    assert_eq!(
        replayed.checkpoint.as_deref(),
        Some(compaction.checkpoint.as_str())
    );

    // Writes go on after it, a late one of an older sequence among them, and a new
    // leadership; the log still replays to the store.
    store
        .write(token.sequenced(5000), &key("late"), b"new".to_vec())
        .await
        .unwrap();
    store
        .write(token.sequenced(4999), &key("late"), b"old, late".to_vec())
        .await
        .unwrap();
    drop(lease);
    let lease = must_win(store.as_ref(), "a", Duration::from_secs(30)).await;
    store
        .write(lease.token(), &key("second"), b"leadership".to_vec())
        .await
        .unwrap();
    assert_eq!(
        replay(&stream, &seed).unwrap().entries,
        store.snapshot().await.unwrap()
    );

    // A compaction killed after its checkpoint was renamed into place but before the
    // segments it covers were removed; and one killed while writing its temporary file.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for name in files(&stream) {
        std::fs::copy(stream.join(&name), copy.join(&name)).unwrap();
    }
    let second = store.compact().await.unwrap().expect("a compaction");
    for name in files(&copy).iter().filter(|n| n.ends_with(".log")) {
        if !stream.join(name).exists() {
            std::fs::copy(copy.join(name), stream.join(name)).unwrap();
        }
    }
    std::fs::write(stream.join(format!(".{}.tmp", second.checkpoint)), b"half").unwrap();
    assert_eq!(
        replay(&stream, &seed).unwrap().entries,
        store.snapshot().await.unwrap()
    );
    // Closed segments are either still there or already compacted in the background
    // (the writers may well outlast a background compaction): either way more than one
    // segment was opened.
    assert!(
        before.iter().filter(|n| n.ends_with(".log")).count() > 1
            || before.iter().any(|n| n.ends_with(".ckpt")),
        "segments were closed as they filled: {before:?}"
    );

    // A checkpoint with a byte changed, or renamed to cover other segments: refused.
    let checkpoint = stream.join(&second.checkpoint);
    let good = std::fs::read(&checkpoint).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&checkpoint, &bad).unwrap();
    let err = replay(&stream, &seed).unwrap_err().to_string();
    assert!(err.contains("does not decrypt"), "{err}");
    std::fs::write(&checkpoint, &good).unwrap();
    let renamed = stream.join("checkpoint-epoch-99999999999999999999-0000.ckpt");
    std::fs::rename(&checkpoint, &renamed).unwrap();
    let err = replay(&stream, &seed).unwrap_err().to_string();
    assert!(err.contains("does not decrypt"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerting_stream_lets_writes_through_and_starts_again_from_a_base() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be: the stream cannot be written.
    let stream = dir.path().join("stream");
    std::fs::write(&stream, b"x").unwrap();
    let seed = Seed::generate().unwrap();
    let store = BackedUpStore::with_options(
        sqlite(dir.path()).await,
        stream.clone(),
        seed.clone(),
        StreamOptions {
            on_failure: OnFailure::Alert,
            ..StreamOptions::default()
        },
    );
    let lease = must_win(&store, "a", Duration::from_secs(30)).await;
    store
        .write(lease.token(), &key("a"), b"not in the backup".to_vec())
        .await
        .expect("an alerting stream lets the write through");
    store
        .write(lease.token(), &key("b"), b"nor this".to_vec())
        .await
        .unwrap();
    assert_eq!(store.failures(), 2);

    // The destination is back: the stream starts again, from the whole store.
    std::fs::remove_file(&stream).unwrap();
    tokio::time::sleep(Duration::from_millis(5100)).await;
    store
        .write(lease.token(), &key("c"), b"after".to_vec())
        .await
        .unwrap();
    assert_eq!(store.failures(), 2);
    assert_eq!(
        replay(&stream, &seed).unwrap().entries,
        store.snapshot().await.unwrap()
    );
}
