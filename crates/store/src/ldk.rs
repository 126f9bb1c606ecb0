//! LDK's `KVStore` and `KVStoreSync` on top of a fenced [`StateStore`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lightning::io;
use lightning::util::persist::{KVStore, KVStoreSync};

use crate::{BatchOp, FenceSource, FencingToken, Namespace, StateStore, StoreError, StoreKey};

/// The last version written to one key, behind the lock that orders writes to it.
type KeySlot = Arc<tokio::sync::Mutex<u64>>;

/// LDK's key-value store traits over a [`StateStore`], bound to the current leadership.
///
/// Every mutation takes its fencing token from the [`FenceSource`] at the moment it runs,
/// so once the leadership lapses locally no further write is even sent; a write the store
/// refuses as fenced is reported back to the source, which then treats the leadership as
/// lost.
///
/// # Ordering
/// LDK requires that writes and removals of one key take effect in the order of the calls
/// that created their futures, however the futures are polled. Each call takes a version
/// number when it is made; the futures of one key run one at a time, and a future whose
/// version is older than the last one applied to its key completes without writing (its
/// value was superseded), as LDK's own filesystem store does.
///
/// The version also travels to the store with each mutation
/// ([`FencingToken::sequenced`]), which refuses to let a mutation change a key that a
/// newer one changed: a write that timed out, whose retry landed, cannot land after it.
///
/// # Transient failures
/// A write or removal the store could not answer (transient) is retried, with a short
/// backoff, for as long as the [`FenceSource`] still gives a token: an etcd member lost
/// or a reconnect costs a pause, not the node. Once the leadership's local deadline
/// passes the call fails, and the caller stops (safety rules 2 and 4). Fenced and
/// permanent failures are never retried.
///
/// # Lazy removals
/// A removal LDK marks `lazy` (the monitor persister's clean-up of consolidated updates)
/// completes at once and is queued; a flusher on `runtime` applies the queue a few
/// milliseconds later as ONE fenced batch, so clearing a hundred stale updates costs one
/// transaction instead of a hundred. Ordering still holds: a queued removal carries the
/// version of its call, and is skipped for a key a later call already wrote. As LDK's
/// contract allows, a lazy removal may be lost if the process dies before the flush, and a
/// read in the meantime may still see the old value.
///
/// # Blocking use
/// [`KVStoreSync`] runs each operation on `runtime` (which must be a multi-threaded
/// runtime, or a runtime other than the caller's) and blocks the calling thread until it
/// finishes. Called from a worker of a multi-threaded runtime it uses
/// `tokio::task::block_in_place` so other tasks keep running.
#[derive(Clone)]
pub struct LdkKvStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn StateStore>,
    fence: Arc<dyn FenceSource>,
    runtime: tokio::runtime::Handle,
    next_version: AtomicU64,
    slots: Mutex<HashMap<StoreKey, KeySlot>>,
    lazy_removes: Mutex<LazyRemoves>,
    write_observer: Option<WriteObserver>,
    failure_observer: Option<FailureObserver>,
}

/// Told of every transaction the adapter sends to the store: how long it took, and
/// whether it committed. Called on the store's runtime, so it must be quick (a metric).
pub type WriteObserver = Arc<dyn Fn(std::time::Duration, bool) + Send + Sync>;

/// Told of every mutation that failed for good: fenced, permanent (a value too large, a
/// full disk, a refused permission), or transient past the leadership's deadline. LDK's
/// callers do not all stop on such a failure (the background processor's manager write
/// ends the processor; a wallet write is reported to whoever asked), so a node hands in
/// an observer that stops it: an instance that cannot persist must not keep its lease.
/// Called on the store's runtime, with the error.
pub type FailureObserver = Arc<dyn Fn(&StoreError) + Send + Sync>;

/// Removals waiting for the flusher, each with the version and slot taken at its call (the
/// slot stays in the map while referenced, so later calls to the key see the same one).
#[derive(Default)]
struct LazyRemoves {
    pending: Vec<(StoreKey, u64, KeySlot)>,
    flush_scheduled: bool,
}

/// A key with its removal version, its slot and the slot's lock, held by the flusher.
type HeldSlot = (StoreKey, u64, KeySlot, tokio::sync::OwnedMutexGuard<u64>);

/// Removals per transaction: well inside etcd's default `--max-txn-ops` of 128.
const LAZY_REMOVE_BATCH: usize = 64;

