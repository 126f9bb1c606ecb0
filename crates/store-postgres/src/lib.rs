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
//! the end of its leadership ([`HeldLease::session_lost`]).
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
mod notices;
mod schema;
mod url;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use phalanx_store::{
    Acquisition, BatchOp, Epoch, EpochRecord, FencingToken, HeldLease, HolderId, LeaseExpiry,
    LeaseInfo, LeaseStore, Namespace, StateStore, StoreError, StoreKey, StoreOptions, check_batch,
};
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{pg_error, pool_error, timeout};
use crate::notices::{Warnings, WatchedConnect};
pub use crate::url::{DEFAULT_POOL_SIZE, PgUrl};

/// How often a campaigner polls a held lease (takeover after a crash waits at most this).
const CAMPAIGN_POLL: Duration = Duration::from_millis(100);

const ENSURE_LEASE_ROW: &str = "INSERT INTO phalanx_lease (cluster, epoch, expires_at)
     VALUES ($1, 0, '-infinity') ON CONFLICT (cluster) DO NOTHING";

const ACQUIRE: &str = "SELECT phalanx_acquire($1, $2, $3)";

const RENEW: &str = "UPDATE phalanx_lease
     SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
     WHERE cluster = $1 AND epoch = $2 AND holder IS NOT NULL
       AND expires_at > clock_timestamp() AND holder_pid = pg_backend_pid()
     RETURNING 1";

const RESIGN: &str = "UPDATE phalanx_lease
     SET holder = NULL, holder_pid = NULL, holder_backend_start = NULL, expires_at = now()
     WHERE cluster = $1 AND epoch = $2 AND holder IS NOT NULL";

const CURRENT_LEASE: &str = "SELECT holder, epoch,
         (extract(epoch FROM expires_at - now()) * 1000)::bigint
     FROM phalanx_lease l
     WHERE cluster = $1 AND holder IS NOT NULL AND expires_at > now()
       AND EXISTS (SELECT 1 FROM pg_stat_activity a
                   WHERE a.pid = l.holder_pid
                     AND (a.backend_start = l.holder_backend_start OR a.backend_start IS NULL))";

const LEASE_ROW: &str =
    "SELECT epoch, holder, expires_at > now() FROM phalanx_lease WHERE cluster = $1";

/// Whether the mutation (epoch `$2`, sequence `$10` or `$7`) is newer than the one that
/// last changed row `k`: `FencingToken::supersedes`, in SQL. A retry that finds its own
/// write in place changes nothing, yet still locks the row (`ON CONFLICT … DO UPDATE …
/// WHERE` does), so its commit waits for the synchronous standby like the first one:
/// `a_cancelled_wait_for_the_standby_is_an_unknown_outcome` checks that.
macro_rules! newer_than {
    ($row:literal, $sequence:literal) => {
        concat!(
            "(",
            $row,
            ".epoch < $2 OR (",
            $row,
            ".epoch = $2 AND (",
            $sequence,
            "::bigint = 0 OR ",
            $row,
            ".sequence < ",
            $sequence,
            "::bigint)))"
        )
    };
}

const APPLY: &str = concat!(
    "WITH fence AS (
         SELECT phalanx_fence($1, $2) AS current
     ),
     deleted AS (
         DELETE FROM phalanx_kv k
         USING fence, unnest($3::text[], $4::text[], $5::text[]) AS d(p, s, k)
         WHERE fence.current
           AND k.cluster = $1 AND k.primary_ns = d.p AND k.secondary_ns = d.s AND k.key = d.k
           AND ",
    newer_than!("k", "$10"),
    "
         RETURNING 1
     ),
     written AS (
         INSERT INTO phalanx_kv (cluster, primary_ns, secondary_ns, key, value, epoch, sequence)
         SELECT $1, u.p, u.s, u.k, u.v, $2, $10
         FROM fence, unnest($6::text[], $7::text[], $8::text[], $9::bytea[]) AS u(p, s, k, v)
         WHERE fence.current
         ON CONFLICT (cluster, primary_ns, secondary_ns, key)
         DO UPDATE SET value = excluded.value, epoch = excluded.epoch, sequence = excluded.sequence
         WHERE ",
    newer_than!("phalanx_kv", "$10"),
    "
         RETURNING 1
     )
     SELECT current FROM fence"
);

