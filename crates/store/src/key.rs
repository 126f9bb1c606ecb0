//! Keys and names, validated once where they enter the store.
//!
//! The key rules are LDK's (`lightning::util::persist`): namespaces and keys use
//! [`KEY_ALPHABET`], are at most [`KEY_MAX_LEN`] characters, keys are never empty, and an
//! empty primary namespace requires an empty secondary namespace. Backends rely on these
//! rules: no component contains `/`, so `primary/secondary/key` is unambiguous.

use std::fmt;

use crate::StoreError;

/// The characters namespaces and keys may use (LDK's `KVSTORE_NAMESPACE_KEY_ALPHABET`).
pub const KEY_ALPHABET: &str = lightning::util::persist::KVSTORE_NAMESPACE_KEY_ALPHABET;

/// The longest namespace or key, in characters (LDK's `KVSTORE_NAMESPACE_KEY_MAX_LEN`).
pub const KEY_MAX_LEN: usize = lightning::util::persist::KVSTORE_NAMESPACE_KEY_MAX_LEN;

/// Checks one namespace or key component against LDK's alphabet and length.
pub fn validate_component(what: &'static str, value: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidKey {
        what,
        value: value.chars().take(2 * KEY_MAX_LEN).collect(),
        reason,
    };
    if value.len() > KEY_MAX_LEN {
        return Err(invalid("longer than 120 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid("only a-z, A-Z, 0-9, '_' and '-' are allowed"));
    }
    Ok(())
}

/// A (primary namespace, secondary namespace) pair: the unit of listing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    primary: String,
    secondary: String,
}

impl Namespace {
    /// Validates a namespace pair by LDK's rules.
    pub fn new(primary: &str, secondary: &str) -> Result<Self, StoreError> {
        validate_component("primary namespace", primary)?;
        validate_component("secondary namespace", secondary)?;
        if primary.is_empty() && !secondary.is_empty() {
            return Err(StoreError::InvalidKey {
                what: "secondary namespace",
                value: secondary.to_owned(),
                reason: "must be empty when the primary namespace is empty",
            });
        }
        Ok(Self {
            primary: primary.to_owned(),
            secondary: secondary.to_owned(),
        })
    }

    /// The primary namespace (may be empty).
    pub fn primary(&self) -> &str {
        &self.primary
    }

    /// The secondary namespace (may be empty).
    pub fn secondary(&self) -> &str {
        &self.secondary
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({self})")
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.primary, self.secondary)
    }
}

/// A fully qualified key: namespace plus a non-empty key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey {
    namespace: Namespace,
    key: String,
}

impl StoreKey {
    /// Validates a key by LDK's rules.
    pub fn new(primary: &str, secondary: &str, key: &str) -> Result<Self, StoreError> {
        let namespace = Namespace::new(primary, secondary)?;
        Self::in_namespace(namespace, key)
    }

    /// A key inside an already validated namespace.
    pub fn in_namespace(namespace: Namespace, key: &str) -> Result<Self, StoreError> {
        validate_component("key", key)?;
        if key.is_empty() {
            return Err(StoreError::InvalidKey {
                what: "key",
                value: String::new(),
                reason: "must not be empty",
            });
        }
        Ok(Self {
            namespace,
            key: key.to_owned(),
        })
    }

    /// The namespace the key lives in.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The primary namespace.
    pub fn primary(&self) -> &str {
        &self.namespace.primary
    }

    /// The secondary namespace.
    pub fn secondary(&self) -> &str {
        &self.namespace.secondary
    }

    /// The key within its namespace.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({self})")
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.key)
    }
}

impl std::str::FromStr for StoreKey {
    type Err = StoreError;

    /// The key `Display` wrote: `primary/secondary/key` (components hold no `/`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(primary), Some(secondary), Some(key)) => Self::new(primary, secondary, key),
            _ => Err(StoreError::InvalidKey {
                what: "key",
                value: text.to_owned(),
                reason: "is not primary/secondary/key",
            }),
        }
    }
}

