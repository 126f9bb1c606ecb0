//! The fenced key-value contract every backend implements.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::{FencingToken, LeaseStore, Namespace, StoreError, StoreKey};

/// The largest value any backend must accept: 64 MiB. A ChannelManager of a large node is
/// megabytes; this leaves room. (etcd needs `--max-request-bytes` raised to store it; see
/// the etcd backend's docs.)
pub const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// One mutation of an atomic batch.
#[derive(Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Store `value` under `key`, replacing what was there.
    Put {
        /// Where.
        key: StoreKey,
        /// What.
        value: Vec<u8>,
    },
    /// Remove `key` if present.
    Delete {
        /// Which key.
        key: StoreKey,
    },
}

impl BatchOp {
    /// The key the operation touches.
    pub fn key(&self) -> &StoreKey {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

impl std::fmt::Debug for BatchOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchOp::Put { key, value } => write!(f, "Put({key}, {} bytes)", value.len()),
            BatchOp::Delete { key } => write!(f, "Delete({key})"),
        }
    }
}

/// Checks a batch against [`MAX_VALUE_BYTES`] and collapses it to one operation per key,
/// keeping the last (a batch means "apply in order", so only the last operation on a key
/// decides its final state). The result keeps the order of each key's last operation.
/// Backends call this before touching the store, so an invalid batch writes nothing.
pub fn check_batch(ops: Vec<BatchOp>) -> Result<Vec<BatchOp>, StoreError> {
    let mut total = 0usize;
    for op in &ops {
        if let BatchOp::Put { key, value } = op {
            if value.len() > MAX_VALUE_BYTES {
                return Err(StoreError::ValueTooLarge {
                    key: key.to_string(),
                    size: value.len(),
                    limit: MAX_VALUE_BYTES,
                    hint: String::new(),
                });
            }
            total = total.saturating_add(value.len());
        }
    }
    if total > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            key: "batch".to_owned(),
            size: total,
            limit: MAX_VALUE_BYTES,
            hint: "; split the batch".to_owned(),
        });
    }
    let mut last_index: HashMap<&StoreKey, usize> = HashMap::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        last_index.insert(op.key(), index);
    }
    if last_index.len() == ops.len() {
        return Ok(ops);
    }
    let keep: Vec<bool> = ops
        .iter()
        .enumerate()
        .map(|(index, op)| last_index[op.key()] == index)
        .collect();
    Ok(ops
        .into_iter()
        .zip(keep)
        .filter_map(|(op, keep)| keep.then_some(op))
        .collect())
}

