//! Errors of the state store, sorted by what the caller must do about them.

use std::fmt;

/// A boxed error from a backend's client library, kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a caller must do with a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The key holds no value. Not a failure of the store.
    NotFound,
    /// The caller's epoch is no longer current: another instance holds (or held) the lease
    /// since. Fatal for the caller: it must stop acting at once and never retry the write.
    Fenced,
    /// The store could not be reached or answered in time, or the transaction hit a
    /// serialization conflict. Nothing is known to have been written; retrying the same
    /// operation is safe. (A write that timed out may still take effect later, so a caller
    /// must not assume it did not happen either.)
    Transient,
    /// Retrying cannot help: invalid key or configuration, value too large, corruption,
    /// refused by the server's limits, authentication failure.
    Permanent,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Fenced => "fenced",
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        })
    }
}

/// An error of a state store operation. [`StoreError::kind`] says what to do with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No value is stored under the key.
    #[error("no value stored under {key}")]
    NotFound {
        /// The key, as `primary/secondary/key`.
        key: String,
    },
    /// The write carried an epoch that is no longer current, or the lease was lost.
    #[error("fenced: {reason}")]
    Fenced {
        /// Why the store or the lease refused.
        reason: String,
    },
    /// The store is unreachable, timed out, or asked for a retry.
    #[error("store unavailable during {op}: {message}")]
    Transient {
        /// The operation that failed (`"write"`, `"connect"` ...).
        op: &'static str,
        /// What went wrong, for an operator.
        message: String,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A namespace or key breaks LDK's key rules.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidKey {
        /// Which part: `"primary namespace"`, `"secondary namespace"`, `"key"` ...
        what: &'static str,
        /// The offending value (keys are never secret).
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A value (or a whole batch) is larger than the store accepts.
    #[error("value of {size} bytes under {key} exceeds the limit of {limit} bytes{hint}")]
    ValueTooLarge {
        /// The key, as `primary/secondary/key`, or `"batch"`.
        key: String,
        /// The size of the refused value or request.
        size: usize,
        /// The limit in bytes.
        limit: usize,
        /// How to raise the limit, when a server setting governs it (starts with `"; "`).
        hint: String,
    },
    /// The store's address or options are wrong.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// Any other failure that retrying cannot fix: corruption, refused credentials, a
    /// server limit, a schema from a newer Phalanx.
    #[error("store failed during {op}: {message}")]
    Permanent {
        /// The operation that failed.
        op: &'static str,
        /// What went wrong, for an operator.
        message: String,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

impl StoreError {
    /// What the caller must do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Fenced { .. } => ErrorKind::Fenced,
            StoreError::Transient { .. } => ErrorKind::Transient,
            StoreError::InvalidKey { .. }
            | StoreError::ValueTooLarge { .. }
            | StoreError::Config(_)
            | StoreError::Permanent { .. } => ErrorKind::Permanent,
        }
    }

    /// True when the caller's leadership is over and it must stop.
    pub fn is_fenced(&self) -> bool {
        self.kind() == ErrorKind::Fenced
    }

    /// True when retrying the same operation is safe and may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// A fenced error with the given reason.
    pub fn fenced(reason: impl Into<String>) -> Self {
        StoreError::Fenced {
            reason: reason.into(),
        }
    }

    /// A transient error for `op` with a message and the library's error.
    pub fn transient(
        op: &'static str,
        message: impl Into<String>,
        source: impl Into<Option<BoxError>>,
    ) -> Self {
        StoreError::Transient {
            op,
            message: message.into(),
            source: source.into(),
        }
    }

    /// A permanent error for `op` with a message and the library's error.
    pub fn permanent(
        op: &'static str,
        message: impl Into<String>,
        source: impl Into<Option<BoxError>>,
    ) -> Self {
        StoreError::Permanent {
            op,
            message: message.into(),
            source: source.into(),
        }
    }

    /// The whole chain of messages, for logs and operators: `a: b: c`.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(err) = source {
            let text = err.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = err.source();
        }
        out
    }
}

impl From<StoreError> for lightning::io::Error {
    fn from(err: StoreError) -> Self {
        let kind = match err.kind() {
            ErrorKind::NotFound => lightning::io::ErrorKind::NotFound,
            ErrorKind::Fenced => lightning::io::ErrorKind::PermissionDenied,
            ErrorKind::Transient => lightning::io::ErrorKind::TimedOut,
            ErrorKind::Permanent => match err {
                StoreError::InvalidKey { .. } | StoreError::ValueTooLarge { .. } => {
                    lightning::io::ErrorKind::InvalidInput
                }
                _ => lightning::io::ErrorKind::Other,
            },
        };
        lightning::io::Error::new(kind, err.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_sort_every_variant() {
        assert_eq!(
            StoreError::NotFound {
                key: "a/b/c".into()
            }
            .kind(),
            ErrorKind::NotFound
        );
        assert!(StoreError::fenced("epoch 3 is stale").is_fenced());
        assert!(StoreError::transient("write", "timed out", None).is_transient());
        assert_eq!(
            StoreError::Config("bad".into()).kind(),
            ErrorKind::Permanent
        );
        assert_eq!(
            StoreError::ValueTooLarge {
                key: "k".into(),
                size: 2,
                limit: 1,
                hint: String::new()
            }
            .kind(),
            ErrorKind::Permanent
        );
    }

    #[test]
    fn report_includes_the_source_chain() {
        let source: BoxError = "connection refused".into();
        let err = StoreError::transient("connect", "127.0.0.1:1 unreachable", Some(source));
        assert_eq!(
            err.report(),
            "store unavailable during connect: 127.0.0.1:1 unreachable: connection refused"
        );
    }

    #[test]
    fn converts_to_ldk_io_errors_by_kind() {
        let not_found: lightning::io::Error = StoreError::NotFound { key: "k".into() }.into();
        assert_eq!(not_found.kind(), lightning::io::ErrorKind::NotFound);
        let fenced: lightning::io::Error = StoreError::fenced("stale epoch").into();
        assert_eq!(fenced.kind(), lightning::io::ErrorKind::PermissionDenied);
    }
}
