//! The synchronous backup stream: every fenced commit of the node's store is also
//! appended to a log in a backup directory, encrypted and fsynced, before the write is
//! acknowledged, so the backup is never behind what LDK was told is persisted (what
//! made Litestream, with its lag, unsafe for Lightning).
//!
//! [`BackedUpStore`] wraps a store: its [`apply`](StateStore::apply) commits to the
//! store, then appends the batch with its fencing token to the log and syncs it, and
//! only then returns. A log that cannot be written fails the write, and the node
//! fail-stops as on any store failure. The lease is the wrapped store's.
//!
//! The log ([`replay`]): one segment file per leadership, `epoch-<epoch>-<n>.log`, of
//! records `length (u32) | nonce (24 bytes) | XChaCha20-Poly1305(record)`, the key
//! derived from the seed ([`phalanx_secrets::Seed::backup_key`]). A record holds the
//! token's epoch and write sequence and the batch. Replaying applies each record as the
//! store did: a mutation changes a key only if its token supersedes the key's last one
//! ([`FencingToken::supersedes`]), so records that reached the log in another order
//! than the store's commits still give the store's state. A record cut short at the end
//! of a segment (a crash while appending) was never acknowledged, and is skipped.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use phalanx_secrets::Seed;
use phalanx_store::{
    Acquisition, BatchOp, Epoch, EpochRecord, FencingToken, HolderId, LeaseExpiry, LeaseInfo,
    LeaseStore, Namespace, StateStore, Store, StoreError, StoreKey,
};
use zeroize::Zeroizing;

const SEGMENT_MAGIC: &[u8; 8] = b"PHXSTRM1";
const NONCE_LEN: usize = 24;
/// The longest record read back (a batch is at most the store's largest).
const MAX_RECORD_BYTES: usize = 80 * 1024 * 1024;

/// Why the stream could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The backup URL is not one this build writes to.
    #[error("backup url {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A file failed.
    #[error("backup stream {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The log is not this seed's, or was changed.
    #[error("backup stream {path}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The directory a `file://` backup URL names.
pub fn directory_of(url: &str) -> Result<PathBuf, StreamError> {
    let parsed = url::Url::parse(url).map_err(|e| StreamError::Url {
        url: url.to_owned(),
        reason: format!("not a URL ({e})"),
    })?;
    if parsed.scheme() != "file" {
        return Err(StreamError::Url {
            url: url.to_owned(),
            reason: "only file:///directory is supported".to_owned(),
        });
    }
    parsed.to_file_path().map_err(|()| StreamError::Url {
        url: url.to_owned(),
        reason: "names no local directory".to_owned(),
    })
}

/// Appends records to one segment of the log. Appends that arrive while another one
/// is being synced wait, and are written and synced together (group commit): one
/// `fdatasync` for all of them, and none returns before its own record is durable.
pub struct StreamWriter {
    path: PathBuf,
    epoch: Epoch,
    key: Zeroizing<[u8; 32]>,
    group: Mutex<Group>,
    synced: std::sync::Condvar,
}

/// The records waiting for the next sync, and what the last syncs did.
struct Group {
    file: File,
    /// Records waiting, with their tickets.
    pending: Vec<u8>,
    /// The ticket of the last record in `pending`.
    last_queued: u64,
    /// Every record up to this ticket is durable.
    durable: u64,
    /// Whether a thread is writing and syncing right now.
    syncing: bool,
    /// Once a write or sync failed, every append fails: what reached the file is unknown.
    failed: Option<String>,
}

impl StreamWriter {
    /// A new segment in `dir` (made if missing) for the leadership of `epoch`.
    pub fn create(dir: &Path, seed: &Seed, epoch: Epoch) -> Result<Self, StreamError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StreamError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut n = 0u32;
        let (path, mut file) = loop {
            let path = dir.join(format!("epoch-{:020}-{n:04}.log", epoch.0));
            match std::fs::OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => break (path, file),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && n < 9999 => n += 1,
                Err(err) => return Err(io(&path)(err)),
            }
        };
        file.write_all(SEGMENT_MAGIC).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(Self {
            path,
            epoch,
            key: seed.backup_key(),
            group: Mutex::new(Group {
                file,
                pending: Vec::new(),
                last_queued: 0,
                durable: 0,
                syncing: false,
                failed: None,
            }),
            synced: std::sync::Condvar::new(),
        })
    }

    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `ops` with `token` and syncs the file (blocking).
    pub fn append(&self, token: FencingToken, ops: &[BatchOp]) -> Result<(), StreamError> {
        let plain = Zeroizing::new(encode(token, ops));
        let mut nonce = [0u8; NONCE_LEN];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut nonce).map_err(|e| {
            StreamError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            }
        })?;
        let sealed = XChaCha20Poly1305::new((&*self.key).into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: SEGMENT_MAGIC,
                },
            )
            .map_err(|_| StreamError::Corrupt {
                path: self.path.clone(),
                reason: "sealing failed".to_owned(),
            })?;
        let mut record = Vec::with_capacity(4 + NONCE_LEN + sealed.len());
        record.extend_from_slice(&((NONCE_LEN + sealed.len()) as u32).to_be_bytes());
        record.extend_from_slice(&nonce);
        record.extend_from_slice(&sealed);

        let failed = |reason: &str| StreamError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(reason.to_owned()),
        };
        let mut group = self.group.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &group.failed {
            return Err(failed(reason));
        }
        group.pending.extend_from_slice(&record);
        group.last_queued += 1;
        let ticket = group.last_queued;
        loop {
            if let Some(reason) = &group.failed {
                return Err(failed(reason));
            }
            if group.durable >= ticket {
                return Ok(());
            }
            if group.syncing {
                group = self.synced.wait(group).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // This thread writes and syncs every record queued so far.
            let batch = std::mem::take(&mut group.pending);
            let through = group.last_queued;
            group.syncing = true;
            let mut file = group.file.try_clone();
            drop(group);
            let outcome = match file.as_mut() {
                Ok(file) => file.write_all(&batch).and_then(|()| file.sync_data()),
                Err(err) => Err(std::io::Error::new(err.kind(), err.to_string())),
            };
            group = self.group.lock().unwrap_or_else(|e| e.into_inner());
            group.syncing = false;
            match outcome {
                Ok(()) => group.durable = through,
                Err(err) => group.failed = Some(err.to_string()),
            }
            self.synced.notify_all();
        }
    }
}

