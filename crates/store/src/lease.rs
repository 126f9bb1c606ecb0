//! The leader lease: who may write, and the fencing tokens that prove it.

use std::time::Duration;

use async_trait::async_trait;

use crate::{Epoch, FencingToken, HolderId, StoreError};

/// Who holds a cluster's lease, as the store sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The holder's instance id.
    pub holder: String,
    /// The holder's epoch.
    pub epoch: Epoch,
    /// How long the lease runs unless renewed, by the store's clock; `None` for a lease
    /// that lasts as long as its holder's process (SQLite's file lock).
    pub expires_in: Option<Duration>,
}

/// One past or present leadership, from the store's epoch history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochRecord {
    /// The epoch.
    pub epoch: Epoch,
    /// The instance that won it.
    pub holder: String,
    /// When it was won, in milliseconds since the Unix epoch, by the store's clock (the
    /// local clock for SQLite).
    pub acquired_at_unix_ms: i64,
}

/// What one campaign attempt found.
pub enum Acquisition {
    /// The caller now holds the lease.
    Won(Box<dyn HeldLease>),
    /// Someone else holds it (`None` when the store could not say who).
    Held(Option<LeaseInfo>),
}

impl std::fmt::Debug for Acquisition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Acquisition::Won(lease) => write!(f, "Won({})", lease.token()),
            Acquisition::Held(info) => write!(f, "Held({info:?})"),
        }
    }
}

/// How a backend's lease ends when its holder stops renewing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseExpiry {
    /// The lease expires a TTL after the last renewal, by the store's clock (PostgreSQL,
    /// etcd). PostgreSQL also frees it at once when the holder's lease connection dies.
    Ttl,
    /// The lease is an OS lock held as long as the holder's process keeps it open
    /// (SQLite): a stalled process keeps it; a dead one frees it at once.
    ProcessLock,
}

/// The leader lease of one cluster.
///
/// # Correctness contract
///
/// 1. At most one [`HeldLease`] of a cluster is valid at a time. Winning creates a new
///    epoch, strictly greater than every epoch ever granted for that cluster, recorded in
///    the store's epoch history in the same transaction.
/// 2. A lease is free to win when it was never held, was resigned, expired by the store's
///    clock ([`LeaseExpiry::Ttl`]), or its holder's process or session is gone.
/// 3. Once a new epoch is granted, every mutation with an older token fails as fenced
///    (see [`StateStore`](crate::StateStore)).
/// 4. The store's clock decides expiry; the holder must also stop on its own clock before
///    that (see `phalanx-cluster`), because it cannot know when the store will say so.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// How this backend's lease ends.
    fn lease_expiry(&self) -> LeaseExpiry;

    /// One attempt to win the lease for `holder` with the given TTL. The caller must note
    /// the time before calling: the lease runs from no earlier than that.
    async fn try_acquire(
        &self,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Acquisition, StoreError>;

    /// Who holds the lease now, if anyone.
    async fn current_lease(&self) -> Result<Option<LeaseInfo>, StoreError>;

    /// Waits until the lease may have changed hands (a watch where the backend has one,
    /// a short poll otherwise), or `max_wait` passed. Never fails: campaigners retry.
    async fn wait_for_change(&self, max_wait: Duration);

    /// The most recent `limit` leaderships, newest first.
    async fn epoch_history(&self, limit: usize) -> Result<Vec<EpochRecord>, StoreError>;
}

/// A lease the caller won. Dropping it without [`resign`](HeldLease::resign) leaves the
/// lease to expire (or, for a process lock, frees it).
#[async_trait]
pub trait HeldLease: Send + Sync {
    /// The fencing token of this leadership.
    fn token(&self) -> FencingToken;

    /// The TTL the store granted (it may round the requested one up).
    fn granted_ttl(&self) -> Duration;

    /// Extends the lease by its TTL from now, by the store's clock. Fails as fenced when
    /// the lease is no longer this holder's (expired, taken over, or, on PostgreSQL, its
    /// session died) and as transient when the store did not answer; in the latter case
    /// the holder is still leader until its own deadline. The caller must note the time
    /// before calling and count the new TTL from then.
    async fn renew(&mut self) -> Result<(), StoreError>;

    /// Gives the lease up so another campaigner can win at once.
    async fn resign(self: Box<Self>) -> Result<(), StoreError>;

    /// A signal that turns `true` as soon as the backend knows the lease may have ended
    /// before its TTL (on PostgreSQL: the session that holds it closed, after which a
    /// standby may take over at once). `None` when the backend has no such signal.
    fn session_lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
}
