//! The adapter's own logic (ordering, retries, lazy removals, fencing hand-off) over an
//! in-process store.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use async_trait::async_trait;
use futures::FutureExt;
use lightning::util::persist::KVStoreSync;

use super::*;
use crate::{Epoch, ErrorKind};

/// An in-process store for the adapter's own logic (ordering, fencing hand-off). The
/// backends are tested on real servers by `phalanx-conformance`.
#[derive(Default)]
struct MemoryStore {
    current_epoch: AtomicU64,
    values: Mutex<BTreeMap<StoreKey, Vec<u8>>>,
    /// Transactions applied.
    batches: AtomicU64,
    /// How many of the next transactions fail as transient (`u64::MAX`: all).
    transient_failures: AtomicU64,
    /// Transactions never answer while set.
    stalled: AtomicBool,
    /// Transactions fail as permanent (a full disk, a refused permission) while set.
    refusing: AtomicBool,
}

#[async_trait]
impl StateStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn read(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError> {
        self.values
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })
    }

    async fn snapshot(&self) -> Result<Vec<(StoreKey, Vec<u8>)>, StoreError> {
        Ok(self
            .values
            .lock()
            .unwrap()
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    async fn list(&self, namespace: &Namespace) -> Result<Vec<String>, StoreError> {
        let values = self.values.lock().unwrap();
        Ok(values
            .keys()
            .filter(|key| key.namespace() == namespace)
            .map(|key| key.key().to_owned())
            .collect())
    }

    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        // Yield once so that futures polled together really interleave.
        tokio::task::yield_now().await;
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.refusing.load(Ordering::SeqCst) {
            return Err(StoreError::permanent("apply", "the disk is full", None));
        }
        let failing = self.transient_failures.load(Ordering::SeqCst);
        if failing > 0 {
            if failing != u64::MAX {
                self.transient_failures.fetch_sub(1, Ordering::SeqCst);
            }
            return Err(StoreError::transient("apply", "the store is away", None));
        }
        if token.epoch().0 != self.current_epoch.load(Ordering::SeqCst) {
            return Err(StoreError::fenced("stale epoch"));
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        let mut values = self.values.lock().unwrap();
        for op in crate::check_batch(ops)? {
            match op {
                BatchOp::Put { key, value } => {
                    values.insert(key, value);
                }
                BatchOp::Delete { key } => {
                    values.remove(&key);
                }
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct RecordingFence {
    epoch: u64,
    fenced: AtomicBool,
}

impl FenceSource for RecordingFence {
    fn current_token(&self) -> Result<FencingToken, StoreError> {
        if self.fenced.load(Ordering::SeqCst) {
            return Err(StoreError::fenced("leadership lost"));
        }
        Ok(FencingToken::new(Epoch(self.epoch)))
    }

    fn report_fenced(&self, _token: FencingToken, _reason: &str) {
        self.fenced.store(true, Ordering::SeqCst);
    }
}

fn adapter(epoch: u64) -> (LdkKvStore, Arc<MemoryStore>, Arc<RecordingFence>) {
    let store = Arc::new(MemoryStore::default());
    store.current_epoch.store(epoch, Ordering::SeqCst);
    let fence = Arc::new(RecordingFence {
        epoch,
        ..Default::default()
    });
    let kv = LdkKvStore::new(
        store.clone(),
        fence.clone(),
        tokio::runtime::Handle::current(),
    );
    (kv, store, fence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_call_wins_even_when_polled_first() {
    let (kv, _store, _fence) = adapter(1);
    let first = KVStore::write(&kv, "ns", "", "k", b"first".to_vec());
    let second = KVStore::write(&kv, "ns", "", "k", b"second".to_vec());
    // Run the second call's future to completion before the first is ever polled.
    second.await.unwrap();
    first.await.unwrap();
    let value = KVStore::read(&kv, "ns", "", "k").await.unwrap();
    assert_eq!(value, b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_after_write_in_call_order() {
    let (kv, _store, _fence) = adapter(1);
    let write = KVStore::write(&kv, "ns", "", "k", b"v".to_vec());
    let remove = KVStore::remove(&kv, "ns", "", "k", false);
    remove.await.unwrap();
    write.await.unwrap();
    let err = KVStore::read(&kv, "ns", "", "k").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_while_the_lease_holds() {
    let (kv, store, _fence) = adapter(1);
    store.transient_failures.store(3, Ordering::SeqCst);
    KVStore::write(&kv, "ns", "", "k", b"v".to_vec())
        .await
        .expect("the write went through once the store answered");
    assert_eq!(KVStore::read(&kv, "ns", "", "k").await.unwrap(), b"v");
    assert_eq!(store.transient_failures.load(Ordering::SeqCst), 0);
    assert_eq!(store.batches.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_end_when_the_leadership_does() {
    let (kv, store, fence) = adapter(1);
    store.transient_failures.store(u64::MAX, Ordering::SeqCst);
    let err = write_until_the_leadership_ends(&kv, &fence).await;
    assert!(err.to_string().contains("leadership lost"), "{err}");
    assert_eq!(
        store.batches.load(Ordering::SeqCst),
        0,
        "nothing was written"
    );
}

/// Starts a write, checks that it is still waiting 200 ms later, ends the
/// leadership (its local deadline passes) and returns the write's error.
async fn write_until_the_leadership_ends(kv: &LdkKvStore, fence: &RecordingFence) -> io::Error {
    let write = tokio::spawn(KVStore::write(kv, "ns", "", "k", b"v".to_vec()));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !write.is_finished(),
        "the write keeps waiting while the lease holds"
    );
    fence.fenced.store(true, Ordering::SeqCst);
    tokio::time::timeout(std::time::Duration::from_secs(5), write)
        .await
        .expect("the write ended with the leadership")
        .unwrap()
        .expect_err("the write failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_store_never_answers_is_abandoned_when_the_leadership_ends() {
    let (kv, store, fence) = adapter(1);
    store.stalled.store(true, Ordering::SeqCst);
    let err = write_until_the_leadership_ends(&kv, &fence).await;
    assert!(err.to_string().contains("leadership lost"), "{err}");
    assert_eq!(store.batches.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_removes_are_applied_in_batches() {
    let (kv, store, _fence) = adapter(1);
    for i in 0..150 {
        KVStore::write(&kv, "ns", "sub", &format!("k{i}"), vec![1])
            .await
            .unwrap();
    }
    let batches_before = store.batches.load(Ordering::SeqCst);
    for i in 0..150 {
        // Completes at once: the removal is only queued.
        KVStore::remove(&kv, "ns", "sub", &format!("k{i}"), true)
            .await
            .unwrap();
    }
    kv.flush_lazy_removes().await;
    assert!(KVStore::list(&kv, "ns", "sub").await.unwrap().is_empty());
    let batches = store.batches.load(Ordering::SeqCst) - batches_before;
    // 150 removals in chunks of 64: three transactions (one more if the timer fired
    // in the middle of the burst), never one per key.
    assert!((3..=6).contains(&batches), "{batches} transactions");
    assert!(kv.inner.slots.lock().unwrap().is_empty(), "slots leak");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_removes_flush_on_their_own() {
    let (kv, _store, _fence) = adapter(1);
    KVStore::write(&kv, "ns", "", "k", vec![1]).await.unwrap();
    KVStore::remove(&kv, "ns", "", "k", true).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !KVStore::list(&kv, "ns", "").await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never flushed");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_sees_every_transaction_and_its_outcome() {
    let store = Arc::new(MemoryStore::default());
    store.current_epoch.store(1, Ordering::SeqCst);
    let fence = Arc::new(RecordingFence {
        epoch: 1,
        ..Default::default()
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let kv = LdkKvStore::observed(
        store.clone(),
        fence,
        tokio::runtime::Handle::current(),
        Some(Arc::new(move |report: &WriteReport| {
            let written: Vec<(String, usize)> = report
                .written
                .iter()
                .map(|(key, bytes)| (key.to_string(), *bytes))
                .collect();
            record.lock().unwrap().push((report.committed, written))
        })),
        None,
    );
    KVStore::write(&kv, "ns", "", "a", vec![1; 300])
        .await
        .unwrap();
    KVStore::remove(&kv, "ns", "", "a", false).await.unwrap();
    store.current_epoch.store(2, Ordering::SeqCst);
    KVStore::write(&kv, "ns", "", "b", vec![1; 7])
        .await
        .unwrap_err();
    let key = |key: &str| StoreKey::new("ns", "", key).unwrap().to_string();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (true, vec![(key("a"), 300)]),
            (true, vec![]),
            (false, vec![(key("b"), 7)]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_that_fails_for_good_is_observed() {
    let store = Arc::new(MemoryStore::default());
    store.current_epoch.store(1, Ordering::SeqCst);
    let fence = Arc::new(RecordingFence {
        epoch: 1,
        ..Default::default()
    });
    let failures = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&failures);
    let kv = LdkKvStore::observed(
        store.clone(),
        fence,
        tokio::runtime::Handle::current(),
        None,
        Some(Arc::new(move |err: &StoreError| {
            record.lock().unwrap().push(err.kind())
        })),
    );
    // Retried transient failures and successes are not failures.
    store.transient_failures.store(2, Ordering::SeqCst);
    KVStore::write(&kv, "ns", "", "a", vec![1]).await.unwrap();
    assert!(failures.lock().unwrap().is_empty());

    store.refusing.store(true, Ordering::SeqCst);
    KVStore::write(&kv, "ns", "", "a", vec![2])
        .await
        .unwrap_err();
    KVStore::remove(&kv, "ns", "", "a", true).await.unwrap();
    kv.flush_lazy_removes().await;
    store.refusing.store(false, Ordering::SeqCst);
    store.current_epoch.store(2, Ordering::SeqCst);
    KVStore::write(&kv, "ns", "", "b", vec![1])
        .await
        .unwrap_err();
    assert_eq!(
        *failures.lock().unwrap(),
        [
            ErrorKind::Permanent,
            ErrorKind::Permanent,
            ErrorKind::Fenced
        ],
        "the refused write, the refused lazy removal and the fenced write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_lazy_remove_survives_the_flush() {
    let (kv, _store, _fence) = adapter(1);
    KVStore::write(&kv, "ns", "", "k", b"old".to_vec())
        .await
        .unwrap();
    KVStore::remove(&kv, "ns", "", "k", true).await.unwrap();
    KVStore::write(&kv, "ns", "", "k", b"new".to_vec())
        .await
        .unwrap();
    kv.flush_lazy_removes().await;
    assert_eq!(KVStore::read(&kv, "ns", "", "k").await.unwrap(), b"new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_lazy_removes_are_reported_and_leave_the_keys() {
    let (kv, store, fence) = adapter(1);
    KVStore::write(&kv, "ns", "", "k", vec![1]).await.unwrap();
    store.current_epoch.store(2, Ordering::SeqCst);
    KVStore::remove(&kv, "ns", "", "k", true).await.unwrap();
    kv.flush_lazy_removes().await;
    assert!(fence.fenced.load(Ordering::SeqCst));
    assert_eq!(KVStore::read(&kv, "ns", "", "k").await.unwrap(), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_interleaved_writes_end_with_the_last_call() {
    let (kv, _store, _fence) = adapter(1);
    let futures: Vec<_> = (0..200u32)
        .map(|i| KVStore::write(&kv, "ns", "", "k", i.to_be_bytes().to_vec()).boxed())
        .collect();
    // Poll them in reverse creation order, all at once.
    futures::future::try_join_all(futures.into_iter().rev())
        .await
        .unwrap();
    let value = KVStore::read(&kv, "ns", "", "k").await.unwrap();
    assert_eq!(value, 199u32.to_be_bytes());
    assert!(kv.inner.slots.lock().unwrap().is_empty(), "slots leak");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_write_is_reported_and_stops_later_writes() {
    let (kv, store, fence) = adapter(1);
    KVStore::write(&kv, "ns", "", "k", b"a".to_vec())
        .await
        .unwrap();
    store.current_epoch.store(2, Ordering::SeqCst);
    let err = KVStore::write(&kv, "ns", "", "k", b"b".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    assert!(fence.fenced.load(Ordering::SeqCst));
    // The next write is refused locally, even though the store would take epoch 1 again.
    store.current_epoch.store(1, Ordering::SeqCst);
    let err = KVStore::write(&kv, "ns", "", "k", b"c".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!(KVStore::read(&kv, "ns", "", "k").await.unwrap(), b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_keys_are_refused_before_the_store() {
    let (kv, _store, _fence) = adapter(1);
    let err = KVStore::write(&kv, "", "sec", "k", vec![])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let err = KVStore::read(&kv, "ns", "", "a/b").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn sync_calls_work_outside_and_inside_a_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::default());
    store.current_epoch.store(7, Ordering::SeqCst);
    let fence = Arc::new(RecordingFence {
        epoch: 7,
        ..Default::default()
    });
    let kv = LdkKvStore::new(store, fence, runtime.handle().clone());
    KVStoreSync::write(&kv, "ns", "sub", "k", b"outside".to_vec()).unwrap();
    assert_eq!(
        KVStoreSync::read(&kv, "ns", "sub", "k").unwrap(),
        b"outside"
    );
    let inside = kv.clone();
    runtime.block_on(async move {
        tokio::spawn(async move {
            KVStoreSync::write(&inside, "ns", "sub", "k2", b"inside".to_vec()).unwrap();
            let mut keys = KVStoreSync::list(&inside, "ns", "sub").unwrap();
            keys.sort();
            assert_eq!(keys, ["k", "k2"]);
        })
        .await
        .unwrap();
    });
}
