//! Moving a Phalanx node's state between stores.
//!
//! [`migrate`] moves a node from one store to another, of any backend (SQLite,
//! PostgreSQL, etcd), while no instance runs: it holds both leases, copies every key,
//! checks the copy byte for byte, and marks the source so that no node starts on it
//! again. Its steps are ordered so that a migration killed at any instant leaves the
//! source usable and the target refused (see [`migrate`]).

#![warn(missing_docs)]

mod migrate;

pub use migrate::{MigrateError, Migrated, migrate};
