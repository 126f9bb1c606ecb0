//! Where a Phalanx node's secrets come from: the seed, the API token, the store's
//! password.
//!
//! Key material never enters the state store (safety rule 5): the store is replicated,
//! backed up and read by operators' tools; the seed is read from a secrets provider by
//! each instance at start-up. Providers implement [`SeedProvider`]:
//!
//! - [`FileSeedProvider`]: a file of 64 bytes (or 128 hex digits), mode 0600; a
//!   Kubernetes secret mounted as a file is one;
//! - [`EnvSeedProvider`]: 128 hex digits in an environment variable, removed from the
//!   process (and its bytes overwritten) once read;
//! - [`EncryptedFileSeedProvider`]: a file encrypted with a passphrase (Argon2id and
//!   XChaCha20-Poly1305, see [`encrypted`]);
//! - AWS Secrets Manager, in the `phalanx-secrets-aws` crate.
//!
//! The other secrets (the API token, a store password) are named by a [`SecretRef`]
//! (`file:PATH`, `env:NAME`, `aws-secrets-manager:ID`) and fetched through a
//! [`SecretSource`], which may be asked again later (a rotated token).
//!
//! Every secret value is held in zeroizing memory ([`Seed`], [`SecretBytes`]) and none
//! prints: their `Debug` says only what they are.
//!
//! The 64-byte seed is the root of every key: the on-chain wallet's BIP32 master key is
//! derived from all of it, and LDK's `KeysManager` seed is a tagged hash of it
//! ([`Seed::ldk_seed`]), so the two key trees never share material.

#![warn(missing_docs)]

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bitcoin::hashes::{Hash, HashEngine, sha256};
use zeroize::Zeroizing;

pub mod encrypted;
pub mod env;
mod file;
mod reference;

pub use encrypted::{EncryptedFileSeedProvider, Passphrase};
pub use env::{EnvSecret, EnvSeedProvider};
pub use file::{FileSecret, FileSeedProvider, write_new_private_file};
pub use reference::SecretRef;

/// Length of a seed, in bytes.
pub const SEED_LEN: usize = 64;

/// Why a secret could not be had. The messages name the file, variable or secret, never
/// a secret's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// The value was read but is not what it should be (a seed of the wrong length,
    /// not hex, an empty token).
    #[error("{origin}: {reason}")]
    Invalid {
        /// Where it came from (`seed file /x`, `environment variable X`).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A file holding a secret can be read by other users.
    #[error(
        "{path} has mode {mode:o}: a secret must not be readable by group or others (chmod 600)"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file could not be read or created.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An environment variable is not set (or not UTF-8).
    #[error("environment variable {name} is not set")]
    MissingVariable {
        /// The variable.
        name: String,
    },
    /// An encrypted seed file could not be decrypted: a wrong passphrase, or a file that
    /// was changed (the two cannot be told apart, by design of the AEAD).
    #[error("encrypted seed file {path}: {reason}")]
    Decrypt {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A remote secrets manager answered with an error, or did not answer.
    #[error("{provider} secret {secret_id:?}: {message}")]
    Remote {
        /// The provider (`aws-secrets-manager`).
        provider: &'static str,
        /// The secret asked for.
        secret_id: String,
        /// Whether asking again later may succeed.
        transient: bool,
        /// What happened (the service's error code and message, or the network error).
        message: String,
    },
    /// A secret reference is malformed, or names a provider this build cannot reach.
    #[error("secret reference {reference:?}: {reason}")]
    Reference {
        /// The reference as written (it names a secret; it holds none).
        reference: String,
        /// What is wrong.
        reason: String,
    },
}

impl SecretsError {
    /// Whether the same request may succeed later (an unreachable secrets manager);
    /// everything else needs the operator.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Remote {
                transient: true,
                ..
            }
        )
    }
}

/// A node's seed. Zeroed when dropped; never printed.
#[derive(Clone)]
pub struct Seed(Zeroizing<[u8; SEED_LEN]>);