/// The hot path (one value, as LDK writes): true means written (or superseded by a newer
/// write already in place), false fenced.
const PUT_ONE: &str = concat!(
    "WITH fence AS (
         SELECT phalanx_fence($1, $2) AS current
     ),
     written AS (
         INSERT INTO phalanx_kv (cluster, primary_ns, secondary_ns, key, value, epoch, sequence)
         SELECT $1, $3, $4, $5, $6, $2, $7 FROM fence WHERE fence.current
         ON CONFLICT (cluster, primary_ns, secondary_ns, key)
         DO UPDATE SET value = excluded.value, epoch = excluded.epoch, sequence = excluded.sequence
         WHERE ",
    newer_than!("phalanx_kv", "$7"),
    "
         RETURNING 1
     )
     SELECT current FROM fence"
);

const READ: &str = "SELECT value FROM phalanx_kv
     WHERE cluster = $1 AND primary_ns = $2 AND secondary_ns = $3 AND key = $4";

const LIST: &str = "SELECT key FROM phalanx_kv
     WHERE cluster = $1 AND primary_ns = $2 AND secondary_ns = $3";

const EPOCH_HISTORY: &str = "SELECT epoch, holder, (extract(epoch FROM acquired_at) * 1000)::bigint
     FROM phalanx_epochs WHERE cluster = $1 ORDER BY epoch DESC LIMIT $2";

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

/// A dedicated connection, outside the pool, whose end is observable.
struct LeaseSession {
    client: Client,
    closed: tokio::sync::watch::Receiver<bool>,
    driver: tokio::task::JoinHandle<()>,
}

impl LeaseSession {
    fn is_closed(&self) -> bool {
        *self.closed.borrow() || self.client.is_closed()
    }
}

impl Drop for LeaseSession {
    fn drop(&mut self) {
        self.driver.abort();
    }
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
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or_else(|_| Err(timeout("connect", &target, deadline)))
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
            .map_err(|_| timeout(op, target, limit))??;
        match tokio::time::timeout_at(deadline, work(&client)).await {
            Ok(result) => result.map_err(|e| pg_error(op, target, e)),
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                Err(timeout(op, target, limit))
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

    async fn connect_session(&self) -> Result<LeaseSession, StoreError> {
        let target = &self.inner.url.redacted;
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let config = &self.inner.url.config;
        let limit = self.inner.options.connect_timeout;
        let connect = async {
            match &self.inner.url.tls {
                Some(tls) => {
                    let (client, connection) = config
                        .connect(MakeRustlsConnect::new((**tls).clone()))
                        .await?;
                    let driver = tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::warn!(error = %err, "PostgreSQL lease session ended");
                        }
                        let _ = closed_tx.send(true);
                    });
                    Ok::<_, tokio_postgres::Error>((client, driver))
                }
                None => {
                    let (client, connection) = config.connect(NoTls).await?;
                    let driver = tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::warn!(error = %err, "PostgreSQL lease session ended");
                        }
                        let _ = closed_tx.send(true);
                    });
                    Ok((client, driver))
                }
            }
        };
        let (client, driver) = tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| timeout("connect", target, limit))?
            .map_err(|e| pg_error("connect", target, e))?;
        Ok(LeaseSession {
            client,
            closed,
            driver,
        })
    }

    /// Why a token was refused, for the error message.
    async fn fenced_reason(&self, token: FencingToken) -> String {
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
                    format!(
                        "epoch {} is stale; the cluster is at epoch {epoch} (holder {})",
                        token.epoch(),
                        holder.as_deref().unwrap_or("none")
                    )
                } else if holder.is_none() {
                    format!("the lease of epoch {epoch} was resigned")
                } else if !live {
                    format!("the lease of epoch {epoch} expired by the server's clock")
                } else {
                    format!("epoch {} was refused", token.epoch())
                }
            }
            Ok(None) => format!("cluster {} has no lease row", self.cluster()),
            Err(err) => format!("epoch {} was refused ({})", token.epoch(), err.report()),
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

    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let ops = check_batch(ops)?;
        if ops.is_empty() {
            return Ok(());
        }
        let cluster = self.cluster();
        let epoch = token.epoch().0 as i64;
        let sequence = i64::try_from(token.sequence()).map_err(|_| {
            StoreError::Config(format!(
                "write sequence {} is out of range",
                token.sequence()
            ))
        })?;
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
                Err(StoreError::fenced(self.fenced_reason(token).await))
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
            Err(StoreError::fenced(self.fenced_reason(token).await))
        }
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    fn lease_expiry(&self) -> LeaseExpiry {
        LeaseExpiry::Ttl
    }

    async fn try_acquire(
        &self,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Acquisition, StoreError> {
        let mut slot = self.inner.campaign_session.lock().await;
        let session = match slot.take() {
            Some(session) if !session.is_closed() => session,
            _ => self.connect_session().await?,
        };
        let target = &self.inner.url.redacted;
        let limit = self.inner.options.operation_timeout;
        let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
        let (cluster, holder_id) = (self.cluster(), holder.as_str());
        let rows = tokio::time::timeout(
            limit,
            session
                .client
                .query(ACQUIRE, &[&cluster, &holder_id, &ttl_ms]),
        )
        .await
        .map_err(|_| timeout("acquire", target, limit))?
        .map_err(|e| pg_error("acquire", target, e))?;
        match rows.first().and_then(|row| row.get::<_, Option<i64>>(0)) {
            Some(epoch) => {
                let epoch = Epoch(epoch as u64);
                tracing::info!(cluster = self.cluster(), %epoch, holder = %holder, url = %target, "won the PostgreSQL lease");
                Ok(Acquisition::Won(Box::new(PgLease {
                    store: self.clone(),
                    session,
                    token: FencingToken::new(epoch),
                    ttl_ms,
                })))
            }
            None => {
                *slot = Some(session);
                drop(slot);
                Ok(Acquisition::Held(self.current_lease().await.ok().flatten()))
            }
        }
    }

    async fn current_lease(&self) -> Result<Option<LeaseInfo>, StoreError> {
        let cluster = self.cluster();
        let row = self
            .with_client("read lease", async |client| {
                client.query_opt(CURRENT_LEASE, &[&cluster]).await
            })
            .await?;
        Ok(row.map(|row| LeaseInfo {
            holder: row.get(0),
            epoch: Epoch(row.get::<_, i64>(1) as u64),
            expires_in: Some(Duration::from_millis(row.get::<_, i64>(2).max(0) as u64)),
        }))
    }

    async fn wait_for_change(&self, max_wait: Duration) {
        tokio::time::sleep(max_wait.min(CAMPAIGN_POLL)).await;
    }

    async fn epoch_history(&self, limit: usize) -> Result<Vec<EpochRecord>, StoreError> {
        let cluster = self.cluster();
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .with_client("read epoch history", async |client| {
                client.query(EPOCH_HISTORY, &[&cluster, &limit]).await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| EpochRecord {
                epoch: Epoch(row.get::<_, i64>(0) as u64),
                holder: row.get(1),
                acquired_at_unix_ms: row.get(2),
            })
            .collect())
    }
}

