//! Epochs and fencing tokens.

use std::fmt;

use crate::StoreError;

/// The number of a leadership of one cluster. Every new leadership gets a strictly higher
/// epoch than every earlier one, on every backend, across restarts of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Proof of leadership that every mutation carries. The store accepts a mutation only if
/// the token's epoch is the cluster's current one and its lease has not expired, checked
/// atomically in the transaction that applies the mutation.
///
/// A token is only obtained from a [`HeldLease`](crate::HeldLease); code that writes on a
/// node's behalf gets it from a [`FenceSource`] just before each write, so that a holder
/// whose lease lapsed locally stops writing even before the store could tell it.
///
/// # Write order
/// A token may also carry a write sequence ([`FencingToken::sequenced`]): the writer's
/// count of its calls, in call order. The store keeps, with each key, the epoch and
/// sequence of the mutation that last changed it, and a sequenced mutation changes a key
/// only if it is newer: a later epoch, or the same epoch and a higher sequence. So a
/// write whose outcome its writer never saw (it timed out, the writer retried and wrote
/// again since) cannot land later over the newer value: it finds a newer version and
/// changes nothing. A token without a sequence (sequence 0) always changes the keys of
/// its own epoch; it is for writers that never have two mutations of a key in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FencingToken {
    epoch: Epoch,
    sequence: u64,
}

impl FencingToken {
    /// A token for `epoch`, without a write sequence. Backends create these when a lease
    /// is won; tests may too.
    pub fn new(epoch: Epoch) -> Self {
        Self { epoch, sequence: 0 }
    }

    /// The same token carrying write sequence `sequence` (see "Write order"): a writer
    /// numbers its mutations 1, 2, 3 ... in the order of its calls. Backends store it as
    /// a signed 64-bit integer and refuse a sequence past `i64::MAX` with
    /// [`StoreError::Config`] (see [`crate::backend::write_sequence`]).
    pub fn sequenced(self, sequence: u64) -> Self {
        Self { sequence, ..self }
    }

    /// The epoch the token proves.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The write sequence, 0 for none.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Whether a mutation with this token may change a key last changed at
    /// (`stored_epoch`, `stored_sequence`): the rule every backend applies inside the
    /// write's transaction (PostgreSQL and SQLite in SQL; this is its reference form).
    pub fn supersedes(&self, stored_epoch: Epoch, stored_sequence: u64) -> bool {
        stored_epoch < self.epoch
            || (stored_epoch == self.epoch
                && (self.sequence == 0 || stored_sequence < self.sequence))
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.epoch)
    }
}

/// Where a writer gets its fencing token from, just before each write.
///
/// # Contract
/// - [`current_token`](FenceSource::current_token) returns an error of kind
///   [`Fenced`](crate::ErrorKind::Fenced) as soon as the leadership it stands for may have
///   ended (its local deadline passed, it was resigned, or the store refused it), and never
///   returns a token again after that.
/// - [`report_fenced`](FenceSource::report_fenced) is called by writers when the store
///   refused a token; the source must treat the leadership as lost from then on.
pub trait FenceSource: Send + Sync {
    /// The token to write with now, or a fenced error.
    fn current_token(&self) -> Result<FencingToken, StoreError>;

    /// Tells the source that the store refused `token` as fenced.
    fn report_fenced(&self, token: FencingToken, reason: &str);
}

/// A fixed token: for single-process tools and tests that hold a lease themselves.
impl FenceSource for FencingToken {
    fn current_token(&self) -> Result<FencingToken, StoreError> {
        Ok(*self)
    }

    fn report_fenced(&self, _token: FencingToken, _reason: &str) {}
}
