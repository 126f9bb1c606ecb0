//! The Phalanx Lightning node, on LDK.
//!
//! Every byte of the node's state goes through the fenced [`phalanx_store::StateStore`],
//! written with the token of the current leadership; the seed comes from a
//! `phalanx-secrets` provider and never enters the store. A [`NodeBuilder`] builds the
//! node from a store, a leadership and a seed provider it is handed; this crate never
//! opens a store by URL.

#![warn(missing_docs)]

pub mod archive;
pub mod broadcast;
pub mod chain;
pub mod config;
pub mod control;
pub mod esplora;
pub mod events;
pub mod front_gossip;
pub mod identity;
pub mod keys;
pub mod logger;
pub mod metrics;
pub mod node;
pub mod offline;
pub mod payments;
pub mod peers;
pub mod persist;
mod tasks;
pub mod types;
pub mod wallet;

pub use node::{
    BuildError, ForwardingStats, Node, NodeBuilder, NodeError, OpenedChannel, PeerDetails,
    StoreRuntime,
};
