//! Leader election for Phalanx: who of a cluster's instances may act, and when it must
//! stop.
//!
//! - [`LeaseTimings`]: TTL, renewal interval and safety margin, validated together.
//! - [`machine::LeaseMachine`]: the pure self-fencing logic. Events in (ticks, renewal
//!   outcomes, a lost session, a resign request), commands out (renew, resign, stop).
//!   No clock, no I/O: every instant is an input, so it is tested exhaustively.
//! - [`Campaigner`] and [`Leadership`]: the I/O driver around it, on any
//!   [`LeaseStore`](phalanx_store::LeaseStore). A [`Leadership`] is the
//!   [`FenceSource`](phalanx_store::FenceSource) writers take their token from; it refuses
//!   the moment the local deadline passes, whether or not its driver task ran.
//!
//! # Self-fencing rule
//! A holder is leader until `sent + granted_ttl - safety_margin`, where `sent` is when it
//! sent the last renewal (or the winning request) that succeeded, measured on its own
//! monotonic clock. The store counts the TTL from when it *received* that request, later
//! than `sent`, so the holder always stops first, by at least the margin, whatever the
//! store or the network does.

#![warn(missing_docs)]

mod campaign;
pub mod machine;
mod timings;

pub use campaign::{Campaigner, ElectionState, Leadership, LeadershipStatus, RenewalObserver};
pub use machine::LossReason;
pub use timings::{
    DEFAULT_RENEW_INTERVAL_MS, DEFAULT_RETRY_INTERVAL_MS, DEFAULT_SAFETY_MARGIN_MS, DEFAULT_TTL_MS,
    LeaseTimings,
};
