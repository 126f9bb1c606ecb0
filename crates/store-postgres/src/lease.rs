//! The lease: won by `phalanx_acquire` on a dedicated session (outside the pool) that
//! then renews it, and whose end ends the leadership ([`HeldLease::session_lost`]).

use std::time::Duration;

use async_trait::async_trait;
use phalanx_store::backend::{wait_campaign_poll, within};
use phalanx_store::{
    Acquisition, Epoch, EpochRecord, FencingToken, HeldLease, HolderId, LeaseExpiry, LeaseInfo,
    LeaseStore, StoreError,
};
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::PostgresStore;
use crate::error::{BACKEND, pg_error};
use crate::sql::{ACQUIRE, CURRENT_LEASE, EPOCH_HISTORY, RENEW, RESIGN};

/// A dedicated connection, outside the pool, whose end is observable.
pub(crate) struct LeaseSession {
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
    pub(crate) async fn connect_session(&self) -> Result<LeaseSession, StoreError> {
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
        let (client, driver) = within(BACKEND, "connect", target, limit, connect)
            .await?
            .map_err(|e| pg_error("connect", target, e))?;
        Ok(LeaseSession {
            client,
            closed,
            driver,
        })
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
        let rows = within(
            BACKEND,
            "acquire",
            target,
            limit,
            session
                .client
                .query(ACQUIRE, &[&cluster, &holder_id, &ttl_ms]),
        )
        .await?
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
        wait_campaign_poll(max_wait).await;
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
        let outcome = within(
            BACKEND,
            "renew",
            target,
            limit,
            self.session
                .client
                .query_opt(RENEW, &[&cluster, &epoch, &self.ttl_ms]),
        )
        .await?;
        match outcome {
            Err(err) => {
                if self.session.is_closed() {
                    Err(self.session_closed_error())
                } else {
                    Err(pg_error("renew", target, err))
                }
            }
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(self.store.fenced_error(self.token).await),
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
            within(
                BACKEND,
                "resign",
                target,
                limit,
                self.session.client.execute(RESIGN, &[&cluster, &epoch]),
            )
            .await?
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
