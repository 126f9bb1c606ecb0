//! The PostgreSQL backend of Phalanx's fenced state store.
//!
//! URL: `postgres://user:password@host:port/database[?sslmode=verify-full&sslrootcert=...]`
//! (see [`PgUrl::parse`] for every option).
//!
//! # Lease
//! One row per cluster in `phalanx_lease` holds the epoch, the holder, and an expiry
//! computed by the database server's clock (`now() + ttl`), so the instances' clocks
//! never matter. The holder keeps a dedicated session (not pooled) and renews through
//! it; the row records that session's backend pid and start time. The lease is free to
//! win when it was resigned, expired by the server's clock, or its session no longer
//! exists in `pg_stat_activity`: when a holder's process dies its TCP connection closes,
//! PostgreSQL ends the session within milliseconds, and a standby takes over without
//! waiting for the TTL. The holder in turn treats the end of its own lease session as
//! the end of its leadership
//! ([`HeldLease::session_lost`](phalanx_store::HeldLease::session_lost)).
//!
//! Winning is one call of the `phalanx_acquire` function: it checks the row is free
//! (without locks, so waiting campaigners cost the leader nothing), takes the cluster's
//! advisory lock exclusively, checks again, bumps the epoch and records it in
//! `phalanx_epochs`.
//!
//! # Fencing
//! Every mutation is one statement whose first CTE calls `phalanx_fence($cluster,
//! $epoch)`: it takes the cluster's advisory lock in shared mode, then reads the lease
//! row with a fresh snapshot (a VOLATILE function takes one per statement) and answers
//! whether the epoch is current and its lease unexpired by the server's clock. The
//! writes only happen joined to a true answer. A takeover holds the same lock
//! exclusively, so it waits for every write in flight, and every write after it sees the
//! new epoch: a write either commits before a takeover or writes nothing. The check
//! rides in the write's own statement (no extra round trip) and writes nothing itself:
//! no row lock, no WAL, no MultiXact when writers run concurrently. Each row also keeps
//! the epoch and write sequence of the mutation that last changed it, and a mutation only
//! changes a row it is newer than (`FencingToken::supersedes`): a statement that reaches
//! the server late (its client timed out, retried, and wrote again since) changes
//! nothing. A connection whose statement timed out is never handed out again. Renewals
//! do not take the lock. No statement holds a lock across client round trips, so a stalled client
//! cannot block the others.
//!
//! # Durability
//! A write is acknowledged when PostgreSQL commits it. With `synchronous_commit = on`
//! and `synchronous_standby_names` set on the server, that is after a synchronous
//! replica has it; the store warns at start-up when `synchronous_commit` is weaker.
//! Point the store at the primary directly, not through a transaction-pooling proxy
//! (the lease is bound to a session).

#![warn(missing_docs)]

mod error;
mod lease;
mod notices;
mod schema;
mod sql;
mod url;

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use phalanx_store::backend::{self, refused_epoch, stale_epoch, within, write_sequence};
use phalanx_store::{
    BatchOp, Epoch, FencingToken, Namespace, StateStore, StoreError, StoreKey, StoreOptions,
    check_batch,
};
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{BACKEND, pg_error, pool_error};
use crate::lease::LeaseSession;
use crate::notices::{Warnings, WatchedConnect};
use crate::sql::{APPLY, ENSURE_LEASE_ROW, LEASE_ROW, LIST, PUT_ONE, READ, SNAPSHOT};
pub use crate::url::{DEFAULT_POOL_SIZE, PgUrl};

/// What the server's durability settings put at risk, one sentence each (logged as
/// warnings at start-up).
fn durability_warnings(synchronous_commit: &str, standbys: &str) -> Vec<&'static str> {
    let mut warnings = Vec::new();
    if matches!(synchronous_commit, "off" | "local") {
        warnings.push(
            "synchronous_commit is weaker than on: acknowledged writes can be lost if the server crashes",
        );
    }
    if standbys.trim().is_empty() {
        warnings.push(
            "synchronous_standby_names is empty: a write is acknowledged once it is on this \
             server alone, and a failover of the database to an asynchronous standby can lose it",
        );
    }
    warnings
}

/// A PostgreSQL state store for one cluster. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: PgUrl,
    options: StoreOptions,
    pool: Pool,
    /// Warnings the server attached to pooled statements' results.
    warnings: Warnings,
    /// The session a campaigner polls with; it becomes the lease session when it wins.
    campaign_session: tokio::sync::Mutex<Option<LeaseSession>>,
}

