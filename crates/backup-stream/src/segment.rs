//! Segments of the log: files `epoch-<epoch>-<n>.log` of sealed records, and the writer
//! that appends to one with group commit.
//!
//! A segment starts with [`SEGMENT_MAGIC`] and holds records
//! `length (u32) | !length (u32) | nonce (24 bytes) | XChaCha20-Poly1305(record)`. The
//! length is written twice so that a changed length is told apart from a record cut
//! short by a crash: only the second is skipped on replay, as never acknowledged.
//!
//! A record is `kind (u8) | epoch (u64) | sequence (u64) | count (u32) | operations`:
//! kind [`RecordKind::Batch`] is one committed batch; kind [`RecordKind::Base`] is the
//! whole state of the store when a leadership began, written first in its first segment
//! (see the crate's documentation).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use phalanx_store::{BatchOp, Epoch, FencingToken, StoreError, StoreKey};
use zeroize::Zeroizing;

use crate::StreamError;

/// The first bytes of a segment of this format.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"PHXSTRM2";
/// The first bytes of a segment of the first format (no record kind, one length).
pub(crate) const SEGMENT_MAGIC_V1: &[u8; 8] = b"PHXSTRM1";
pub(crate) const NONCE_LEN: usize = 24;
/// The longest record read back: a base holds a whole store.
pub(crate) const MAX_RECORD_BYTES: usize = 1 << 30;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// One committed batch.
    Batch = 1,
    /// The whole state when a leadership began: replaces everything before it.
    Base = 2,
}

/// One record, decoded.
pub(crate) struct Record {
    pub(crate) kind: RecordKind,
    pub(crate) token: FencingToken,
    pub(crate) ops: Vec<BatchOp>,
}

/// The name of segment `n` of the leadership of `epoch`. Names sort in log order.
pub(crate) fn segment_name(epoch: Epoch, n: u32) -> String {
    format!("epoch-{:020}-{n:08}.log", epoch.0)
}

/// Whether `name` is a segment's.
pub(crate) fn is_segment(name: &str) -> bool {
    name.starts_with("epoch-") && name.ends_with(".log")
}

/// Seals `plain` with `key` under `aad`: `nonce | ciphertext`.
pub(crate) fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, String> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut nonce)
        .map_err(|e| format!("no randomness for a nonce: {e}"))?;
    let sealed = XChaCha20Poly1305::new(key.into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| "sealing failed".to_owned())?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens what [`seal`] made; `None` if it is another key's or was changed.
pub(crate) fn open(
    cipher: &XChaCha20Poly1305,
    aad: &[u8],
    sealed: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
        .ok()
        .map(Zeroizing::new)
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
    /// Bytes in the file, the magic included.
    written: AtomicU64,
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
    /// A new segment in `dir` (made if missing) for the leadership of `epoch`, its
    /// first record `base` (the whole state as `Put`s) if given; durable, the
    /// directory entry included, when this returns.
    pub(crate) fn create(
        dir: &Path,
        key: Zeroizing<[u8; 32]>,
        epoch: Epoch,
        base: Option<&[BatchOp]>,
    ) -> Result<Self, StreamError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StreamError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // Past every segment of this epoch, and every one a checkpoint covered (since
        // removed): names must keep sorting in log order.
        let (segments, checkpoints) = crate::replay::list(dir)?;
        let prefix = segment_name(epoch, 0);
        let prefix = &prefix[..prefix.len() - "00000000.log".len()];
        let mut n = segments
            .into_iter()
            .chain(
                checkpoints
                    .iter()
                    .filter_map(|c| crate::checkpoint::covers(c)),
            )
            .filter_map(|name| {
                name.strip_prefix(prefix)?
                    .strip_suffix(".log")?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .map_or(0, |last| last + 1);
        let (path, mut file) = loop {
            let path = dir.join(segment_name(epoch, n));
            match std::fs::OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => break (path, file),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && n < 99_999_999 => {
                    n += 1
                }
                Err(err) => return Err(io(&path)(err)),
            }
        };
        let mut head = SEGMENT_MAGIC.to_vec();
        if let Some(base) = base {
            let token = FencingToken::new(epoch);
            let record = frame(&key, RecordKind::Base, token, base).map_err(|reason| {
                StreamError::Corrupt {
                    path: path.clone(),
                    reason,
                }
            })?;
            head.extend_from_slice(&record);
        }
        file.write_all(&head).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(Self {
            path,
            epoch,
            key,
            group: Mutex::new(Group {
                file,
                pending: Vec::new(),
                last_queued: 0,
                durable: 0,
                syncing: false,
                failed: None,
            }),
            synced: std::sync::Condvar::new(),
            written: AtomicU64::new(head.len() as u64),
        })
    }

    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The leadership this segment is of.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Bytes in the segment so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Whether a write or sync failed: no append will succeed any more.
    pub fn has_failed(&self) -> bool {
        self.group
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed
            .is_some()
    }

    /// Appends `ops` with `token` and syncs the file (blocking).
    pub fn append(&self, token: FencingToken, ops: &[BatchOp]) -> Result<(), StreamError> {
        let record =
            frame(&self.key, RecordKind::Batch, token, ops).map_err(|reason| StreamError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(reason),
            })?;
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
                Ok(()) => {
                    group.durable = through;
                    self.written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(err) => group.failed = Some(err.to_string()),
            }
            self.synced.notify_all();
        }
    }
}

