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

mod generation;
mod schema;
mod url;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use phalanx_store::{
    Acquisition, BatchOp, Epoch, EpochRecord, FencingToken, HeldLease, HolderId, LeaseExpiry,
    LeaseInfo, LeaseStore, Namespace, StateStore, StoreError, StoreKey, StoreOptions, check_batch,
};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, params};

pub use crate::url::SqliteConfig;

/// How long a campaigner waits between attempts to take the file lock.
const CAMPAIGN_POLL: Duration = Duration::from_millis(100);
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
    epoch: Epoch,
    holder: HolderId,
    main: Connection,
    replica: Option<Connection>,
    /// Set when the files diverged; every later write fails with this message.
    broken: Option<String>,
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

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        let timeout = inner.options.operation_timeout;
        let task = tokio::task::spawn_blocking(move || work(&inner));
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StoreError::permanent(
                op,
                "the SQLite worker panicked",
                Some(Box::new(join) as _),
            )),
            Err(_) => Err(StoreError::transient(
                op,
                format!("SQLite did not finish within {timeout:?} (a stalled disk?)"),
                None,
            )),
        }
    }
}

fn sqlite_error(op: &'static str, path: &Path, err: rusqlite::Error) -> StoreError {
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

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
    fn try_acquire(&self, holder: &HolderId, ttl: Duration) -> Result<Acquisition, StoreError> {
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

    fn apply(&self, token: FencingToken, ops: &[BatchOp]) -> Result<(), StoreError> {
        let mut leader = self.leader();
        let Some(conns) = leader.as_mut() else {
            return Err(StoreError::fenced(format!(
                "this handle does not hold the lock of {} (epoch {} is not ours)",
                self.path().display(),
                token.epoch()
            )));
        };
        if conns.epoch != token.epoch() {
            return Err(StoreError::fenced(format!(
                "epoch {} is not current; this handle holds epoch {}",
                token.epoch(),
                conns.epoch
            )));
        }
        if let Some(reason) = &conns.broken {
            return Err(StoreError::permanent("write", reason.clone(), None));
        }
        let cluster = self.cluster();
        let main_path = self.config.path.clone();
        let main_tx = conns
            .main
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| sqlite_error("write", &main_path, e))?;
        apply_in(&main_tx, cluster, token, ops).map_err(|e| match e {
            ApplyError::Fenced(current) => fenced_by_row(token, current),
            ApplyError::Sqlite(e) => sqlite_error("write", &main_path, e),
        })?;
        if let (Some(replica), Some(replica_path)) = (conns.replica.as_mut(), &self.config.replica)
        {
            let replica_tx = replica
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| sqlite_error("write replica", replica_path, e))?;
            apply_in(&replica_tx, cluster, token, ops).map_err(|e| match e {
                ApplyError::Fenced(current) => fenced_by_row(token, current),
                ApplyError::Sqlite(e) => sqlite_error("write replica", replica_path, e),
            })?;
            // Replica first: if this fails, the main transaction rolls back on drop and
            // the files stay identical.
            replica_tx
                .commit()
                .map_err(|e| sqlite_error("commit replica", replica_path, e))?;
            if let Err(err) = main_tx.commit() {
                let message = format!(
                    "the replica {} committed a transaction that {} did not ({err}); restart to recreate the replica",
                    replica_path.display(),
                    main_path.display()
                );
                tracing::error!(%message, "SQLite replica diverged");
                conns.broken = Some(message.clone());
                return Err(StoreError::permanent(
                    "commit",
                    message,
                    Some(Box::new(err) as _),
                ));
            }
        } else {
            main_tx
                .commit()
                .map_err(|e| sqlite_error("commit", &main_path, e))?;
        }
        Ok(())
    }

    fn release(&self, epoch: Epoch) {
        let mut leader = self.leader();
        if leader.as_ref().is_some_and(|conns| conns.epoch == epoch) {
            // Closing the connections releases the OS locks (and checkpoints the WAL).
            *leader = None;
            tracing::info!(cluster = self.cluster(), %epoch, "released the SQLite lock");
        }
    }
}

enum TakeError {
    Sqlite(rusqlite::Error),
    /// Taking the lease would lose data; the message says why and how to recover.
    Refused(String),
}

impl From<rusqlite::Error> for TakeError {
    fn from(err: rusqlite::Error) -> Self {
        TakeError::Sqlite(err)
    }
}

enum ApplyError {
    Fenced(Option<i64>),
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(err: rusqlite::Error) -> Self {
        ApplyError::Sqlite(err)
    }
}

fn fenced_by_row(token: FencingToken, current: Option<i64>) -> StoreError {
    match current {
        Some(current) => StoreError::fenced(format!(
            "epoch {} is stale; the cluster is at epoch {current}",
            token.epoch()
        )),
        None => StoreError::fenced(format!(
            "epoch {} was never granted in this database",
            token.epoch()
        )),
    }
}

