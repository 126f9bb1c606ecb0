//! The API's bearer token and the file it lives in.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Random bytes in a new token (hex-encoded: 64 characters).
pub const TOKEN_BYTES: usize = 32;

/// The longest token file read, in bytes.
const MAX_TOKEN_FILE_BYTES: u64 = 1024;

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token file can be read by other users.
    #[error(
        "API token file {path} has mode {mode:o}: it must not be readable by group or others (chmod 600)"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a token.
    #[error("API token file {path} does not hold a token: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read or created.
    #[error("API token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The bearer token clients present. Zeroed when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(Zeroizing<String>);

impl ApiToken {
    /// A token from its text: 16 to 512 printable ASCII characters without spaces.
    pub fn new(token: impl Into<String>) -> Result<Self, String> {
        let token = Zeroizing::new(token.into());
        let len = token.len();
        if !(16..=512).contains(&len) {
            return Err(format!(
                "a token is 16 to 512 characters long, this one {len}"
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token is printable ASCII without spaces".to_owned());
        }
        Ok(Self(token))
    }

    /// A new random token: [`TOKEN_BYTES`] random bytes, hex-encoded.
    pub fn generate() -> Result<Self, std::io::Error> {
        let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes[..])
            .map_err(std::io::Error::other)?;
        Ok(Self(Zeroizing::new(hex::encode(&bytes[..]))))
    }

    /// The token's text, for an `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, in time that does not depend on where they
    /// differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// Compares without an early exit. The length is not secret (every token this crate
/// makes has the same), so unequal lengths return at once.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

/// The token in `path`, made first if the file does not exist: [`TOKEN_BYTES`] random
/// bytes, hex-encoded, in a new file of mode 0600 (never overwriting one another
/// process just made). An existing file readable by group or others is refused.
pub fn load_or_create_token(path: &Path) -> Result<ApiToken, TokenError> {
    match read_token(path) {
        Err(TokenError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let io = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    let token = ApiToken::generate().map_err(io)?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        // Another process made it between our read and our create: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return read_token(path),
        Err(err) => return Err(io(err)),
    };
    file.write_all(token.expose().as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(token)
}

/// The token in an existing file (surrounding whitespace ignored); refused if the file
/// is readable by group or others. For clients; the node uses
/// [`load_or_create_token`].
pub fn read_token(path: &Path) -> Result<ApiToken, TokenError> {
    let io = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                TokenError::Invalid {
                    path: path.to_owned(),
                    reason: "it is not text".to_owned(),
                }
            } else {
                io(e)
            }
        })?;
    ApiToken::new(text.trim()).map_err(|reason| TokenError::Invalid {
        path: path.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_and_hide() {
        let token = ApiToken::generate().unwrap();
        assert_eq!(token.expose().len(), 2 * TOKEN_BYTES);
        assert!(token.matches(token.expose().as_bytes()));
        let mut wrong = token.expose().as_bytes().to_vec();
        wrong[63] ^= 1;
        assert!(!token.matches(&wrong));
        assert!(!token.matches(&wrong[..10]));
        assert_eq!(format!("{token:?}"), "ApiToken(..)");
        assert!(ApiToken::new("short").is_err());
        assert!(ApiToken::new("with a space in it, long enough").is_err());
    }
}