/// How long the flusher waits for the rest of a burst of lazy removals.
const LAZY_REMOVE_DELAY: std::time::Duration = std::time::Duration::from_millis(5);
/// The first pause before a transient write failure is retried; it doubles up to
/// [`RETRY_MAX_PAUSE`] (the retries end with the leadership's local deadline).
const RETRY_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);
const RETRY_MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(400);
/// How often a transaction the store has not answered yet checks that the leadership
/// still holds.
const LEADERSHIP_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

impl LdkKvStore {
    /// Wraps `store`, writing with tokens from `fence`, running blocking calls on `runtime`.
    pub fn new(
        store: Arc<dyn StateStore>,
        fence: Arc<dyn FenceSource>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self::observed(store, fence, runtime, None, None)
    }

    /// As [`Self::new`], reporting every transaction sent to the store to
    /// `write_observer` and every mutation that failed for good to `failure_observer`.
    pub fn observed(
        store: Arc<dyn StateStore>,
        fence: Arc<dyn FenceSource>,
        runtime: tokio::runtime::Handle,
        write_observer: Option<WriteObserver>,
        failure_observer: Option<FailureObserver>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                fence,
                runtime,
                next_version: AtomicU64::new(1),
                slots: Mutex::new(HashMap::new()),
                lazy_removes: Mutex::new(LazyRemoves::default()),
                write_observer,
                failure_observer,
            }),
        }
    }

    /// The store underneath.
    pub fn state_store(&self) -> &Arc<dyn StateStore> {
        &self.inner.store
    }

    fn mutation(
        &self,
        key: Result<StoreKey, StoreError>,
        value: Option<Vec<u8>>,
    ) -> impl Future<Output = Result<(), io::Error>> + 'static + Send {
        // The version and the slot are taken now, at call time: that is what fixes the
        // order of writes to one key.
        let prepared = key.map(|key| {
            let version = self.inner.next_version.fetch_add(1, Ordering::Relaxed);
            let slot = self.inner.slot(&key);
            (key, version, slot)
        });
        let inner = Arc::clone(&self.inner);
        async move {
            let (key, version, slot) = prepared?;
            let result = inner.run_mutation(&key, version, &slot, value).await;
            inner.release_slot(&key, slot);
            result.map_err(io::Error::from)
        }
    }

    /// Queues a lazy removal and makes sure a flush will run.
    fn queue_lazy_remove(&self, key: StoreKey) {
        let version = self.inner.next_version.fetch_add(1, Ordering::Relaxed);
        let slot = self.inner.slot(&key);
        let mut queue = self
            .inner
            .lazy_removes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        queue.pending.push((key, version, slot));
        if !queue.flush_scheduled {
            queue.flush_scheduled = true;
            let inner = Arc::clone(&self.inner);
            self.inner.runtime.spawn(async move {
                tokio::time::sleep(LAZY_REMOVE_DELAY).await;
                inner.flush_lazy_removes().await;
            });
        }
    }

    /// Applies every queued lazy removal now (the flusher does this on its own shortly
    /// after they are queued). Failures are logged, not returned: the keys simply stay.
    pub async fn flush_lazy_removes(&self) {
        let inner = Arc::clone(&self.inner);
        let _ = self
            .on_runtime(async move {
                inner.flush_lazy_removes().await;
                Ok(())
            })
            .await;
    }

    /// Runs `future` on the store's runtime and waits for its outcome from anywhere.
    ///
    /// Store clients create connections lazily and spawn their drivers on the runtime of
    /// whoever asked first (deadpool-postgres does). Run from the node's runtime, such a
    /// connection would stop making progress whenever the node's workers are blocked on
    /// LDK's locks, which is exactly when a synchronous monitor write waits for it.
    fn on_runtime<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, io::Error>> + Send + 'static,
    ) -> impl Future<Output = Result<T, io::Error>> + Send + 'static {
        let task = self.inner.runtime.spawn(future);
        async move {
            task.await.unwrap_or_else(|err| {
                Err(io::Error::new(
                    io::ErrorKind::Other,
                    format!("the store task failed: {err}"),
                ))
            })
        }
    }

    fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, io::Error>> + Send + 'static,
    ) -> Result<T, io::Error> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.inner.runtime.spawn(async move {
            let _ = sender.send(future.await);
        });
        let wait = move || {
            receiver.recv().unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::Other,
                    "the store's runtime stopped before the operation finished",
                ))
            })
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