/// Checks the epoch row and applies `ops`, inside the caller's transaction.
fn apply_in(
    tx: &Transaction<'_>,
    cluster: &str,
    token: FencingToken,
    ops: &[BatchOp],
) -> Result<(), ApplyError> {
    let current: Option<i64> = tx
        .query_row(
            "SELECT epoch FROM phalanx_lease WHERE cluster = ?1",
            [cluster],
            |row| row.get(0),
        )
        .optional()?;
    if current != Some(token.epoch().0 as i64) {
        return Err(ApplyError::Fenced(current));
    }
    generation::count_commit(tx)?;
    let epoch = token.epoch().0 as i64;
    // SQLite stores integers as signed 64 bits; a sequence past that is a writer's bug.
    let sequence = i64::try_from(token.sequence()).unwrap_or(i64::MAX);
    // Only a mutation newer than the row's last one changes it (`FencingToken::supersedes`).
    // Writes to one file are serialized by its lock, so nothing can land late here; the
    // check keeps every backend to one contract.
    let mut put = tx.prepare_cached(
        "INSERT INTO phalanx_kv (cluster, primary_ns, secondary_ns, key, value, epoch, sequence)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (cluster, primary_ns, secondary_ns, key)
         DO UPDATE SET value = excluded.value, epoch = excluded.epoch, sequence = excluded.sequence
         WHERE phalanx_kv.epoch < excluded.epoch
            OR (phalanx_kv.epoch = excluded.epoch
                AND (excluded.sequence = 0 OR phalanx_kv.sequence < excluded.sequence))",
    )?;
    let mut delete = tx.prepare_cached(
        "DELETE FROM phalanx_kv
         WHERE cluster = ?1 AND primary_ns = ?2 AND secondary_ns = ?3 AND key = ?4
           AND (epoch < ?5 OR (epoch = ?5 AND (?6 = 0 OR sequence < ?6)))",
    )?;
    for op in ops {
        match op {
            BatchOp::Put { key, value } => {
                put.execute(params![
                    cluster,
                    key.primary(),
                    key.secondary(),
                    key.key(),
                    value,
                    epoch,
                    sequence
                ])?;
            }
            BatchOp::Delete { key } => {
                delete.execute(params![
                    cluster,
                    key.primary(),
                    key.secondary(),
                    key.key(),
                    epoch,
                    sequence
                ])?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl StateStore for SqliteStore {
    fn describe(&self) -> String {
        match &self.inner.config.replica {
            Some(replica) => format!(
                "sqlite {} (replica {})",
                self.inner.config.path.display(),
                replica.display()
            ),
            None => format!("sqlite {}", self.inner.config.path.display()),
        }
    }

    async fn read(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError> {
        let key = key.clone();
        self.blocking("read", move |inner| {
            let value = inner.read_schema(|conn| {
                conn.prepare_cached(
                    "SELECT value FROM phalanx_kv
                     WHERE cluster = ?1 AND primary_ns = ?2 AND secondary_ns = ?3 AND key = ?4",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(
                        params![inner.cluster(), key.primary(), key.secondary(), key.key()],
                        |row| row.get::<_, Vec<u8>>(0),
                    )
                    .optional()
                })
                .map_err(|e| sqlite_error("read", inner.path(), e))
            })?;
            value.flatten().ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })
        })
        .await
    }

    async fn list(&self, namespace: &Namespace) -> Result<Vec<String>, StoreError> {
        let namespace = namespace.clone();
        self.blocking("list", move |inner| {
            let keys = inner.read_schema(|conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT key FROM phalanx_kv WHERE cluster = ?1 AND primary_ns = ?2 AND secondary_ns = ?3",
                    )
                    .map_err(|e| sqlite_error("list", inner.path(), e))?;
                let rows = stmt
                    .query_map(
                        params![inner.cluster(), namespace.primary(), namespace.secondary()],
                        |row| row.get::<_, String>(0),
                    )
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| sqlite_error("list", inner.path(), e))?;
                Ok(rows)
            })?;
            Ok(keys.unwrap_or_default())
        })
        .await
    }

    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let ops = check_batch(ops)?;
        if ops.is_empty() {
            return Ok(());
        }
        self.blocking("write", move |inner| inner.apply(token, &ops))
            .await
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
        tokio::time::sleep(max_wait.min(CAMPAIGN_POLL)).await;
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
        let leader = store.inner.leader();
        match leader.as_ref() {
            Some(conns) if conns.epoch == self.token.epoch() => match &conns.broken {
                Some(reason) => Err(StoreError::permanent("renew", reason.clone(), None)),
                None => Ok(()),
            },
            _ => Err(StoreError::fenced(format!(
                "the SQLite lock of epoch {} was released",
                self.token.epoch()
            ))),
        }
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

#[cfg(test)]
mod tests;
