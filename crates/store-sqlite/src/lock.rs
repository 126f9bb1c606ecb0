//! The lease: SQLite's exclusive lock on the database file, taken with the epoch bump
//! (and the replica's creation) by `try_acquire`, kept by the leader's connections, and
//! released when they close.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use phalanx_store::backend::{now_unix_ms, wait_campaign_poll};
use phalanx_store::{
    Acquisition, Epoch, EpochRecord, FencingToken, HeldLease, HolderId, LeaseExpiry, LeaseInfo,
    LeaseStore, StoreError,
};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use crate::error::{TakeError, sqlite_error};
use crate::{Inner, LeaderConnections, SqliteStore, generation, schema};

/// Attempts of one `try_acquire` while the file is busy (see `Inner::try_acquire`).
const CONTENDED_ATTEMPTS: u32 = 3;

/// 10 to 59 ms, different for each holder and attempt and from one call to the next, so
/// that campaigners that collided do not collide again.
fn contention_pause(holder: &HolderId, attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    holder.as_str().hash(&mut hasher);
    attempt.hash(&mut hasher);
    Duration::from_millis(10 + hasher.finish() % 50)
}

impl Inner {
    fn open_exclusive(&self, path: &Path) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A short wait, not none: campaigners and readers that touch the file at the same
        // instant would otherwise all see it busy and nobody would win the round. A lock
        // kept by a leader stays busy past the wait, which reads as "held".
        conn.busy_timeout(Duration::from_millis(200))?;
        // Exclusive locking mode before WAL: SQLite then keeps the WAL index in heap memory
        // and never releases the file lock once taken.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    }

