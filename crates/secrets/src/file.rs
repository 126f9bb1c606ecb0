//! Secrets in files: the seed file, token and password files, a Kubernetes secret
//! mounted as a file.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::{SEED_LEN, SecretBytes, SecretSource, SecretsError, Seed, SeedProvider};

/// The longest secret file read, in bytes: a secret is small, and a path pointed at a
/// big file by mistake must not be read whole.
pub(crate) const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a secret file of at most [`MAX_SECRET_FILE_BYTES`], refusing one readable by
/// group or others. The mode is that of the file opened (a symlink's target: Kubernetes
/// mounts secrets as symlinks).
pub(crate) fn read_private_file(path: &Path) -> Result<SecretBytes, SecretsError> {
    let io = |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    let mode = metadata.permissions().mode() & 0o777;
    if !private_enough(mode, metadata.uid()) {
        return Err(SecretsError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretsError::Invalid {
            origin: path.display().to_string(),
            reason: format!("larger than {MAX_SECRET_FILE_BYTES} bytes: not a secret"),
        });
    }
    Ok(SecretBytes::new(std::mem::take(&mut *bytes)))
}

/// Whether a file of `mode` owned by `owner` keeps a secret: nobody but its owner may
/// read it, or, when root owns it, also its group (PostgreSQL's rule for key files):
/// Kubernetes mounts a secret as root's, readable by the pod's `fsGroup`, so that a
/// container need not run as root to read it. Nobody else may write it.
fn private_enough(mode: u32, owner: u32) -> bool {
    mode & 0o077 == 0 || (owner == 0 && mode & 0o037 == 0)
}

/// Writes `bytes` to a new file of mode 0600 and makes it durable (the file and its
/// directory entry). Never overwrites: an existing file is an `AlreadyExists` error.
pub fn write_new_private_file(path: &Path, bytes: &[u8]) -> Result<(), SecretsError> {
    let io = |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// A secret in a file (a token or password file; surrounding whitespace is the
/// caller's to trim), mode 0600 or stricter, read anew on every fetch.
#[derive(Clone, Debug)]
pub struct FileSecret {
    path: PathBuf,
}

impl FileSecret {
    /// The secret in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait::async_trait]
impl SecretSource for FileSecret {
    async fn fetch(&self) -> Result<SecretBytes, SecretsError> {
        read_private_file(&self.path)
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// A seed in a file: exactly 64 bytes, or 128 hex digits. With `create_if_missing`
/// (`phalanx init`, never a node's start) a missing file is created with a new random
/// seed, mode 0600, never overwriting one another process just made.
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

    fn create(&self) -> Result<Option<Seed>, SecretsError> {
        let seed = Seed::generate().map_err(|source| SecretsError::Io {
            path: self.path.clone(),
            source,
        })?;
        match write_new_private_file(&self.path, seed.as_bytes()) {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), "created a new seed file");
                Ok(Some(seed))
            }
            Err(SecretsError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }
}

#[async_trait::async_trait]
impl SeedProvider for FileSeedProvider {
    async fn seed(&self) -> Result<Seed, SecretsError> {
        let bytes = match read_private_file(&self.path) {
            Err(SecretsError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && self.create_if_missing =>
            {
                if let Some(seed) = self.create()? {
                    return Ok(seed);
                }
                read_private_file(&self.path)?
            }
            other => other?,
        };
        Seed::decode(bytes.expose(), &self.describe())
    }

    fn describe(&self) -> String {
        format!("seed file {}", self.path.display())
    }
}

const _: () = assert!(SEED_LEN as u64 <= MAX_SECRET_FILE_BYTES);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn created_once_with_0600_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed");
        let provider = FileSeedProvider::new(&path, true);
        let first = provider.seed().await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), SEED_LEN);
        let again = FileSeedProvider::new(&path, false).seed().await.unwrap();
        assert_eq!(first.as_bytes(), again.as_bytes());
    }

    #[tokio::test]
    async fn a_hex_seed_file_reads_as_the_same_seed() {
        let dir = tempfile::tempdir().unwrap();
        let seed = Seed::generate().unwrap();
        let path = dir.path().join("seed.hex");
        write_new_private_file(&path, format!("{}\n", &*seed.to_hex()).as_bytes()).unwrap();
        let read = FileSeedProvider::new(&path, false).seed().await.unwrap();
        assert_eq!(read.as_bytes(), seed.as_bytes());
    }

    #[tokio::test]
    async fn missing_without_create_wrong_length_and_open_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = FileSeedProvider::new(dir.path().join("nope"), false);
        assert!(matches!(
            missing.seed().await,
            Err(SecretsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound
        ));
        assert!(!dir.path().join("nope").exists(), "nothing is created");

        let short = dir.path().join("short");
        write_new_private_file(&short, &[1u8; 10]).unwrap();
        let err = FileSeedProvider::new(&short, true)
            .seed()
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("10 bytes that are neither"),
            "{err}"
        );
        assert!(
            err.to_string().contains(&short.display().to_string()),
            "{err}"
        );

        let open = dir.path().join("open");
        std::fs::write(&open, [1u8; SEED_LEN]).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = FileSeedProvider::new(&open, true).seed().await.unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let huge = dir.path().join("huge");
        write_new_private_file(&huge, &vec![0u8; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let err = FileSecret::new(&huge).fetch().await.unwrap_err();
        assert!(err.to_string().contains("not a secret"), "{err}");

        let no_dir = FileSeedProvider::new(dir.path().join("no/such/dir/seed"), true);
        assert!(matches!(no_dir.seed().await, Err(SecretsError::Io { .. })));
    }

    #[test]
    fn group_may_read_only_what_root_owns() {
        assert!(private_enough(0o600, 1000));
        assert!(private_enough(0o400, 1000));
        assert!(!private_enough(0o640, 1000), "group-readable, not root's");
        assert!(private_enough(0o440, 0), "a Kubernetes secret with fsGroup");
        assert!(private_enough(0o640, 0));
        assert!(!private_enough(0o660, 0), "group-writable");
        assert!(!private_enough(0o444, 0), "world-readable");
        assert!(!private_enough(0o604, 0));
    }

    #[tokio::test]
    async fn a_root_owned_group_readable_secret_is_read_only_when_root_owns_it() {
        // Needs root to give files away; skipped (and said so) otherwise.
        if nix_is_root() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("seed");
            std::fs::write(&path, [5u8; SEED_LEN]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
            let seed = FileSeedProvider::new(&path, false).seed().await.unwrap();
            assert_eq!(seed.as_bytes(), &[5u8; SEED_LEN]);
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            assert!(matches!(
                FileSeedProvider::new(&path, false).seed().await,
                Err(SecretsError::TooOpen { mode: 0o440, .. })
            ));
        } else {
            eprintln!(
                "not root: the root-owned case is covered by group_may_read_only_what_root_owns"
            );
        }
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[tokio::test]
    async fn a_secret_behind_a_symlink_is_checked_by_its_target_mode() {
        // Kubernetes mounts `seed` as a symlink to `..data/seed`.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, [3u8; SEED_LEN]).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o400)).unwrap();
        let link = dir.path().join("seed");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let seed = FileSeedProvider::new(&link, false).seed().await.unwrap();
        assert_eq!(seed.as_bytes(), &[3u8; SEED_LEN]);
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(matches!(
            FileSeedProvider::new(&link, false).seed().await,
            Err(SecretsError::TooOpen { .. })
        ));
    }
}