/// One record as it is written: both lengths, then the sealed body.
fn frame(
    key: &[u8; 32],
    kind: RecordKind,
    token: FencingToken,
    ops: &[BatchOp],
) -> Result<Vec<u8>, String> {
    let plain = Zeroizing::new(encode(kind, token, ops));
    let sealed = seal(key, SEGMENT_MAGIC, &plain)?;
    let len = u32::try_from(sealed.len())
        .ok()
        .filter(|len| *len as usize <= MAX_RECORD_BYTES)
        .ok_or_else(|| format!("a record of {} bytes is too long", sealed.len()))?;
    let mut record = Vec::with_capacity(8 + sealed.len());
    record.extend_from_slice(&len.to_be_bytes());
    record.extend_from_slice(&(!len).to_be_bytes());
    record.extend_from_slice(&sealed);
    Ok(record)
}

fn encode(kind: RecordKind, token: FencingToken, ops: &[BatchOp]) -> Vec<u8> {
    let mut out = vec![kind as u8];
    out.extend_from_slice(&token.epoch().0.to_be_bytes());
    out.extend_from_slice(&token.sequence().to_be_bytes());
    out.extend_from_slice(&(ops.len() as u32).to_be_bytes());
    for op in ops {
        let (kind, key, value) = match op {
            BatchOp::Put { key, value } => (1u8, key, Some(value)),
            BatchOp::Delete { key } => (2u8, key, None),
        };
        out.push(kind);
        put_key(&mut out, key);
        if let Some(value) = value {
            out.extend_from_slice(&(value.len() as u64).to_be_bytes());
            out.extend_from_slice(value);
        }
    }
    out
}

/// Appends `key` as `length (u16) | text`.
pub(crate) fn put_key(out: &mut Vec<u8>, key: &StoreKey) {
    let text = key.to_string();
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Reads fields off the front of a byte string.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a record ends early".to_owned());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub(crate) fn key(&mut self) -> Result<StoreKey, String> {
        let len = self.u16()? as usize;
        let text = std::str::from_utf8(self.take(len)?).map_err(|_| "a key is not text")?;
        text.parse().map_err(|e: StoreError| e.to_string())
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let len = usize::try_from(self.u64()?).map_err(|_| "a value is too long")?;
        Ok(self.take(len)?.to_vec())
    }
}

/// Decodes a record's plaintext; `versioned` is false for the first format's records,
/// which have no kind.
pub(crate) fn decode(bytes: &[u8], versioned: bool) -> Result<Record, String> {
    let mut reader = Reader(bytes);
    let kind = if versioned {
        match reader.u8()? {
            1 => RecordKind::Batch,
            2 => RecordKind::Base,
            other => return Err(format!("unknown record kind {other}")),
        }
    } else {
        RecordKind::Batch
    };
    let epoch = reader.u64()?;
    let sequence = reader.u64()?;
    let count = reader.u32()?;
    let mut ops = Vec::with_capacity(count.min(10_000) as usize);
    for _ in 0..count {
        let op = reader.u8()?;
        let key = reader.key()?;
        match op {
            1 => ops.push(BatchOp::Put {
                key,
                value: reader.bytes()?,
            }),
            2 => ops.push(BatchOp::Delete { key }),
            other => return Err(format!("unknown operation {other}")),
        }
    }
    if !reader.0.is_empty() {
        return Err("a record has bytes past its end".to_owned());
    }
    Ok(Record {
        kind,
        token: FencingToken::new(Epoch(epoch)).sequenced(sequence),
        ops,
    })
}
