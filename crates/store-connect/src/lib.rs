//! Opens a Phalanx state store from its URL, whichever backend it names:
//!
//! | URL | backend |
//! |---|---|
//! | `sqlite:///path/node.db[?replica=/other/node.db]` | [`phalanx_store_sqlite`] |
//! | `postgres://user:pass@host:port/db[?sslmode=...]` | [`phalanx_store_postgres`] |
//! | `etcd://host:port[,host:port...]/prefix`, `etcds://...` | [`phalanx_store_etcd`] |
//!
//! The node and the tools depend on this crate and the [`phalanx_store`] contract only,
//! never on a backend's types.

#![warn(missing_docs)]

use std::sync::Arc;

use phalanx_store::{Store, StoreError, StoreOptions};

/// The backends a URL can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// etcd.
    Etcd,
}

impl Backend {
    /// The backend a URL names, from its scheme.
    pub fn of_url(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("sqlite") => Ok(Backend::Sqlite),
            Some("postgres" | "postgresql") => Ok(Backend::Postgres),
            Some("etcd" | "etcds") => Ok(Backend::Etcd),
            Some(other) => Err(StoreError::Config(format!(
                "unknown store scheme {other:?}: use sqlite://, postgres:// or etcd://"
            ))),
            None => Err(StoreError::Config(
                "the store URL has no scheme: use sqlite:///path/node.db, postgres://user@host/db or etcd://host:2379/prefix"
                    .into(),
            )),
        }
    }

    /// The backend's name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Etcd => "etcd",
        }
    }
}

/// Opens the store at `url` for `options.cluster`. Fails with a configuration error
/// naming the problem for a malformed URL, and with a transient error within the connect
/// timeout for an unreachable server.
pub async fn connect(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match Backend::of_url(url)? {
        Backend::Sqlite => Arc::new(phalanx_store_sqlite::SqliteStore::open(url, options).await?),
        Backend::Postgres => {
            Arc::new(phalanx_store_postgres::PostgresStore::open(url, options).await?)
        }
        Backend::Etcd => Arc::new(phalanx_store_etcd::EtcdStore::open(url, options).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_backends() {
        assert_eq!(Backend::of_url("sqlite:///a.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::of_url("postgresql://u@h/d").unwrap(),
            Backend::Postgres
        );
        assert_eq!(Backend::of_url("etcds://h/p").unwrap(), Backend::Etcd);
        let err = Backend::of_url("redis://h").unwrap_err().to_string();
        assert!(err.contains("unknown store scheme \"redis\""), "{err}");
        let err = Backend::of_url("/var/lib/node.db").unwrap_err().to_string();
        assert!(err.contains("no scheme"), "{err}");
    }
}
