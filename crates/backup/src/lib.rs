//! Moving and copying a Phalanx node's state: migrations between stores, and snapshot
//! backups.
//!
//! - [`migrate()`] moves a node from one store to another, of any backend (SQLite,
//!   PostgreSQL, etcd), while no instance runs: it holds both leases, copies every key,
//!   checks the copy byte for byte, and marks the source so that no node starts on it
//!   again. Its steps are ordered so that a migration killed at any instant leaves the
//!   source usable and the target refused.
//! - [`archive`]: a consistent snapshot of a node's store, encrypted with a key derived
//!   from its seed (`phalanx backup create`), read back and checked (`backup verify`).
//! - [`restore()`]: a backup into an empty store (`phalanx restore`), in the same order
//!   as a migration.

#![warn(missing_docs)]

pub use phalanx_node::archive;
mod migrate;
mod restore;

pub use migrate::{MigrateError, Migrated, migrate};
pub use restore::restore;
