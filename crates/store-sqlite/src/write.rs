//! Writes: every batch in one transaction on the main file (and one on the replica,
//! committed first), checked against the epoch row inside it.

use async_trait::async_trait;
use phalanx_store::backend::write_sequence;
use phalanx_store::{
    BatchOp, FencingToken, Namespace, StateStore, StoreError, StoreKey, check_batch,
};
use rusqlite::{OptionalExtension, Transaction, params};

use crate::error::{ApplyError, fenced_by_row, sqlite_error};
use crate::snapshot::SnapshotRun;
use crate::{Inner, SqliteStore, generation, schema};

/// One row of `phalanx_kv`: primary and secondary namespace, key, value.
type Row = (String, String, String, Vec<u8>);

impl Inner {
    /// Every row of this cluster, read through `conn` in one statement.
    pub(crate) fn read_rows(&self, conn: &rusqlite::Connection) -> Result<Vec<Row>, StoreError> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT primary_ns, secondary_ns, key, value FROM phalanx_kv WHERE cluster = ?1",
            )
            .map_err(|e| sqlite_error("snapshot", self.path(), e))?;
        stmt.query_map(params![self.cluster()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| sqlite_error("snapshot", self.path(), e))
    }

    /// Applies `ops` under `token` (its write sequence already checked: `sequence`).
    pub(crate) fn apply(
        &self,
        token: FencingToken,
        sequence: i64,
        ops: &[BatchOp],
    ) -> Result<(), StoreError> {
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
        apply_in(&main_tx, cluster, token, sequence, ops).map_err(|e| match e {
            ApplyError::Fenced(current) => fenced_by_row(token, current),
            ApplyError::Sqlite(e) => sqlite_error("write", &main_path, e),
        })?;
        if let (Some(replica), Some(replica_path)) = (conns.replica.as_mut(), &self.config.replica)
        {
            let replica_tx = replica
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| sqlite_error("write replica", replica_path, e))?;
            apply_in(&replica_tx, cluster, token, sequence, ops).map_err(|e| match e {
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
}

/// Checks the epoch row and applies `ops`, inside the caller's transaction.
fn apply_in(
    tx: &Transaction<'_>,
    cluster: &str,
    token: FencingToken,
    sequence: i64,
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

    async fn snapshot(&self) -> Result<Vec<(StoreKey, Vec<u8>)>, StoreError> {
        self.blocking("snapshot", move |inner| {
            // The leader copies its file in small steps so that its writes wait for one
            // step at most (see `snapshot`); any other handle reads the file in one
            // statement: one read transaction, one consistent state.
            let rows = match SnapshotRun::start(inner)? {
                Some(run) => {
                    let copy = run.run(inner)?;
                    if schema::version(&copy)
                        .map_err(|e| sqlite_error("snapshot", inner.path(), e))?
                        == 0
                    {
                        None
                    } else {
                        Some(inner.read_rows(&copy)?)
                    }
                }
                None => inner.read_schema(|conn| inner.read_rows(conn))?,
            };
            let mut entries = rows
                .unwrap_or_default()
                .into_iter()
                .map(|(primary, secondary, key, value)| {
                    Ok((StoreKey::new(&primary, &secondary, &key)?, value))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(entries)
        })
        .await
    }

    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let ops = check_batch(ops)?;
        if ops.is_empty() {
            return Ok(());
        }
        let sequence = write_sequence(token)?;
        self.blocking("write", move |inner| inner.apply(token, sequence, &ops))
            .await
    }
}
