//! Phalanx's front servers: they hold the peers' connections (BOLT 8 transport, `init`,
//! pings, gossip) and forward channel and onion messages to the active backend over the
//! link (`phalanx-link`); they hold no node key. Work in progress (issue 15): so far the
//! keyless signer LDK's `PeerManager` runs the handshake with.

#![warn(missing_docs)]

pub mod signer;
pub mod testing;

pub use crate::signer::{EcdhSource, EcdhUnavailable, KeylessSigner};
