//! `phalanx migrate`: a node's whole state from one store to another.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use phalanx_cluster::{Campaigner, Leadership, LeaseTimings};
use phalanx_instance::InstanceError;
use phalanx_node::identity::{self, IdentityError, NodeIdentity};
use phalanx_store::{BatchOp, HolderId, LeaseStore, Store, StoreError, StoreKey};

/// The most operations in one copying batch: etcd refuses a transaction of more than
/// its `--max-txn-ops` (128 by default; every put is three operations there).
const BATCH_OPS: usize = 32;
/// The most bytes in one copying batch.
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Why a migration stopped. Whatever the step, the source stays usable unless the
/// migration reached its last step (see [`migrate`]).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A store failed, or a lease could not be had.
    #[error("{0}")]
    Instance(#[from] InstanceError),
    /// A store failed.
    #[error("{store}: {source}")]
    Store {
        /// Which store.
        store: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// The source holds no node, or is marked.
    #[error("source: {0}")]
    Source(IdentityError),
    /// The target holds state already.
    #[error(
        "{store} holds {keys} keys already: a migration goes only into an empty store (of this cluster)"
    )]
    TargetNotEmpty {
        /// The target.
        store: String,
        /// How many keys it holds.
        keys: usize,
    },
    /// The copy differs from the source.
    #[error(
        "the copy in {store} differs from the source: {difference}; the source is left as it was"
    )]
    Mismatch {
        /// The target.
        store: String,
        /// The first difference found.
        difference: String,
    },
}

/// What a migration did.
#[derive(Clone, Debug)]
pub struct Migrated {
    /// The node moved.
    pub identity: NodeIdentity,
    /// Keys copied (the identity record among them).
    pub keys: usize,
    /// Bytes of values copied.
    pub bytes: usize,
    /// Whether this run finished a migration an earlier run had begun.
    pub resumed: bool,
}

pub(crate) fn store_error(store: &dyn Store) -> impl Fn(StoreError) -> MigrateError + '_ {
    move |source| MigrateError::Store {
        store: store.describe(),
        source,
    }
}

/// Moves the node in `source` to `target` (the same cluster name on both; both opened
/// by the caller), as `holder`:
///
/// 1. Wins the source's lease, refusing if an instance leads it (no instance may run
///    during a migration), and reads its identity record.
/// 2. Wins the target's lease; the target must be empty, or hold what an unfinished
///    migration of this node left (then it is made a whole copy of this source again).
/// 3. Marks the target as a migration's (`phalanx/migrating`): from here on no node
///    starts on it, and `phalanx init` refuses it.
/// 4. Copies every key of one snapshot of the source but the identity record, in
///    fenced batches, then checks that the target holds exactly those keys and bytes.
/// 5. Marks the source as migrated (`phalanx/migrated`): no node starts on it again.
/// 6. In one batch on the target, writes the identity record and removes the mark:
///    the node is whole there, and only there. Checks the target against the source's
///    snapshot once more.
///
/// Killed before step 5, the source is as it was and usable, and the target refused.
/// Killed between 5 and 6, both are refused: running the migration again finds that
/// state (the source marked, the target unfinished for this node) and finishes it.
pub async fn migrate(
    source: Arc<dyn Store>,
    target: Arc<dyn Store>,
    holder: HolderId,
    timings: LeaseTimings,
) -> Result<Migrated, MigrateError> {
    let source_lease = lead(&source, &holder, timings).await?;
    let (identity, resumed) = source_identity(&*source, &*target).await?;
    let target_lease = lead(&target, &holder, timings).await?;
    let to_source = store_error(&*source);

    let mut state = source.snapshot().await.map_err(&to_source)?;
    state.retain(|(key, _)| *key != identity::migrated_key());
    let record = identity_record(&state).ok_or_else(|| {
        MigrateError::Source(IdentityError::NotInitialized {
            store: source.describe(),
        })
    })?;
    let mark = format!("from {} (node {})", source.describe(), identity.node_id);
    copy_marked(&*target, &target_lease, &state, &identity, mark).await?;
    tracing::info!(
        keys = state.len(),
        source = source.describe(),
        target = target.describe(),
        "copied and checked; marking the source as migrated"
    );
    if !resumed {
        source
            .write(
                source_lease.token().map_err(&to_source)?,
                &identity::migrated_key(),
                format!("to {} at unix {}", target.describe(), now_unix()).into_bytes(),
            )
            .await
            .map_err(&to_source)?;
    }
    finish(&*target, &target_lease, record, &state).await?;

    let bytes = state.iter().map(|(_, value)| value.len()).sum();
    let _ = target_lease.resign().await;
    let _ = source_lease.resign().await;
    Ok(Migrated {
        identity,
        keys: state.len(),
        bytes,
        resumed,
    })
}

