//! Lazy removals: queued at the call, applied by a flusher a few milliseconds later as
//! one fenced batch (see "Lazy removals" on [`LdkKvStore`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Inner, KeySlot, LdkKvStore};
use crate::{BatchOp, StoreKey};

/// Removals waiting for the flusher, each with the version and slot taken at its call (the
/// slot stays in the map while referenced, so later calls to the key see the same one).
#[derive(Default)]
pub(super) struct LazyRemoves {
    pending: Vec<(StoreKey, u64, KeySlot)>,
    flush_scheduled: bool,
}

/// A key with its removal version, its slot and the slot's lock, held by the flusher.
type HeldSlot = (StoreKey, u64, KeySlot, tokio::sync::OwnedMutexGuard<u64>);

/// Removals per transaction: well inside etcd's default `--max-txn-ops` of 128.
const LAZY_REMOVE_BATCH: usize = 64;

/// How long the flusher waits for the rest of a burst of lazy removals.
const LAZY_REMOVE_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

impl LdkKvStore {
    /// Queues a lazy removal and makes sure a flush will run.
    pub(super) fn queue_lazy_remove(&self, key: StoreKey) {
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
}

impl Inner {
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
}
