//! Where each key lives (see "Keys" in the crate docs), and the mutations that keep each
//! value's version key beside it (see "Write order").

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use phalanx_store::{BatchOp, Epoch, FencingToken, Namespace, StoreKey};

/// Where each kind of key lives.
pub(crate) struct KeyLayout {
    base: String,
}

impl KeyLayout {
    /// The keys of `cluster` under `prefix`.
    pub(crate) fn new(prefix: &str, cluster: &str) -> Self {
        Self {
            base: format!("/{prefix}/{cluster}/"),
        }
    }

    /// `lease/leader`: the current epoch, bound to the holder's etcd lease.
    pub(crate) fn leader(&self) -> String {
        format!("{}lease/leader", self.base)
    }

    /// `lease/epoch`: the last epoch granted.
    pub(crate) fn epoch_counter(&self) -> String {
        format!("{}lease/epoch", self.base)
    }

    /// `epochs/`: the prefix of the epoch history.
    pub(crate) fn history_prefix(&self) -> String {
        format!("{}epochs/", self.base)
    }

    /// `epochs/{epoch:020}`: the record of one leadership.
    pub(crate) fn history(&self, epoch: Epoch) -> String {
        format!("{}{:020}", self.history_prefix(), epoch.0)
    }

    /// `kv/{primary}/{secondary}/`: the prefix of a namespace's values.
    pub(crate) fn namespace(&self, namespace: &Namespace) -> String {
        format!(
            "{}kv/{}/{}/",
            self.base,
            namespace.primary(),
            namespace.secondary()
        )
    }

    /// `kv/`: the prefix of every value.
    pub(crate) fn values_prefix(&self) -> String {
        format!("{}kv/", self.base)
    }

    /// The store key of the value at etcd key `path` (under [`Self::values_prefix`]).
    pub(crate) fn parse_value(&self, path: &str) -> Option<StoreKey> {
        let rest = path.strip_prefix(&self.values_prefix())?;
        let mut parts = rest.splitn(3, '/');
        let (primary, secondary, key) = (parts.next()?, parts.next()?, parts.next()?);
        StoreKey::new(primary, secondary, key).ok()
    }

    /// `kv/{primary}/{secondary}/{key}`: a value.
    pub(crate) fn value(&self, key: &StoreKey) -> String {
        format!("{}{}", self.namespace(key.namespace()), key.key())
    }

    /// `ver/{primary}/{secondary}/{key}`: the version that last changed a value.
    pub(crate) fn version(&self, key: &StoreKey) -> String {
        format!(
            "{}ver/{}/{}/{}",
            self.base,
            key.primary(),
            key.secondary(),
            key.key()
        )
    }
}

/// The version of a mutation as etcd compares values, byte by byte: fixed-width hex of
/// the epoch, then of the sequence, so that the byte order is the order of
/// `FencingToken::supersedes`.
pub(crate) fn version_value(token: FencingToken) -> String {
    format!("{:016x}{:016x}", token.epoch().0, token.sequence())
}

/// One mutation of a batch, with the version key it keeps (see "Write order" in the
/// crate docs). A sequenced one changes the key only if its version key is absent or
/// holds an older version; etcd's value comparison fails on an absent key, so that case
/// is the nested else branch.
pub(crate) fn versioned_op(keys: &KeyLayout, token: FencingToken, op: BatchOp) -> Vec<TxnOp> {
    let version_key = keys.version(op.key());
    let changes = match op {
        BatchOp::Put { key, value } => [
            TxnOp::put(keys.value(&key), value, None),
            TxnOp::put(version_key.clone(), version_value(token), None),
        ],
        BatchOp::Delete { key } => [
            TxnOp::delete(keys.value(&key), None),
            TxnOp::delete(version_key.clone(), None),
        ],
    };
    if token.sequence() == 0 {
        // Unsequenced: it changes the keys of its own epoch unconditionally, and no
        // older epoch's write can still land (the fence refuses it).
        return changes.to_vec();
    }
    let when_absent = Txn::new()
        .when([Compare::create_revision(
            version_key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then(changes.clone());
    vec![TxnOp::txn(
        Txn::new()
            .when([Compare::value(
                version_key,
                CompareOp::Less,
                version_value(token),
            )])
            .and_then(changes)
            .or_else([TxnOp::txn(when_absent)]),
    )]
}

/// An epoch as the leader key and the epoch counter hold it: decimal.
pub(crate) fn epoch_value(epoch: Epoch) -> String {
    epoch.0.to_string()
}

/// The epoch in a leader key's or the epoch counter's value.
pub(crate) fn parse_epoch(value: &[u8]) -> Option<Epoch> {
    std::str::from_utf8(value).ok()?.parse().ok().map(Epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_of_one_cluster() {
        let keys = KeyLayout::new("p", "c");
        let key = StoreKey::new("mon", "sub", "k").unwrap();
        assert_eq!(keys.leader(), "/p/c/lease/leader");
        assert_eq!(keys.epoch_counter(), "/p/c/lease/epoch");
        assert_eq!(keys.history(Epoch(42)), "/p/c/epochs/00000000000000000042");
        assert!(keys.history(Epoch(42)).starts_with(&keys.history_prefix()));
        assert_eq!(keys.value(&key), "/p/c/kv/mon/sub/k");
        assert!(
            keys.value(&key)
                .starts_with(&keys.namespace(key.namespace()))
        );
        assert_eq!(keys.version(&key), "/p/c/ver/mon/sub/k");
        assert_eq!(
            parse_epoch(epoch_value(Epoch(7)).as_bytes()),
            Some(Epoch(7))
        );
        assert_eq!(parse_epoch(b"seven"), None);
    }

    #[test]
    fn versions_compare_as_tokens_supersede() {
        let tokens = [
            FencingToken::new(Epoch(1)).sequenced(1),
            FencingToken::new(Epoch(1)).sequenced(2),
            FencingToken::new(Epoch(1)).sequenced(u64::MAX),
            FencingToken::new(Epoch(2)).sequenced(1),
            FencingToken::new(Epoch(300)).sequenced(5),
        ];
        for older in &tokens {
            for newer in &tokens {
                assert_eq!(
                    version_value(*older) < version_value(*newer),
                    newer.supersedes(older.epoch(), older.sequence()),
                    "{older:?} then {newer:?}"
                );
            }
        }
    }
}
