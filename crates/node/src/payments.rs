//! The node's record of payments, in the fenced store.
//!
//! One record per payment: inbound ones under `payments/inbound/<payment hash>`, outbound
//! ones under `payments/outbound/<payment id>`. A record is written before the node acts
//! on it (an outbound record before the payment is handed to LDK), and every update is
//! idempotent, so an event LDK replays after a restart changes nothing twice.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lightning::io;
use lightning::types::payment::PaymentHash;
use lightning::util::persist::{KVStore, KVStoreSync};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::types::KvStore;

const NAMESPACE: &str = "payments";

/// Which way the money went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Paid to us.
    Inbound,
    /// Paid by us.
    Outbound,
}

impl Direction {
    fn namespace(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Not resolved yet (an open invoice, or an outbound payment in flight).
    Pending,
    /// A hold invoice's HTLCs arrived and are held until it is settled or cancelled.
    Accepted,
    /// Received, or sent and acknowledged with the preimage.
    Succeeded,
    /// Will not complete.
    Failed,
}

/// One payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// Outbound: LDK's payment id (hex); inbound: the payment hash.
    pub payment_id: String,
    /// The payment hash, hex.
    pub payment_hash: String,
    /// The preimage, hex, once known.
    pub preimage: Option<String>,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Pending, succeeded or failed.
    pub status: PaymentStatus,
    /// The amount paid to the recipient (msat), when known.
    pub amount_msat: Option<u64>,
    /// Routing fees we paid (outbound).
    pub fee_msat: Option<u64>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// The BOLT11 invoice, when there is one.
    pub invoice: Option<String>,
    /// The BOLT12 offer paid (outbound), when the payment is to one.
    #[serde(default)]
    pub offer: Option<String>,
    /// A hold invoice: its payment is claimed only when the preimage is given.
    #[serde(default)]
    pub hold: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub updated_at: u64,
}

impl PaymentRecord {
    /// The payment hash, typed (`None` only for a record whose hash was never known).
    pub fn hash(&self) -> Option<PaymentHash> {
        let bytes = hex::decode(&self.payment_hash).ok()?;
        Some(PaymentHash(bytes.try_into().ok()?))
    }

    /// A new pending record.
    pub fn pending(direction: Direction, payment_id: String, payment_hash: String) -> Self {
        let now = unix_now();
        Self {
            payment_id,
            payment_hash,
            preimage: None,
            direction,
            status: PaymentStatus::Pending,
            amount_msat: None,
            fee_msat: None,
            failure_reason: None,
            invoice: None,
            offer: None,
            hold: false,
            created_at: now,
            updated_at: now,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The payments, cached in memory, written through to the store.
pub struct PaymentStore {
    store: KvStore,
    records: Mutex<HashMap<(Direction, String), PaymentRecord>>,
    /// Bumped on every change, so waiters can look again.
    changes: watch::Sender<u64>,
}

impl PaymentStore {
    /// Loads every record from the store.
    pub fn load(store: KvStore) -> Result<Self, io::Error> {
        let mut records = HashMap::new();
        for direction in [Direction::Inbound, Direction::Outbound] {
            for key in KVStoreSync::list(&*store, NAMESPACE, direction.namespace())? {
                let bytes = KVStoreSync::read(&*store, NAMESPACE, direction.namespace(), &key)?;
                let record: PaymentRecord = serde_json::from_slice(&bytes).map_err(|err| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("payment record {key}: {err}"),
                    )
                })?;
                records.insert((direction, key), record);
            }
        }
        Ok(Self {
            store,
            records: Mutex::new(records),
            changes: watch::channel(0).0,
        })
    }

    /// One record.
    pub fn get(&self, direction: Direction, id: &str) -> Option<PaymentRecord> {
        self.lock().get(&(direction, id.to_owned())).cloned()
    }

    /// Every record, oldest first.
    pub fn list(&self) -> Vec<PaymentRecord> {
        let mut all: Vec<PaymentRecord> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| (a.created_at, &a.payment_id).cmp(&(b.created_at, &b.payment_id)));
        all
    }

    /// Records with this payment hash (inbound and outbound).
    pub fn by_hash(&self, payment_hash: &str) -> Vec<PaymentRecord> {
        self.lock()
            .values()
            .filter(|r| r.payment_hash == payment_hash)
            .cloned()
            .collect()
    }

    /// Writes `record` (fenced) and then caches it. Returns whether anything changed.
    pub async fn put(&self, record: PaymentRecord) -> Result<bool, io::Error> {
        let key = (record.direction, record.payment_id.clone());
        if self.lock().get(&key) == Some(&record) {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(&record)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        KVStore::write(
            &*self.store,
            NAMESPACE,
            record.direction.namespace(),
            &record.payment_id,
            bytes,
        )
        .await?;
        self.lock().insert(key, record);
        self.changes.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Applies `change` to the record (or to a new one made by `create` when there is
    /// none) and writes it if it changed. A record already final is left alone unless
    /// `change` is meant for final records too: succeeded stays succeeded.
    pub async fn update(
        &self,
        direction: Direction,
        id: &str,
        create: impl FnOnce() -> PaymentRecord,
        change: impl FnOnce(&mut PaymentRecord),
    ) -> Result<PaymentRecord, io::Error> {
        let mut record = self.get(direction, id).unwrap_or_else(create);
        let before = record.clone();
        change(&mut record);
        if before.status == PaymentStatus::Succeeded {
            // A success is final: a replayed or late failure must not undo it.
            record.status = PaymentStatus::Succeeded;
            record.failure_reason = None;
        }
        if record != before {
            record.updated_at = unix_now();
            self.put(record.clone()).await?;
        }
        Ok(record)
    }

    /// Waits until the record is no longer pending, or `timeout` passes; returns it as it is then.
    pub async fn wait_final(
        &self,
        direction: Direction,
        id: &str,
        timeout: Duration,
    ) -> Option<PaymentRecord> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let record = self.get(direction, id);
            if let Some(record) = &record
                && !matches!(
                    record.status,
                    PaymentStatus::Pending | PaymentStatus::Accepted
                )
            {
                return Some(record.clone());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.get(direction, id),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Direction, String), PaymentRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One lock per payment id, for the calls that start a payment: two concurrent calls to
/// pay one invoice must not both find no record and both hand it to LDK (which refuses
/// the second, whose failure would then mark the first's record failed while it is in
/// flight). Locks nobody holds are forgotten.
#[derive(Default)]
pub(crate) struct PaymentLocks {
    locks: Mutex<HashMap<[u8; 32], std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

impl PaymentLocks {
    /// Waits for the lock of payment `id`.
    pub(crate) async fn lock(&self, id: [u8; 32]) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, lock| lock.strong_count() > 0);
            match locks.get(&id).and_then(std::sync::Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(id, std::sync::Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod lock_tests {
    use std::time::Duration;

    use super::PaymentLocks;

    #[tokio::test]
    async fn one_payment_id_is_started_by_one_call_at_a_time() {
        let locks = PaymentLocks::default();
        let first = locks.lock([1; 32]).await;
        // Another id is free; the same id waits.
        drop(locks.lock([2; 32]).await);
        let waiting = tokio::time::timeout(Duration::from_millis(50), locks.lock([1; 32])).await;
        assert!(waiting.is_err(), "a second call got the lock of a held id");
        drop(first);
        drop(locks.lock([1; 32]).await);
        assert!(
            locks.locks.lock().unwrap().len() <= 1,
            "locks nobody holds are forgotten"
        );
    }
}