/// The name of a cluster: the instances that share one lease and one key space in a store.
/// One to 64 characters of `a-z A-Z 0-9 _ -`, so it can appear in SQL rows, etcd key paths
/// and file names as it is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName(String);

impl ClusterName {
    /// The longest cluster name.
    pub const MAX_LEN: usize = 64;

    /// Validates a cluster name.
    pub fn new(name: &str) -> Result<Self, StoreError> {
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(StoreError::Config(format!(
                "cluster name {name:?} must be 1 to {} characters",
                Self::MAX_LEN
            )));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(StoreError::Config(format!(
                "cluster name {name:?} may only use a-z, A-Z, 0-9, '_' and '-'"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterName({})", self.0)
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity of one instance campaigning for a cluster's lease (an operator-chosen
/// instance id, such as a host name). Printable ASCII without spaces, 1 to 128 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HolderId(String);

impl HolderId {
    /// The longest holder id.
    pub const MAX_LEN: usize = 128;

    /// Validates a holder id.
    pub fn new(id: &str) -> Result<Self, StoreError> {
        if id.is_empty() || id.len() > Self::MAX_LEN {
            return Err(StoreError::Config(format!(
                "instance id {id:?} must be 1 to {} characters",
                Self::MAX_LEN
            )));
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(StoreError::Config(format!(
                "instance id {id:?} may only use printable ASCII without spaces"
            )));
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HolderId({})", self.0)
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_parses_back_from_its_text() {
        for key in [
            StoreKey::new("", "", "manager").unwrap(),
            StoreKey::new("monitor_updates", "abc", "17").unwrap(),
        ] {
            assert_eq!(key.to_string().parse::<StoreKey>().unwrap(), key);
        }
        assert!("no-slashes".parse::<StoreKey>().is_err());
        assert!("a/b/c d".parse::<StoreKey>().is_err());
    }
    use crate::ErrorKind;

    #[test]
    fn accepts_ldk_keys() {
        let key = StoreKey::new("monitors", "", "abc_DEF-0123").unwrap();
        assert_eq!(key.to_string(), "monitors//abc_DEF-0123");
        assert!(StoreKey::new("", "", "manager").is_ok());
        assert!(StoreKey::new(&"a".repeat(120), &"b".repeat(120), &"c".repeat(120)).is_ok());
    }

    #[test]
    fn rejects_keys_that_break_ldk_rules() {
        let cases = [
            ("", "", ""),                  // empty key
            ("", "s", "k"),                // secondary without primary
            ("p/q", "", "k"),              // separator in a namespace
            ("p", "", "k/e"),              // separator in a key
            ("p", "", "ké"),               // non-ASCII
            ("p", "", "with space"),       // space
            (&"a".repeat(121), "", "k"),   // too long
            ("p", "", "k\0"),              // NUL
            ("p", "", "../../etc/passwd"), // path tricks
        ];
        for (p, s, k) in cases {
            let err = StoreKey::new(p, s, k).expect_err(&format!("{p:?}/{s:?}/{k:?}"));
            assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
            assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
        }
    }

    #[test]
    fn namespaces_follow_the_same_rules() {
        assert!(Namespace::new("", "").is_ok());
        assert!(Namespace::new("p", "").is_ok());
        assert!(Namespace::new("", "s").is_err());
        assert!(Namespace::new("p", "s.x").is_err());
    }

    #[test]
    fn cluster_names_and_holder_ids_are_checked() {
        assert!(ClusterName::new("node-1_a").is_ok());
        assert!(ClusterName::new("").is_err());
        assert!(ClusterName::new("a/b").is_err());
        assert!(ClusterName::new(&"x".repeat(65)).is_err());
        assert!(HolderId::new("host-a.example:9735").is_ok());
        assert!(HolderId::new("has space").is_err());
        assert!(HolderId::new("").is_err());
    }
}
