//! Sorting SQLite's errors into the store's error kinds, and the errors of the two
//! transactions that can refuse for reasons of their own (taking the lock, applying a
//! batch).

use std::path::Path;

use phalanx_store::backend::stale_epoch;
use phalanx_store::{Epoch, FencingToken, StoreError};
use rusqlite::ErrorCode;

/// Maps a SQLite error of `op` on the file at `path` to the store's error kinds.
pub(crate) fn sqlite_error(op: &'static str, path: &Path, err: rusqlite::Error) -> StoreError {
    let message = format!("{}: {err}", path.display());
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::transient(
            op,
            format!(
                "{} is locked by another process (the instance holding the lease)",
                path.display()
            ),
            Some(Box::new(err) as _),
        ),
        Some(ErrorCode::DiskFull) => StoreError::transient(
            op,
            format!("{}: disk full", path.display()),
            Some(Box::new(err) as _),
        ),
        Some(ErrorCode::NotADatabase) => StoreError::permanent(
            op,
            format!("{} is not a SQLite database", path.display()),
            Some(Box::new(err) as _),
        ),
        Some(ErrorCode::CannotOpen) => StoreError::Config(format!(
            "cannot open {}: {err} (does the directory exist and is it writable?)",
            path.display()
        )),
        Some(ErrorCode::TooBig) => StoreError::permanent(op, message, Some(Box::new(err) as _)),
        _ => StoreError::permanent(op, message, Some(Box::new(err) as _)),
    }
}

/// The permanent error of a blocking SQLite call whose worker panicked.
pub(crate) fn worker_panicked(op: &'static str, join: tokio::task::JoinError) -> StoreError {
    StoreError::permanent(op, "the SQLite worker panicked", Some(Box::new(join) as _))
}

/// Why taking the lock and bumping the epoch failed.
pub(crate) enum TakeError {
    Sqlite(rusqlite::Error),
    /// Taking the lease would lose data; the message says why and how to recover.
    Refused(String),
}

impl From<rusqlite::Error> for TakeError {
    fn from(err: rusqlite::Error) -> Self {
        TakeError::Sqlite(err)
    }
}

/// Why applying a batch failed: the epoch row did not match (it holds this epoch, or
/// there is none), or SQLite failed.
pub(crate) enum ApplyError {
    Fenced(Option<i64>),
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(err: rusqlite::Error) -> Self {
        ApplyError::Sqlite(err)
    }
}

/// Fenced: the epoch row says `current` (or holds none) where `token`'s epoch was expected.
pub(crate) fn fenced_by_row(token: FencingToken, current: Option<i64>) -> StoreError {
    match current {
        Some(current) => stale_epoch(token, Epoch(current as u64), None),
        None => StoreError::fenced(format!(
            "epoch {} was never granted in this database",
            token.epoch()
        )),
    }
}