impl Seed {
    /// A seed from raw bytes (tests, other providers).
    pub fn from_bytes(bytes: [u8; SEED_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A new random seed from the operating system's generator.
    pub fn generate() -> Result<Self, std::io::Error> {
        let mut bytes = Zeroizing::new([0u8; SEED_LEN]);
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes[..])
            .map_err(std::io::Error::other)?;
        Ok(Self(bytes))
    }

    /// A seed from what a provider read: exactly [`SEED_LEN`] bytes, or `2 *`
    /// [`SEED_LEN`] hex digits (surrounding ASCII whitespace ignored, either case).
    /// `origin` names where it came from, for the error.
    pub fn decode(bytes: &[u8], origin: &str) -> Result<Self, SecretsError> {
        if let Ok(raw) = <[u8; SEED_LEN]>::try_from(bytes) {
            return Ok(Self::from_bytes(raw));
        }
        let text = bytes.trim_ascii();
        if text.len() == 2 * SEED_LEN && text.iter().all(u8::is_ascii_hexdigit) {
            let mut raw = Zeroizing::new([0u8; SEED_LEN]);
            hex::decode_to_slice(text, &mut raw[..]).map_err(|_| invalid_seed(origin, bytes))?;
            return Ok(Self(raw));
        }
        Err(invalid_seed(origin, bytes))
    }

    /// A seed from text: `2 *` [`SEED_LEN`] hex digits (surrounding ASCII whitespace
    /// ignored, either case), as variables and string secrets hold it.
    pub fn decode_hex(text: &[u8], origin: &str) -> Result<Self, SecretsError> {
        let trimmed = text.trim_ascii();
        if trimmed.len() != 2 * SEED_LEN || !trimmed.iter().all(u8::is_ascii_hexdigit) {
            return Err(SecretsError::Invalid {
                origin: origin.to_owned(),
                reason: format!(
                    "{} characters that are not {} hex digits: it is not a Phalanx seed",
                    trimmed.len(),
                    2 * SEED_LEN
                ),
            });
        }
        Self::decode(trimmed, origin)
    }

    /// The raw seed, for deriving the on-chain wallet's BIP32 master key.
    pub fn as_bytes(&self) -> &[u8; SEED_LEN] {
        &self.0
    }

    /// The seed as 128 lowercase hex digits (to put in a variable or a secrets manager).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.0[..]))
    }

    /// The key backups are encrypted with: `SHA256("phalanx/backup-key" || seed)`, so a
    /// backup may sit on storage the operator does not trust, and only the seed opens it.
    pub fn backup_key(&self) -> Zeroizing<[u8; 32]> {
        let mut engine = sha256::Hash::engine();
        engine.input(b"phalanx/backup-key");
        engine.input(&self.0[..]);
        Zeroizing::new(sha256::Hash::from_engine(engine).to_byte_array())
    }

    /// The 32-byte seed of LDK's `KeysManager`: `SHA256("phalanx/ldk-keys-manager" || seed)`.
    pub fn ldk_seed(&self) -> Zeroizing<[u8; 32]> {
        let mut engine = sha256::Hash::engine();
        engine.input(b"phalanx/ldk-keys-manager");
        engine.input(&self.0[..]);
        Zeroizing::new(sha256::Hash::from_engine(engine).to_byte_array())
    }
}

fn invalid_seed(origin: &str, bytes: &[u8]) -> SecretsError {
    SecretsError::Invalid {
        origin: origin.to_owned(),
        reason: format!(
            "{} bytes that are neither {SEED_LEN} raw bytes nor {} hex digits: it is not a Phalanx seed",
            bytes.len(),
            2 * SEED_LEN
        ),
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(..)")
    }
}

/// A secret's bytes (a token, a password). Zeroed when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as text without surrounding whitespace (a token or password file ends
    /// with a newline), or an error naming `origin` when they are not UTF-8 or empty.
    pub fn text(&self, origin: &str) -> Result<Zeroizing<String>, SecretsError> {
        let text = std::str::from_utf8(&self.0)
            .map_err(|_| SecretsError::Invalid {
                origin: origin.to_owned(),
                reason: "it is not UTF-8 text".to_owned(),
            })?
            .trim();
        if text.is_empty() {
            return Err(SecretsError::Invalid {
                origin: origin.to_owned(),
                reason: "it is empty".to_owned(),
            });
        }
        Ok(Zeroizing::new(text.to_owned()))
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// A source of the node's seed.
///
/// # Contract
/// Every call returns the same seed (instances of one cluster must share it), never
/// writes it anywhere but its own storage, never puts it in an error or a log, and fails
/// rather than invent a new seed for an existing node. A call returns within a bounded
/// time (a remote provider times out).
#[async_trait::async_trait]
pub trait SeedProvider: Send + Sync {
    /// The seed.
    async fn seed(&self) -> Result<Seed, SecretsError>;

    /// Where the seed comes from, for logs and errors (never the seed).
    fn describe(&self) -> String;
}

/// A source of one secret other than the seed, which may be asked again (a rotated API
/// token).
///
/// # Contract
/// Returns the secret's current value within a bounded time; never puts the value in an
/// error or a log.
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    /// The secret's current value.
    async fn fetch(&self) -> Result<SecretBytes, SecretsError>;

    /// Where the secret comes from, for logs and errors (never the value).
    fn describe(&self) -> String;
}

