//! The key-value contract: reads, writes, lists, batches, fencing of mutations, write
//! order, value sizes.

use std::time::Duration;

use phalanx_store::{BatchOp, Epoch, ErrorKind, FencingToken, MAX_VALUE_BYTES, StoreError};

use super::{Env, holds_until_exit, key, leader, ns, sorted_list};
use crate::{try_win, win_within};

/// Write, read, overwrite, remove, and the error kinds on the way.
pub async fn crud_round_trip(env: &Env<'_>) {
    let (_place, store, token, _lease) = leader(env).await;
    let k = key("monitors", "", "abc_DEF-0123");
    let err = store.read(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    store.write(token, &k, b"one".to_vec()).await.unwrap();
    assert_eq!(store.read(&k).await.unwrap(), b"one");
    store.write(token, &k, b"two".to_vec()).await.unwrap();
    assert_eq!(store.read(&k).await.unwrap(), b"two");
    store.write(token, &k, Vec::new()).await.unwrap();
    assert_eq!(
        store.read(&k).await.unwrap(),
        b"",
        "empty values are values"
    );
    store.remove(token, &k).await.unwrap();
    assert_eq!(
        store.read(&k).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Removing what is not there succeeds (LDK's contract).
    store.remove(token, &k).await.unwrap();
    // Binary values come back byte for byte.
    let binary: Vec<u8> = (0..=255).cycle().take(10_000).collect();
    store.write(token, &k, binary.clone()).await.unwrap();
    assert_eq!(store.read(&k).await.unwrap(), binary);
}

/// A sequenced mutation changes a key only if it is newer than the one that last changed
/// it: a write that reaches the store late (timed out, retried, written again since)
/// changes nothing, in a single write and in a batch alike, and a new epoch's first write
/// is newer than anything of an older epoch.
pub async fn a_late_write_never_lands_over_a_newer_one(env: &Env<'_>) {
    let (_place, store, token, lease) = leader(env).await;
    let k = key("monitors", "", "m");
    let other = key("monitors", "", "other");
    store
        .write(token.sequenced(5), &k, b"five".to_vec())
        .await
        .unwrap();
    store
        .write(token.sequenced(3), &k, b"three, late".to_vec())
        .await
        .expect("a superseded write is not an error: a newer value is in place");
    assert_eq!(store.read(&k).await.unwrap(), b"five");
    store
        .write(token.sequenced(5), &k, b"five, again".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.read(&k).await.unwrap(),
        b"five",
        "same sequence: the retry's twin"
    );
    store.remove(token.sequenced(4), &k).await.unwrap();
    assert_eq!(store.read(&k).await.unwrap(), b"five", "a late removal");
    // In a batch, each key is judged on its own; the others still change.
    store
        .apply(
            token.sequenced(4),
            vec![
                BatchOp::Put {
                    key: k.clone(),
                    value: b"four, late".to_vec(),
                },
                BatchOp::Put {
                    key: other.clone(),
                    value: b"four".to_vec(),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.read(&k).await.unwrap(), b"five");
    assert_eq!(store.read(&other).await.unwrap(), b"four");
    store
        .write(token.sequenced(6), &k, b"six".to_vec())
        .await
        .unwrap();
    assert_eq!(store.read(&k).await.unwrap(), b"six");
    // A token without a sequence always changes its own epoch's keys.
    store
        .write(token, &k, b"unsequenced".to_vec())
        .await
        .unwrap();
    assert_eq!(store.read(&k).await.unwrap(), b"unsequenced");
    store
        .write(token.sequenced(100), &k, b"hundred".to_vec())
        .await
        .unwrap();

    // The next leadership starts its sequences again, and its writes are still newer.
    lease.resign().await.unwrap();
    let next = win_within(
        store.as_ref(),
        "b",
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .await;
    let token = next.token();
    store
        .write(token.sequenced(1), &k, b"new epoch".to_vec())
        .await
        .unwrap();
    assert_eq!(store.read(&k).await.unwrap(), b"new epoch");
    store.remove(token.sequenced(2), &k).await.unwrap();
    assert_eq!(
        store.read(&k).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

/// A write sequence past `i64::MAX` (a writer's bug: sequences count calls) is refused as
/// a configuration error before anything is written, on every backend alike, never
/// stored as some other number; the largest sequence that fits is an ordinary one.
pub async fn a_write_sequence_past_i64_is_refused(env: &Env<'_>) {
    let (_place, store, token, _lease) = leader(env).await;
    let k = key("seq", "", "k");
    let other = key("seq", "", "other");
    let too_far = token.sequenced(i64::MAX as u64 + 1);
    let err = store.write(too_far, &k, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    let batch = vec![
        BatchOp::Put {
            key: other.clone(),
            value: b"x".to_vec(),
        },
        BatchOp::Delete { key: k.clone() },
    ];
    let err = store.apply(too_far, batch).await.unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    assert!(store.list(&ns("seq", "")).await.unwrap().is_empty());

    let last = token.sequenced(i64::MAX as u64);
    store.write(last, &k, b"last".to_vec()).await.unwrap();
    store
        .write(token.sequenced(1), &k, b"late".to_vec())
        .await
        .unwrap();
    assert_eq!(store.read(&k).await.unwrap(), b"last");
}

/// Listing returns the keys of exactly one namespace.
pub async fn listing_is_per_namespace(env: &Env<'_>) {
    let (_place, store, token, _lease) = leader(env).await;
    let writes = [
        key("", "", "manager"),
        key("a", "", "k1"),
        key("a", "", "k2"),
        key("a", "b", "k3"),
        key("a", "bb", "k4"),
        key("ab", "", "k5"),
        // A key named like a namespace must not leak into it, nor the reverse.
        key("a", "", "b"),
    ];
    for k in &writes {
        store
            .write(token, k, k.to_string().into_bytes())
            .await
            .unwrap();
    }
    assert_eq!(sorted_list(store.as_ref(), &ns("", "")).await, ["manager"]);
    assert_eq!(
        sorted_list(store.as_ref(), &ns("a", "")).await,
        ["b", "k1", "k2"]
    );
    assert_eq!(sorted_list(store.as_ref(), &ns("a", "b")).await, ["k3"]);
    assert_eq!(sorted_list(store.as_ref(), &ns("a", "bb")).await, ["k4"]);
    assert_eq!(sorted_list(store.as_ref(), &ns("ab", "")).await, ["k5"]);
    assert!(store.list(&ns("nothing", "here")).await.unwrap().is_empty());
    for k in &writes {
        assert_eq!(store.read(k).await.unwrap(), k.to_string().into_bytes());
    }
}

/// A 32 MiB value (a large node's ChannelManager) is stored whole.
pub async fn values_of_32_mib_round_trip(env: &Env<'_>) {
    let (_place, store, token, _lease) = leader(env).await;
    let k = key("", "", "manager");
    let value: Vec<u8> = (0..32 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    store.write(token, &k, value.clone()).await.unwrap();
    let read = store.read(&k).await.unwrap();
    assert_eq!(read.len(), value.len());
    assert!(read == value, "32 MiB value changed on the way");
}

/// Values over the limit fail before anything is written.
pub async fn oversized_values_are_refused_and_write_nothing(env: &Env<'_>) {
    let (_place, store, token, _lease) = leader(env).await;
    let ops = vec![
        BatchOp::Put {
            key: key("a", "", "small"),
            value: vec![1],
        },
        BatchOp::Put {
            key: key("a", "", "huge"),
            value: vec![0; MAX_VALUE_BYTES + 1],
        },
    ];
    let err = store.apply(token, ops).await.unwrap_err();
    assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err}");
    assert!(store.list(&ns("a", "")).await.unwrap().is_empty());
}

/// A batch applies all of its operations, in order, or none.
pub async fn batches_are_atomic(env: &Env<'_>) {
    let (_place, store, token, _lease) = leader(env).await;
    store
        .write(token, &key("m", "", "old"), b"old".to_vec())
        .await
        .unwrap();
    let ops = vec![
        BatchOp::Put {
            key: key("m", "", "a"),
            value: b"1".to_vec(),
        },
        BatchOp::Delete {
            key: key("m", "", "old"),
        },
        BatchOp::Put {
            key: key("m", "u", "b"),
            value: b"2".to_vec(),
        },
        // Later operations on the same key win.
        BatchOp::Put {
            key: key("m", "", "c"),
            value: b"first".to_vec(),
        },
        BatchOp::Put {
            key: key("m", "", "c"),
            value: b"second".to_vec(),
        },
        BatchOp::Put {
            key: key("m", "", "d"),
            value: b"gone".to_vec(),
        },
        BatchOp::Delete {
            key: key("m", "", "d"),
        },
    ];
    store.apply(token, ops).await.unwrap();
    assert_eq!(sorted_list(store.as_ref(), &ns("m", "")).await, ["a", "c"]);
    assert_eq!(store.read(&key("m", "", "c")).await.unwrap(), b"second");
    assert_eq!(store.read(&key("m", "u", "b")).await.unwrap(), b"2");
    store.apply(token, Vec::new()).await.unwrap();
}

/// A fenced batch, and a write with an epoch never granted, change nothing.
pub async fn fenced_batches_write_nothing(env: &Env<'_>) {
    let (place, store, token, lease) = leader(env).await;
    store
        .write(token, &key("m", "", "kept"), b"v1".to_vec())
        .await
        .unwrap();
    let never = FencingToken::new(Epoch(token.epoch().0 + 1000));
    let err = store
        .write(never, &key("m", "", "x"), vec![1])
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");

    lease.resign().await.unwrap();
    let other = env.reopen(&place).await;
    let next = win_within(
        other.as_ref(),
        "b",
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .await;
    let ops = vec![
        BatchOp::Put {
            key: key("m", "", "new"),
            value: vec![1],
        },
        BatchOp::Put {
            key: key("m", "", "kept"),
            value: b"v2".to_vec(),
        },
        BatchOp::Delete {
            key: key("m", "", "kept"),
        },
    ];
    let err = store.apply(token, ops).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert_eq!(other.read(&key("m", "", "kept")).await.unwrap(), b"v1");
    assert_eq!(sorted_list(other.as_ref(), &ns("m", "")).await, ["kept"]);
    drop(next);
}

/// Concurrent writers to one key leave exactly one of their values, intact.
pub async fn concurrent_writes_to_one_key_leave_one_of_them(env: &Env<'_>) {
    let (_place, store, token, _lease) = leader(env).await;
    let k = key("race", "", "k");
    let writers = (0..16u8).map(|writer| {
        let store = store.clone();
        let k = k.clone();
        tokio::spawn(async move {
            for round in 0..10u8 {
                let value = vec![writer; 1024 + round as usize];
                store.write(token, &k, value).await.unwrap();
            }
        })
    });
    futures::future::try_join_all(writers).await.unwrap();
    let value = store.read(&k).await.unwrap();
    let writer = value[0];
    assert!(writer < 16);
    assert!(value.iter().all(|b| *b == writer), "a mix of writes");
    assert!((1024..1034).contains(&value.len()));
}

/// Once a write returned, every handle reads it (or something newer).
pub async fn read_after_write_across_handles(env: &Env<'_>) {
    let (place, store, token, _lease) = leader(env).await;
    let reader = env.reopen(&place).await;
    let k = key("raw", "", "k");
    for i in 0..50u32 {
        store
            .write(token, &k, i.to_be_bytes().to_vec())
            .await
            .unwrap();
        if holds_until_exit(store.as_ref()) {
            // SQLite's lock keeps every other handle out while the leader runs.
            assert_eq!(store.read(&k).await.unwrap(), i.to_be_bytes());
        } else {
            assert_eq!(reader.read(&k).await.unwrap(), i.to_be_bytes());
        }
    }
}

/// A snapshot holds every key of the cluster (any namespace, the empty one too) with its
/// value, sorted by key, and nothing of another cluster on the same store.
pub async fn a_snapshot_holds_every_key_of_the_cluster(env: &Env<'_>) {
    let (place, store) = env.fresh().await;
    assert!(
        store.snapshot().await.unwrap().is_empty(),
        "a fresh store is empty"
    );
    // First another cluster on the same store, with a key of the same name (one SQLite
    // file has one lock: one cluster leads at a time).
    let other = env.reopen_as(&place, "other-cluster").await;
    let other_lease = try_win(other.as_ref(), "b", Duration::from_secs(30))
        .await
        .expect("a fresh cluster's lease");
    other
        .write(
            other_lease.token(),
            &key("monitors", "", "m1"),
            b"other".to_vec(),
        )
        .await
        .unwrap();
    drop(other_lease);
    let lease = win_within(
        store.as_ref(),
        "a",
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .await;
    let token = lease.token();
    let mut written = vec![
        (key("", "", "manager"), b"manager".to_vec()),
        (key("monitors", "", "m1"), vec![1u8; 10_000]),
        (key("monitors", "", "m2"), Vec::new()),
        (key("monitor_updates", "m1", "7"), b"update".to_vec()),
        (key("a-b", "", "k"), b"dash".to_vec()),
        (key("a", "", "k"), b"plain".to_vec()),
    ];
    for (k, value) in &written {
        store.write(token, k, value.clone()).await.unwrap();
    }
    let gone = key("monitors", "", "gone");
    store.write(token, &gone, b"x".to_vec()).await.unwrap();
    store.remove(token, &gone).await.unwrap();

    written.sort_by(|a, b| a.0.cmp(&b.0));
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot, written);
    if !holds_until_exit(store.as_ref()) {
        // (SQLite's lock keeps other handles out while a leader holds it.)
        let reopened = env.reopen(&place).await;
        assert_eq!(
            reopened.snapshot().await.unwrap(),
            written,
            "across handles"
        );
    }
}

/// A snapshot is one state: taken while batches change two keys together, every
/// snapshot has them equal.
pub async fn a_snapshot_is_one_state_while_batches_commit(env: &Env<'_>) {
    let (_place, store, token, _lease) = leader(env).await;
    let (a, b) = (key("pair", "", "a"), key("pair", "", "b"));
    let (pair_a, pair_b) = (a.clone(), b.clone());
    let pair = move |n: u32| {
        vec![
            BatchOp::Put {
                key: pair_a.clone(),
                value: n.to_be_bytes().to_vec(),
            },
            BatchOp::Put {
                key: pair_b.clone(),
                value: n.to_be_bytes().to_vec(),
            },
        ]
    };
    store.apply(token, pair(0)).await.unwrap();
    // Keys between the two, so that a backend reading in pages (etcd) reads them in
    // different pages.
    let fillers: Vec<BatchOp> = (0..40)
        .map(|i| BatchOp::Put {
            key: key("pair", "", &format!("a{i:02}")),
            value: vec![7u8; 100],
        })
        .collect();
    store.apply(token, fillers).await.unwrap();
    let writer = {
        let store = store.clone();
        let pair = pair.clone();
        tokio::spawn(async move {
            for n in 1..=200u32 {
                store.apply(token, pair(n)).await.unwrap();
            }
        })
    };
    let mut snapshots = 0;
    while !writer.is_finished() || snapshots < 5 {
        let snapshot = store.snapshot().await.unwrap();
        let value = |k| {
            snapshot
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value(&a), value(&b), "a snapshot mixes two states");
        snapshots += 1;
    }
    writer.await.unwrap();
}