/// The source's identity, and whether an earlier run of this migration got past its
/// step 5 (the source marked migrated, the target still marked as a migration's from
/// this source): then this run finishes it.
async fn source_identity(
    source: &dyn Store,
    target: &dyn Store,
) -> Result<(NodeIdentity, bool), MigrateError> {
    match identity::read_identity(source).await {
        Ok(Some(identity)) => Ok((identity, false)),
        Ok(None) => Err(MigrateError::Source(IdentityError::NotInitialized {
            store: source.describe(),
        })),
        Err(IdentityError::Migrated { to, .. }) => {
            let record = source
                .read(&identity::identity_key())
                .await
                .map_err(store_error(source))?;
            let identity = NodeIdentity::decode(&record)
                .map_err(|e| MigrateError::Source(IdentityError::Corrupt(e)))?;
            if unfinished_for(target, &identity).await {
                tracing::warn!(
                    source = source.describe(),
                    target = target.describe(),
                    "an earlier run of this migration stopped before its last step; finishing it"
                );
                Ok((identity, true))
            } else {
                Err(MigrateError::Source(IdentityError::Migrated {
                    store: source.describe(),
                    to,
                }))
            }
        }
        Err(err) => Err(MigrateError::Source(err)),
    }
}

/// The identity record among `entries`.
pub(crate) fn identity_record(entries: &[(StoreKey, Vec<u8>)]) -> Option<Vec<u8>> {
    entries
        .iter()
        .find(|(key, _)| *key == identity::identity_key())
        .map(|(_, value)| value.clone())
}

/// Makes `target` (led by `lease`) hold `entries` but their identity record, marked
/// from the first write on by `mark` as the unfinished copy of `node`'s state, and
/// checks it byte for byte. The target must be empty, or be such an unfinished copy of
/// `node` (then what `entries` no longer holds is removed, and the rest written again).
pub(crate) async fn copy_marked(
    target: &dyn Store,
    lease: &Leadership,
    entries: &[(StoreKey, Vec<u8>)],
    node: &NodeIdentity,
    mark: String,
) -> Result<(), MigrateError> {
    let to_target = store_error(target);
    let present = target.snapshot().await.map_err(&to_target)?;
    if !present.is_empty() {
        if !unfinished_for(target, node).await {
            return Err(MigrateError::TargetNotEmpty {
                store: target.describe(),
                keys: present.len(),
            });
        }
        tracing::warn!(
            target = target.describe(),
            "an earlier copy into this store stopped; copying again"
        );
        let stale: Vec<BatchOp> = present
            .iter()
            .filter(|(key, _)| {
                *key != identity::migrating_key() && !entries.iter().any(|(k, _)| k == key)
            })
            .map(|(key, _)| BatchOp::Delete { key: key.clone() })
            .collect();
        for chunk in stale.chunks(BATCH_OPS) {
            target
                .apply(lease.token().map_err(&to_target)?, chunk.to_vec())
                .await
                .map_err(&to_target)?;
        }
    }
    // The mark first (from here on the target is refused); it names this run's origin,
    // where an earlier run's may name another.
    target
        .write(
            lease.token().map_err(&to_target)?,
            &identity::migrating_key(),
            mark.clone().into_bytes(),
        )
        .await
        .map_err(&to_target)?;
    let body: Vec<(StoreKey, Vec<u8>)> = entries
        .iter()
        .filter(|(key, _)| *key != identity::identity_key())
        .cloned()
        .collect();
    copy(target, lease, &body).await?;
    let mut expected = body;
    expected.push((identity::migrating_key(), mark.into_bytes()));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    compare(target, &expected).await
}

