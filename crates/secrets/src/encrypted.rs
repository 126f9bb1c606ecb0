//! Seed files encrypted with a passphrase.
//!
//! The key is derived from the passphrase with Argon2id (RFC 9106; memory-hard, so a
//! stolen file resists guessing on GPUs), and the seed sealed with XChaCha20-Poly1305
//! (a random 24-byte nonce, so no nonce is ever reused). The header is authenticated
//! as associated data: a changed byte anywhere fails decryption.
//!
//! The file, 140 bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `PHXSEED` and the format version, `1` |
//! | 4 | Argon2id memory, KiB (big-endian) |
//! | 4 | Argon2id passes |
//! | 4 | Argon2id lanes |
//! | 16 | salt |
//! | 24 | nonce |
//! | 80 | the 64-byte seed, sealed (with its 16-byte tag) |

use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::file::{read_private_file, write_new_private_file};
use crate::{SEED_LEN, SecretSource, SecretsError, Seed, SeedProvider};

const MAGIC: &[u8; 7] = b"PHXSEED";
const VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + 1 + 12 + SALT_LEN + NONCE_LEN;
/// Length of an encrypted seed file, in bytes.
pub const ENCRYPTED_LEN: usize = HEADER_LEN + SEED_LEN + TAG_LEN;

/// The shortest passphrase accepted when encrypting.
pub const MIN_PASSPHRASE_LEN: usize = 12;

/// Argon2id's cost: what a guess costs an attacker, and a start costs the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub passes: u32,
    /// Lanes.
    pub lanes: u32,
}

impl KdfCost {
    /// The cost new files get: 64 MiB, 3 passes, 1 lane (RFC 9106's second
    /// recommendation; about a quarter of a second on a server core).
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 1,
    };

    /// The largest cost a file may ask for: a corrupt or hostile header must not make
    /// the node allocate without bound.
    const MAX: Self = Self {
        memory_kib: 4 * 1024 * 1024,
        passes: 64,
        lanes: 16,
    };

    fn params(self) -> Result<Params, String> {
        if self.memory_kib > Self::MAX.memory_kib
            || self.passes > Self::MAX.passes
            || self.lanes > Self::MAX.lanes
        {
            return Err(format!(
                "its key-derivation cost ({} KiB, {} passes, {} lanes) is beyond what Phalanx writes: the header is corrupt",
                self.memory_kib, self.passes, self.lanes
            ));
        }
        Params::new(self.memory_kib, self.passes, self.lanes, Some(32)).map_err(|e| {
            format!("its key-derivation parameters are invalid ({e}): the header is corrupt")
        })
    }
}

/// A passphrase. Zeroed when dropped; never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps `text`.
    pub fn new(text: Zeroizing<String>) -> Self {
        Self(text)
    }

    /// The passphrase in a secret, without the trailing newline a file ends with.
    pub async fn fetch(source: &dyn SecretSource) -> Result<Self, SecretsError> {
        let bytes = source.fetch().await?;
        let text = std::str::from_utf8(bytes.expose()).map_err(|_| SecretsError::Invalid {
            origin: format!("passphrase in {}", source.describe()),
            reason: "it is not UTF-8 text".to_owned(),
        })?;
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(text);
        if text.is_empty() {
            return Err(SecretsError::Invalid {
                origin: format!("passphrase in {}", source.describe()),
                reason: "it is empty".to_owned(),
            });
        }
        Ok(Self(Zeroizing::new(text.to_owned())))
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

fn derive_key(
    passphrase: &Passphrase,
    salt: &[u8],
    cost: KdfCost,
) -> Result<Zeroizing<[u8; 32]>, String> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, cost.params()?);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.0.as_bytes(), salt, &mut key[..])
        .map_err(|e| format!("key derivation failed: {e}"))?;
    Ok(key)
}

