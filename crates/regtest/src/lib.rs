//! A small, honest Bitcoin regtest chain that speaks the subset of Bitcoin Core's JSON-RPC
//! and REST interfaces that Phalanx's clients use, so that what passes against it works
//! against a real `bitcoind -regtest`.
//!
//! It keeps a UTXO set with undo data, a mempool with full replace-by-fee and packages,
//! handles reorganizations (`invalidateblock`/`reconsiderblock`), mines on demand, and
//! verifies every input's script with Bitcoin Core's own interpreter
//! (`libbitcoinconsensus`, flags P2SH, DERSIG, NULLDUMMY, CLTV, CSV, WITNESS, TAPROOT).
//! Everything it ever accepted is recorded ([`History`]) for tests to inspect.

#![warn(missing_docs)]

mod chain;
mod history;
mod json;
pub mod mempool;
pub mod params;
pub mod rest;
pub mod rpc;
mod server;
pub mod validation;
mod wallet;

pub use chain::{BlockEntry, BlockError, Chain, ChainSettings};
pub use history::{ChainEvent, History, SeenTx, SeenVia};
pub use mempool::{AcceptMode, Accepted, MempoolEntry};
pub use server::{Regtest, RegtestConfig};
pub use validation::{Coin, TxError};
pub use wallet::{SendError, Wallet};

#[cfg(test)]
mod tests;
