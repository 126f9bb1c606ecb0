//! The devnet: a regtest chain, Phalanx nodes on it, funding, a channel and a stream of
//! payments, with a live status. The same pieces drive the payments benchmark.

#![warn(missing_docs)]

pub mod chain;
pub mod harness;
pub mod invariants;
pub mod run;
pub mod stream;

pub use run::{DevnetOptions, Summary, run};

/// Why the devnet stopped.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    /// The chain could not be used.
    #[error("chain: {0}")]
    Chain(String),
    /// A node failed.
    #[error("node: {0}")]
    Node(#[from] phalanx_node::NodeError),
    /// A node could not be started.
    #[error("node: {0}")]
    Start(#[from] phalanx_instance::InstanceError),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A file or directory could not be used.
    #[error("{0}")]
    Io(String),
    /// An option is wrong.
    #[error("{0}")]
    Invalid(String),
}

impl From<phalanx_node::chain::ChainError> for DevnetError {
    fn from(err: phalanx_node::chain::ChainError) -> Self {
        DevnetError::Chain(err.to_string())
    }
}

impl From<phalanx_node::wallet::WalletError> for DevnetError {
    fn from(err: phalanx_node::wallet::WalletError) -> Self {
        DevnetError::Node(err.into())
    }
}
