//! [`BackedUpStore`]: a store whose commits also go to the stream before they are
//! acknowledged.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use phalanx_secrets::Seed;
use phalanx_store::{
    Acquisition, BatchOp, Epoch, EpochRecord, FencingToken, HolderId, LeaseExpiry, LeaseInfo,
    LeaseStore, Namespace, StateStore, Store, StoreError, StoreKey,
};
use zeroize::Zeroizing;

use crate::checkpoint::{self, Compaction};
use crate::segment::StreamWriter;
use crate::{OnFailure, StreamError, StreamOptions};

/// How long an alerting stream waits before trying a new base again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// A store whose every commit also goes to the backup stream before it is acknowledged
/// (see the crate's documentation).
pub struct BackedUpStore {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<dyn Store>,
    dir: PathBuf,
    key: Zeroizing<[u8; 32]>,
    options: StreamOptions,
    /// The open segment. Held across the making of a base, so that no write of the new
    /// leadership commits before its base is read.
    writer: tokio::sync::Mutex<Option<Arc<StreamWriter>>>,
    /// Held by the compaction that runs: one at a time.
    compacting: tokio::sync::Mutex<()>,
    failures: AtomicU64,
    /// When an alerting stream last failed, so it waits before trying again.
    last_failure: std::sync::Mutex<Option<Instant>>,
}

impl BackedUpStore {
    /// `inner`, its commits streamed to the log in `dir` under `seed`'s key, with the
    /// default options (compact every 64 MiB; a failed append fails the write).
    pub fn new(inner: Arc<dyn Store>, dir: PathBuf, seed: Seed) -> Self {
        Self::with_options(inner, dir, seed, StreamOptions::default())
    }

    /// `inner`, its commits streamed to the log in `dir` under `seed`'s key.
    pub fn with_options(
        inner: Arc<dyn Store>,
        dir: PathBuf,
        seed: Seed,
        options: StreamOptions,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                inner,
                dir,
                key: seed.backup_key(),
                options,
                writer: tokio::sync::Mutex::new(None),
                compacting: tokio::sync::Mutex::new(()),
                failures: AtomicU64::new(0),
                last_failure: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Appends that failed and were let through ([`OnFailure::Alert`]).
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Compacts the log now, through the open segment (which is closed first); `None`
    /// when there is nothing to compact (no segment yet, or a failed one).
    pub async fn compact(&self) -> Result<Option<Compaction>, StreamError> {
        self.shared.compact().await
    }
}

impl Shared {
    /// The segment for a write of `epoch`: the open one, or a new one whose first record
    /// is the whole store, read before any write of the epoch commits.
    async fn writer_for(&self, epoch: Epoch) -> Result<Arc<StreamWriter>, StreamError> {
        let mut slot = self.writer.lock().await;
        if let Some(current) = slot.as_ref()
            && current.epoch() == epoch
            && !current.has_failed()
        {
            return Ok(Arc::clone(current));
        }
        if self.options.on_failure == OnFailure::Alert
            && let Some(at) = *self.last_failure.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < RETRY_AFTER_FAILURE
        {
            return Err(StreamError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("the stream failed moments ago"),
            });
        }
        let base: Vec<BatchOp> = self
            .inner
            .snapshot()
            .await
            .map_err(|err| StreamError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(format!(
                    "reading the store for a base: {}",
                    err.report()
                )),
            })?
            .into_iter()
            .map(|(key, value)| BatchOp::Put { key, value })
            .collect();
        let (dir, key) = (self.dir.clone(), self.key.clone());
        let created = self
            .blocking(move || StreamWriter::create(&dir, key, epoch, Some(&base)))
            .await?;
        tracing::info!(
            segment = %created.path().display(),
            epoch = epoch.0,
            bytes = created.written(),
            "backup stream segment opened with the store's whole state"
        );
        let created = Arc::new(created);
        *slot = Some(Arc::clone(&created));
        Ok(created)
    }

    /// Runs file work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, StreamError> + Send + 'static,
    ) -> Result<T, StreamError> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| StreamError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(format!("the task failed: {err}")),
            })?
    }

    /// Whether a later leadership than `epoch` has written through this store.
    async fn is_superseded(&self, epoch: Epoch) -> bool {
        self.writer
            .lock()
            .await
            .as_ref()
            .is_some_and(|current| current.epoch() > epoch)
    }

    /// A failed stream: the write's error, or, when only alerting, a logged error.
    fn failed(&self, err: StreamError) -> Result<(), StoreError> {
        match self.options.on_failure {
            OnFailure::Stop => {
                // Committed to the store but not to the backup: not acknowledged, so the
                // node stops (a failed write), and the backup is not behind any state
                // LDK was told is persisted.
                Err(StoreError::permanent(
                    "backup stream",
                    err.to_string(),
                    None,
                ))
            }
            OnFailure::Alert => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|at| at.elapsed() >= RETRY_AFTER_FAILURE) {
                    *last = Some(Instant::now());
                    tracing::error!(
                        error = %err,
                        failures,
                        "the backup stream failed; the write goes on (backup on_failure = \"alert\"): the backup is behind the node until the stream starts again"
                    );
                }
                Ok(())
            }
        }
    }

    async fn compact(self: &Arc<Self>) -> Result<Option<Compaction>, StreamError> {
        let running = self.compacting.lock().await;
        self.compact_holding(running).await
    }

    async fn compact_holding(
        self: &Arc<Self>,
        _running: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<Option<Compaction>, StreamError> {
        let closed = {
            let mut slot = self.writer.lock().await;
            let Some(current) = slot.clone() else {
                return Ok(None);
            };
            if current.has_failed() {
                return Ok(None);
            }
            let (dir, key, epoch) = (self.dir.clone(), self.key.clone(), current.epoch());
            let next = self
                .blocking(move || StreamWriter::create(&dir, key, epoch, None))
                .await?;
            *slot = Some(Arc::new(next));
            current
        };
        // Appends that took the closed segment before the switch finish first.
        while Arc::strong_count(&closed) > 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if closed.has_failed() {
            return Ok(None);
        }
        let through = closed
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a segment's name is text")
            .to_owned();
        drop(closed);
        let (dir, key) = (self.dir.clone(), self.key.clone());
        let compaction = self
            .blocking(move || checkpoint::compact(&dir, &key, &through))
            .await?;
        tracing::info!(
            checkpoint = %compaction.checkpoint,
            segments_removed = compaction.segments_removed,
            bytes = compaction.bytes,
            "backup stream compacted"
        );
        Ok(Some(compaction))
    }

    /// Starts a compaction in the background unless one runs.
    fn compact_in_background(self: &Arc<Self>) {
        if self.compacting.try_lock().is_err() {
            return;
        }
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(running) = shared.compacting.try_lock() else {
                return;
            };
            if let Err(err) = shared.compact_holding(running).await {
                // The log still holds everything; the next segment tries again.
                tracing::warn!(error = %err, "backup stream compaction failed");
            }
        });
    }
}