impl PostgresStore {
    /// Connects to the database at `url`, applies the schema migrations, and returns a
    /// handle for `options.cluster`. Fails within `options.connect_timeout` when the
    /// server cannot be reached.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        options.validate()?;
        let url = PgUrl::parse(url, &options)?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let warnings = Warnings::default();
        let manager = match &url.tls {
            Some(tls) => Manager::from_connect(
                url.config.clone(),
                WatchedConnect {
                    tls: MakeRustlsConnect::new((**tls).clone()),
                    warnings: warnings.clone(),
                },
                manager_config,
            ),
            None => Manager::from_connect(
                url.config.clone(),
                WatchedConnect {
                    tls: NoTls,
                    warnings: warnings.clone(),
                },
                manager_config,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(url.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.operation_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Config(format!("cannot build the connection pool: {e}")))?;
        let store = Self {
            inner: Arc::new(Inner {
                url,
                options,
                pool,
                warnings,
                campaign_session: tokio::sync::Mutex::new(None),
            }),
        };
        store.prepare_database().await?;
        Ok(store)
    }

    /// The parsed URL (without secrets in its `Debug`).
    pub fn url(&self) -> &PgUrl {
        &self.inner.url
    }

    async fn prepare_database(&self) -> Result<(), StoreError> {
        let target = self.inner.url.redacted.clone();
        let deadline = self.inner.options.connect_timeout + self.inner.options.operation_timeout;
        let work = async {
            let mut client = self
                .inner
                .pool
                .get()
                .await
                .map_err(|e| pool_error("connect", &target, e))?;
            schema::migrate(&mut client)
                .await
                .map_err(|e| pg_error("migrate", &target, e))?;
            client
                .execute(ENSURE_LEASE_ROW, &[&self.inner.options.cluster.as_str()])
                .await
                .map_err(|e| pg_error("migrate", &target, e))?;
            let row = client
                .query_one(
                    "SELECT current_setting('synchronous_commit'),
                            current_setting('synchronous_standby_names'),
                            current_setting('server_version'),
                            coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
                                OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')",
                    &[],
                )
                .await
                .map_err(|e| pg_error("connect", &target, e))?;
            let synchronous_commit: String = row.get(0);
            let standbys: String = row.get(1);
            let version: String = row.get(2);
            let sees_all_sessions: bool = row.get(3);
            if !sees_all_sessions {
                tracing::info!(
                    url = %target,
                    "this role sees other roles' sessions by pid only (it is neither superuser nor pg_read_all_stats): a holder under another role is taken over at once when its session ends, unless its pid was reused meanwhile (then after the lease TTL)"
                );
            }
            for warning in durability_warnings(&synchronous_commit, &standbys) {
                tracing::warn!(url = %target, synchronous_commit, synchronous_standby_names = %standbys, "{warning}");
            }
            tracing::info!(url = %target, version, synchronous_standby_names = %standbys, "connected to PostgreSQL");
            Ok(())
        };
        within(BACKEND, "connect", &target, deadline, work).await?
    }

    async fn client(&self, op: &'static str) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| pool_error(op, &self.inner.url.redacted, e))
    }

    /// Runs `work` with a pooled client, bounded by the operation timeout.
    ///
    /// A client whose statement timed out is taken out of the pool and closed, never
    /// handed out again: its statement may still be queued on the connection, and
    /// whatever the next user sent would run after it.
    async fn with_client<T>(
        &self,
        op: &'static str,
        work: impl AsyncFnOnce(&deadpool_postgres::Object) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let target = &self.inner.url.redacted;
        let limit = self.inner.options.operation_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let client = tokio::time::timeout_at(deadline, self.client(op))
            .await
            .map_err(|_| backend::timeout(BACKEND, op, target, limit))??;
        match tokio::time::timeout_at(deadline, work(&client)).await {
            Ok(result) => result.map_err(|e| pg_error(op, target, e)),
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                Err(backend::timeout(BACKEND, op, target, limit))
            }
        }
    }

    fn cluster(&self) -> &str {
        self.inner.options.cluster.as_str()
    }

    /// A committed write is acknowledged only if the server attached no warning to it
    /// (see `notices`): a cancelled wait for the synchronous standby means it may not
    /// survive a failover, so its outcome is unknown and the caller retries.
    fn unless_warned(&self, op: &'static str, mark: u64) -> Result<(), StoreError> {
        if self.inner.warnings.since(mark) {
            return Err(StoreError::transient(
                op,
                format!(
                    "{}: PostgreSQL warned about the commit (a cancelled wait for the \
                     synchronous standby leaves it on the primary only); its outcome is unknown",
                    self.inner.url.redacted
                ),
                None,
            ));
        }
        Ok(())
    }

