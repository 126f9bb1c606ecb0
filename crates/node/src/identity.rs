//! The node's identity record: which node a store belongs to.
//!
//! An empty store is not a new node unless the operator says so. `phalanx init` records
//! the node id, network, creation time and schema version once; every start reads the
//! record after winning the lease and refuses a store without one, or with another
//! node's or network's, before anything is loaded or announced. Without it, a store URL
//! pointed at the wrong (empty) database would start a fresh node with a live seed: one
//! that has forgotten its channels, whose peers would force-close.

use std::str::FromStr;

use bitcoin::Network;
use bitcoin::secp256k1::PublicKey;
use lightning::sign::{KeysManager, NodeSigner, Recipient};
use phalanx_secrets::Seed;
use phalanx_store::{StateStore, StoreError, StoreKey};

/// The version of the identity record's layout (and of what it promises about the store).
pub const IDENTITY_SCHEMA_VERSION: u32 = 1;

/// The key of the identity record, outside every namespace LDK uses.
pub fn identity_key() -> StoreKey {
    StoreKey::new("phalanx", "", "identity").expect("a valid key")
}

/// The key that marks a store whose node was migrated to another store (`phalanx
/// migrate`): no node starts on it any more. Its value names the other store.
pub fn migrated_key() -> StoreKey {
    StoreKey::new("phalanx", "", "migrated").expect("a valid key")
}

/// The key that marks a store a migration is copying into: no node starts on it, and
/// `phalanx init` refuses it, until the migration finishes (and removes the mark in the
/// batch that writes the identity record). Its value names the source.
pub fn migrating_key() -> StoreKey {
    StoreKey::new("phalanx", "", "migrating").expect("a valid key")
}

/// Which node a store belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node id its seed derives.
    pub node_id: PublicKey,
    /// The chain it runs on.
    pub network: Network,
    /// When `phalanx init` recorded it, in seconds since the Unix epoch.
    pub created_at_unix: u64,
    /// [`IDENTITY_SCHEMA_VERSION`] of the Phalanx that recorded it.
    pub schema_version: u32,
}

impl NodeIdentity {
    /// The record as stored: `name=value` lines, readable with any store tool.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "node_id={}\nnetwork={}\ncreated_at_unix={}\nschema_version={}\n",
            self.node_id, self.network, self.created_at_unix, self.schema_version
        )
        .into_bytes()
    }

    /// Parses a stored record.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| format!("no {name}"))
        };
        Ok(NodeIdentity {
            node_id: PublicKey::from_str(field("node_id")?).map_err(|e| format!("node_id: {e}"))?,
            network: Network::from_str(field("network")?).map_err(|e| format!("network: {e}"))?,
            created_at_unix: field("created_at_unix")?
                .parse()
                .map_err(|e| format!("created_at_unix: {e}"))?,
            schema_version: field("schema_version")?
                .parse()
                .map_err(|e| format!("schema_version: {e}"))?,
        })
    }
}

/// The node id `seed` derives (the same as the running node's).
pub fn node_id_of(seed: &Seed) -> PublicKey {
    KeysManager::new(&seed.ldk_seed(), 0, 0, true)
        .get_node_id(Recipient::Node)
        .expect("KeysManager derives a node id")
}

/// Reads the identity record; `Ok(None)` when the store has none. A store marked by a
/// migration (moved away, or being copied into) is an error: no node may start on it.
pub async fn read_identity(store: &dyn StateStore) -> Result<Option<NodeIdentity>, IdentityError> {
    if let Some(to) = read_text(store, &migrated_key()).await? {
        return Err(IdentityError::Migrated {
            store: store.describe(),
            to,
        });
    }
    if let Some(from) = read_text(store, &migrating_key()).await? {
        return Err(IdentityError::MigrationUnfinished {
            store: store.describe(),
            from,
        });
    }
    match store.read(&identity_key()).await {
        Ok(bytes) => NodeIdentity::decode(&bytes)
            .map(Some)
            .map_err(IdentityError::Corrupt),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(err) => Err(IdentityError::Store(err)),
    }
}

/// The value at `key` as text (lossy), or `None` when there is none.
async fn read_text(
    store: &dyn StateStore,
    key: &StoreKey,
) -> Result<Option<String>, IdentityError> {
    match store.read(key).await {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned())),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(err) => Err(IdentityError::Store(err)),
    }
}