fn encode(token: FencingToken, ops: &[BatchOp]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&token.epoch().0.to_be_bytes());
    out.extend_from_slice(&token.sequence().to_be_bytes());
    out.extend_from_slice(&(ops.len() as u32).to_be_bytes());
    for op in ops {
        let (kind, key, value) = match op {
            BatchOp::Put { key, value } => (1u8, key, Some(value)),
            BatchOp::Delete { key } => (2u8, key, None),
        };
        out.push(kind);
        let text = key.to_string();
        out.extend_from_slice(&(text.len() as u16).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
        if let Some(value) = value {
            out.extend_from_slice(&(value.len() as u64).to_be_bytes());
            out.extend_from_slice(value);
        }
    }
    out
}

/// One record, decoded.
struct Record {
    token: FencingToken,
    ops: Vec<BatchOp>,
}

fn decode(mut bytes: &[u8]) -> Result<Record, String> {
    let mut take = |n: usize| -> Result<&[u8], String> {
        if bytes.len() < n {
            return Err("a record ends early".to_owned());
        }
        let (head, tail) = bytes.split_at(n);
        bytes = tail;
        Ok(head)
    };
    let epoch = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
    let sequence = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
    let count = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes"));
    let mut ops = Vec::with_capacity(count.min(10_000) as usize);
    for _ in 0..count {
        let kind = take(1)?[0];
        let len = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let text = std::str::from_utf8(take(len)?).map_err(|_| "a key is not text")?;
        let key: StoreKey = text.parse().map_err(|e: StoreError| e.to_string())?;
        match kind {
            1 => {
                let value_len = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
                let value = take(usize::try_from(value_len).map_err(|_| "too long")?)?.to_vec();
                ops.push(BatchOp::Put { key, value });
            }
            2 => ops.push(BatchOp::Delete { key }),
            other => return Err(format!("unknown operation {other}")),
        }
    }
    Ok(Record {
        token: FencingToken::new(Epoch(epoch)).sequenced(sequence),
        ops,
    })
}

/// What [`replay`] found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The state the log ends at: every key and value, sorted by key.
    pub entries: Vec<(StoreKey, Vec<u8>)>,
    /// Segments read.
    pub segments: usize,
    /// Records applied.
    pub records: usize,
    /// Records cut short at the end of a segment (never acknowledged), skipped.
    pub torn: usize,
    /// The highest epoch in the log.
    pub last_epoch: u64,
}