    /// Campaigners that open the file at the same instant can all find it busy: in
    /// exclusive locking mode each keeps the shared lock its first read took while it
    /// waits out the others', and nobody wins the round (seen under load in the
    /// conformance suite). A few attempts, apart by a pause that differs per holder and
    /// per try, let one through; a lock a leader keeps stays busy through all of them.
    pub(crate) fn try_acquire(
        &self,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Acquisition, StoreError> {
        let mut attempt = 1;
        loop {
            match self.try_acquire_once(holder, ttl)? {
                Acquisition::Held(None) if attempt < CONTENDED_ATTEMPTS => {
                    std::thread::sleep(contention_pause(holder, attempt));
                    attempt += 1;
                }
                outcome => return Ok(outcome),
            }
        }
    }

    fn try_acquire_once(
        &self,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Acquisition, StoreError> {
        let mut leader = self.leader();
        if let Some(conns) = leader.as_ref() {
            return Ok(Acquisition::Held(Some(LeaseInfo {
                holder: conns.holder.to_string(),
                epoch: conns.epoch,
                expires_in: None,
            })));
        }
        let path = self.path().to_owned();
        let locked = |err: &rusqlite::Error| {
            matches!(
                err.sqlite_error_code(),
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            )
        };
        // A missing main file beside a replica is checked before opening it creates one.
        if let Some(replica_path) = &self.config.replica
            && !path.exists()
        {
            let replica = generation::inspect(replica_path)
                .map_err(|e| sqlite_error("read replica", replica_path, e))?;
            generation::may_recreate_replica(
                &path,
                &generation::FileState::Empty,
                replica_path,
                &replica,
            )
            .map_err(|why| StoreError::permanent("acquire", why, None))?;
        }
        let mut main = match self.open_exclusive(&path) {
            Ok(conn) => conn,
            Err(err) if locked(&err) => return Ok(Acquisition::Held(None)),
            Err(err) => return Err(sqlite_error("acquire", &path, err)),
        };
        let epoch = match self.take_lock_and_bump_epoch(&mut main, holder) {
            Ok(epoch) => epoch,
            // Dropping `main` closes it, releasing whatever it took.
            Err(TakeError::Sqlite(err)) if locked(&err) => return Ok(Acquisition::Held(None)),
            Err(TakeError::Sqlite(err)) => return Err(sqlite_error("acquire", &path, err)),
            Err(TakeError::Refused(why)) => {
                return Err(StoreError::permanent("acquire", why, None));
            }
        };
        let replica = match &self.config.replica {
            Some(replica_path) => Some(
                self.create_replica(&main, replica_path)
                    .map_err(|e| sqlite_error("create replica", replica_path, e))?,
            ),
            None => None,
        };
        tracing::info!(cluster = self.cluster(), %epoch, holder = %holder, path = %path.display(), "took the SQLite lock");
        *leader = Some(LeaderConnections {
            snapshot: None,
            epoch,
            holder: holder.clone(),
            main,
            replica,
            broken: None,
        });
        Ok(Acquisition::Won(Box::new(SqliteLease {
            store: None,
            token: FencingToken::new(epoch),
            ttl,
        })))
    }

    /// Takes the main file's lock, checks that the replica (if any) may be recreated
    /// from it, and bumps the epoch.
    fn take_lock_and_bump_epoch(
        &self,
        main: &mut Connection,
        holder: &HolderId,
    ) -> Result<Epoch, TakeError> {
        let cluster = self.cluster();
        let tx = main.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        if let Some(replica_path) = &self.config.replica {
            // Read under the main file's lock: no other instance writes the replica now.
            let main_state = generation::read_state(&tx)?;
            let replica_state = generation::inspect(replica_path)?;
            generation::may_recreate_replica(
                self.path(),
                &main_state,
                replica_path,
                &replica_state,
            )
            .map_err(TakeError::Refused)?;
        }
        schema::migrate(&tx)?;
        generation::count_commit(&tx)?;
        let previous: Option<i64> = tx
            .query_row(
                "SELECT epoch FROM phalanx_lease WHERE cluster = ?1",
                [cluster],
                |row| row.get(0),
            )
            .optional()?;
        let epoch = previous.unwrap_or(0) + 1;
        let now = now_unix_ms();
        tx.execute(
            "INSERT INTO phalanx_lease (cluster, epoch, holder, acquired_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (cluster) DO UPDATE SET epoch = excluded.epoch, holder = excluded.holder,
             acquired_at_ms = excluded.acquired_at_ms",
            params![cluster, epoch, holder.as_str(), now],
        )?;
        tx.execute(
            "INSERT INTO phalanx_epochs (cluster, epoch, holder, acquired_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![cluster, epoch, holder.as_str(), now],
        )?;
        tx.commit()?;
        Ok(Epoch(epoch as u64))
    }

    fn create_replica(
        &self,
        main: &Connection,
        path: &Path,
    ) -> Result<Connection, rusqlite::Error> {
        // Start from an empty file: a stale replica may be ahead by an unacknowledged
        // transaction, or be from another database altogether.
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                        Some(format!(
                            "remove stale replica {}: {err}",
                            PathBuf::from(file).display()
                        )),
                    ));
                }
            }
        }
        let mut replica = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        replica.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        {
            let backup = rusqlite::backup::Backup::new(main, &mut replica)?;
            backup.run_to_completion(1024, Duration::ZERO, None)?;
        }
        replica.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        replica.pragma_update(None, "synchronous", "FULL")?;
        // Take the replica's lock now, so nothing else can open it while we lead.
        replica.execute_batch("BEGIN EXCLUSIVE; COMMIT;")?;
        Ok(replica)
    }

    pub(crate) fn release(&self, epoch: Epoch) {
        let mut leader = self.leader();
        if leader.as_ref().is_some_and(|conns| conns.epoch == epoch) {
            // Closing the connections releases the OS locks (and checkpoints the WAL).
            *leader = None;
            tracing::info!(cluster = self.cluster(), %epoch, "released the SQLite lock");
        }
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    fn lease_expiry(&self) -> LeaseExpiry {
        LeaseExpiry::ProcessLock
    }

    async fn try_acquire(
        &self,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Acquisition, StoreError> {
        let holder = holder.clone();
        let store = self.clone();
        // The lease is made, with the handle that releases it on drop, inside the blocking
        // task: taking the lock (and copying the replica) can outlive the operation
        // timeout, and a result nobody waits for any more is dropped where it ends, which
        // releases the lock instead of keeping it for a campaigner that never saw it won.
        self.blocking("acquire", move |inner| {
            Ok(match inner.try_acquire(&holder, ttl)? {
                Acquisition::Won(lease) => Acquisition::Won(Box::new(SqliteLease {
                    store: Some(store),
                    token: lease.token(),
                    ttl,
                })),
                held => held,
            })
        })
        .await
    }

    async fn current_lease(&self) -> Result<Option<LeaseInfo>, StoreError> {
        self.blocking("read lease", |inner| {
            if let Some(conns) = inner.leader().as_ref() {
                return Ok(Some(LeaseInfo {
                    holder: conns.holder.to_string(),
                    epoch: conns.epoch,
                    expires_in: None,
                }));
            }
            // Without the lock, being able to read at all means nobody holds it (the
            // holder's exclusive lock keeps every other connection out); the lease row
            // only remembers who held it last.
            inner.read_schema(|_| Ok(())).map(|_| None)
        })
        .await
    }

    async fn wait_for_change(&self, max_wait: Duration) {
        wait_campaign_poll(max_wait).await;
    }

    async fn epoch_history(&self, limit: usize) -> Result<Vec<EpochRecord>, StoreError> {
        self.blocking("read epoch history", move |inner| {
            let records = inner.read_schema(|conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT epoch, holder, acquired_at_ms FROM phalanx_epochs
                         WHERE cluster = ?1 ORDER BY epoch DESC LIMIT ?2",
                    )
                    .map_err(|e| sqlite_error("read epoch history", inner.path(), e))?;
                stmt.query_map(params![inner.cluster(), limit as i64], |row| {
                    Ok(EpochRecord {
                        epoch: Epoch(row.get::<_, i64>(0)? as u64),
                        holder: row.get(1)?,
                        acquired_at_unix_ms: row.get(2)?,
                    })
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| sqlite_error("read epoch history", inner.path(), e))
            })?;
            Ok(records.unwrap_or_default())
        })
        .await
    }
}

