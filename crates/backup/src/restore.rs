//! `phalanx restore`: a backup into an empty store.

use std::sync::Arc;

use phalanx_cluster::LeaseTimings;
use phalanx_node::identity::{self, NodeIdentity};
use phalanx_store::{BatchOp, HolderId, Store, StoreKey};

use crate::migrate::{MigrateError, compare, copy, lead, store_error, unfinished_for};

/// Writes `entries` (a whole, checked backup of `identity`'s node, from `origin`) into
/// `target`, which must be empty (or hold what an unfinished restore of this node
/// left), with the order of [`crate::migrate`]: the target is marked first, the
/// identity record written last with the mark removed in the same batch, so that a
/// restore stopped at any instant leaves a target no node starts on. Returns the keys
/// written.
pub async fn restore(
    entries: &[(StoreKey, Vec<u8>)],
    identity: &NodeIdentity,
    origin: &str,
    target: Arc<dyn Store>,
    holder: HolderId,
    timings: LeaseTimings,
) -> Result<usize, MigrateError> {
    let lease = lead(&target, &holder, timings).await?;
    let to_target = store_error(&*target);
    let present = target.snapshot().await.map_err(&to_target)?;
    if !present.is_empty() && !unfinished_for(&*target, identity).await {
        return Err(MigrateError::TargetNotEmpty {
            store: target.describe(),
            keys: present.len(),
        });
    }
    let stale: Vec<BatchOp> = present
        .iter()
        .filter(|(key, _)| {
            *key != identity::migrating_key() && !entries.iter().any(|(k, _)| k == key)
        })
        .map(|(key, _)| BatchOp::Delete { key: key.clone() })
        .collect();
    for chunk in stale.chunks(32) {
        target
            .apply(lease.token().map_err(&to_target)?, chunk.to_vec())
            .await
            .map_err(&to_target)?;
    }
    let mark = format!("from {origin} (node {})", identity.node_id).into_bytes();
    target
        .write(
            lease.token().map_err(&to_target)?,
            &identity::migrating_key(),
            mark.clone(),
        )
        .await
        .map_err(&to_target)?;
    let record = entries
        .iter()
        .find(|(key, _)| *key == identity::identity_key())
        .map(|(_, value)| value.clone())
        .unwrap_or_else(|| identity.encode());
    let body: Vec<(StoreKey, Vec<u8>)> = entries
        .iter()
        .filter(|(key, _)| *key != identity::identity_key())
        .cloned()
        .collect();
    copy(&*target, &lease, &body).await?;
    let mut expected = body;
    expected.push((identity::migrating_key(), mark));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    compare(&*target, &expected).await?;
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
    compare(&*target, entries).await?;
    let _ = lease.resign().await;
    Ok(entries.len())
}
