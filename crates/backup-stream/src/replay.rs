//! Reading the log back: the newest checkpoint, then every segment after it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::KeyInit;
use phalanx_secrets::Seed;
use phalanx_store::{BatchOp, Epoch, StoreKey};

use crate::StreamError;
use crate::checkpoint;
use crate::segment::{
    self, MAX_RECORD_BYTES, RecordKind, SEGMENT_MAGIC, SEGMENT_MAGIC_V1, is_segment,
};

/// What [`replay`] found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The state the log ends at: every key and value, sorted by key.
    pub entries: Vec<(StoreKey, Vec<u8>)>,
    /// The checkpoint the replay started from, if the log was compacted.
    pub checkpoint: Option<String>,
    /// Segments read (after the checkpoint).
    pub segments: usize,
    /// Records applied (after the checkpoint).
    pub records: usize,
    /// Records cut short at the end of a segment (never acknowledged), skipped.
    pub torn: usize,
    /// The highest epoch in the log.
    pub last_epoch: u64,
}

/// The log's state as replay builds it: each key's last value (or deletion) with the
/// token of the record that wrote it, and the epoch of the last base.
#[derive(Debug)]
pub(crate) struct LogState {
    /// key -> (epoch, sequence, value; `None` once deleted).
    pub(crate) keys: BTreeMap<StoreKey, (Epoch, u64, Option<Vec<u8>>)>,
    /// Records of epochs below this one are already in the last base.
    pub(crate) floor: Epoch,
    pub(crate) last_epoch: u64,
    /// Deletions read from a checkpoint and not changed since. The next compaction
    /// drops them: every record that could still arrive for such a key was committed
    /// after the deletion (see `checkpoint::compact`), and the store too lets a put
    /// recreate a deleted key.
    pub(crate) inherited_deletions: BTreeSet<StoreKey>,
}

impl Default for LogState {
    fn default() -> Self {
        Self {
            keys: BTreeMap::new(),
            floor: Epoch(0),
            last_epoch: 0,
            inherited_deletions: BTreeSet::new(),
        }
    }
}

impl LogState {
    /// Applies one record as the store applied its batch.
    pub(crate) fn apply(&mut self, record: segment::Record) {
        let token = record.token;
        self.last_epoch = self.last_epoch.max(token.epoch().0);
        match record.kind {
            RecordKind::Base => {
                // The whole state when this leadership began: every commit of an earlier
                // epoch is in it (the store fences them once this epoch is won), so
                // their records, in whatever order they reach the log, change nothing.
                self.keys.clear();
                self.inherited_deletions.clear();
                self.floor = token.epoch();
            }
            RecordKind::Batch if token.epoch() < self.floor => return,
            RecordKind::Batch => {}
        }
        for op in record.ops {
            let (key, value) = match op {
                BatchOp::Put { key, value } => (key, Some(value)),
                BatchOp::Delete { key } => (key, None),
            };
            let newer = match self.keys.get(&key) {
                Some((epoch, sequence, _)) => token.supersedes(*epoch, *sequence),
                None => true,
            };
            if newer {
                self.inherited_deletions.remove(&key);
                self.keys
                    .insert(key, (token.epoch(), token.sequence(), value));
            }
        }
    }

    /// Every key that has a value, sorted.
    pub(crate) fn entries(&self) -> Vec<(StoreKey, Vec<u8>)> {
        self.keys
            .iter()
            .filter_map(|(key, (_, _, value))| value.clone().map(|v| (key.clone(), v)))
            .collect()
    }
}

/// Replays the log in `dir` with `seed`'s key into the state the store had (see the
/// crate's documentation).
pub fn replay(dir: &Path, seed: &Seed) -> Result<Replayed, StreamError> {
    let key = seed.backup_key();
    let (state, replayed) = replay_through(dir, &key, None)?;
    Ok(Replayed {
        entries: state.entries(),
        last_epoch: state.last_epoch,
        ..replayed
    })
}

