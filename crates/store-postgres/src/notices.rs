//! The pool's connections, driven so that the server's notices reach the store.
//!
//! PostgreSQL reports a cancelled wait for the synchronous standby (an operator's
//! `pg_cancel_backend`, a standby that never answers) as a WARNING beside a successful
//! commit: the transaction committed on this server only, and may be gone after a
//! failover to the standby. The write that saw it must report an unknown outcome, not
//! success; the notice arrives on the connection before the statement's result does, so
//! a counter bumped by the connection's driver is seen by the write that caused it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Connect;
use futures::future::BoxFuture;
use futures::stream::StreamExt;
use tokio::task::JoinHandle;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, Socket};

/// Counts the warnings the server attached to results on any pooled connection.
#[derive(Clone, Default)]
pub(crate) struct Warnings {
    seen: Arc<AtomicU64>,
}

impl Warnings {
    /// A mark to compare with after a statement: see [`Warnings::since`].
    pub(crate) fn mark(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// Whether a warning arrived since `mark`. A concurrent write's warning counts too:
    /// the cost of that is one retry of a write that did commit, never a lost one.
    pub(crate) fn since(&self, mark: u64) -> bool {
        self.mark() != mark
    }

    fn observe(&self, notice: &DbError) {
        // The synchronous-replication warning carries the generic warning code (its text
        // is translated by the server's `lc_messages`, so the code is what we match).
        let warning = notice.parsed_severity().map_or_else(
            || notice.severity() == "WARNING",
            |severity| matches!(severity, tokio_postgres::error::Severity::Warning),
        );
        if warning && *notice.code() == SqlState::WARNING {
            self.seen.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(
                message = notice.message(),
                detail = notice.detail().unwrap_or_default(),
                "PostgreSQL warned about a write; its outcome is treated as unknown"
            );
        } else {
            tracing::info!(
                severity = notice.severity(),
                message = notice.message(),
                "PostgreSQL notice"
            );
        }
    }
}

/// Connects as `tokio_postgres::Config::connect` does, and drives the connection so that
/// its notices go to [`Warnings`].
pub(crate) struct WatchedConnect<T> {
    pub(crate) tls: T,
    pub(crate) warnings: Warnings,
}

impl<T> Connect for WatchedConnect<T>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn connect(
        &self,
        config: &Config,
    ) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let tls = self.tls.clone();
        let config = config.clone();
        let warnings = self.warnings.clone();
        Box::pin(async move {
            let (client, mut connection) = config.connect(tls).await?;
            let driver = tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notice(notice)) => warnings.observe(&notice),
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, "PostgreSQL connection ended");
                            break;
                        }
                    }
                }
            });
            Ok((client, driver))
        })
    }
}
