//! Phalanx's front servers: they hold the peers' connections (BOLT 8 transport, `init`,
//! pings, gossip) and forward channel and onion messages to the active backend over the
//! link (`phalanx-link`); they hold no node key. Work in progress (issue 15): channel
//! messages are forwarded; gossip and onion messages are not yet.

#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod front;
pub mod gossip;
pub mod signer;
pub mod state;
pub mod testing;

pub use crate::front::{Front, FrontConfig, FrontError};
pub use crate::signer::{EcdhSource, EcdhUnavailable, KeylessSigner, NodeKey};
pub use crate::state::FrontState;
