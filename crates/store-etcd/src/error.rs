//! Sorting etcd's errors into the store's error kinds, naming the server flag to change
//! when a server limit refused a request.

use etcd_client::Error;
use phalanx_store::StoreError;
use tonic::Code;

/// The backend's name in its timeout errors (see `phalanx_store::backend::timeout`).
pub(crate) const BACKEND: &str = "etcd";

/// Maps an etcd client error for `op` against `target` (a redacted URL). The messages
/// carry the server's words and the root cause; the client's own error text (a long
/// debug dump for transport failures) is left out.
pub fn etcd_error(op: &'static str, target: &str, err: Error) -> StoreError {
    match &err {
        Error::GRpcStatus(status) => {
            let message = status.message().to_owned();
            let cause = root_cause(status);
            if message.contains("request is too large")
                || (status.code() == Code::ResourceExhausted && message.contains("larger than max"))
            {
                return StoreError::permanent(
                    op,
                    format!(
                        "{target} refused the request as too large ({message}); start etcd with --max-request-bytes=73400320 (see docs/operations.md)"
                    ),
                    None,
                );
            }
            if message.contains("too many operations in txn request") {
                return StoreError::permanent(
                    op,
                    format!(
                        "{target} refused a batch with too many operations ({message}); start etcd with --max-txn-ops=10000"
                    ),
                    None,
                );
            }
            if message.contains("database space exceeded") {
                return StoreError::permanent(
                    op,
                    format!(
                        "{target} is out of space ({message}); compact and defragment it, disarm the NOSPACE alarm, and raise --quota-backend-bytes"
                    ),
                    None,
                );
            }
            if message.contains("authentication failed")
                || message.contains("invalid auth token")
                || message.contains("permission denied")
                || status.code() == Code::Unauthenticated
                || status.code() == Code::PermissionDenied
            {
                return StoreError::Config(format!("{target}: {message}"));
            }
            if cause.contains("certificate") || cause.contains("handshake") {
                return StoreError::Config(format!("TLS to {target} failed: {message}: {cause}"));
            }
            let detail = if cause.is_empty() || message.contains(&cause) {
                message
            } else {
                format!("{message}: {cause}")
            };
            match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Unknown => {
                    let text = if op == "connect" {
                        format!("cannot reach etcd at {target}: {detail}")
                    } else {
                        format!("{target}: {detail}")
                    };
                    StoreError::transient(op, text, None)
                }
                code => StoreError::permanent(op, format!("{target}: {detail} ({code:?})"), None),
            }
        }
        Error::InvalidArgs(_) | Error::InvalidUri(_) | Error::EndpointError(_) => {
            StoreError::Config(format!("{target}: {err}"))
        }
        _ => {
            let cause = report(&err);
            if cause.contains("certificate") || cause.contains("InvalidCertificate") {
                StoreError::Config(format!("TLS to {target} failed: {cause}"))
            } else if op == "connect" {
                StoreError::transient(op, format!("cannot reach etcd at {target}: {cause}"), None)
            } else {
                StoreError::transient(op, format!("{target}: {cause}"), None)
            }
        }
    }
}

/// The innermost error under `err`, e.g. "Connection refused (os error 111)".
fn root_cause(err: &dyn std::error::Error) -> String {
    let mut current = err.source();
    let mut last = None;
    while let Some(inner) = current {
        last = Some(inner);
        current = inner.source();
    }
    last.map(|e| e.to_string()).unwrap_or_default()
}

fn report(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    out
}