/// The SQLite lock, held by a [`SqliteStore`]'s leader connection.
struct SqliteLease {
    /// `None` only transiently inside `try_acquire`, before the handle is attached.
    store: Option<SqliteStore>,
    token: FencingToken,
    /// The lock has no TTL of its own. The requested one is reported as granted, so the
    /// holder still self-fences when its process stalls for longer (as on every backend).
    ttl: Duration,
}

#[async_trait]
impl HeldLease for SqliteLease {
    fn token(&self) -> FencingToken {
        self.token
    }

    fn granted_ttl(&self) -> Duration {
        self.ttl
    }

    async fn renew(&mut self) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Err(StoreError::fenced("lease detached from its store"));
        };
        let epoch = self.token.epoch();
        // A write transaction holds the leader's connections throughout (on a stalled
        // disk, as long as it stalls): wait for them on a blocking thread, bounded by the
        // operation timeout like every other call, never on the async task.
        store
            .blocking("renew", move |inner| match inner.leader().as_ref() {
                Some(conns) if conns.epoch == epoch => match &conns.broken {
                    Some(reason) => Err(StoreError::permanent("renew", reason.clone(), None)),
                    None => Ok(()),
                },
                _ => Err(StoreError::fenced(format!(
                    "the SQLite lock of epoch {epoch} was released"
                ))),
            })
            .await
    }

    async fn resign(mut self: Box<Self>) -> Result<(), StoreError> {
        if let Some(store) = self.store.take() {
            let epoch = self.token.epoch();
            store
                .blocking("resign", move |inner| {
                    inner.release(epoch);
                    Ok(())
                })
                .await?;
        }
        Ok(())
    }
}

impl Drop for SqliteLease {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            store.inner.release(self.token.epoch());
        }
    }
}
