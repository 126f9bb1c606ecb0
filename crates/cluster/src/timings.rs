//! Lease timing settings.

use std::time::Duration;

use phalanx_store::StoreError;

/// Default lease TTL, in milliseconds.
pub const DEFAULT_TTL_MS: u64 = 4_000;
/// Default time between renewals, in milliseconds.
pub const DEFAULT_RENEW_INTERVAL_MS: u64 = 500;
/// Default safety margin before the TTL at which a holder stops, in milliseconds.
pub const DEFAULT_SAFETY_MARGIN_MS: u64 = 1_000;
/// Default wait between campaign attempts when the store does not signal a change, and
/// between retries of a failed renewal, in milliseconds.
pub const DEFAULT_RETRY_INTERVAL_MS: u64 = 250;

/// How a lease is held. With the defaults a holder renews every 0.5 s and stops on its own
/// 3 s after its last successful renewal was sent if the store stops answering; a
/// crashed holder's lease is free after 4 s at most (at once on PostgreSQL and SQLite).
///
/// | field | default | meaning |
/// |---|---|---|
/// | `ttl` | [`DEFAULT_TTL_MS`] | lease lifetime the store enforces after each renewal |
/// | `renew_interval` | [`DEFAULT_RENEW_INTERVAL_MS`] | time between renewals |
/// | `safety_margin` | [`DEFAULT_SAFETY_MARGIN_MS`] | how long before the TTL the holder stops |
/// | `retry_interval` | [`DEFAULT_RETRY_INTERVAL_MS`] | retry pace of campaigns and failed renewals |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// Lease lifetime the store enforces after each renewal.
    pub ttl: Duration,
    /// Time between renewals.
    pub renew_interval: Duration,
    /// How long before the TTL the holder stops acting; covers clock-rate differences
    /// between the holder and the store, and scheduling delays.
    pub safety_margin: Duration,
    /// Retry pace of campaign attempts and failed renewals.
    pub retry_interval: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_millis(DEFAULT_TTL_MS),
            renew_interval: Duration::from_millis(DEFAULT_RENEW_INTERVAL_MS),
            safety_margin: Duration::from_millis(DEFAULT_SAFETY_MARGIN_MS),
            retry_interval: Duration::from_millis(DEFAULT_RETRY_INTERVAL_MS),
        }
    }
}

impl LeaseTimings {
    /// Checks the settings fit together: a holder must get at least two renewals in
    /// before it would stop, and the margin must be a real fraction of the TTL.
    pub fn validate(&self) -> Result<(), StoreError> {
        let err = |message: String| Err(StoreError::Config(message));
        if self.ttl < Duration::from_millis(100) || self.ttl > Duration::from_secs(3600) {
            return err(format!(
                "lease ttl must be 100 ms to 1 h, not {:?}",
                self.ttl
            ));
        }
        if self.safety_margin.is_zero() || self.safety_margin >= self.ttl {
            return err(format!(
                "lease safety margin ({:?}) must be above zero and below the ttl ({:?})",
                self.safety_margin, self.ttl
            ));
        }
        if self.safety_margin * 10 < self.ttl {
            return err(format!(
                "lease safety margin ({:?}) must be at least a tenth of the ttl ({:?}) to cover clock drift",
                self.safety_margin, self.ttl
            ));
        }
        let window = self.ttl - self.safety_margin;
        if self.renew_interval.is_zero() || self.renew_interval * 2 > window {
            return err(format!(
                "lease renew interval ({:?}) must allow two renewals within ttl - margin ({window:?})",
                self.renew_interval
            ));
        }
        if self.retry_interval.is_zero() || self.retry_interval > window {
            return err(format!(
                "lease retry interval ({:?}) must be above zero and within ttl - margin ({window:?})",
                self.retry_interval
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_valid() {
        LeaseTimings::default().validate().unwrap();
    }

    #[test]
    fn inconsistent_settings_are_refused_with_the_reason() {
        let base = LeaseTimings::default();
        for (timings, needle) in [
            (
                LeaseTimings {
                    ttl: ms(50),
                    ..base
                },
                "ttl must be",
            ),
            (
                LeaseTimings {
                    safety_margin: ms(4_000),
                    ..base
                },
                "below the ttl",
            ),
            (
                LeaseTimings {
                    safety_margin: Duration::ZERO,
                    ..base
                },
                "above zero",
            ),
            (
                LeaseTimings {
                    safety_margin: ms(100),
                    ..base
                },
                "a tenth",
            ),
            (
                LeaseTimings {
                    renew_interval: ms(2_000),
                    ..base
                },
                "two renewals",
            ),
            (
                LeaseTimings {
                    renew_interval: Duration::ZERO,
                    ..base
                },
                "two renewals",
            ),
            (
                LeaseTimings {
                    retry_interval: Duration::ZERO,
                    ..base
                },
                "retry interval",
            ),
        ] {
            let err = timings.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{timings:?}: {err}");
        }
    }
}