/// Seals `seed` under `passphrase`: the bytes of an encrypted seed file.
pub fn encrypt(
    seed: &Seed,
    passphrase: &Passphrase,
    cost: KdfCost,
) -> Result<Vec<u8>, SecretsError> {
    let invalid = |reason: String| SecretsError::Invalid {
        origin: "encrypting the seed".to_owned(),
        reason,
    };
    if passphrase.0.chars().count() < MIN_PASSPHRASE_LEN {
        return Err(invalid(format!(
            "the passphrase is shorter than {MIN_PASSPHRASE_LEN} characters"
        )));
    }
    let mut random = [0u8; SALT_LEN + NONCE_LEN];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut random)
        .map_err(|e| invalid(format!("no randomness: {e}")))?;
    let mut out = Vec::with_capacity(ENCRYPTED_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&cost.memory_kib.to_be_bytes());
    out.extend_from_slice(&cost.passes.to_be_bytes());
    out.extend_from_slice(&cost.lanes.to_be_bytes());
    out.extend_from_slice(&random);
    let (salt, nonce) = random.split_at(SALT_LEN);
    let key = derive_key(passphrase, salt, cost).map_err(invalid)?;
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: seed.as_bytes(),
                aad: &out[..HEADER_LEN],
            },
        )
        .map_err(|_| invalid("sealing failed".to_owned()))?;
    out.extend_from_slice(&sealed);
    debug_assert_eq!(out.len(), ENCRYPTED_LEN);
    Ok(out)
}

/// Opens the bytes of an encrypted seed file read from `path` (for the errors).
pub fn decrypt(bytes: &[u8], passphrase: &Passphrase, path: &Path) -> Result<Seed, SecretsError> {
    let fail = |reason: String| SecretsError::Decrypt {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < MAGIC.len() + 1 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(fail(
            "it is not a Phalanx encrypted seed file (no PHXSEED header)".to_owned(),
        ));
    }
    if bytes[MAGIC.len()] != VERSION {
        return Err(fail(format!(
            "format version {} is not one this Phalanx reads ({VERSION})",
            bytes[MAGIC.len()]
        )));
    }
    if bytes.len() != ENCRYPTED_LEN {
        return Err(fail(format!(
            "it is {} bytes, not {ENCRYPTED_LEN}: truncated or corrupt",
            bytes.len()
        )));
    }
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let cost = KdfCost {
        memory_kib: word(8),
        passes: word(12),
        lanes: word(16),
    };
    let salt = &bytes[20..20 + SALT_LEN];
    let nonce = &bytes[20 + SALT_LEN..HEADER_LEN];
    let key = derive_key(passphrase, salt, cost).map_err(fail)?;
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let opened = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: &bytes[HEADER_LEN..],
                    aad: &bytes[..HEADER_LEN],
                },
            )
            .map_err(|_| fail("wrong passphrase, or the file is corrupt".to_owned()))?,
    );
    let raw: [u8; SEED_LEN] = opened[..]
        .try_into()
        .map_err(|_| fail("the sealed seed has the wrong length".to_owned()))?;
    Ok(Seed::from_bytes(raw))
}

/// Writes `seed` encrypted to a new file (mode 0600; an existing file is never
/// overwritten).
pub fn write_encrypted(
    path: &Path,
    seed: &Seed,
    passphrase: &Passphrase,
    cost: KdfCost,
) -> Result<(), SecretsError> {
    let bytes = encrypt(seed, passphrase, cost)?;
    write_new_private_file(path, &bytes)
}

/// A seed in an encrypted file, its passphrase from a [`SecretSource`] (a file or a
/// variable; never a command-line flag, which every user of the machine can read).
pub struct EncryptedFileSeedProvider {
    path: PathBuf,
    passphrase: Box<dyn SecretSource>,
}

impl EncryptedFileSeedProvider {
    /// The seed in `path`, opened with the passphrase from `passphrase`.
    pub fn new(path: impl Into<PathBuf>, passphrase: Box<dyn SecretSource>) -> Self {
        Self {
            path: path.into(),
            passphrase,
        }
    }
}

