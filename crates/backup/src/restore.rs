//! `phalanx restore`: a backup into an empty store.

use std::sync::Arc;

use phalanx_cluster::LeaseTimings;
use phalanx_node::identity::NodeIdentity;
use phalanx_store::{HolderId, Store, StoreKey};

use crate::migrate::{MigrateError, copy_marked, finish, identity_record, lead};

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
    let record = identity_record(entries).unwrap_or_else(|| identity.encode());
    let mark = format!("from {origin} (node {})", identity.node_id);
    copy_marked(&*target, &lease, entries, identity, mark).await?;
    finish(&*target, &lease, record, entries).await?;
    let _ = lease.resign().await;
    Ok(entries.len())
}
