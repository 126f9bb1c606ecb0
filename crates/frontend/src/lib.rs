//! Phalanx's front servers: they hold the peers' connections (BOLT 8 transport, `init`,
//! pings, gossip) and forward channel and onion messages to the active backend over the
//! link (`phalanx-link`). Gossip stays at the edge: each front keeps its own graph and
//! hands the backend only what is new and verified. A front holds no node key unless
//! configured to.

#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod front;
pub mod gossip;
pub mod onion;
pub mod signer;
pub mod state;
pub mod testing;

pub use crate::front::{Front, FrontConfig, FrontError};
pub use crate::signer::{EcdhSource, EcdhUnavailable, KeylessSigner, NodeKey};
pub use crate::state::FrontState;
