//! Sorting PostgreSQL's errors into the store's error kinds.

use phalanx_store::StoreError;
use tokio_postgres::error::SqlState;

/// The backend's name in its timeout errors (see `phalanx_store::backend::timeout`).
pub(crate) const BACKEND: &str = "PostgreSQL";

/// Maps a client error for `op` against the server at `target` (a redacted URL).
pub fn pg_error(op: &'static str, target: &str, err: tokio_postgres::Error) -> StoreError {
    let Some(code) = err.code().cloned() else {
        // No SQLSTATE: the connection failed, closed, or timed out.
        let detail = err.to_string();
        let message = if op == "connect" {
            format!("cannot connect to PostgreSQL at {target}: {detail}")
        } else {
            format!("{target}: {detail}")
        };
        return StoreError::transient(op, message, Some(Box::new(err) as _));
    };
    let server_message = err
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| err.to_string());
    let message = format!("{target}: {server_message} (SQLSTATE {})", code.code());
    let source = Some(Box::new(err) as _);
    let code = &code;
    if is_transient(code) {
        return StoreError::transient(op, message, source);
    }
    if *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        || *code == SqlState::INVALID_CATALOG_NAME
    {
        return StoreError::Config(message);
    }
    StoreError::permanent(op, message, source)
}

fn is_transient(code: &SqlState) -> bool {
    // Class 08: connection exceptions; 40: transaction rollback (serialization, deadlock);
    // 53: insufficient resources (disk full, too many connections); 57: operator
    // intervention (shutdown, statement timeout, cannot connect now); 58: system errors.
    let class = &code.code()[..2];
    matches!(class, "08" | "40" | "53" | "57" | "58")
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
}

/// Maps a pool error (no connection in time, or a failed connect).
pub fn pool_error(op: &'static str, target: &str, err: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match err {
        PoolError::Backend(err) => pg_error(op, target, err),
        PoolError::Timeout(kind) => StoreError::transient(
            op,
            format!("no PostgreSQL connection to {target} within the timeout ({kind:?})"),
            None,
        ),
        other => StoreError::permanent(
            op,
            format!("{target}: connection pool failed: {other}"),
            Some(Box::new(other) as _),
        ),
    }
}
