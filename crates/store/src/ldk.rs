//! LDK's `KVStore` and `KVStoreSync` on top of a fenced [`StateStore`].

mod lazy;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lightning::io;
use lightning::util::persist::KVStore;

use self::lazy::LazyRemoves;
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
/// [`KVStoreSync`](lightning::util::persist::KVStoreSync) runs each operation on
/// `runtime` (which must be a multi-threaded runtime, or a runtime other than the
/// caller's) and blocks the calling thread until it finishes. Called from a worker of a multi-threaded runtime it uses
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

/// Told of every transaction the adapter sends to the store (see [`WriteReport`]).
/// Called on the store's runtime, so it must be quick (a metric).
pub type WriteObserver = Arc<dyn Fn(&WriteReport) + Send + Sync>;

/// One transaction the adapter sent to the store, as its [`WriteObserver`] is told of it.
#[derive(Debug)]
pub struct WriteReport {
    /// How long the store took to answer (or until the adapter gave up on it).
    pub took: std::time::Duration,
    /// Whether it committed.
    pub committed: bool,
    /// The key and the value's size of each write in it (removals are not listed):
    /// what the store was asked to keep, to tell which of LDK's objects cost the most.
    pub written: Vec<(StoreKey, usize)>,
}

/// Told of every mutation that failed for good: fenced, permanent (a value too large, a
/// full disk, a refused permission), or transient past the leadership's deadline. LDK's
/// callers do not all stop on such a failure (the background processor's manager write
/// ends the processor; a wallet write is reported to whoever asked), so a node hands in
/// an observer that stops it: an instance that cannot persist must not keep its lease.
/// Called on the store's runtime, with the error.
pub type FailureObserver = Arc<dyn Fn(&StoreError) + Send + Sync>;

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
        let written = match self.write_observer {
            Some(_) => ops
                .iter()
                .filter_map(|op| match op {
                    BatchOp::Put { key, value } => Some((key.clone(), value.len())),
                    BatchOp::Delete { .. } => None,
                })
                .collect(),
            None => Vec::new(),
        };
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
            observer(&WriteReport {
                took: began.elapsed(),
                committed: result.is_ok(),
                written,
            });
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
