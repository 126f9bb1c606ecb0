//! The API's bearer tokens: the token file, the set of tokens accepted now, and its
//! reloading, so that a rotated token takes effect without a restart.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use phalanx_secrets::SecretSource;
use tokio::sync::watch;
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

/// The token in an existing file (its first line; surrounding whitespace ignored);
/// refused if the file is readable by group or others. For clients; the node uses
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
    ApiToken::new(text.trim().lines().next().unwrap_or_default().trim()).map_err(|reason| {
        TokenError::Invalid {
            path: path.to_owned(),
            reason,
        }
    })
}

/// The most tokens accepted at once: a rotation needs two.
pub const MAX_TOKENS: usize = 8;

/// The tokens the API accepts now: one, or several during a rotation (one per line
/// where they are stored; the first is the one clients should use). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiTokens(Vec<ApiToken>);

impl ApiTokens {
    /// The tokens in `text`, one per line (blank lines ignored).
    pub fn parse(text: &str) -> Result<Self, String> {
        let tokens = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .enumerate()
            .map(|(index, line)| {
                ApiToken::new(line).map_err(|e| format!("line {}: {e}", index + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if tokens.is_empty() {
            return Err("it holds no token".to_owned());
        }
        if tokens.len() > MAX_TOKENS {
            return Err(format!(
                "it holds {} tokens, at most {MAX_TOKENS}",
                tokens.len()
            ));
        }
        Ok(Self(tokens))
    }

    /// The token clients should use (the first).
    pub fn first(&self) -> &ApiToken {
        &self.0[0]
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no token is accepted (never: [`ApiTokens::parse`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `candidate` is one of the tokens. Every token is compared, in time that
    /// does not depend on which matched.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0
            .iter()
            .fold(false, |found, token| token.matches(candidate) | found)
    }
}

impl From<ApiToken> for ApiTokens {
    fn from(token: ApiToken) -> Self {
        Self(vec![token])
    }
}

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiTokens({} tokens)", self.0.len())
    }
}

/// What the API checks bearer tokens against: the latest [`ApiTokens`], replaced
/// whole when they are reloaded ([`reload_tokens`]).
#[derive(Clone, Debug)]
pub struct AcceptedTokens(watch::Receiver<ApiTokens>);

impl AcceptedTokens {
    /// Tokens that change when `receiver`'s sender sends.
    pub fn new(receiver: watch::Receiver<ApiTokens>) -> Self {
        Self(receiver)
    }

    /// Whether `candidate` is one of the tokens accepted now.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.borrow().matches(candidate)
    }
}

impl From<ApiToken> for AcceptedTokens {
    /// One token, for good.
    fn from(token: ApiToken) -> Self {
        Self(watch::channel(ApiTokens::from(token)).1)
    }
}

impl From<ApiTokens> for AcceptedTokens {
    /// These tokens, for good.
    fn from(tokens: ApiTokens) -> Self {
        Self(watch::channel(tokens).1)
    }
}

/// Why the API's tokens could not be read. The message names the source, never a token.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TokenLoadError {
    message: String,
    transient: bool,
}

impl TokenLoadError {
    /// Whether reading again later may succeed (an unreachable secrets manager); a
    /// missing or malformed token needs the operator.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

/// The tokens in `source`, or an error naming it (never a token).
pub async fn fetch_tokens(source: &dyn SecretSource) -> Result<ApiTokens, TokenLoadError> {
    let bytes = source.fetch().await.map_err(|err| TokenLoadError {
        transient: err.is_transient(),
        message: format!("API token: {err}"),
    })?;
    let malformed = |reason: String| TokenLoadError {
        message: format!("API token in {}: {reason}", source.describe()),
        transient: false,
    };
    let text =
        std::str::from_utf8(bytes.expose()).map_err(|_| malformed("it is not text".to_owned()))?;
    ApiTokens::parse(text).map_err(malformed)
}

/// Reads the tokens from `source` every `interval` and sends them on `sender` when they
/// changed, until every receiver is gone. A read that fails keeps the tokens accepted
/// so far (an unreachable secrets manager must not lock the operator out) and is
/// logged.
pub async fn reload_tokens(
    source: Box<dyn SecretSource>,
    sender: watch::Sender<ApiTokens>,
    interval: std::time::Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = sender.closed() => return,
        }
        match fetch_tokens(&*source).await {
            Ok(tokens) => {
                let count = tokens.len();
                let changed = sender.send_if_modified(|current| {
                    if *current == tokens {
                        false
                    } else {
                        *current = tokens;
                        true
                    }
                });
                if changed {
                    tracing::info!(
                        target: "phalanx_api",
                        source = source.describe(),
                        tokens = count,
                        "the API tokens changed: the new ones are accepted from now on"
                    );
                }
            }
            Err(err) => tracing::warn!(
                target: "phalanx_api",
                error = %err,
                "cannot reload the API tokens; the ones accepted so far still are"
            ),
        }
    }
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

    #[test]
    fn a_token_set_accepts_each_of_its_tokens_and_hides_them() {
        let tokens = ApiTokens::parse("\n  new-token-0123456789\nold-token-0123456789\n").unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.matches(b"new-token-0123456789"));
        assert!(tokens.matches(b"old-token-0123456789"));
        assert!(!tokens.matches(b"other-token-0123456789"));
        assert_eq!(format!("{tokens:?}"), "ApiTokens(2 tokens)");
        assert_eq!(ApiTokens::parse(" \n").unwrap_err(), "it holds no token");
        let err = ApiTokens::parse("good-token-0123456789\nshort").unwrap_err();
        assert!(err.starts_with("line 2: "), "{err}");
        assert!(!err.contains("short"), "a token is echoed: {err}");
    }

    #[tokio::test(start_paused = true)]
    async fn reloaded_tokens_replace_the_old_and_a_failed_read_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let first = load_or_create_token(&path).unwrap();
        let (sender, receiver) = watch::channel(ApiTokens::from(first.clone()));
        let accepted = AcceptedTokens::new(receiver);
        let source = Box::new(phalanx_secrets::FileSecret::new(&path));
        let interval = std::time::Duration::from_secs(10);
        let reloader = tokio::spawn(reload_tokens(source, sender, interval));
        assert!(accepted.matches(first.expose().as_bytes()));

        let write = |text: &str| {
            let temp = dir.path().join("token.new");
            std::fs::write(&temp, text).unwrap();
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::rename(&temp, &path).unwrap();
        };
        write("second-token-0123456789\n");
        tokio::time::sleep(interval * 2).await;
        assert!(accepted.matches(b"second-token-0123456789"));
        assert!(
            !accepted.matches(first.expose().as_bytes()),
            "the old token still works"
        );

        // A file made unreadable (too open) keeps the tokens accepted so far.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        tokio::time::sleep(interval * 2).await;
        assert!(accepted.matches(b"second-token-0123456789"));

        drop(accepted);
        tokio::time::sleep(interval * 2).await;
        assert!(
            reloader.is_finished(),
            "the reloader stops with its receivers"
        );
    }
}
