//! The fenced state store of Phalanx.
//!
//! Every byte of a Phalanx node's state lives in a [`StateStore`] that several instances
//! share and at most one of them may change. This crate holds the contract that every
//! backend (SQLite, PostgreSQL, etcd) implements, and nothing backend-specific:
//!
//! - [`StoreKey`] and [`Namespace`]: LDK's key rules (primary namespace, secondary
//!   namespace, key), validated once at the edge.
//! - [`FencingToken`]: the epoch of a leadership. Every mutation carries one, and the
//!   backend rejects it inside the same transaction as the write when that epoch is no
//!   longer current.
//! - [`StoreError`]: not found, fenced, transient and permanent failures kept apart,
//!   because callers must react to each differently (see [`ErrorKind`]).
//! - [`StateStore`]: fenced reads, lists, writes and atomic batches.
//! - [`LeaseStore`] and [`HeldLease`]: the leader lease that hands out fencing tokens.
//! - [`LdkKvStore`]: LDK's `KVStore` and `KVStoreSync` on top of a [`StateStore`], bound to
//!   the current leadership through a [`FenceSource`], so LDK's persisters can use the
//!   fenced store unchanged.
//! - [`backend`]: helpers for backend implementations (URL options, timeouts, the
//!   shared error messages), so the three backends say each thing once.

#![warn(missing_docs)]

pub mod backend;
mod error;
mod key;
mod ldk;
mod lease;
mod options;
mod state;
#[cfg(feature = "test-utils")]
pub mod testing;
mod token;

pub use error::{BoxError, ErrorKind, StoreError};
pub use key::{
    ClusterName, HolderId, KEY_ALPHABET, KEY_MAX_LEN, Namespace, StoreKey, validate_component,
};
pub use ldk::{FailureObserver, LdkKvStore, WriteObserver, WriteReport};
pub use lease::{Acquisition, EpochRecord, HeldLease, LeaseExpiry, LeaseInfo, LeaseStore};
pub use options::{DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_OPERATION_TIMEOUT_MS, StoreOptions};
pub use state::{BatchOp, MAX_VALUE_BYTES, StateStore, Store, check_batch};
pub use token::{Epoch, FenceSource, FencingToken};