impl Inner {
    fn slot(&self, key: &StoreKey) -> KeySlot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(slots.entry(key.clone()).or_default())
    }

    /// Drops the slot of a key nobody else is writing, so the map does not grow forever.
    fn release_slot(&self, key: &StoreKey, slot: KeySlot) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and ours. Anyone else who took the slot holds a
        // third, and new takers need the map lock we hold.
        if Arc::strong_count(&slot) == 2 {
            slots.remove(key);
        }
    }

    async fn flush_lazy_removes(&self) {
        let pending = {
            let mut queue = self.lazy_removes.lock().unwrap_or_else(|e| e.into_inner());
            queue.flush_scheduled = false;
            std::mem::take(&mut queue.pending)
        };
        if pending.is_empty() {
            return;
        }
        // One entry per key, with the version of its last removal call.
        let mut latest: HashMap<StoreKey, (u64, KeySlot)> = HashMap::new();
        for (key, version, slot) in pending {
            let entry = latest.entry(key).or_insert((version, slot));
            // The same key's calls share one slot; the extra reference is just dropped.
            entry.0 = entry.0.max(version);
        }
        let mut keys: Vec<(StoreKey, (u64, KeySlot))> = latest.into_iter().collect();
        // A fixed order of lock taking; single mutations only ever hold one slot.
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let mut held: Vec<HeldSlot> = Vec::with_capacity(keys.len());
        for (key, (version, slot)) in keys {
            let guard = Arc::clone(&slot).lock_owned().await;
            held.push((key, version, slot, guard));
        }
        let ops: Vec<BatchOp> = held
            .iter()
            .filter(|(_, version, _, last_applied)| **last_applied <= *version)
            .map(|(key, ..)| BatchOp::Delete { key: key.clone() })
            .collect();
        let count = ops.len();
        // Every key in the batch was last changed by a call older than its removal (the
        // filter above), so the newest removal's version orders the whole batch.
        let newest = held
            .iter()
            .map(|(_, version, ..)| *version)
            .max()
            .unwrap_or(0);
        let outcome = match self.fence.current_token() {
            Ok(token) => {
                let token = token.sequenced(newest);
                let mut outcome = Ok(());
                // Chunks stay inside etcd's default limit of operations per transaction.
                for chunk in ops.chunks(LAZY_REMOVE_BATCH) {
                    if let Err(err) = self.apply(token, chunk.to_vec()).await {
                        outcome = Err((token, err));
                        break;
                    }
                }
                outcome
            }
            Err(err) => {
                tracing::warn!(error = %err.report(), "lazy removals dropped: no leadership");
                return self.release_all(held);
            }
        };
        match outcome {
            Ok(()) => {
                for (_, version, _, last_applied) in held.iter_mut() {
                    if **last_applied <= *version {
                        **last_applied = *version;
                    }
                }
                tracing::debug!(count, "lazy removals applied");
            }
            Err((token, err)) => {
                if err.is_fenced() {
                    self.fence.report_fenced(token, &err.to_string());
                }
                // A lazy removal that did not answer may simply be lost (LDK allows it);
                // one the store refused is a store that cannot be written.
                if !err.is_transient() {
                    self.observe_failure(&err);
                }
                tracing::warn!(epoch = %token.epoch(), count, error = %err.report(), "lazy removals failed; the keys stay");
            }
        }
        self.release_all(held);
    }

    fn release_all(&self, held: Vec<HeldSlot>) {
        for (key, _, slot, guard) in held {
            drop(guard);
            self.release_slot(&key, slot);
        }
    }

    async fn run_mutation(
        &self,
        key: &StoreKey,
        version: u64,
        slot: &KeySlot,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut last_applied = slot.lock().await;
        if *last_applied > version {
            // A later call to this key already took effect; this one is superseded.
            return Ok(());
        }
        let op = match value {
            Some(value) => BatchOp::Put {
                key: key.clone(),
                value,
            },
            None => BatchOp::Delete { key: key.clone() },
        };
        let mut pause = RETRY_FIRST_PAUSE;
        loop {
            // The call's version orders it in the store too: if this attempt times out
            // and a retry or a later call lands, this one can no longer land after them.
            let token = self.fence.current_token()?.sequenced(version);
            match self.apply(token, vec![op.clone()]).await {
                Ok(()) => {
                    *last_applied = version;
                    return Ok(());
                }
                // A store that did not answer (a lost connection, an etcd member down,
                // a leader election) may answer the same write a moment later. Putting or
                // deleting the same key again is idempotent, and the store still checks
                // the token: retrying is safe for as long as the leadership is, and the
                // next `current_token` ends the loop once its local deadline passes.
                Err(err) if err.is_transient() && self.fence.current_token().is_ok() => {
                    tracing::warn!(epoch = %token.epoch(), %key, error = %err.report(), retry_in = ?pause, "store mutation failed; retrying while the lease holds");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX_PAUSE);
                }
                Err(err) => {
                    self.note_failure(token, key, &err);
                    return Err(err);
                }
            }
        }
    }

    /// One transaction, timed for the observer. It is abandoned, as fenced, once the
    /// leadership ends: a store that does not answer (cut off, black-holed) would hold
    /// the caller for the whole operation timeout, and LDK calls in while it holds its
    /// locks, which would keep a stopped node from disconnecting its peers. Whether an
    /// abandoned transaction lands or not, the store checked its epoch, and the caller
    /// sees a failure and stops, as after a crash in the middle of a write.
    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let began = std::time::Instant::now();
        let transaction = self.store.apply(token, ops);
        tokio::pin!(transaction);
        let result = loop {
            tokio::select! {
                result = &mut transaction => break result,
                () = tokio::time::sleep(LEADERSHIP_CHECK_INTERVAL) => {
                    if let Err(ended) = self.fence.current_token() {
                        break Err(ended);
                    }
                }
            }
        };
        if let Some(observer) = &self.write_observer {
            observer(began.elapsed(), result.is_ok());
        }
        result
    }

    fn note_failure(&self, token: FencingToken, key: &StoreKey, err: &StoreError) {
        if err.is_fenced() {
            self.fence.report_fenced(token, &err.to_string());
        }
        tracing::error!(epoch = %token.epoch(), %key, error = %err.report(), "store mutation failed");
        self.observe_failure(err);
    }

    fn observe_failure(&self, err: &StoreError) {
        if let Some(observer) = &self.failure_observer {
            observer(err);
        }
    }
}