/// A seed provider asked once: the first successful [`SeedProvider::seed`] is kept (in
/// zeroizing memory) and returned by every later call. An instance loads its seed at
/// start-up and keeps it, so that a standby's takeover does not depend on the secrets
/// manager being reachable at that moment, and a misconfigured secret fails at start,
/// not at failover.
pub struct LoadedSeedProvider {
    inner: Arc<dyn SeedProvider>,
    loaded: tokio::sync::OnceCell<Seed>,
}

impl LoadedSeedProvider {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn SeedProvider>) -> Self {
        Self {
            inner,
            loaded: tokio::sync::OnceCell::new(),
        }
    }
}

#[async_trait::async_trait]
impl SeedProvider for LoadedSeedProvider {
    async fn seed(&self) -> Result<Seed, SecretsError> {
        self.loaded
            .get_or_try_init(|| self.inner.seed())
            .await
            .cloned()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_decode_from_raw_bytes_or_hex_and_never_print() {
        let seed = Seed::generate().unwrap();
        let raw = Seed::decode(seed.as_bytes(), "test").unwrap();
        assert_eq!(raw.as_bytes(), seed.as_bytes());
        let hex_text = format!("  {}\n", seed.to_hex().to_uppercase());
        let from_hex = Seed::decode(hex_text.as_bytes(), "test").unwrap();
        assert_eq!(from_hex.as_bytes(), seed.as_bytes());
        assert_eq!(format!("{seed:?}"), "Seed(..)");

        for bad in [
            &b"short"[..],
            &[7u8; 65][..],
            &[b'g'; 128][..],
            &[b'a'; 127][..],
        ] {
            let err = Seed::decode(bad, "seed file /x").unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("seed file /x: "), "{message}");
            assert!(message.contains("not a Phalanx seed"), "{message}");
        }
        assert_ne!(&seed.ldk_seed()[..], &seed.as_bytes()[..32]);

        // Text holds hex only: 64 characters are not taken as raw bytes.
        assert!(Seed::decode_hex(seed.to_hex().as_bytes(), "t").is_ok());
        let err = Seed::decode_hex(&[b'a'; SEED_LEN], "variable X").unwrap_err();
        assert_eq!(
            err.to_string(),
            "variable X: 64 characters that are not 128 hex digits: it is not a Phalanx seed"
        );
    }

    #[test]
    fn secret_bytes_trim_to_text_and_never_print() {
        let secret = SecretBytes::new(b"  s3cret-token\n".to_vec());
        assert_eq!(&*secret.text("x").unwrap(), "s3cret-token");
        assert_eq!(format!("{secret:?}"), "SecretBytes(15 bytes)");
        let empty = SecretBytes::new(b" \n".to_vec())
            .text("token file t")
            .unwrap_err();
        assert_eq!(empty.to_string(), "token file t: it is empty");
        assert!(SecretBytes::new(vec![0xff, 0xfe]).text("x").is_err());
    }

    struct Counting(std::sync::atomic::AtomicUsize, Seed);

    #[async_trait::async_trait]
    impl SeedProvider for Counting {
        async fn seed(&self) -> Result<Seed, SecretsError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self.1.clone())
        }
        fn describe(&self) -> String {
            "counting".to_owned()
        }
    }

    #[tokio::test]
    async fn a_loaded_seed_is_asked_of_its_provider_once() {
        let inner = Arc::new(Counting(0.into(), Seed::generate().unwrap()));
        let loaded = LoadedSeedProvider::new(inner.clone());
        let first = loaded.seed().await.unwrap();
        let second = loaded.seed().await.unwrap();
        assert_eq!(first.as_bytes(), second.as_bytes());
        assert_eq!(inner.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(loaded.describe(), "counting");
    }
}
