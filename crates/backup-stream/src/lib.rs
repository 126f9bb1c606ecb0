//! The synchronous backup stream: every fenced commit of the node's store is also
//! appended to a log in a backup directory, encrypted and fsynced, before the write is
//! acknowledged, so the backup is never behind what LDK was told is persisted (what
//! made Litestream, with its lag, unsafe for Lightning).
//!
//! [`BackedUpStore`] wraps a store: its [`apply`](StateStore::apply) commits to the
//! store, then appends the batch with its fencing token to the log and syncs it, and
//! only then returns. A log that cannot be written fails the write, and the node
//! fail-stops as on any store failure (unless [`OnFailure::Alert`], which is unsafe).
//! The lease is the wrapped store's.
//!
//! # The log
//! Segment files `epoch-<epoch>-<n>.log` of sealed records (the format is in
//! `segment.rs`), the key derived from the seed
//! ([`phalanx_secrets::Seed::backup_key`]). A record holds the token's epoch and write
//! sequence and the batch. Replaying ([`replay`]) applies each record as the store did:
//! a mutation changes a key only if its token supersedes the key's last one
//! ([`FencingToken::supersedes`]), so records that reached the log in another order
//! than the store's commits still give the store's state. A record cut short at the end
//! of a segment (a crash while appending) was never acknowledged, and is skipped.
//!
//! # Bases: each leadership starts from the whole state
//! Before its first write, a leadership reads the whole store and writes it as the
//! first record of its first segment (a *base*). A commit the previous leader made but
//! never got into the log (it was killed between the two) is in the store, so in the
//! base; and every commit of an earlier epoch happened before this one was won (the
//! store fences them after), so replay drops what came before a base, and any record of
//! an earlier epoch that reaches the log later. A stream turned on for a node that has
//! run without one is complete from its first base on.
//!
//! # Compaction
//! When the open segment passes [`StreamOptions::compact_after_bytes`], the writer moves
//! to a new segment and, in the background, the state through the closed one is
//! written as a checkpoint (`checkpoint-<segment>.ckpt`, sealed the same way) and the
//! segments it covers are removed. Replay starts from the newest checkpoint. Compaction
//! never touches the store, and a crash at any point leaves a log that replays to the
//! same state.

#![warn(missing_docs)]

mod checkpoint;
mod replay;
mod segment;
mod store;

use std::path::PathBuf;

pub use checkpoint::Compaction;
pub use replay::{Replayed, replay};
pub use segment::StreamWriter;
pub use store::BackedUpStore;

// For the documentation's links.
#[allow(unused_imports)]
use phalanx_store::{FencingToken, StateStore};

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

/// What a stream that cannot be written does to the write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// The write fails and the node stops, as on any store failure: the backup is never
    /// behind an acknowledged state.
    #[default]
    Stop,
    /// The write succeeds, the failure is logged as an error and counted
    /// ([`BackedUpStore::failures`]), and the stream starts again from a new base a few
    /// seconds later. Unsafe: until then the backup is behind what LDK was told is
    /// persisted, and restoring it could lose a channel's funds.
    Alert,
}

/// How the stream is written.
#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    /// Compact once the open segment holds this many bytes.
    pub compact_after_bytes: u64,
    /// What a failed append does.
    pub on_failure: OnFailure,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            compact_after_bytes: 64 * 1024 * 1024,
            on_failure: OnFailure::Stop,
        }
    }
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