/// The last step of a copy: the identity `record` written and the mark removed in one
/// batch, then the target checked against `entries` once more.
pub(crate) async fn finish(
    target: &dyn Store,
    lease: &Leadership,
    record: Vec<u8>,
    entries: &[(StoreKey, Vec<u8>)],
) -> Result<(), MigrateError> {
    let to_target = store_error(target);
    target
        .apply(
            lease.token().map_err(&to_target)?,
            vec![
                BatchOp::Put {
                    key: identity::identity_key(),
                    value: record,
                },
                BatchOp::Delete {
                    key: identity::migrating_key(),
                },
            ],
        )
        .await
        .map_err(&to_target)?;
    compare(target, entries).await
}

/// Whether `target` is marked as the target of an unfinished migration of `identity`'s
/// node (whatever store it came from: the copy is made whole again from this source).
async fn unfinished_for(target: &dyn Store, identity: &NodeIdentity) -> bool {
    matches!(
        identity::read_identity(target).await,
        Err(IdentityError::MigrationUnfinished { ref from, .. })
            if from.ends_with(&format!("(node {})", identity.node_id))
    )
}

/// Wins `store`'s lease unless an instance leads it.
pub(crate) async fn lead(
    store: &Arc<dyn Store>,
    holder: &HolderId,
    timings: LeaseTimings,
) -> Result<Leadership, MigrateError> {
    let lease_store: Arc<dyn LeaseStore> = store.clone();
    let campaigner =
        Campaigner::new(lease_store, holder.clone(), timings).map_err(store_error(&**store))?;
    Ok(phalanx_instance::win_unless_led(&campaigner).await?)
}

/// Writes `entries` to `target` in fenced batches.
async fn copy(
    target: &dyn Store,
    lease: &Leadership,
    entries: &[(StoreKey, Vec<u8>)],
) -> Result<(), MigrateError> {
    let to_target = store_error(target);
    let mut batch = Vec::new();
    let mut bytes = 0;
    for (key, value) in entries {
        if !batch.is_empty() && (batch.len() >= BATCH_OPS || bytes + value.len() > BATCH_BYTES) {
            target
                .apply(
                    lease.token().map_err(&to_target)?,
                    std::mem::take(&mut batch),
                )
                .await
                .map_err(&to_target)?;
            bytes = 0;
        }
        bytes += value.len();
        batch.push(BatchOp::Put {
            key: key.clone(),
            value: value.clone(),
        });
    }
    if !batch.is_empty() {
        target
            .apply(lease.token().map_err(&to_target)?, batch)
            .await
            .map_err(&to_target)?;
    }
    Ok(())
}

/// Checks that `store` holds exactly `expected` (sorted by key), byte for byte.
async fn compare(store: &dyn Store, expected: &[(StoreKey, Vec<u8>)]) -> Result<(), MigrateError> {
    let actual = store.snapshot().await.map_err(store_error(store))?;
    let mismatch = |difference: String| MigrateError::Mismatch {
        store: store.describe(),
        difference,
    };
    for (index, wanted) in expected.iter().enumerate() {
        match actual.get(index) {
            None => return Err(mismatch(format!("{} is missing", wanted.0))),
            Some(found) if found.0 != wanted.0 => {
                return Err(mismatch(format!(
                    "{} where {} should be",
                    found.0, wanted.0
                )));
            }
            Some(found) if found.1 != wanted.1 => {
                return Err(mismatch(format!(
                    "{} holds {} bytes that are not the source's {}",
                    found.0,
                    found.1.len(),
                    wanted.1.len()
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = actual.get(expected.len()) {
        return Err(mismatch(format!("{} is not in the source", extra.0)));
    }
    Ok(())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