/// Why a store's identity does not let this node start.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The store has no identity record: it was never initialized, or it is not this
    /// node's store.
    #[error(
        "{store} holds no node identity: it was never initialized, or it is not this node's store. If this is a new node, run `phalanx init` with the same configuration first; if the node existed, check the store URL and cluster"
    )]
    NotInitialized {
        /// The store, as [`StateStore::describe`] names it.
        store: String,
    },
    /// The store belongs to another node or network.
    #[error("{0}")]
    Mismatch(Box<IdentityMismatch>),
    /// The record cannot be read.
    #[error("the node identity record is corrupt: {0}")]
    Corrupt(String),
    /// The node was migrated to another store (`phalanx migrate`).
    #[error(
        "{store} was migrated ({to}): the node now runs on that store; point the configuration at it"
    )]
    Migrated {
        /// This store.
        store: String,
        /// Where to, and when.
        to: String,
    },
    /// A migration into this store did not finish.
    #[error(
        "{store} is the target of a migration that did not finish ({from}): run the same `phalanx migrate` again to finish it"
    )]
    MigrationUnfinished {
        /// This store.
        store: String,
        /// From where.
        from: String,
    },
    /// The store failed.
    #[error("state store: {0}")]
    Store(#[source] StoreError),
}

/// A store recorded for another node or network than this one.
#[derive(Debug, thiserror::Error)]
#[error(
    "{store} belongs to node {stored_node_id} on {stored_network}, but this seed is node {node_id} on {network}: check the seed file, the network and the store URL"
)]
pub struct IdentityMismatch {
    /// The store, as [`StateStore::describe`] names it.
    pub store: String,
    /// What the record says.
    pub stored_node_id: PublicKey,
    /// What the record says.
    pub stored_network: Network,
    /// This seed's node id.
    pub node_id: PublicKey,
    /// The configured network.
    pub network: Network,
}

/// Checks that `stored` names this node (`node_id` on `network`).
pub fn check(
    store: &str,
    stored: Option<&NodeIdentity>,
    node_id: PublicKey,
    network: Network,
) -> Result<(), IdentityError> {
    let Some(stored) = stored else {
        return Err(IdentityError::NotInitialized {
            store: store.to_owned(),
        });
    };
    if stored.node_id != node_id || stored.network != network {
        return Err(IdentityError::Mismatch(Box::new(IdentityMismatch {
            store: store.to_owned(),
            stored_node_id: stored.node_id,
            stored_network: stored.network,
            node_id,
            network,
        })));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(byte: u8, network: Network) -> NodeIdentity {
        NodeIdentity {
            node_id: node_id_of(&Seed::from_bytes([byte; phalanx_secrets::SEED_LEN])),
            network,
            created_at_unix: 1_800_000_000,
            schema_version: IDENTITY_SCHEMA_VERSION,
        }
    }

    #[test]
    fn the_record_reads_back_and_bad_records_are_named() {
        let ours = identity(1, Network::Regtest);
        assert_eq!(NodeIdentity::decode(&ours.encode()), Ok(ours.clone()));
        let text = String::from_utf8(ours.encode()).unwrap();
        assert!(text.contains("network=regtest"), "{text}");
        let err = NodeIdentity::decode(b"node_id=02zz\n").unwrap_err();
        assert!(err.starts_with("node_id"), "{err}");
        let err = NodeIdentity::decode(&text.replace("network=", "net=").into_bytes()).unwrap_err();
        assert_eq!(err, "no network");
    }

    #[test]
    fn only_this_nodes_record_on_this_network_lets_it_start() {
        let ours = identity(1, Network::Regtest);
        let theirs = identity(2, Network::Regtest);
        check("s", Some(&ours), ours.node_id, Network::Regtest).unwrap();
        let err = check("s", None, ours.node_id, Network::Regtest).unwrap_err();
        assert!(err.to_string().contains("run `phalanx init`"), "{err}");
        let err = check("s", Some(&theirs), ours.node_id, Network::Regtest).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("belongs to node {}", theirs.node_id))
        );
        let err = check("s", Some(&ours), ours.node_id, Network::Signet).unwrap_err();
        assert!(err.to_string().contains("on regtest"), "{err}");
    }
}
