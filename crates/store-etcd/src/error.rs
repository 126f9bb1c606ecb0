//! Sorting etcd's errors into the store's error kinds, naming the server flag to change
//! when a server limit refused a request.

use etcd_client::Error;
use phalanx_store::StoreError;
use tonic::Code;

/// Maps an etcd client error for `op` against `target` (a redacted URL).
pub fn etcd_error(op: &'static str, target: &str, err: Error) -> StoreError {
    let text = err.to_string();
    let source = || Some(Box::new(Error::Internal(text.clone())) as _);
    match &err {
        Error::GRpcStatus(status) => {
            let message = status.message().to_owned();
            if message.contains("request is too large")
                || (status.code() == Code::ResourceExhausted && message.contains("larger than max"))
            {
                return StoreError::permanent(
                    op,
                    format!(
                        "{target} refused the request as too large ({message}); start etcd with --max-request-bytes=73400320 (see docs/operations.md)"
                    ),
                    source(),
                );
            }
            if message.contains("too many operations in txn request") {
                return StoreError::permanent(
                    op,
                    format!(
                        "{target} refused a batch with too many operations ({message}); start etcd with --max-txn-ops=10000"
                    ),
                    source(),
                );
            }
            if message.contains("database space exceeded") {
                return StoreError::permanent(
                    op,
                    format!(
                        "{target} is out of space ({message}); compact and defragment it, disarm the NOSPACE alarm, and raise --quota-backend-bytes"
                    ),
                    source(),
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
            match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Unknown => StoreError::transient(
                    op,
                    format!("{target}: {message} ({:?})", status.code()),
                    source(),
                ),
                _ => StoreError::permanent(
                    op,
                    format!("{target}: {message} ({:?})", status.code()),
                    source(),
                ),
            }
        }
        Error::InvalidArgs(_) | Error::InvalidUri(_) | Error::EndpointError(_) => {
            StoreError::Config(format!("{target}: {text}"))
        }
        _ => {
            let report = report(&err);
            if report.contains("certificate") || report.contains("InvalidCertificate") {
                StoreError::Config(format!("TLS to {target} failed: {report}"))
            } else if op == "connect" {
                StoreError::transient(
                    op,
                    format!("cannot reach etcd at {target}: {report}"),
                    source(),
                )
            } else {
                StoreError::transient(op, format!("{target}: {report}"), source())
            }
        }
    }
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

/// A transient timeout error for `op`.
pub fn timeout(op: &'static str, target: &str, after: std::time::Duration) -> StoreError {
    StoreError::transient(
        op,
        format!("etcd at {target} did not answer within {after:?}"),
        None,
    )
}
