//! The self-fencing state machine of a lease holder: events in, commands out.
//!
//! It owns no clock: every event comes with the current instant, and every renewal
//! outcome with the instant its request was sent. The driver ([`crate::Leadership`])
//! feeds it and carries out its commands; tests feed it directly.

use std::time::{Duration, Instant};

use phalanx_store::Epoch;

use crate::LeaseTimings;

/// Why a holder stopped being leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// No renewal succeeded in time: `sent + ttl - margin` of the last good one passed.
    DeadlinePassed {
        /// How late the check ran after the deadline (a stalled process shows here).
        overdue: Duration,
    },
    /// The store refused the epoch (a renewal or a write was fenced).
    Fenced(String),
    /// The session the lease is bound to ended; a standby may already have taken over.
    SessionLost,
    /// The holder resigned.
    Resigned,
    /// The store granted a TTL no longer than the safety margin, so the lease could never
    /// be safely used.
    GrantedTtlTooShort {
        /// The TTL the store granted.
        granted: Duration,
    },
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::DeadlinePassed { overdue } => write!(
                f,
                "no lease renewal succeeded in time (checked {overdue:?} after the deadline)"
            ),
            LossReason::Fenced(reason) => write!(f, "fenced by the store: {reason}"),
            LossReason::SessionLost => f.write_str("the store session holding the lease ended"),
            LossReason::Resigned => f.write_str("resigned"),
            LossReason::GrantedTtlTooShort { granted } => write!(
                f,
                "the store granted a lease of {granted:?}, not longer than the safety margin"
            ),
        }
    }
}

/// Something that happened to the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed (the driver wakes at [`LeaseMachine::next_wakeup`]).
    Tick,
    /// The renewal sent at `sent_at` succeeded; the store granted `granted_ttl`.
    RenewalSucceeded {
        /// When the renewal request was sent.
        sent_at: Instant,
        /// The TTL the store granted.
        granted_ttl: Duration,
    },
    /// The renewal failed without an answer (transient): retry; still leader until the
    /// deadline.
    RenewalFailed,
    /// The store refused the renewal, or a write, as fenced.
    Fenced(String),
    /// The session holding the lease ended.
    SessionLost,
    /// The node asks to hand over.
    ResignRequested,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Send one renewal now (never while one is in flight).
    SendRenewal,
    /// Stop acting as leader at once: emitted exactly once, when leadership ends.
    StopActing(LossReason),
    /// Give the lease back to the store (best effort), after stopping.
    ReleaseLease,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    Leading,
    Lost(LossReason),
}

/// The self-fencing logic of one leadership.
#[derive(Clone, Debug)]
pub struct LeaseMachine {
    timings: LeaseTimings,
    epoch: Epoch,
    status: Status,
    /// Leader strictly before this instant.
    valid_until: Instant,
    next_renewal_at: Instant,
    renewal_in_flight: bool,
}

impl LeaseMachine {
    /// The machine of a lease won by a request sent at `sent_at`, for which the store
    /// granted `granted_ttl`, observed at `now`. The commands say what to do at once
    /// (stop, when the lease is already unusable).
    pub fn new(
        timings: LeaseTimings,
        epoch: Epoch,
        sent_at: Instant,
        granted_ttl: Duration,
        now: Instant,
    ) -> (Self, Vec<Command>) {
        let sent_at = sent_at.min(now);
        let mut machine = Self {
            timings,
            epoch,
            status: Status::Leading,
            valid_until: sent_at,
            next_renewal_at: sent_at + timings.renew_interval,
            renewal_in_flight: false,
        };
        let mut commands = Vec::new();
        match machine.deadline_after(sent_at, granted_ttl) {
            Some(deadline) => machine.valid_until = deadline,
            None => {
                machine.lose(
                    LossReason::GrantedTtlTooShort {
                        granted: granted_ttl,
                    },
                    &mut commands,
                );
                return (machine, commands);
            }
        }
        machine.check_deadline(now, &mut commands);
        (machine, commands)
    }

    /// The timings the machine runs with.
    pub fn timings(&self) -> LeaseTimings {
        self.timings
    }

