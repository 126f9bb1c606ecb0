//! Snapshots of the leader's database in small steps, with SQLite's online backup API.
//!
//! The leader has one connection to its file (its exclusive lock keeps every other
//! connection out), and every write goes through it under `Inner::leader`'s mutex. One
//! `SELECT` of the whole table would hold that mutex, and so stop every write, for as long
//! as the read takes (tens of milliseconds at a thousand channels). Instead the main file
//! is copied into an in-memory database a few pages at a time, the mutex taken for each
//! step only. SQLite keeps the copy exact meanwhile: a write through the connection the
//! backup reads updates the pages already copied ("automatically updated at the same
//! time", sqlite.org/backup.html), so when the last step is done the copy is the state
//! after the last write committed, one consistent state. The rows are then read from the
//! copy with no lock held.
//!
//! rusqlite's safe `Backup` borrows the source connection for its whole life, which the
//! mutex cannot lend between steps, so this module uses the C API directly. The backup
//! object lives in the `LeaderConnections` whose connection it reads and is finished
//! before that connection closes (`LeaderConnections`' `Drop`), which is the one rule
//! SQLite sets for it; a leadership that ends mid-snapshot takes the backup with it and
//! the snapshot fails instead of returning a partial copy.

use std::ffi::c_int;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use phalanx_store::StoreError;
use rusqlite::{Connection, ffi};

use crate::Inner;
use crate::error::sqlite_error;

/// Pages copied per step, with the leader's mutex held: 64 pages (256 KiB at SQLite's
/// default page size) take well under a millisecond from the page cache.
const PAGES_PER_STEP: c_int = 64;

/// Between steps, long enough for a waiting writer to take the mutex (std's mutex is not
/// fair: without a pause the stepping thread would mostly take it straight back).
const PAUSE_BETWEEN_STEPS: Duration = Duration::from_micros(200);

/// Tells one snapshot's backup from another's.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A copy of the leader's main file into memory, in progress.
pub(crate) struct SteppedBackup {
    id: u64,
    backup: NonNull<ffi::sqlite3_backup>,
    /// The in-memory database the pages go to.
    copy: Connection,
}

// SAFETY: the backup object and both connections are only used with `Inner::leader`'s
// mutex held (the backup lives inside the `LeaderConnections` that mutex guards), so one
// thread at a time, which is what SQLite's multi-thread mode asks of a connection.
unsafe impl Send for SteppedBackup {}

impl Drop for SteppedBackup {
    fn drop(&mut self) {
        // SAFETY: `backup` came from `sqlite3_backup_init` and is finished only here; its
        // source connection is still open (see `LeaderConnections`' `Drop`).
        unsafe {
            ffi::sqlite3_backup_finish(self.backup.as_ptr());
        }
    }
}

/// Where a snapshot's copy stands after one step.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// More pages to copy.
    Copying,
    /// Every page copied; [`finish`] hands the copy over.
    Done,
}

/// One snapshot being taken through the leader's connection.
pub(crate) struct SnapshotRun {
    id: u64,
}

impl SnapshotRun {
    /// Starts copying the leader's main file into memory. `Ok(None)` if this handle does
    /// not lead (the caller then reads the file itself). Waits while another snapshot of
    /// the same handle is in progress.
    pub(crate) fn start(inner: &Inner) -> Result<Option<Self>, StoreError> {
        loop {
            let mut leader = inner.leader();
            let Some(conns) = leader.as_mut() else {
                return Ok(None);
            };
            if conns.snapshot.is_some() {
                drop(leader);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // An in-memory destination cannot change its page size once copying starts,
            // so it is given the source's first.
            let copy = Connection::open_in_memory()
                .and_then(|copy| {
                    let page_size: i64 = conns
                        .main
                        .query_row("PRAGMA page_size", [], |row| row.get(0))?;
                    copy.pragma_update(None, "page_size", page_size)?;
                    Ok(copy)
                })
                .map_err(|e| sqlite_error("snapshot", inner.path(), e))?;
            let name = c"main";
            // SAFETY: both handles are open connections, used by this thread only while
            // the mutex is held; the names are NUL-terminated.
            let backup = unsafe {
                ffi::sqlite3_backup_init(
                    copy.handle(),
                    name.as_ptr(),
                    conns.main.handle(),
                    name.as_ptr(),
                )
            };
            let Some(backup) = NonNull::new(backup) else {
                // The error is on the destination connection.
                // SAFETY: `copy` is open and used by this thread only.
                let code = unsafe { ffi::sqlite3_extended_errcode(copy.handle()) };
                let err = rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
                return Err(sqlite_error("snapshot", inner.path(), err));
            };
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            conns.snapshot = Some(SteppedBackup { id, backup, copy });
            return Ok(Some(Self { id }));
        }
    }

    /// Copies the next pages. Fails if the leadership ended since [`start`](Self::start).
    pub(crate) fn step(&self, inner: &Inner) -> Result<Progress, StoreError> {
        let mut leader = inner.leader();
        let backup = self.ours(inner, &mut leader)?;
        // SAFETY: the backup is ours and its source is open (both in the guarded value).
        let rc = unsafe { ffi::sqlite3_backup_step(backup.backup.as_ptr(), PAGES_PER_STEP) };
        match rc {
            ffi::SQLITE_OK => Ok(Progress::Copying),
            ffi::SQLITE_DONE => Ok(Progress::Done),
            // Busy or locked cannot come from a source only the leader's own connection
            // can open; were it to, the snapshot fails (as transient) rather than spin.
            code => {
                if let Some(conns) = leader.as_mut() {
                    conns.snapshot = None;
                }
                Err(sqlite_error(
                    "snapshot",
                    inner.path(),
                    rusqlite::Error::SqliteFailure(ffi::Error::new(code), None),
                ))
            }
        }
    }

    /// Ends the backup and hands over the in-memory copy.
    pub(crate) fn finish(self, inner: &Inner) -> Result<Connection, StoreError> {
        let mut leader = inner.leader();
        self.ours(inner, &mut leader)?;
        let backup = leader
            .as_mut()
            .and_then(|conns| conns.snapshot.take())
            .expect("checked by ours");
        Ok(backup.into_copy())
    }

    /// Copies every page, pausing between steps for the writers.
    pub(crate) fn run(self, inner: &Inner) -> Result<Connection, StoreError> {
        while self.step(inner)? == Progress::Copying {
            std::thread::sleep(PAUSE_BETWEEN_STEPS);
        }
        self.finish(inner)
    }

    fn ours<'a>(
        &self,
        inner: &Inner,
        leader: &'a mut Option<crate::LeaderConnections>,
    ) -> Result<&'a SteppedBackup, StoreError> {
        leader
            .as_ref()
            .and_then(|conns| conns.snapshot.as_ref())
            .filter(|backup| backup.id == self.id)
            .ok_or_else(|| {
                StoreError::transient(
                    "snapshot",
                    format!(
                        "the lease of {} ended during the snapshot; take it again",
                        inner.path().display()
                    ),
                    None,
                )
            })
    }
}

impl SteppedBackup {
    /// Finishes the backup object and returns the copy's connection. Called with the
    /// mutex held, the source connection still open.
    fn into_copy(self) -> Connection {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the backup is finished once and never used again (`this` is not
        // dropped, so `Drop` does not finish it a second time), and `copy` is moved out of
        // it exactly once.
        unsafe {
            ffi::sqlite3_backup_finish(this.backup.as_ptr());
            std::ptr::read(&this.copy)
        }
    }
}