#[async_trait]
impl StateStore for BackedUpStore {
    fn describe(&self) -> String {
        format!(
            "{} (backup stream {})",
            self.shared.inner.describe(),
            self.shared.dir.display()
        )
    }

    async fn read(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError> {
        self.shared.inner.read(key).await
    }

    async fn list(&self, namespace: &Namespace) -> Result<Vec<String>, StoreError> {
        self.shared.inner.list(namespace).await
    }

    async fn snapshot(&self) -> Result<Vec<(StoreKey, Vec<u8>)>, StoreError> {
        self.shared.inner.snapshot().await
    }

    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let shared = &self.shared;
        if shared.is_superseded(token.epoch()).await {
            // A write of an earlier leadership: the store fences it.
            shared.inner.apply(token, ops).await?;
            return Err(StoreError::permanent(
                "backup stream",
                format!("a write of {token} committed after a later leadership began"),
                None,
            ));
        }
        let writer = match shared.writer_for(token.epoch()).await {
            Ok(writer) => Some(writer),
            Err(err) => {
                shared.failed(err)?;
                None
            }
        };
        // The store next: only a committed batch is streamed (a fenced one never is).
        shared.inner.apply(token, ops.clone()).await?;
        let Some(writer) = writer else {
            return Ok(());
        };
        let appended = {
            let writer = Arc::clone(&writer);
            tokio::task::spawn_blocking(move || writer.append(token, &ops)).await
        };
        match appended {
            Ok(Ok(())) => {
                if writer.written() >= shared.options.compact_after_bytes {
                    shared.compact_in_background();
                }
                Ok(())
            }
            Ok(Err(err)) => shared.failed(err),
            Err(err) => shared.failed(StreamError::Io {
                path: writer.path().to_owned(),
                source: std::io::Error::other(format!("the append task failed: {err}")),
            }),
        }
    }
}

#[async_trait]
impl LeaseStore for BackedUpStore {
    fn lease_expiry(&self) -> LeaseExpiry {
        self.shared.inner.lease_expiry()
    }

    async fn try_acquire(
        &self,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Acquisition, StoreError> {
        self.shared.inner.try_acquire(holder, ttl).await
    }

    async fn current_lease(&self) -> Result<Option<LeaseInfo>, StoreError> {
        self.shared.inner.current_lease().await
    }

    async fn wait_for_change(&self, max_wait: Duration) {
        self.shared.inner.wait_for_change(max_wait).await
    }

    async fn epoch_history(&self, limit: usize) -> Result<Vec<EpochRecord>, StoreError> {
        self.shared.inner.epoch_history(limit).await
    }
}