    /// The epoch of this leadership.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The holder may act strictly before this instant (unless it lost otherwise).
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// True while the holder may act (the deadline is checked by the caller's clock).
    pub fn is_leading(&self) -> bool {
        self.status == Status::Leading
    }

    /// Why leadership ended, once it has.
    pub fn loss_reason(&self) -> Option<&LossReason> {
        match &self.status {
            Status::Leading => None,
            Status::Lost(reason) => Some(reason),
        }
    }

    /// When the driver must call [`handle`](Self::handle) with [`Event::Tick`] next, even
    /// if nothing else happens; `None` once leadership ended.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if !self.is_leading() {
            return None;
        }
        if self.renewal_in_flight {
            Some(self.valid_until)
        } else {
            Some(self.valid_until.min(self.next_renewal_at))
        }
    }

    /// Feeds one event observed at `now`; returns the commands to carry out, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Command> {
        let mut commands = Vec::new();
        if !self.is_leading() {
            return commands;
        }
        // The deadline is checked before anything else: a renewal that succeeded after
        // the deadline cannot revive a leadership the holder may already have lost.
        if self.check_deadline(now, &mut commands) {
            return commands;
        }
        match event {
            Event::Tick => {}
            Event::RenewalSucceeded {
                sent_at,
                granted_ttl,
            } => {
                if !self.renewal_in_flight {
                    // Not an answer to anything we sent: ignore it.
                    return commands;
                }
                self.renewal_in_flight = false;
                let sent_at = sent_at.min(now);
                match self.deadline_after(sent_at, granted_ttl) {
                    // Never move the deadline back: an earlier success still stands.
                    Some(deadline) => self.valid_until = self.valid_until.max(deadline),
                    None => {
                        self.lose(
                            LossReason::GrantedTtlTooShort {
                                granted: granted_ttl,
                            },
                            &mut commands,
                        );
                        commands.push(Command::ReleaseLease);
                        return commands;
                    }
                }
                self.next_renewal_at = sent_at + self.timings.renew_interval;
            }
            Event::RenewalFailed => {
                self.renewal_in_flight = false;
                self.next_renewal_at = now + self.timings.retry_interval;
            }
            Event::Fenced(reason) => {
                self.lose(LossReason::Fenced(reason), &mut commands);
                return commands;
            }
            Event::SessionLost => {
                self.lose(LossReason::SessionLost, &mut commands);
                return commands;
            }
            Event::ResignRequested => {
                self.lose(LossReason::Resigned, &mut commands);
                commands.push(Command::ReleaseLease);
                return commands;
            }
        }
        if !self.renewal_in_flight && now >= self.next_renewal_at {
            self.renewal_in_flight = true;
            commands.push(Command::SendRenewal);
        }
        commands
    }

    /// `sent_at + granted_ttl - margin`, or `None` when that leaves no time at all.
    fn deadline_after(&self, sent_at: Instant, granted_ttl: Duration) -> Option<Instant> {
        let usable = granted_ttl.checked_sub(self.timings.safety_margin)?;
        if usable.is_zero() {
            return None;
        }
        // An absurd TTL that overflows the clock falls back to the requested one, which
        // is never longer than what a sane store grants.
        Some(
            sent_at
                .checked_add(usable)
                .unwrap_or_else(|| sent_at + (self.timings.ttl - self.timings.safety_margin)),
        )
    }

    /// Loses leadership when `now` is at or past the deadline; true if it did.
    fn check_deadline(&mut self, now: Instant, commands: &mut Vec<Command>) -> bool {
        if now < self.valid_until {
            return false;
        }
        let overdue = now.saturating_duration_since(self.valid_until);
        self.lose(LossReason::DeadlinePassed { overdue }, commands);
        // We stopped; handing the lease back lets a standby start without waiting for
        // the store to expire it. Safe: nothing acts on this leadership any more.
        commands.push(Command::ReleaseLease);
        true
    }

    fn lose(&mut self, reason: LossReason, commands: &mut Vec<Command>) {
        self.renewal_in_flight = false;
        self.status = Status::Lost(reason.clone());
        commands.push(Command::StopActing(reason));
    }
}

#[cfg(test)]
mod tests;