impl KVStore for LdkKvStore {
    fn read(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
    ) -> impl Future<Output = Result<Vec<u8>, io::Error>> + 'static + Send {
        let key = StoreKey::new(primary_namespace, secondary_namespace, key);
        let store = Arc::clone(&self.inner.store);
        self.on_runtime(async move { Ok(store.read(&key?).await?) })
    }

    fn write(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
        buf: Vec<u8>,
    ) -> impl Future<Output = Result<(), io::Error>> + 'static + Send {
        self.on_runtime(self.mutation(
            StoreKey::new(primary_namespace, secondary_namespace, key),
            Some(buf),
        ))
    }

    fn remove(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
        lazy: bool,
    ) -> impl Future<Output = Result<(), io::Error>> + 'static + Send {
        let key = StoreKey::new(primary_namespace, secondary_namespace, key);
        let queued = match (lazy, key) {
            (true, Ok(key)) => {
                self.queue_lazy_remove(key);
                None
            }
            (_, key) => Some(self.on_runtime(self.mutation(key, None))),
        };
        async move {
            match queued {
                None => Ok(()),
                Some(removal) => removal.await,
            }
        }
    }

    fn list(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
    ) -> impl Future<Output = Result<Vec<String>, io::Error>> + 'static + Send {
        let namespace = Namespace::new(primary_namespace, secondary_namespace);
        let store = Arc::clone(&self.inner.store);
        self.on_runtime(async move { Ok(store.list(&namespace?).await?) })
    }
}

impl KVStoreSync for LdkKvStore {
    fn read(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
    ) -> Result<Vec<u8>, io::Error> {
        self.block_on(KVStore::read(
            self,
            primary_namespace,
            secondary_namespace,
            key,
        ))
    }

    fn write(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
        buf: Vec<u8>,
    ) -> Result<(), io::Error> {
        self.block_on(KVStore::write(
            self,
            primary_namespace,
            secondary_namespace,
            key,
            buf,
        ))
    }

    fn remove(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
        key: &str,
        lazy: bool,
    ) -> Result<(), io::Error> {
        self.block_on(KVStore::remove(
            self,
            primary_namespace,
            secondary_namespace,
            key,
            lazy,
        ))
    }

    fn list(
        &self,
        primary_namespace: &str,
        secondary_namespace: &str,
    ) -> Result<Vec<String>, io::Error> {
        self.block_on(KVStore::list(self, primary_namespace, secondary_namespace))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;
    use futures::FutureExt;

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
            Some(Arc::new(move |_took, committed| {
                record.lock().unwrap().push(committed)
            })),
            None,
        );
        KVStore::write(&kv, "ns", "", "a", vec![1]).await.unwrap();
        KVStore::remove(&kv, "ns", "", "a", false).await.unwrap();
        store.current_epoch.store(2, Ordering::SeqCst);
        KVStore::write(&kv, "ns", "", "b", vec![1])
            .await
            .unwrap_err();
        assert_eq!(*seen.lock().unwrap(), [true, true, false]);
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
}
