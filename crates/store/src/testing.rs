//! Fault injection around a real backend, for tests of code built on the store
//! (`test-utils` feature). The backend underneath is real; only the failures are made up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Acquisition, BatchOp, EpochRecord, FencingToken, HeldLease, HolderId, LeaseExpiry, LeaseInfo,
    LeaseStore, Namespace, StateStore, Store, StoreError, StoreKey,
};

/// What an operation does instead of its job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    /// Nothing: pass through to the backend.
    #[default]
    None,
    /// Fail with a transient error without reaching the backend.
    Transient,
    /// Fail as fenced without reaching the backend.
    Fenced,
    /// Never answer (until the fault is cleared).
    Stall,
}

/// The faults currently injected, by operation. Shared by a [`FaultyStore`] and every
/// lease it hands out.
#[derive(Debug, Default)]
pub struct Faults {
    acquire: Mutex<Fault>,
    renew: Mutex<Fault>,
    write: Mutex<Fault>,
    /// Mutations still allowed before every later one fails as transient (`None`: no
    /// limit): a process killed after that many writes.
    writes_left: Mutex<Option<usize>>,
}

impl Faults {
    /// Sets the fault of lease renewals.
    pub fn set_renew(&self, fault: Fault) {
        *self.renew.lock().unwrap() = fault;
    }

    /// Sets the fault of mutations.
    pub fn set_write(&self, fault: Fault) {
        *self.write.lock().unwrap() = fault;
    }

    /// Lets the next `count` mutations through, then fails every later one as transient
    /// (as if the writer died there); `None` lifts the limit.
    pub fn allow_writes(&self, count: Option<usize>) {
        *self.writes_left.lock().unwrap() = count;
    }

    fn take_write(&self) -> Result<(), StoreError> {
        let mut left = self.writes_left.lock().unwrap();
        match left.as_mut() {
            None => Ok(()),
            Some(0) => Err(StoreError::transient(
                "write",
                "injected: the writer is gone",
                None,
            )),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
        }
    }

    /// Sets the fault of campaign attempts.
    pub fn set_acquire(&self, fault: Fault) {
        *self.acquire.lock().unwrap() = fault;
    }

    async fn apply(&self, which: &Mutex<Fault>, op: &'static str) -> Result<(), StoreError> {
        loop {
            let fault = *which.lock().unwrap();
            match fault {
                Fault::None => return Ok(()),
                Fault::Transient => {
                    return Err(StoreError::transient(
                        op,
                        "injected transient failure",
                        None,
                    ));
                }
                Fault::Fenced => return Err(StoreError::fenced("injected fencing")),
                Fault::Stall => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

/// A real store with injectable faults.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Arc<Faults>,
}

impl FaultyStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    /// `inner` with `faults` that other stores may share (one budget of writes for a
    /// process writing to two stores).
    pub fn with_faults(inner: Arc<dyn Store>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }

    /// The switches.
    pub fn faults(&self) -> Arc<Faults> {
        Arc::clone(&self.faults)
    }
}

#[async_trait]
impl StateStore for FaultyStore {
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }

    async fn read(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError> {
        self.inner.read(key).await
    }

    async fn list(&self, namespace: &Namespace) -> Result<Vec<String>, StoreError> {
        self.inner.list(namespace).await
    }

    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        self.faults.apply(&self.faults.write, "write").await?;
        self.faults.take_write()?;
        self.inner.apply(token, ops).await
    }

    async fn snapshot(&self) -> Result<Vec<(StoreKey, Vec<u8>)>, StoreError> {
        self.inner.snapshot().await
    }
}

#[async_trait]
impl LeaseStore for FaultyStore {
    fn lease_expiry(&self) -> LeaseExpiry {
        self.inner.lease_expiry()
    }

    async fn try_acquire(
        &self,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Acquisition, StoreError> {
        self.faults.apply(&self.faults.acquire, "acquire").await?;
        Ok(match self.inner.try_acquire(holder, ttl).await? {
            Acquisition::Won(lease) => Acquisition::Won(Box::new(FaultyLease {
                inner: lease,
                faults: Arc::clone(&self.faults),
            })),
            held => held,
        })
    }

    async fn current_lease(&self) -> Result<Option<LeaseInfo>, StoreError> {
        self.inner.current_lease().await
    }

    async fn wait_for_change(&self, max_wait: Duration) {
        self.inner.wait_for_change(max_wait).await
    }

    async fn epoch_history(&self, limit: usize) -> Result<Vec<EpochRecord>, StoreError> {
        self.inner.epoch_history(limit).await
    }
}

struct FaultyLease {
    inner: Box<dyn HeldLease>,
    faults: Arc<Faults>,
}

#[async_trait]
impl HeldLease for FaultyLease {
    fn token(&self) -> FencingToken {
        self.inner.token()
    }

    fn granted_ttl(&self) -> Duration {
        self.inner.granted_ttl()
    }

    async fn renew(&mut self) -> Result<(), StoreError> {
        self.faults.apply(&self.faults.renew, "renew").await?;
        self.inner.renew().await
    }

    async fn resign(self: Box<Self>) -> Result<(), StoreError> {
        self.inner.resign().await
    }

    fn session_lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.inner.session_lost()
    }
}

/// One attempt to win `store`'s lease as `holder`; panics on a store error.
pub async fn try_win(
    store: &dyn LeaseStore,
    holder: &str,
    ttl: Duration,
) -> Option<Box<dyn HeldLease>> {
    let holder_id = HolderId::new(holder).expect("valid holder id");
    match store
        .try_acquire(&holder_id, ttl)
        .await
        .unwrap_or_else(|err| panic!("{holder}'s campaign attempt failed: {}", err.report()))
    {
        Acquisition::Won(lease) => Some(lease),
        Acquisition::Held(_) => None,
    }
}

/// Wins `store`'s lease as `holder` at the first attempt, or panics.
pub async fn must_win(store: &dyn LeaseStore, holder: &str, ttl: Duration) -> Box<dyn HeldLease> {
    match try_win(store, holder, ttl).await {
        Some(lease) => lease,
        None => panic!(
            "{holder} should win, but the lease is held: {:?}",
            store.current_lease().await
        ),
    }
}

/// Wins `store`'s lease as `holder`, waiting at most `within` for it to become free.
pub async fn win_within(
    store: &dyn LeaseStore,
    holder: &str,
    ttl: Duration,
    within: Duration,
) -> Box<dyn HeldLease> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(lease) = try_win(store, holder, ttl).await {
            return lease;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{holder} did not win the lease within {within:?}"
        );
        store.wait_for_change(Duration::from_millis(200)).await;
    }
}
