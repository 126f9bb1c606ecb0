//! Compaction: the log's state through a segment, written as one checkpoint file, after
//! which the segments it covers are removed.
//!
//! `checkpoint-epoch-<epoch>-<n>.ckpt` holds the state replay reaches at the end of
//! segment `epoch-<epoch>-<n>.log`: every key with the token that last changed it, its
//! deletions included (a late record of the same leadership must still lose to them),
//! and the epoch of the last base. It is
//! `magic | length (u64) | !length (u64) | nonce | XChaCha20-Poly1305(state)`, sealed
//! with the segment name it covers as associated data, so a checkpoint renamed to cover
//! other segments does not open. It is written to a temporary file, synced and renamed:
//! a crash leaves the old checkpoint and segments, or the new checkpoint with segments
//! it covers (replay skips those), never half a checkpoint.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::XChaCha20Poly1305;
use phalanx_store::Epoch;
use zeroize::Zeroizing;

use crate::StreamError;
use crate::replay::{LogState, list, replay_through};
use crate::segment::{self, Reader, put_key};

const CHECKPOINT_MAGIC: &[u8; 8] = b"PHXCKPT1";
const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".ckpt";

/// The segment a checkpoint's file name says it covers (through), if `name` is one.
pub(crate) fn covers(name: &str) -> Option<String> {
    let stem = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let segment = format!("{stem}.log");
    segment::is_segment(&segment).then_some(segment)
}

fn name_covering(segment: &str) -> String {
    format!(
        "{PREFIX}{}{SUFFIX}",
        segment.strip_suffix(".log").unwrap_or(segment)
    )
}

fn aad(covered: &str) -> Vec<u8> {
    let mut aad = CHECKPOINT_MAGIC.to_vec();
    aad.extend_from_slice(covered.as_bytes());
    aad
}

/// Reads the checkpoint at `path`.
pub(crate) fn read(path: &Path, cipher: &XChaCha20Poly1305) -> Result<LogState, StreamError> {
    let corrupt = |reason: String| StreamError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let covered = covers(name).ok_or_else(|| corrupt("not a checkpoint's name".to_owned()))?;
    let bytes = std::fs::read(path).map_err(|source| StreamError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut reader = Reader(
        bytes
            .strip_prefix(CHECKPOINT_MAGIC.as_slice())
            .ok_or_else(|| corrupt("not a Phalanx backup stream checkpoint".to_owned()))?,
    );
    let len = reader.u64().map_err(&corrupt)?;
    if reader.u64().map_err(&corrupt)? != !len || reader.0.len() as u64 != len {
        return Err(corrupt("its length does not match the file".to_owned()));
    }
    let plain = segment::open(cipher, &aad(&covered), reader.0).ok_or_else(|| {
        corrupt("it does not decrypt: another seed's, or a changed byte".to_owned())
    })?;
    decode(&plain).map_err(corrupt)
}

fn decode(plain: &[u8]) -> Result<LogState, String> {
    let mut reader = Reader(plain);
    let mut state = LogState {
        floor: Epoch(reader.u64()?),
        last_epoch: reader.u64()?,
        ..LogState::default()
    };
    let count = reader.u64()?;
    for _ in 0..count {
        let key = reader.key()?;
        let epoch = Epoch(reader.u64()?);
        let sequence = reader.u64()?;
        let value = match reader.u8()? {
            0 => None,
            1 => Some(reader.bytes()?),
            other => return Err(format!("unknown entry kind {other}")),
        };
        if value.is_none() {
            state.inherited_deletions.insert(key.clone());
        }
        state.keys.insert(key, (epoch, sequence, value));
    }
    if !reader.0.is_empty() {
        return Err("bytes past the last entry".to_owned());
    }
    Ok(state)
}

fn encode(state: &LogState) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::new());
    out.extend_from_slice(&state.floor.0.to_be_bytes());
    out.extend_from_slice(&state.last_epoch.to_be_bytes());
    out.extend_from_slice(&(state.keys.len() as u64).to_be_bytes());
    for (key, (epoch, sequence, value)) in &state.keys {
        put_key(&mut out, key);
        out.extend_from_slice(&epoch.0.to_be_bytes());
        out.extend_from_slice(&sequence.to_be_bytes());
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u64).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
    }
    out
}

/// What one compaction did.
#[derive(Debug)]
pub struct Compaction {
    /// The checkpoint written.
    pub checkpoint: String,
    /// Segments it replaced (now removed).
    pub segments_removed: usize,
    /// Bytes of the checkpoint.
    pub bytes: u64,
}

/// Writes a checkpoint of the log through segment `through` (which no writer may
/// append to any more), then removes the segments and older checkpoints it replaces.
pub(crate) fn compact(
    dir: &Path,
    key: &[u8; 32],
    through: &str,
) -> Result<Compaction, StreamError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StreamError::Io { path, source }
    };
    let (mut state, _) = replay_through(dir, key, Some(through))?;
    // A deletion kept from the last checkpoint was appended before that compaction
    // drained its segment, so before this one's segments were opened: a write that
    // takes a segment opened after that was committed after the deletion, as its put
    // recreates the key in the store too. A deletion from the segments compacted now
    // is kept, as a write committed before it may still reach the open segment late.
    for key in std::mem::take(&mut state.inherited_deletions) {
        state.keys.remove(&key);
    }
    let name = name_covering(through);
    let sealed =
        segment::seal(key, &aad(through), &encode(&state)).map_err(|reason| StreamError::Io {
            path: dir.join(&name),
            source: std::io::Error::other(reason),
        })?;
    let len = sealed.len() as u64;
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(CHECKPOINT_MAGIC)
        .and_then(|()| file.write_all(&len.to_be_bytes()))
        .and_then(|()| file.write_all(&(!len).to_be_bytes()))
        .and_then(|()| file.write_all(&sealed))
        .and_then(|()| file.sync_all())
        .map_err(io(&temporary))?;
    drop(file);
    let path = dir.join(&name);
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    // The checkpoint is durable: what it replaces can go. A crash from here on leaves
    // files replay skips.
    let (segments, checkpoints) = list(dir)?;
    let mut removed = 0;
    // Another instance compacting the same directory may have removed one already.
    let remove = |path: &Path| match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io(path)(err)),
        _ => Ok(()),
    };
    for segment in segments.iter().filter(|s| s.as_str() <= through) {
        remove(&dir.join(segment))?;
        removed += 1;
    }
    for older in checkpoints.iter().filter(|c| c.as_str() < name.as_str()) {
        remove(&dir.join(older))?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(Compaction {
        checkpoint: name,
        segments_removed: removed,
        bytes: CHECKPOINT_MAGIC.len() as u64 + 16 + len,
    })
}