/// The names of the segments and checkpoints in `dir`, each sorted.
pub(crate) fn list(dir: &Path) -> Result<(Vec<String>, Vec<String>), StreamError> {
    let mut segments = Vec::new();
    let mut checkpoints = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|source| StreamError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| StreamError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if is_segment(&name) {
            segments.push(name);
        } else if checkpoint::covers(&name).is_some() {
            checkpoints.push(name);
        }
    }
    segments.sort();
    checkpoints.sort();
    Ok((segments, checkpoints))
}

/// Replays the newest checkpoint that covers no segment past `through`, then every
/// segment after it up to `through` (all of them if `None`).
pub(crate) fn replay_through(
    dir: &Path,
    key: &[u8; 32],
    through: Option<&str>,
) -> Result<(LogState, Replayed), StreamError> {
    let (segments, checkpoints) = list(dir)?;
    let within = |segment: &str| through.is_none_or(|through| segment <= through);
    let start = checkpoints
        .iter()
        .rev()
        .find(|name| checkpoint::covers(name).is_some_and(|covered| within(&covered)));
    let cipher = XChaCha20Poly1305::new(key.into());
    let (mut state, covered) = match start {
        Some(name) => {
            let path = dir.join(name);
            (checkpoint::read(&path, &cipher)?, checkpoint::covers(name))
        }
        None => (LogState::default(), None),
    };
    let mut replayed = Replayed {
        checkpoint: start.cloned(),
        ..Replayed::default()
    };
    for name in segments {
        if covered
            .as_deref()
            .is_some_and(|covered| name.as_str() <= covered)
            || !within(&name)
        {
            continue;
        }
        replayed.segments += 1;
        read_segment(&dir.join(&name), &cipher, &mut state, &mut replayed)?;
    }
    Ok((state, replayed))
}

fn read_segment(
    path: &PathBuf,
    cipher: &XChaCha20Poly1305,
    state: &mut LogState,
    replayed: &mut Replayed,
) -> Result<(), StreamError> {
    let corrupt = |reason: String| StreamError::Corrupt {
        path: path.clone(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| StreamError::Io {
        path: path.clone(),
        source,
    })?;
    let (versioned, mut rest) = if let Some(rest) = bytes.strip_prefix(SEGMENT_MAGIC.as_slice()) {
        (true, rest)
    } else if let Some(rest) = bytes.strip_prefix(SEGMENT_MAGIC_V1.as_slice()) {
        (false, rest)
    } else {
        return Err(corrupt("not a Phalanx backup stream segment".to_owned()));
    };
    let (aad, head) = if versioned {
        (SEGMENT_MAGIC, 8)
    } else {
        (SEGMENT_MAGIC_V1, 4)
    };
    while !rest.is_empty() {
        // Cut short while appending (a file system may also leave zeros where the
        // unsynced end was): never acknowledged.
        if rest.len() < head || rest.iter().all(|b| *b == 0) {
            replayed.torn += 1;
            break;
        }
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
        if versioned && u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes")) != !len {
            return Err(corrupt("a record's length was changed".to_owned()));
        }
        let len = len as usize;
        if !(segment::NONCE_LEN..=MAX_RECORD_BYTES).contains(&len) {
            return Err(corrupt(format!("a record of {len} bytes")));
        }
        if rest.len() < head + len {
            replayed.torn += 1;
            break;
        }
        let last = rest.len() == head + len;
        let plain = match segment::open(cipher, aad, &rest[head..head + len]) {
            Some(plain) => plain,
            // The last record, half on disk: never acknowledged either.
            None if last => {
                replayed.torn += 1;
                break;
            }
            None => {
                return Err(corrupt(
                    "a record does not decrypt: another seed's log, or a changed byte".to_owned(),
                ));
            }
        };
        let record = segment::decode(&plain, versioned).map_err(corrupt)?;
        state.apply(record);
        replayed.records += 1;
        rest = &rest[head + len..];
    }
    Ok(())
}