/// A fenced key-value store shared by the instances of one cluster.
///
/// A handle is bound to one cluster (chosen when the backend is opened): its keys and its
/// lease are separate from every other cluster's in the same database or etcd prefix.
///
/// # Correctness contract
///
/// Every backend guarantees, and the conformance suite checks:
///
/// 1. **Fencing.** A mutation ([`write`](Self::write), [`remove`](Self::remove),
///    [`apply`](Self::apply)) commits only if, inside the same transaction, the token's
///    epoch is the cluster's current epoch and that lease has not expired by the store's
///    own clock. Otherwise it changes nothing and fails with
///    [`ErrorKind::Fenced`](crate::ErrorKind::Fenced). So once a new leadership has been
///    granted, no mutation carrying an older epoch can commit, even one that raced the
///    takeover, and the new leader's reads (made after it won) see every mutation that
///    was acknowledged under earlier epochs.
/// 2. **Durability.** `Ok(())` is returned only after the mutation is durable on the
///    store (fsynced; on PostgreSQL with synchronous replication, on the replica; on etcd,
///    committed by a quorum; on SQLite with a replica, in both files).
/// 3. **Atomic batches.** [`apply`](Self::apply) commits all of its operations or none.
///    Operations apply in order; when a key appears twice, the last operation wins.
/// 4. **Linearizable single keys.** A read that starts after a write returned sees that
///    write or a later one. Concurrent writes to one key leave exactly one of the written
///    values, never a mix. Callers that need "last call wins" for concurrent writes to one
///    key must order them themselves ([`LdkKvStore`](crate::LdkKvStore) does).
/// 5. **Bounded time.** No call hangs: each fails with a transient error after the
///    backend's operation timeout (after its connect timeout too, for a call that must
///    connect first), however the network or the disk stalls. The conformance suite cuts
///    the network under each networked backend to check it.
/// 6. **Values** up to [`MAX_VALUE_BYTES`] are stored whole; larger ones fail with
///    [`StoreError::ValueTooLarge`] before anything is sent.
/// 7. **No late landing.** A mutation whose token carries a write sequence
///    ([`FencingToken::sequenced`]) changes a key only if the key was last changed by an
///    older one (an earlier epoch, or the same epoch and a lower sequence; see
///    [`FencingToken::supersedes`]), checked inside the same transaction; otherwise that
///    operation changes nothing and the call still succeeds (a newer value is in place).
///    So a write that timed out and was retried can never overwrite what its writer
///    wrote after the retry, however late its bytes reach the store. (A key deleted
///    since has no version left: a late put may recreate it. LDK only deletes keys it
///    has superseded, such as monitor updates already folded into their monitor.)
///
/// # What callers must do with errors
///
/// - `NotFound`: the key holds nothing (reads only).
/// - `Fenced`: stop acting at once. Never retry, never broadcast, never force-close.
/// - `Transient`: the write may or may not have happened. Retrying the same write is
///   safe; writing something else to the same key before a retry succeeded is not.
/// - `Permanent`: a bug or a misconfiguration; retrying cannot help.
///
/// Reads are not fenced: a standby may read, but only a leader's reads made after it
/// won the lease are guaranteed current.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The backend's name and where it points (no credentials), for logs.
    fn describe(&self) -> String;

    /// The value stored under `key`, or [`StoreError::NotFound`].
    async fn read(&self, key: &StoreKey) -> Result<Vec<u8>, StoreError>;

    /// The keys stored directly in `namespace`, in no particular order. An unknown
    /// namespace lists as empty.
    async fn list(&self, namespace: &Namespace) -> Result<Vec<String>, StoreError>;

    /// Applies a batch of mutations atomically, fenced by `token`.
    async fn apply(&self, token: FencingToken, ops: Vec<BatchOp>) -> Result<(), StoreError>;

    /// Every key of this cluster and its value, read at one consistent point, sorted by
    /// key: the state as of one instant, never a mix of before and after a batch
    /// (SQLite and PostgreSQL: one statement; etcd: one revision). For backups and
    /// migrations. Not fenced, like every read: the caller holds the lease if the state
    /// must not move meanwhile.
    async fn snapshot(&self) -> Result<Vec<(StoreKey, Vec<u8>)>, StoreError>;

    /// Stores `value` under `key`, fenced by `token`.
    async fn write(
        &self,
        token: FencingToken,
        key: &StoreKey,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.apply(
            token,
            vec![BatchOp::Put {
                key: key.clone(),
                value,
            }],
        )
        .await
    }

    /// Removes `key`, fenced by `token`. Removing an absent key succeeds.
    async fn remove(&self, token: FencingToken, key: &StoreKey) -> Result<(), StoreError> {
        self.apply(token, vec![BatchOp::Delete { key: key.clone() }])
            .await
    }
}

/// A whole backend: the fenced key-value store and the leader lease of one cluster, on
/// the same connection(s).
pub trait Store: StateStore + LeaseStore {}

impl<T: StateStore + LeaseStore> Store for T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &[u8]) -> BatchOp {
        BatchOp::Put {
            key: StoreKey::new("ns", "", key).unwrap(),
            value: value.to_vec(),
        }
    }

    fn delete(key: &str) -> BatchOp {
        BatchOp::Delete {
            key: StoreKey::new("ns", "", key).unwrap(),
        }
    }

    #[test]
    fn batch_keeps_the_last_operation_per_key() {
        let ops = vec![
            put("a", b"1"),
            put("b", b"1"),
            delete("a"),
            put("c", b"1"),
            put("b", b"2"),
        ];
        let collapsed = check_batch(ops).unwrap();
        assert_eq!(collapsed, vec![delete("a"), put("c", b"1"), put("b", b"2")]);
    }

    #[test]
    fn batch_without_repeats_is_unchanged() {
        let ops = vec![put("a", b"1"), delete("b")];
        assert_eq!(check_batch(ops.clone()).unwrap(), ops);
    }

    #[test]
    fn oversized_values_and_batches_are_refused() {
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        let err = check_batch(vec![put("a", &big)]).unwrap_err();
        assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err}");

        let half = vec![0u8; MAX_VALUE_BYTES / 2 + 1];
        let err = check_batch(vec![put("a", &half), put("b", &half)]).unwrap_err();
        assert!(err.to_string().contains("batch"), "{err}");
    }
}
