//! Where a Phalanx node's seed comes from.
//!
//! Key material never enters the state store (safety rule 5): the store is replicated,
//! backed up and read by operators' tools; the seed is read from a secrets provider by
//! each instance at start-up. Today's provider is a seed file, created on first start
//! with mode 0600; more providers (environment, encrypted file, cloud secret managers)
//! implement the same [`SeedProvider`] trait.
//!
//! The 64-byte seed is the root of every key: the on-chain wallet's BIP32 master key is
//! derived from all of it, and LDK's `KeysManager` seed is a tagged hash of it
//! ([`Seed::ldk_seed`]), so the two key trees never share material.

#![warn(missing_docs)]

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bitcoin::hashes::{Hash, HashEngine, sha256};
use zeroize::Zeroizing;

/// Length of a seed, in bytes.
pub const SEED_LEN: usize = 64;

/// Why a seed could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// The seed file exists but is not a seed.
    #[error("seed file {path} is {len} bytes, not {SEED_LEN}: it is not a Phalanx seed")]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The seed file can be read by other users.
    #[error(
        "seed file {path} has mode {mode:o}: it must not be readable by group or others (chmod 600)"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file could not be read or created.
    #[error("seed file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A node's seed. Zeroed when dropped; never printed.
#[derive(Clone)]
pub struct Seed(Zeroizing<[u8; SEED_LEN]>);

impl Seed {
    /// A seed from raw bytes (tests, other providers).
    pub fn from_bytes(bytes: [u8; SEED_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw seed, for deriving the on-chain wallet's BIP32 master key.
    pub fn as_bytes(&self) -> &[u8; SEED_LEN] {
        &self.0
    }

    /// The 32-byte seed of LDK's `KeysManager`: `SHA256("phalanx/ldk-keys-manager" || seed)`.
    pub fn ldk_seed(&self) -> Zeroizing<[u8; 32]> {
        let mut engine = sha256::Hash::engine();
        engine.input(b"phalanx/ldk-keys-manager");
        engine.input(&self.0[..]);
        Zeroizing::new(sha256::Hash::from_engine(engine).to_byte_array())
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(..)")
    }
}

/// A source of the node's seed.
///
/// # Contract
/// Every call returns the same seed (instances of one cluster must share it), never
/// writes it anywhere but its own storage, and fails rather than invent a new seed for
/// an existing node.
pub trait SeedProvider: Send + Sync {
    /// The seed.
    fn seed(&self) -> Result<Seed, SecretsError>;

    /// Where the seed comes from, for logs (never the seed).
    fn describe(&self) -> String;
}

/// A seed in a file of exactly 64 bytes, created (mode 0600, never overwritten) when
/// `create_if_missing` is set and the file does not exist.
#[derive(Clone, Debug)]
pub struct FileSeedProvider {
    path: PathBuf,
    create_if_missing: bool,
}

impl FileSeedProvider {
    /// A provider for the seed file at `path`.
    pub fn new(path: impl Into<PathBuf>, create_if_missing: bool) -> Self {
        Self {
            path: path.into(),
            create_if_missing,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> SecretsError {
        SecretsError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn create(&self) -> Result<Option<Seed>, SecretsError> {
        let mut bytes = Zeroizing::new([0u8; SEED_LEN]);
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes[..])
            .map_err(|e| self.io(std::io::Error::other(e)))?;
        // create_new: never overwrite a seed someone else just wrote.
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(err) => return Err(self.io(err)),
        };
        file.write_all(&bytes[..]).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the new directory entry durable too.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io(e))?;
        }
        Ok(Some(Seed(Zeroizing::new(*bytes))))
    }
}

impl SeedProvider for FileSeedProvider {
    fn seed(&self) -> Result<Seed, SecretsError> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && self.create_if_missing => {
                if let Some(seed) = self.create()? {
                    return Ok(seed);
                }
                std::fs::File::open(&self.path).map_err(|e| self.io(e))?
            }
            Err(err) => return Err(self.io(err)),
        };
        let mode = file
            .metadata()
            .map_err(|e| self.io(e))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::TooOpen {
                path: self.path.clone(),
                mode,
            });
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(SEED_LEN));
        file.read_to_end(&mut bytes).map_err(|e| self.io(e))?;
        let seed: [u8; SEED_LEN] = bytes[..]
            .try_into()
            .map_err(|_| SecretsError::WrongLength {
                path: self.path.clone(),
                len: bytes.len(),
            })?;
        Ok(Seed(Zeroizing::new(seed)))
    }

    fn describe(&self) -> String {
        format!("seed file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_0600_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed");
        let provider = FileSeedProvider::new(&path, true);
        let first = provider.seed().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), SEED_LEN);
        let again = provider.seed().unwrap();
        assert_eq!(first.as_bytes(), again.as_bytes());
        assert_ne!(&first.ldk_seed()[..], &first.as_bytes()[..32]);
        assert_eq!(format!("{first:?}"), "Seed(..)");
    }

    #[test]
    fn missing_without_create_wrong_length_and_open_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = FileSeedProvider::new(dir.path().join("nope"), false);
        assert!(matches!(missing.seed(), Err(SecretsError::Io { .. })));

        let short = dir.path().join("short");
        std::fs::write(&short, [1u8; 10]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = FileSeedProvider::new(&short, true).seed().unwrap_err();
        assert!(err.to_string().contains("is 10 bytes, not 64"), "{err}");

        let open = dir.path().join("open");
        std::fs::write(&open, [1u8; SEED_LEN]).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = FileSeedProvider::new(&open, true).seed().unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let no_dir = FileSeedProvider::new(dir.path().join("no/such/dir/seed"), true);
        assert!(matches!(no_dir.seed(), Err(SecretsError::Io { .. })));
    }
}
