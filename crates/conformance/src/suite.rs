//! The tests every backend must pass. Each takes an [`Env`]: the backend's harness and
//! the path of the holder binary for the crash tests.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use lightning::util::persist::{KVStore, KVStoreSync};
use nix::sys::signal::Signal;
use phalanx_cluster::{Campaigner, ElectionState, LeadershipStatus, LossReason};
use phalanx_store::testing::{Fault, FaultyStore};
use phalanx_store::{
    BatchOp, Epoch, ErrorKind, FencingToken, HolderId, LdkKvStore, MAX_VALUE_BYTES, Namespace,
    StateStore, Store, StoreError, StoreKey,
};

use crate::holder::{EXIT_FENCED, HolderProcess, WriteMode};
use crate::{Harness, open, try_win, win_within};

/// What a suite test gets.
pub struct Env<'a> {
    /// The backend.
    pub harness: &'a dyn Harness,
    /// The `phalanx-store-holder` binary.
    pub holder_binary: &'a Path,
}

fn key(primary: &str, secondary: &str, key: &str) -> StoreKey {
    StoreKey::new(primary, secondary, key).unwrap()
}

fn ns(primary: &str, secondary: &str) -> Namespace {
    Namespace::new(primary, secondary).unwrap()
}

async fn sorted_list(store: &dyn Store, namespace: &Namespace) -> Vec<String> {
    let mut keys = store.list(namespace).await.unwrap();
    keys.sort();
    keys
}

/// A fresh store and a lease on it.
async fn leader(
    env: &Env<'_>,
) -> (
    String,
    Arc<dyn Store>,
    FencingToken,
    Box<dyn phalanx_store::HeldLease>,
) {
    let url = env.harness.fresh_url();
    let store = open(&url, "c").await;
    let lease = try_win(store.as_ref(), "a", Duration::from_secs(30))
        .await
        .expect("the first campaigner on a fresh store wins");
    let token = lease.token();
    (url, store, token, lease)
}

/// A fresh store, a leadership on it, and LDK's store bound to that leadership.
async fn ldk_over_a_leadership(
    env: &Env<'_>,
) -> (
    String,
    Arc<dyn Store>,
    phalanx_cluster::Leadership,
    LdkKvStore,
) {
    let url = env.harness.fresh_url();
    let store = open(&url, "c").await;
    let campaigner = Campaigner::new(
        store.clone(),
        HolderId::new("a").unwrap(),
        env.harness.timings(),
    )
    .unwrap();
    let leadership = campaigner.campaign().await.unwrap();
    let kv = LdkKvStore::new(
        store.clone(),
        leadership.fence(),
        tokio::runtime::Handle::current(),
    );
    (url, store, leadership, kv)
}

