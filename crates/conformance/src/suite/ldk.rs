//! LDK's `KVStore` and `KVStoreSync` over the backend: key rules, call order, fencing.

use futures::FutureExt;
use lightning::util::persist::{KVStore, KVStoreSync};
use phalanx_store::ErrorKind;

use super::{Env, key, ldk_over_a_leadership, ns};

/// LDK's key rules hold at the LDK interface over every backend.
pub async fn invalid_keys_are_refused(env: &Env<'_>) {
    let (_place, store, _leadership, kv) = ldk_over_a_leadership(env).await;
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

/// LDK's ordering rule holds over the backend: the last call to a key wins, however the
/// futures are polled.
pub async fn ldk_kv_store_orders_writes_by_call(env: &Env<'_>) {
    let (_place, store, _leadership, kv) = ldk_over_a_leadership(env).await;
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
    let (place, _store, leadership, kv) = ldk_over_a_leadership(env).await;
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
    let reader = env.reopen(&place).await;
    assert_eq!(reader.read(&key("p", "", "k")).await.unwrap(), b"before");
}
