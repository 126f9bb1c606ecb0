//! Options every backend takes besides its URL.

use std::time::Duration;

use crate::{ClusterName, StoreError};

/// Default time to establish a connection, in milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default time for one store operation, in milliseconds.
pub const DEFAULT_OPERATION_TIMEOUT_MS: u64 = 10_000;

/// How to open a backend. Backend-specific settings (TLS files, pool size) live in the
/// store URL's query string instead.
///
/// | field | default |
/// |---|---|
/// | `connect_timeout` | [`DEFAULT_CONNECT_TIMEOUT_MS`] |
/// | `operation_timeout` | [`DEFAULT_OPERATION_TIMEOUT_MS`] |
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The cluster whose keys and lease the handle works on.
    pub cluster: ClusterName,
    /// Longest wait to connect before a transient error (an unreachable store must not
    /// hang the caller).
    pub connect_timeout: Duration,
    /// Longest wait for any one operation before a transient error.
    pub operation_timeout: Duration,
}

impl StoreOptions {
    /// Options for `cluster` with the default timeouts.
    pub fn new(cluster: ClusterName) -> Self {
        Self {
            cluster,
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            operation_timeout: Duration::from_millis(DEFAULT_OPERATION_TIMEOUT_MS),
        }
    }

    /// Checks the timeouts are usable.
    pub fn validate(&self) -> Result<(), StoreError> {
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("operation_timeout", self.operation_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(3600) {
                return Err(StoreError::Config(format!(
                    "{name} must be between 1 ms and 1 h, not {value:?}"
                )));
            }
        }
        Ok(())
    }
}