/// Write, read, overwrite, remove, and the error kinds on the way.
pub async fn crud_round_trip(env: &Env<'_>) {
    let (_url, store, token, _lease) = leader(env).await;
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
    let (_url, store, token, lease) = leader(env).await;
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

/// Listing returns the keys of exactly one namespace.
pub async fn listing_is_per_namespace(env: &Env<'_>) {
    let (_url, store, token, _lease) = leader(env).await;
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

/// LDK's key rules hold at the LDK interface over every backend.
pub async fn invalid_keys_are_refused(env: &Env<'_>) {
    let (_url, store, _leadership, kv) = ldk_over_a_leadership(env).await;
    for (p, s, k) in [
        ("", "s", "k"),
        ("p", "", ""),
        ("p/x", "", "k"),
        ("p", "", "k k"),
        ("p", "", &"x".repeat(121)),
    ] {
        let err = KVStore::write(&kv, p, s, k, vec![1]).await.unwrap_err();
        assert_eq!(
            err.kind(),
            lightning::io::ErrorKind::InvalidInput,
            "{p:?}/{s:?}/{k:?}: {err}"
        );
        let err = KVStore::read(&kv, p, s, k).await.unwrap_err();
        assert_eq!(err.kind(), lightning::io::ErrorKind::InvalidInput);
    }
    assert!(store.list(&ns("p", "")).await.unwrap().is_empty());
}

/// A 32 MiB value (a large node's ChannelManager) is stored whole.
pub async fn values_of_32_mib_round_trip(env: &Env<'_>) {
    let (_url, store, token, _lease) = leader(env).await;
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
    let (_url, store, token, _lease) = leader(env).await;
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
    let (_url, store, token, _lease) = leader(env).await;
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
    let (url, store, token, lease) = leader(env).await;
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
    let other = open(&url, "c").await;
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
    let (_url, store, token, _lease) = leader(env).await;
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
    let (url, store, token, _lease) = leader(env).await;
    let reader = open(&url, "c").await;
    let k = key("raw", "", "k");
    for i in 0..50u32 {
        store
            .write(token, &k, i.to_be_bytes().to_vec())
            .await
            .unwrap();
        if env.harness.lease_is_a_process_lock() {
            // SQLite's lock keeps every other handle out while the leader runs.
            assert_eq!(store.read(&k).await.unwrap(), i.to_be_bytes());
        } else {
            assert_eq!(reader.read(&k).await.unwrap(), i.to_be_bytes());
        }
    }
}

/// LDK's ordering rule holds over the backend: the last call to a key wins, however the
/// futures are polled.
pub async fn ldk_kv_store_orders_writes_by_call(env: &Env<'_>) {
    let (_url, store, _leadership, kv) = ldk_over_a_leadership(env).await;
    let futures: Vec<_> = (0..64u32)
        .map(|i| KVStore::write(&kv, "ordered", "", "k", i.to_be_bytes().to_vec()).boxed())
        .collect();
    futures::future::try_join_all(futures.into_iter().rev())
        .await
        .unwrap();
    assert_eq!(
        store.read(&key("ordered", "", "k")).await.unwrap(),
        63u32.to_be_bytes()
    );

    let write = KVStore::write(&kv, "ordered", "", "gone", vec![1]);
    let remove = KVStore::remove(&kv, "ordered", "", "gone", true);
    remove.await.unwrap();
    write.await.unwrap();
    // A lazy removal lands with the next flush (a few ms later on its own), and still
    // after the write it followed.
    kv.flush_lazy_removes().await;
    assert_eq!(
        store
            .read(&key("ordered", "", "gone"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    // The blocking interface, from a thread outside the runtime.
    let sync_kv = kv.clone();
    tokio::task::spawn_blocking(move || {
        KVStoreSync::write(&sync_kv, "sync", "ns", "k", b"v".to_vec()).unwrap();
        assert_eq!(
            KVStoreSync::read(&sync_kv, "sync", "ns", "k").unwrap(),
            b"v"
        );
        assert_eq!(KVStoreSync::list(&sync_kv, "sync", "ns").unwrap(), ["k"]);
        KVStoreSync::remove(&sync_kv, "sync", "ns", "k", false).unwrap();
        assert!(
            KVStoreSync::list(&sync_kv, "sync", "ns")
                .unwrap()
                .is_empty()
        );
    })
    .await
    .unwrap();
}

/// After the leadership ends, LDK's writes fail as fenced and change nothing.
pub async fn ldk_kv_store_refuses_after_leadership_ends(env: &Env<'_>) {
    let (url, _store, leadership, kv) = ldk_over_a_leadership(env).await;
    KVStore::write(&kv, "p", "", "k", b"before".to_vec())
        .await
        .unwrap();
    leadership.resign().await.unwrap();
    let err = KVStore::write(&kv, "p", "", "k", b"after".to_vec())
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        lightning::io::ErrorKind::PermissionDenied,
        "{err}"
    );
    let reader = open(&url, "c").await;
    assert_eq!(reader.read(&key("p", "", "k")).await.unwrap(), b"before");
}

/// Of several handles campaigning at once, exactly one wins, round after round.
pub async fn exactly_one_of_several_campaigners_wins(env: &Env<'_>) {
    let url = env.harness.fresh_url();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(open(&url, "c").await);
    }
    let mut last_epoch = 0;
    for round in 0..10 {
        let attempts = stores.iter().enumerate().map(|(i, store)| {
            let store = store.clone();
            async move { try_win(store.as_ref(), &format!("h{i}"), Duration::from_secs(30)).await }
        });
        let outcomes = futures::future::join_all(attempts).await;
        let winners: Vec<_> = outcomes.into_iter().flatten().collect();
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let epoch = winners[0].token().epoch().0;
        assert!(
            epoch > last_epoch,
            "round {round}: epoch {epoch} after {last_epoch}"
        );
        last_epoch = epoch;
        for winner in winners {
            winner.resign().await.unwrap();
        }
    }
}

/// Every new leadership has a higher epoch, recorded in the history, newest first.
pub async fn epochs_increase_and_are_recorded(env: &Env<'_>) {
    let url = env.harness.fresh_url();
    let store = open(&url, "c").await;
    let mut epochs = Vec::new();
    for i in 0..5 {
        let lease = win_within(
            store.as_ref(),
            &format!("h{i}"),
            Duration::from_secs(30),
            Duration::from_secs(5),
        )
        .await;
        let info = store
            .current_lease()
            .await
            .unwrap()
            .expect("someone holds it");
        assert_eq!(info.holder, format!("h{i}"));
        assert_eq!(info.epoch, lease.token().epoch());
        epochs.push(lease.token().epoch());
        lease.resign().await.unwrap();
    }
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    let history = store.epoch_history(3).await.unwrap();
    let recorded: Vec<_> = history
        .iter()
        .map(|r| (r.epoch, r.holder.clone()))
        .collect();
    assert_eq!(
        recorded,
        [
            (epochs[4], "h4".to_owned()),
            (epochs[3], "h3".to_owned()),
            (epochs[2], "h2".to_owned())
        ]
    );
    assert!(
        history
            .iter()
            .all(|r| r.acquired_at_unix_ms > 1_600_000_000_000)
    );
    assert!(
        store.current_lease().await.unwrap().is_none(),
        "resigned: nobody holds it"
    );
}

/// A holder that wins again gets a new epoch; its old token is fenced.
pub async fn a_stale_token_of_the_same_holder_is_fenced(env: &Env<'_>) {
    let (_url, store, old_token, lease) = leader(env).await;
    lease.resign().await.unwrap();
    let again = win_within(
        store.as_ref(),
        "a",
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .await;
    assert!(again.token().epoch() > old_token.epoch());
    let err = store
        .write(old_token, &key("p", "", "k"), vec![1])
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
    store
        .write(again.token(), &key("p", "", "k"), vec![2])
        .await
        .unwrap();
}

/// A holder that stops renewing loses the lease to a campaigner after the TTL (at once
/// when it lets go of SQLite's lock); its renewals and writes are fenced after that.
pub async fn an_unrenewed_lease_passes_to_the_other_campaigner(env: &Env<'_>) {
    let url = env.harness.fresh_url();
    let a = open(&url, "c").await;
    let b = open(&url, "c").await;
    let ttl = env.harness.ttl();
    let mut lease = try_win(a.as_ref(), "a", ttl).await.unwrap();
    let token = lease.token();
    assert!(
        try_win(b.as_ref(), "b", ttl).await.is_none(),
        "held: b must not win"
    );
    if env.harness.lease_is_a_process_lock() {
        // The lock outlives any TTL while its holder keeps it ...
        tokio::time::sleep(ttl * 2).await;
        assert!(try_win(b.as_ref(), "b", ttl).await.is_none());
        // ... and is free the moment the holder lets go.
        drop(lease);
        let b_lease = win_within(b.as_ref(), "b", ttl, Duration::from_secs(2)).await;
        assert!(b_lease.token().epoch() > token.epoch());
    } else {
        let started = Instant::now();
        let b_lease = win_within(b.as_ref(), "b", ttl, ttl * 5).await;
        assert!(
            started.elapsed() >= ttl / 2,
            "won after {:?}, before the TTL",
            started.elapsed()
        );
        assert!(b_lease.token().epoch() > token.epoch());
        let err = lease.renew().await.unwrap_err();
        assert!(err.is_fenced(), "{err}");
    }
    let err = a
        .write(token, &key("p", "", "k"), vec![1])
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
}

/// A holder that renews keeps the lease for many TTLs.
pub async fn renewals_keep_the_lease(env: &Env<'_>) {
    let url = env.harness.fresh_url();
    let a = open(&url, "c").await;
    let b = open(&url, "c").await;
    let ttl = env.harness.ttl();
    let mut lease = try_win(a.as_ref(), "a", ttl).await.unwrap();
    let until = Instant::now() + ttl * 4;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        lease.renew().await.unwrap();
        assert!(try_win(b.as_ref(), "b", ttl).await.is_none());
    }
    a.write(lease.token(), &key("p", "", "k"), vec![1])
        .await
        .unwrap();
}

/// Resigning lets a waiting campaigner win within a second, back and forth.
pub async fn resigning_hands_over_within_a_second(env: &Env<'_>) {
    let url = env.harness.fresh_url();
    let timings = env.harness.timings();
    let mut holding =
        Campaigner::new(open(&url, "c").await, HolderId::new("a").unwrap(), timings).unwrap();
    let mut waiting =
        Campaigner::new(open(&url, "c").await, HolderId::new("b").unwrap(), timings).unwrap();
    let mut current = holding.campaign().await.unwrap();
    for round in 0..4 {
        let campaign = tokio::spawn(async move {
            let leadership = waiting.campaign().await.unwrap();
            (Instant::now(), leadership, waiting)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old_epoch = current.epoch();
        let resigned_at = Instant::now();
        current.resign().await.unwrap();
        let (won_at, next, campaigner) = campaign.await.unwrap();
        let handover = won_at - resigned_at;
        assert!(
            handover < Duration::from_secs(1),
            "round {round}: handover took {handover:?}"
        );
        assert!(next.epoch() > old_epoch);
        current = next;
        waiting = std::mem::replace(&mut holding, campaigner);
    }
    assert!(current.token().is_ok());
}

/// Writes racing a takeover either commit before it (and the new leader reads them) or
/// are fenced: none is acknowledged after the new leader read the state. Many rounds.
pub async fn writes_racing_a_takeover_are_fenced(env: &Env<'_>) {
    let url = env.harness.fresh_url();
    let a = open(&url, "c").await;
    let b = open(&url, "c").await;
    let ttl = env.harness.ttl();
    let rounds = if ttl >= Duration::from_secs(1) { 8 } else { 25 };
    let k = key("race", "", "counter");
    let mut value: u64 = 0;
    for round in 0..rounds {
        let lease = win_within(a.as_ref(), "a", ttl, ttl * 5).await;
        let token = lease.token();
        // `a` writes as fast as it can until it is fenced.
        let writer = {
            let a = a.clone();
            let k = k.clone();
            let start = value;
            tokio::spawn(async move {
                let mut acked = start;
                let mut next = start + 1;
                loop {
                    match a.write(token, &k, next.to_be_bytes().to_vec()).await {
                        Ok(()) => {
                            acked = next;
                            next += 1;
                        }
                        Err(err) if err.is_fenced() => return acked,
                        Err(err) => {
                            panic!("round {round}: unexpected write error {}", err.report())
                        }
                    }
                }
            })
        };
        // End `a`'s leadership the way each backend loses it to a stalled holder.
        if env.harness.lease_is_a_process_lock() {
            tokio::time::sleep(Duration::from_millis(20 + round as u64 * 3)).await;
            drop(lease);
        } else {
            std::mem::forget(lease); // never renewed, never resigned: it must expire
        }
        let b_lease = win_within(b.as_ref(), "b", ttl, ttl * 5).await;
        let seen = u64::from_be_bytes(b.read(&k).await.unwrap().try_into().unwrap());
        let last_acked = writer.await.unwrap();
        assert!(
            last_acked <= seen,
            "round {round}: a's write {last_acked} was acknowledged after b took over and read {seen}"
        );
        assert_eq!(
            u64::from_be_bytes(b.read(&k).await.unwrap().try_into().unwrap()),
            seen,
            "round {round}: a fenced write changed the value after the takeover"
        );
        value = seen;
        b_lease.resign().await.unwrap();
    }
}

/// Two clusters in one store keep separate keys and leases.
pub async fn clusters_on_one_store_are_separate(env: &Env<'_>) {
    let url = env.harness.fresh_url();
    let one = open(&url, "one").await;
    let two = open(&url, "two").await;
    let lease_one = try_win(one.as_ref(), "a", Duration::from_secs(30))
        .await
        .unwrap();
    one.write(lease_one.token(), &key("p", "", "k"), b"one".to_vec())
        .await
        .unwrap();
    if env.harness.lease_is_a_process_lock() {
        // One SQLite file has one lock: a second cluster cannot lead while the first does.
        assert!(
            try_win(two.as_ref(), "b", Duration::from_secs(30))
                .await
                .is_none()
        );
        drop(lease_one);
    }
    let lease_two = try_win(two.as_ref(), "b", Duration::from_secs(30))
        .await
        .expect("separate lease");
    let history: Vec<_> = two
        .epoch_history(10)
        .await
        .unwrap()
        .into_iter()
        .map(|record| (record.epoch, record.holder))
        .collect();
    assert_eq!(
        history,
        [(lease_two.token().epoch(), "b".to_owned())],
        "epochs are per cluster"
    );
    assert_eq!(
        two.read(&key("p", "", "k")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(two.list(&ns("p", "")).await.unwrap().is_empty());
    two.write(lease_two.token(), &key("p", "", "k"), b"two".to_vec())
        .await
        .unwrap();
    // Tokens of one cluster mean nothing in the other.
    let err = two
        .write(FencingToken::new(Epoch(5)), &key("p", "", "x"), vec![])
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
}

/// The cluster driver on the real backend: renewals keep the leadership for many TTLs;
/// when renewals hang it stops on its own clock by `ttl - margin`; the lease then passes
/// to another instance with a higher epoch.
pub async fn campaigners_and_self_fencing_on_the_backend(env: &Env<'_>) {
    let url = env.harness.fresh_url();
    let timings = env.harness.timings();
    let faulty = Arc::new(FaultyStore::new(open(&url, "c").await));
    let faults = faulty.faults();
    let campaigner = Campaigner::new(faulty.clone(), HolderId::new("a").unwrap(), timings).unwrap();
    let leadership = campaigner.campaign().await.unwrap();
    let mut status = leadership.status();
    tokio::time::sleep(timings.ttl * 3).await;
    assert_eq!(
        *status.borrow_and_update(),
        LeadershipStatus::Leading,
        "renewals keep it"
    );
    let token = leadership.token().unwrap();
    faulty
        .write(token, &key("p", "", "k"), vec![1])
        .await
        .unwrap();

    faults.set_renew(Fault::Stall);
    let stalled_at = Instant::now();
    let reason = tokio::time::timeout(timings.ttl * 3, leadership.lost())
        .await
        .expect("stopped on its own clock");
    assert!(
        matches!(reason, LossReason::DeadlinePassed { .. }),
        "{reason}"
    );
    assert!(
        stalled_at.elapsed() <= timings.ttl * 2,
        "stopped after {:?}",
        stalled_at.elapsed()
    );
    assert!(leadership.token().unwrap_err().is_fenced());
    let state = campaigner.state().borrow().clone();
    assert!(
        matches!(
            &state,
            ElectionState::Lost {
                reason: LossReason::DeadlinePassed { .. },
                ..
            }
        ),
        "{state:?}"
    );
    // The stuck renewal returns (a process would exit instead), and the lease passes on.
    faults.set_renew(Fault::None);
    let other = open(&url, "c").await;
    let lease = win_within(other.as_ref(), "b", timings.ttl, timings.ttl * 6).await;
    assert!(lease.token().epoch() > token.epoch());
    let err = faulty
        .write(token, &key("p", "", "k"), vec![2])
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
}

/// A holder process paused with SIGSTOP past its TTL writes nothing once it resumes: it
/// finds its deadline passed and exits as fenced. Where the lease expires, another
/// instance takes over meanwhile; with SQLite's lock, nobody can until it exits.
///
/// A write the holder sent before the pause may still complete (and be acknowledged
/// after it resumes); it reached the store before the takeover, so the new leader reads
/// it. The checks: every acknowledged value is at most what the new leader read after
/// taking over, and the value never changes after that.
pub async fn a_holder_paused_past_its_ttl_is_fenced_when_it_resumes(env: &Env<'_>) {
    let url = env.harness.fresh_url();
    let timings = env.harness.timings();
    let mut holder =
        HolderProcess::spawn(env.holder_binary, &url, "paused", timings, WriteMode::Seq);
    let epoch = holder.wait_leader(Duration::from_secs(20));
    holder.wait_acked(20, Duration::from_secs(20));
    holder.signal(Signal::SIGSTOP);
    let seq = key("holder", "", "seq");
    let read_seq = |store: Arc<dyn Store>| {
        let seq = seq.clone();
        async move { u64::from_be_bytes(store.read(&seq).await.unwrap().try_into().unwrap()) }
    };
    let other = open(&url, "c").await;

    let takeover = if env.harness.lease_is_a_process_lock() {
        tokio::time::sleep(timings.ttl * 2).await;
        assert!(
            try_win(other.as_ref(), "other", timings.ttl)
                .await
                .is_none(),
            "the paused process keeps SQLite's lock"
        );
        None
    } else {
        let lease = win_within(other.as_ref(), "other", timings.ttl, timings.ttl * 5).await;
        assert!(lease.token().epoch().0 > epoch);
        let seen = read_seq(other.clone()).await;
        other
            .write(
                lease.token(),
                &key("holder", "", "marker"),
                b"new leader".to_vec(),
            )
            .await
            .unwrap();
        Some((lease, seen))
    };

    holder.signal(Signal::SIGCONT);
    let status = holder.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(EXIT_FENCED),
        "output: {:?}",
        holder.lines()
    );
    assert!(holder.lines().iter().any(|line| line.starts_with("FENCED")));
    let last_acked = holder.acked().into_iter().max().unwrap();

    match takeover {
        Some((lease, seen)) => {
            assert!(
                last_acked <= seen,
                "write {last_acked} was acknowledged, but the new leader read {seen}"
            );
            assert_eq!(
                read_seq(other.clone()).await,
                seen,
                "the old holder wrote after the takeover"
            );
            assert_eq!(
                other.read(&key("holder", "", "marker")).await.unwrap(),
                b"new leader"
            );
            drop(lease);
        }
        None => {
            // It exited, so its lock is gone: the other instance wins and finds exactly
            // what was acknowledged (nothing was written after the resume).
            let lease =
                win_within(other.as_ref(), "other", timings.ttl, Duration::from_secs(5)).await;
            assert!(lease.token().epoch().0 > epoch);
            assert_eq!(read_seq(other.clone()).await, last_acked);
        }
    }
}

/// SIGKILL of a holder in the middle of a write loop loses no acknowledged write, and the
/// next leader takes over with a higher epoch. Rounds go on until
/// [`MID_WRITE_KILLS`] holders were killed while writing (a starved machine may make a
/// holder fence itself first, which proves nothing about a kill); fewer than
/// [`REQUIRED_MID_WRITE_KILLS`] in [`MAX_KILL_ROUNDS`] rounds fails the test.
pub async fn kill_9_loses_no_acknowledged_write(env: &Env<'_>) {
    let url = env.harness.fresh_url();
    let timings = env.harness.timings();
    let other = open(&url, "c").await;
    let mut last_epoch = 0;
    let mut killed_writing = 0;
    let mut rounds = 0;
    while killed_writing < MID_WRITE_KILLS && rounds < MAX_KILL_ROUNDS {
        let round = rounds;
        rounds += 1;
        let mut holder = HolderProcess::spawn(
            env.holder_binary,
            &url,
            &format!("victim{round}"),
            timings,
            WriteMode::Keys,
        );
        let epoch = holder.wait_leader(Duration::from_secs(20));
        assert!(epoch > last_epoch);
        last_epoch = epoch;
        let fenced = holder.wait_acked_unless_fenced(
            30 + rand::random::<u32>() as usize % 100,
            Duration::from_secs(30),
        );
        holder.signal(Signal::SIGKILL);
        let status = holder.wait_exit(Duration::from_secs(10));
        let fenced = fenced || holder.lines().iter().any(|line| line.starts_with("FENCED"));
        if !fenced && status.signal() == Some(Signal::SIGKILL as i32) {
            killed_writing += 1;
        } else {
            // What it acknowledged before it stopped must survive all the same.
            eprintln!("round {round}: the holder fenced itself before the kill ({status})");
        }
        let acked = holder.acked();
        let lease = win_within(other.as_ref(), "survivor", timings.ttl, timings.ttl * 6).await;
        assert!(lease.token().epoch().0 > epoch);
        let stored = other.list(&ns("keys", "")).await.unwrap();
        for n in &acked {
            assert!(
                stored.contains(&format!("k{n}")),
                "round {round}: acknowledged write {n} lost"
            );
        }
        lease.resign().await.unwrap();
    }
    assert!(
        killed_writing >= REQUIRED_MID_WRITE_KILLS,
        "only {killed_writing} of {rounds} holders were killed while writing (the others fenced \
         themselves first): too few to show anything about a kill in the middle of a write"
    );
}

/// Holders killed while writing that [`kill_9_loses_no_acknowledged_write`] aims for.
pub const MID_WRITE_KILLS: usize = 3;
/// Holders killed while writing that it requires.
pub const REQUIRED_MID_WRITE_KILLS: usize = 2;
/// Rounds it runs at most.
pub const MAX_KILL_ROUNDS: usize = 10;