/// A won PostgreSQL lease, renewed through its own session.
struct PgLease {
    store: PostgresStore,
    session: LeaseSession,
    token: FencingToken,
    ttl_ms: i64,
}

impl PgLease {
    fn session_closed_error(&self) -> StoreError {
        StoreError::fenced(format!(
            "the PostgreSQL session holding the lease of epoch {} closed; another instance may take over at once",
            self.token.epoch()
        ))
    }
}

#[async_trait]
impl HeldLease for PgLease {
    fn token(&self) -> FencingToken {
        self.token
    }

    fn granted_ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms as u64)
    }

    async fn renew(&mut self) -> Result<(), StoreError> {
        if self.session.is_closed() {
            return Err(self.session_closed_error());
        }
        let target = &self.store.inner.url.redacted;
        let limit = self.store.inner.options.operation_timeout;
        let epoch = self.token.epoch().0 as i64;
        let cluster = self.store.cluster();
        let outcome = tokio::time::timeout(
            limit,
            self.session
                .client
                .query_opt(RENEW, &[&cluster, &epoch, &self.ttl_ms]),
        )
        .await;
        match outcome {
            Err(_) => Err(timeout("renew", target, limit)),
            Ok(Err(err)) => {
                if self.session.is_closed() {
                    Err(self.session_closed_error())
                } else {
                    Err(pg_error("renew", target, err))
                }
            }
            Ok(Ok(Some(_))) => Ok(()),
            Ok(Ok(None)) => Err(StoreError::fenced(
                self.store.fenced_reason(self.token).await,
            )),
        }
    }

    async fn resign(self: Box<Self>) -> Result<(), StoreError> {
        let target = &self.store.inner.url.redacted;
        let limit = self.store.inner.options.operation_timeout;
        let epoch = self.token.epoch().0 as i64;
        let cluster = self.store.cluster();
        let result = if self.session.is_closed() {
            // The session is gone, so the lease is free already.
            Ok(())
        } else {
            tokio::time::timeout(
                limit,
                self.session.client.execute(RESIGN, &[&cluster, &epoch]),
            )
            .await
            .map_err(|_| timeout("resign", target, limit))?
            .map(|_| ())
            .map_err(|e| pg_error("resign", target, e))
        };
        tracing::info!(cluster, epoch, "resigned the PostgreSQL lease");
        result
    }

    fn session_lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.session.closed.clone())
    }
}

#[cfg(test)]
mod tests;
