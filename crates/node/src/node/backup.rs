//! Snapshot backups taken by the running node itself: the only way to back up a SQLite
//! store while its node runs (the node holds SQLite's exclusive lock), and the same
//! consistent snapshot on every backend.

use std::path::Path;

use crate::archive;

use super::*;

/// A snapshot backup the node wrote.
#[derive(Clone, Debug)]
pub struct BackupCreated {
    /// Keys in it.
    pub keys: usize,
    /// Bytes of values in it.
    pub bytes: usize,
    /// The epoch the node runs at.
    pub epoch: u64,
    /// How long the snapshot's read took.
    pub snapshot_ms: u64,
    /// When it was taken.
    pub created_at_unix: u64,
}

impl Node {
    /// Writes a snapshot backup of the node's store into `dir` (absolute; must not exist
    /// or be empty), sealed with the node's backup key. The snapshot is one consistent
    /// read of the store (SQLite: the node's own database copied a few pages at a time
    /// between its writes), taken while the node goes on.
    pub async fn create_backup(&self, dir: &Path) -> Result<BackupCreated, NodeError> {
        if self.stop_reason().is_some() {
            return Err(NodeError::Stopped(
                "a stopped node takes no backup".to_owned(),
            ));
        }
        if !dir.is_absolute() {
            return Err(NodeError::InvalidRequest(format!(
                "backup directory {}: not an absolute path",
                dir.display()
            )));
        }
        let started = Instant::now();
        let entries = self.kv.state_store().snapshot().await?;
        let snapshot_ms = started.elapsed().as_millis() as u64;
        let record = entries
            .iter()
            .find(|(key, _)| *key == identity::identity_key())
            .ok_or_else(|| NodeError::Backup("the store holds no identity record".to_owned()))?;
        let node = identity::NodeIdentity::decode(&record.1)
            .map_err(|e| NodeError::Backup(format!("the identity record: {e}")))?;
        let bytes = entries.iter().map(|(_, v)| v.len()).sum();
        let (dir, key, cluster, epoch) = (
            dir.to_owned(),
            self.backup_key.clone(),
            self.cluster.clone(),
            self.epoch.0,
        );
        let keys = entries.len();
        let header = tokio::task::spawn_blocking(move || {
            archive::write_sealed(&dir, &key, &node, &cluster, epoch, &entries)
        })
        .await
        .map_err(|e| NodeError::Backup(format!("the backup task failed: {e}")))?
        .map_err(|err| match err {
            archive::ArchiveError::Invalid { .. } => NodeError::InvalidRequest(err.to_string()),
            other => NodeError::Backup(other.to_string()),
        })?;
        tracing::info!(keys, bytes, epoch, snapshot_ms, "snapshot backup written");
        Ok(BackupCreated {
            keys,
            bytes,
            epoch,
            snapshot_ms,
            created_at_unix: header.created_at_unix,
        })
    }
}