    /// The fenced error for a refused token, saying why as far as the lease row tells.
    async fn fenced_error(&self, token: FencingToken) -> StoreError {
        let cluster = self.cluster().to_owned();
        let row = self
            .with_client("read lease", async |client| {
                client.query_opt(LEASE_ROW, &[&cluster]).await
            })
            .await;
        match row {
            Ok(Some(row)) => {
                let epoch: i64 = row.get(0);
                let holder: Option<String> = row.get(1);
                let live: bool = row.get(2);
                if epoch as u64 != token.epoch().0 {
                    stale_epoch(
                        token,
                        Epoch(epoch as u64),
                        Some(holder.as_deref().unwrap_or("none")),
                    )
                } else if holder.is_none() {
                    StoreError::fenced(format!("the lease of epoch {epoch} was resigned"))
                } else if !live {
                    StoreError::fenced(format!(
                        "the lease of epoch {epoch} expired by the server's clock"
                    ))
                } else {
                    refused_epoch(token, None)
                }
            }
            Ok(None) => StoreError::fenced(format!("cluster {} has no lease row", self.cluster())),
            Err(err) => refused_epoch(token, Some(&err)),
        }
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    fn describe(&self) -> String {
        format!("postgres {}", self.inner.url.redacted)
    }

    async fn read(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError> {
        let cluster = self.cluster();
        let row = self
            .with_client("read", async |client| {
                let statement = client.prepare_cached(READ).await?;
                client
                    .query_opt(
                        &statement,
                        &[&cluster, &key.primary(), &key.secondary(), &key.key()],
                    )
                    .await
            })
            .await?;
        row.map(|row| row.get::<_, Vec<u8>>(0))
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })
    }

    async fn list(&self, namespace: &Namespace) -> Result<Vec<String>, StoreError> {
        let cluster = self.cluster();
        let rows = self
            .with_client("list", async |client| {
                let statement = client.prepare_cached(LIST).await?;
                client
                    .query(
                        &statement,
                        &[&cluster, &namespace.primary(), &namespace.secondary()],
                    )
                    .await
            })
            .await?;
        Ok(rows.into_iter().map(|row| row.get(0)).collect())
    }

    async fn snapshot(&self) -> Result<Vec<(StoreKey, Vec<u8>)>, StoreError> {
        let cluster = self.cluster();
        let rows = self
            .with_client("snapshot", async |client| {
                let statement = client.prepare_cached(SNAPSHOT).await?;
                client.query(&statement, &[&cluster]).await
            })
            .await?;
        let mut entries = rows
            .into_iter()
            .map(|row| {
                let key = StoreKey::new(row.get(0), row.get(1), row.get(2))?;
                Ok((key, row.get::<_, Vec<u8>>(3)))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // The database's collation may not be byte order: sort as the contract says.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let ops = check_batch(ops)?;
        if ops.is_empty() {
            return Ok(());
        }
        let cluster = self.cluster();
        let epoch = token.epoch().0 as i64;
        let sequence = write_sequence(token)?;
        let warnings = self.inner.warnings.mark();
        if let [BatchOp::Put { key, value }] = ops.as_slice() {
            let row = self
                .with_client("write", async |client| {
                    let statement = client.prepare_cached(PUT_ONE).await?;
                    client
                        .query_one(
                            &statement,
                            &[
                                &cluster,
                                &epoch,
                                &key.primary(),
                                &key.secondary(),
                                &key.key(),
                                value,
                                &sequence,
                            ],
                        )
                        .await
                })
                .await?;
            return if row.get::<_, bool>(0) {
                self.unless_warned("write", warnings)
            } else {
                Err(self.fenced_error(token).await)
            };
        }
        let mut deletes: [Vec<&str>; 3] = Default::default();
        let mut puts: [Vec<&str>; 3] = Default::default();
        let mut values: Vec<&[u8]> = Vec::new();
        for op in &ops {
            let (columns, key) = match op {
                BatchOp::Put { key, value } => {
                    values.push(value);
                    (&mut puts, key)
                }
                BatchOp::Delete { key } => (&mut deletes, key),
            };
            columns[0].push(key.primary());
            columns[1].push(key.secondary());
            columns[2].push(key.key());
        }
        let row = self
            .with_client("write", async |client| {
                let statement = client.prepare_cached(APPLY).await?;
                client
                    .query_one(
                        &statement,
                        &[
                            &cluster,
                            &epoch,
                            &deletes[0],
                            &deletes[1],
                            &deletes[2],
                            &puts[0],
                            &puts[1],
                            &puts[2],
                            &values,
                            &sequence,
                        ],
                    )
                    .await
            })
            .await?;
        if row.get::<_, bool>(0) {
            self.unless_warned("write", warnings)
        } else {
            Err(self.fenced_error(token).await)
        }
    }
}

#[cfg(test)]
mod tests;
