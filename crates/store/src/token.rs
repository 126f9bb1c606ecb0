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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FencingToken {
    epoch: Epoch,
}

impl FencingToken {
    /// A token for `epoch`. Backends create these when a lease is won; tests may too.
    pub fn new(epoch: Epoch) -> Self {
        Self { epoch }
    }

    /// The epoch the token proves.
    pub fn epoch(&self) -> Epoch {
        self.epoch
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
