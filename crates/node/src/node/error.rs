//! Why the node could not be built ([`BuildError`]) or do what it was asked ([`NodeError`]).

use super::*;

/// Why a running node could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The state store failed or refused (see [`StoreError::kind`]).
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// Reading or writing the node's state failed.
    #[error("state store: {0}")]
    Persist(#[source] io::Error),
    /// The chain source failed.
    #[error("chain source: {0}")]
    Chain(#[from] ChainError),
    /// The on-chain wallet refused.
    #[error("{0}")]
    Wallet(#[from] WalletError),
    /// A peer could not be reached.
    #[error("{0}")]
    Peer(#[from] PeerError),
    /// The request names something invalid.
    #[error("{0}")]
    InvalidRequest(String),
    /// A snapshot backup could not be written (its directory, the disk).
    #[error("backup: {0}")]
    Backup(String),
    /// A BOLT11 invoice that cannot be paid.
    #[error("invalid invoice: {0}")]
    InvalidInvoice(String),
    /// A BOLT12 offer that cannot be paid.
    #[error("invalid offer: {0}")]
    InvalidOffer(String),
    /// LDK could not make the offer (no peer with a channel to reach the node through, or
    /// the node stopped).
    #[error("cannot create the offer: {0}")]
    Offer(String),
    /// The peer is not connected.
    #[error("peer {0} is not connected")]
    PeerNotConnected(PublicKey),
    /// No such channel.
    #[error("no channel {0}")]
    UnknownChannel(String),
    /// No such payment.
    #[error("no payment {0}")]
    UnknownPayment(String),
    /// The payment could not be started, or failed.
    #[error("payment failed: {0}")]
    PaymentFailed(String),
    /// Not enough funds.
    #[error("insufficient funds: {0}")]
    InsufficientFunds(String),
    /// LDK refused or failed the operation `op`; its own error, kept typed so that a
    /// refusal (the caller's to fix) is told apart from a failure.
    #[error("{op}: {err:?}")]
    Lightning {
        /// What was asked of LDK.
        op: &'static str,
        /// LDK's answer (its `Debug` is its message: `APIError` has no `Display`).
        err: lightning::util::errors::APIError,
    },
    /// LDK could not make or sign the invoice.
    #[error("cannot create the invoice: {0}")]
    Invoice(lightning_invoice::SignOrCreationError<()>),
    /// The node stopped (fenced, lost its lease, or a write failed) and does nothing more.
    #[error("the node has stopped: {0}")]
    Stopped(String),
    /// An on-chain send was handed to the chain source, whose answer was lost: the
    /// transaction is kept (its coins stay spent) and rebroadcast until it confirms.
    #[error(
        "transaction {txid} was sent but the chain source's answer was lost ({reason}): it is kept and rebroadcast, and may confirm; look it up before sending again"
    )]
    SendOutcomeUnknown {
        /// The transaction.
        txid: Txid,
        /// What happened.
        reason: String,
    },
}

/// Why [`NodeBuilder::build`] could not build the node. Every variant is final for
/// this attempt: the instance exits and is restarted (as a standby, if one leads now).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The seed could not be loaded or created.
    #[error("seed: {0}")]
    Seed(#[from] phalanx_secrets::SecretsError),
    /// The store is not this node's: no identity record (never initialized), or another
    /// node's or network's. The operator must act; restarting cannot help.
    #[error("{0}")]
    Identity(#[from] IdentityError),
    /// The state store failed or refused (see [`StoreError::kind`]).
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// Reading the node's state failed.
    #[error("state store: {0}")]
    Persist(#[source] io::Error),
    /// The store's own runtime failed (see [`StoreRuntime::run`]).
    #[error("state store: {0}")]
    Runtime(#[source] std::io::Error),
    /// The stored state cannot be decoded.
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    /// The chain source failed.
    #[error("chain source: {0}")]
    Chain(#[from] ChainError),
    /// The sync to the chain tip failed.
    #[error("chain sync: {0}")]
    Sync(String),
    /// The on-chain wallet could not be loaded.
    #[error("{0}")]
    Wallet(#[from] WalletError),
    /// The front link's certificates cannot be used.
    #[error("the front link: {0}")]
    Link(String),
    /// A peer address could not be bound.
    #[error("cannot listen for peers on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

pub(super) fn persist_error(err: io::Error) -> NodeError {
    NodeError::Persist(err)
}