/// Replays every segment in `dir` with `seed`'s key into the state the store had (see
/// the crate's documentation).
pub fn replay(dir: &Path, seed: &Seed) -> Result<Replayed, StreamError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StreamError::Io { path, source }
    };
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("epoch-") && n.ends_with(".log"))
        })
        .collect();
    segments.sort();
    let key = seed.backup_key();
    let cipher = XChaCha20Poly1305::new((&*key).into());
    // key -> (epoch, sequence, value or deleted)
    let mut state: BTreeMap<StoreKey, (Epoch, u64, Option<Vec<u8>>)> = BTreeMap::new();
    let mut replayed = Replayed {
        segments: segments.len(),
        ..Replayed::default()
    };
    for path in &segments {
        let corrupt = |reason: String| StreamError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io(path))?;
        let mut rest = bytes
            .strip_prefix(SEGMENT_MAGIC.as_slice())
            .ok_or_else(|| corrupt("not a Phalanx backup stream segment".to_owned()))?;
        while !rest.is_empty() {
            let torn = |rest: &[u8]| rest.len() < 4;
            if torn(rest) {
                replayed.torn += 1;
                break;
            }
            let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            if !(NONCE_LEN..=MAX_RECORD_BYTES).contains(&len) {
                return Err(corrupt(format!("a record of {len} bytes")));
            }
            if rest.len() < 4 + len {
                // Cut short while appending: never acknowledged.
                replayed.torn += 1;
                break;
            }
            let (nonce, sealed) = rest[4..4 + len].split_at(NONCE_LEN);
            let last = rest.len() == 4 + len;
            let plain = match cipher.decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: SEGMENT_MAGIC,
                },
            ) {
                Ok(plain) => Zeroizing::new(plain),
                // The last record, half on disk: never acknowledged either.
                Err(_) if last => {
                    replayed.torn += 1;
                    break;
                }
                Err(_) => {
                    return Err(corrupt(
                        "a record does not decrypt: another seed's log, or a changed byte"
                            .to_owned(),
                    ));
                }
            };
            let record = decode(&plain).map_err(corrupt)?;
            replayed.last_epoch = replayed.last_epoch.max(record.token.epoch().0);
            for op in record.ops {
                let (key, value) = match op {
                    BatchOp::Put { key, value } => (key, Some(value)),
                    BatchOp::Delete { key } => (key, None),
                };
                let newer = match state.get(&key) {
                    Some((epoch, sequence, _)) => record.token.supersedes(*epoch, *sequence),
                    None => true,
                };
                if newer {
                    state.insert(key, (record.token.epoch(), record.token.sequence(), value));
                }
            }
            replayed.records += 1;
            rest = &rest[4 + len..];
        }
    }
    replayed.entries = state
        .into_iter()
        .filter_map(|(key, (_, _, value))| value.map(|v| (key, v)))
        .collect();
    Ok(replayed)
}

/// A store whose every commit also goes to the backup stream before it is acknowledged
/// (see the crate's documentation).
pub struct BackedUpStore {
    inner: Arc<dyn Store>,
    writer: Mutex<Option<Arc<StreamWriter>>>,
    dir: PathBuf,
    key_source: Seed,
}

impl BackedUpStore {
    /// `inner`, its commits streamed to the log in `dir` under `seed`'s key. Each
    /// leadership writes a segment of its own, opened at its first write.
    pub fn new(inner: Arc<dyn Store>, dir: PathBuf, seed: Seed) -> Self {
        Self {
            inner,
            writer: Mutex::new(None),
            dir,
            key_source: seed,
        }
    }

    fn writer_for(&self, epoch: Epoch) -> Result<Arc<StreamWriter>, StreamError> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = writer.as_ref()
            && current.epoch == epoch
        {
            return Ok(Arc::clone(current));
        }
        let created = Arc::new(StreamWriter::create(&self.dir, &self.key_source, epoch)?);
        tracing::info!(segment = %created.path().display(), epoch = epoch.0, "backup stream segment opened");
        *writer = Some(Arc::clone(&created));
        Ok(created)
    }
}

#[async_trait]
impl StateStore for BackedUpStore {
    fn describe(&self) -> String {
        format!(
            "{} (backup stream {})",
            self.inner.describe(),
            self.dir.display()
        )
    }

    async fn read(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError> {
        self.inner.read(key).await
    }

    async fn list(&self, namespace: &Namespace) -> Result<Vec<String>, StoreError> {
        self.inner.list(namespace).await
    }

    async fn snapshot(&self) -> Result<Vec<(StoreKey, Vec<u8>)>, StoreError> {
        self.inner.snapshot().await
    }

    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        // The store first: only a committed batch is streamed (a fenced one never is).
        self.inner.apply(token, ops.clone()).await?;
        let writer = self
            .writer_for(token.epoch())
            .map_err(|err| StoreError::permanent("backup stream", err.to_string(), None))?;
        tokio::task::spawn_blocking(move || writer.append(token, &ops))
            .await
            .map_err(|err| {
                StoreError::permanent(
                    "backup stream",
                    format!("the append task failed: {err}"),
                    None,
                )
            })?
            .map_err(|err| {
                // Committed to the store but not to the backup: not acknowledged, so
                // the node stops (a failed write), and the backup is not behind any
                // state LDK was told is persisted.
                StoreError::permanent("backup stream", err.to_string(), None)
            })
    }
}

#[async_trait]
impl LeaseStore for BackedUpStore {
    fn lease_expiry(&self) -> LeaseExpiry {
        self.inner.lease_expiry()
    }

    async fn try_acquire(
        &self,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Acquisition, StoreError> {
        self.inner.try_acquire(holder, ttl).await
    }

    async fn current_lease(&self) -> Result<Option<LeaseInfo>, StoreError> {
        self.inner.current_lease().await
    }

    async fn wait_for_change(&self, max_wait: Duration) {
        self.inner.wait_for_change(max_wait).await
    }

    async fn epoch_history(&self, limit: usize) -> Result<Vec<EpochRecord>, StoreError> {
        self.inner.epoch_history(limit).await
    }
}