#[async_trait::async_trait]
impl SeedProvider for EncryptedFileSeedProvider {
    async fn seed(&self) -> Result<Seed, SecretsError> {
        let bytes = read_private_file(&self.path)?;
        let passphrase = Passphrase::fetch(&*self.passphrase).await?;
        let path = self.path.clone();
        // Argon2 takes a quarter of a second of CPU: off the async threads.
        tokio::task::spawn_blocking(move || decrypt(bytes.expose(), &passphrase, &path))
            .await
            .map_err(|e| SecretsError::Decrypt {
                path: self.path.clone(),
                reason: format!("the decryption task failed: {e}"),
            })?
    }

    fn describe(&self) -> String {
        format!(
            "encrypted seed file {} (passphrase from {})",
            self.path.display(),
            self.passphrase.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileSecret;

    /// Cheap parameters: the tests check the format, not the cost.
    const CHEAP: KdfCost = KdfCost {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    fn passphrase(text: &str) -> Passphrase {
        Passphrase::new(Zeroizing::new(text.to_owned()))
    }

    #[test]
    fn round_trip_and_every_corruption_is_refused() {
        let seed = Seed::generate().unwrap();
        let good = passphrase("correct horse battery staple");
        let sealed = encrypt(&seed, &good, CHEAP).unwrap();
        assert_eq!(sealed.len(), ENCRYPTED_LEN);
        let path = Path::new("/x/seed.enc");
        let opened = decrypt(&sealed, &good, path).unwrap();
        assert_eq!(opened.as_bytes(), seed.as_bytes());
        // The seed is nowhere in the file.
        assert!(!sealed.windows(16).any(|w| w == &seed.as_bytes()[..16]));

        let wrong = decrypt(&sealed, &passphrase("correct horse battery stapler"), path);
        let message = wrong.unwrap_err().to_string();
        assert_eq!(
            message,
            "encrypted seed file /x/seed.enc: wrong passphrase, or the file is corrupt"
        );
        let truncated = decrypt(&sealed[..100], &good, path)
            .unwrap_err()
            .to_string();
        assert!(
            truncated.contains("100 bytes, not 140: truncated"),
            "{truncated}"
        );
        let foreign = decrypt(&[0u8; ENCRYPTED_LEN], &good, path)
            .unwrap_err()
            .to_string();
        assert!(foreign.contains("no PHXSEED header"), "{foreign}");
        // Any flipped byte, header or body, fails.
        for at in [7, 9, 25, 50, HEADER_LEN + 3, ENCRYPTED_LEN - 1] {
            let mut bent = sealed.clone();
            bent[at] ^= 0x10;
            assert!(decrypt(&bent, &good, path).is_err(), "byte {at}");
        }
        // A header asking for unbounded memory is refused before any allocation.
        let mut greedy = sealed.clone();
        greedy[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let message = decrypt(&greedy, &good, path).unwrap_err().to_string();
        assert!(message.contains("the header is corrupt"), "{message}");

        let short = encrypt(&seed, &passphrase("short"), CHEAP).unwrap_err();
        assert!(short.to_string().contains("shorter than 12"), "{short}");
        assert_eq!(format!("{good:?}"), "Passphrase(..)");
    }

    #[tokio::test]
    async fn the_provider_reads_its_passphrase_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let seed = Seed::generate().unwrap();
        let secret = "a passphrase of some length";
        let pass_file = dir.path().join("pass");
        write_new_private_file(&pass_file, format!("{secret}\n").as_bytes()).unwrap();
        let enc = dir.path().join("seed.enc");
        write_encrypted(&enc, &seed, &passphrase(secret), CHEAP).unwrap();
        let provider = EncryptedFileSeedProvider::new(&enc, Box::new(FileSecret::new(&pass_file)));
        assert_eq!(provider.seed().await.unwrap().as_bytes(), seed.as_bytes());
        assert!(provider.describe().contains("passphrase from file"));

        let empty = dir.path().join("empty");
        write_new_private_file(&empty, b"\n").unwrap();
        let err = EncryptedFileSeedProvider::new(&enc, Box::new(FileSecret::new(&empty)))
            .seed()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("it is empty"), "{err}");
        // An existing file is never overwritten.
        assert!(write_encrypted(&enc, &seed, &passphrase(secret), CHEAP).is_err());
    }
}
