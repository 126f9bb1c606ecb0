//! The embedded SQLite backend of Phalanx's fenced state store.
//!
//! URL: `sqlite:///absolute/path/node.db` or `sqlite://relative/path/node.db`, with an
//! optional synchronous replica: `sqlite:///path/node.db?replica=/other/disk/node.db`.
//!
//! # Election and fencing
//! The lease is SQLite's own exclusive lock on the database file: the instance that wins
//! opens its connection with `PRAGMA locking_mode=EXCLUSIVE` and takes the lock with
//! `BEGIN EXCLUSIVE`; SQLite then keeps that OS-level lock until the connection closes,
//! so no other process can read or write the file while the leader runs, and the lock
//! is freed the instant the leader's process dies. Winning also bumps the cluster's epoch
//! row, and every write checks that row inside its transaction, so a stale handle in the
//! same process is fenced too. A stalled (SIGSTOPped) leader keeps the lock; its own
//! self-fencing deadline (in `phalanx-cluster`) stops it when it resumes.
//!
//! (A separate `flock` on the database file would not do: closing any other descriptor
//! of the file drops the POSIX locks SQLite holds on it in the same process.)
//!
//! # Replica
//! With `?replica=PATH`, the replica is created from the main file when the lease is won
//! (SQLite's online backup), then every write transaction is applied to both files and
//! committed on the replica first, then on the main file, before it is acknowledged, like
//! Core Lightning's `main:backup`. A crash between the two commits leaves the replica one
//! unacknowledged transaction ahead; the next leader recreates it from the main file. If
//! the main commit fails after the replica's, the store refuses further writes until
//! restarted, because the files differ. Both files count their commits (`generation`):
//! a main file that is missing, empty, or older than the replica by more than that one
//! transaction is refused instead of being copied over the newer replica.

#![warn(missing_docs)]

mod error;
mod generation;
mod lock;
mod schema;
mod snapshot;
mod url;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use phalanx_store::backend::within;
use phalanx_store::{Epoch, HolderId, StoreError, StoreOptions};
use rusqlite::{Connection, OpenFlags};

use crate::error::{sqlite_error, worker_panicked};
pub use crate::url::SqliteConfig;

/// The backend's name in its timeout errors.
const BACKEND: &str = "SQLite";

/// A SQLite state store for one cluster. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: SqliteConfig,
    options: StoreOptions,
    /// The connections of the leadership this handle holds, if any.
    leader: Mutex<Option<LeaderConnections>>,
}

struct LeaderConnections {
    /// A snapshot being copied from `main` (see `snapshot`); finished before `main`
    /// closes.
    snapshot: Option<snapshot::SteppedBackup>,
    epoch: Epoch,
    holder: HolderId,
    main: Connection,
    replica: Option<Connection>,
    /// Set when the files diverged; every later write fails with this message.
    broken: Option<String>,
}

impl Drop for LeaderConnections {
    fn drop(&mut self) {
        // SQLite's one rule for a backup: it must not outlive its source connection.
        self.snapshot = None;
    }
}

impl SqliteStore {
    /// Opens the store at `url` for `options.cluster`. Checks the path (and that an
    /// existing file is a SQLite database) without taking the lock.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        options.validate()?;
        let config = SqliteConfig::parse(url)?;
        let inner = Arc::new(Inner {
            config,
            options,
            leader: Mutex::new(None),
        });
        let store = Self { inner };
        store.blocking("open", |inner| inner.check_files()).await?;
        Ok(store)
    }

    /// The configuration parsed from the URL.
    pub fn config(&self) -> &SqliteConfig {
        &self.inner.config
    }

    /// Runs `work` on a blocking thread, bounded by the operation timeout: a stalled disk
    /// (or a transaction that holds the leader's connections that long) makes the call
    /// fail as transient, while `work` goes on in the background.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        let limit = inner.options.operation_timeout;
        let target = inner.path().display().to_string();
        let task = tokio::task::spawn_blocking(move || work(&inner));
        within(BACKEND, op, &target, limit, task)
            .await?
            .unwrap_or_else(|join| Err(worker_panicked(op, join)))
    }
}

impl Inner {
    fn leader(&self) -> MutexGuard<'_, Option<LeaderConnections>> {
        self.leader.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self) -> &Path {
        &self.config.path
    }

    fn cluster(&self) -> &str {
        self.options.cluster.as_str()
    }

    /// Checks that the files can be used, without taking the lock.
    fn check_files(&self) -> Result<(), StoreError> {
        for path in std::iter::once(&self.config.path).chain(self.config.replica.as_ref()) {
            let parent = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                _ => PathBuf::from("."),
            };
            if !parent.is_dir() {
                return Err(StoreError::Config(format!(
                    "directory {} of {} does not exist",
                    parent.display(),
                    path.display()
                )));
            }
            if path.is_dir() {
                return Err(StoreError::Config(format!(
                    "{} is a directory, not a database file",
                    path.display()
                )));
            }
        }
        if self.config.replica.as_deref() == Some(self.config.path.as_path()) {
            return Err(StoreError::Config(
                "the replica must be a different file from the database".into(),
            ));
        }
        // An existing main file must be a SQLite database; a lock held by the leader is
        // fine (that is what the lock is for).
        if self.config.path.exists() {
            match self.with_reader(|conn| {
                conn.query_row("PRAGMA schema_version", [], |row| row.get::<_, i64>(0))
                    .map_err(|e| sqlite_error("open", self.path(), e))
            }) {
                Ok(_) => {}
                Err(err) if err.is_transient() => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Runs `read` on the leader's connection if this handle holds the lease, else on a
    /// short-lived connection (which fails as transient while another process leads).
    fn with_reader<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let leader = self.leader();
        if let Some(conns) = leader.as_ref() {
            return read(&conns.main);
        }
        drop(leader);
        let conn = Connection::open_with_flags(
            self.path(),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite_error("open", self.path(), e))?;
        conn.busy_timeout(Duration::from_millis(200))
            .map_err(|e| sqlite_error("open", self.path(), e))?;
        read(&conn)
    }

    /// Like [`with_reader`](Self::with_reader), but a database that was never created or
    /// migrated reads as empty (`None`).
    fn read_schema<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        if !self.path().exists() {
            return Ok(None);
        }
        self.with_reader(|conn| {
            if schema::version(conn).map_err(|e| sqlite_error("read", self.path(), e))? == 0 {
                return Ok(None);
            }
            read(conn).map(Some)
        })
    }
}

#[cfg(test)]
mod tests;
