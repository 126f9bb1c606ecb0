//! The self-fencing machine, driven event by event with explicit instants.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// ttl 4 s, renew every 500 ms, margin 1 s, retry after 250 ms: leader for 3 s after
/// each successful renewal was sent.
fn timings() -> LeaseTimings {
    LeaseTimings::default()
}

fn start() -> (LeaseMachine, Instant) {
    let t0 = Instant::now();
    let (machine, commands) = LeaseMachine::new(timings(), Epoch(7), t0, ms(4_000), t0);
    assert!(commands.is_empty(), "{commands:?}");
    (machine, t0)
}

fn stopped(commands: &[Command]) -> Option<&LossReason> {
    commands.iter().find_map(|c| match c {
        Command::StopActing(reason) => Some(reason),
        _ => None,
    })
}

#[test]
fn a_new_lease_is_valid_until_sent_plus_ttl_minus_margin() {
    let (mut machine, t0) = start();
    assert_eq!(machine.epoch(), Epoch(7));
    assert_eq!(machine.valid_until(), t0 + ms(3_000));
    assert_eq!(machine.next_wakeup(), Some(t0 + ms(500)));
    // One nanosecond before the deadline: still leader (nothing renewed, but a renewal
    // was asked for at 500 ms).
    let commands = machine.handle(t0 + ms(500), Event::Tick);
    assert_eq!(commands, [Command::SendRenewal]);
    assert!(
        machine
            .handle(t0 + ms(3_000) - Duration::from_nanos(1), Event::Tick)
            .is_empty()
    );
    assert!(machine.is_leading());
    // Exactly at the deadline: lost.
    let commands = machine.handle(t0 + ms(3_000), Event::Tick);
    assert_eq!(
        commands,
        [
            Command::StopActing(LossReason::DeadlinePassed {
                overdue: Duration::ZERO
            }),
            Command::ReleaseLease
        ]
    );
    assert!(!machine.is_leading());
    assert_eq!(machine.next_wakeup(), None);
}

#[test]
fn renewal_is_requested_on_schedule_and_never_twice_at_once() {
    let (mut machine, t0) = start();
    assert!(machine.handle(t0 + ms(499), Event::Tick).is_empty());
    assert_eq!(
        machine.handle(t0 + ms(500), Event::Tick),
        [Command::SendRenewal]
    );
    // In flight: more ticks ask for nothing, and the only wake-up left is the deadline.
    assert!(machine.handle(t0 + ms(900), Event::Tick).is_empty());
    assert_eq!(machine.next_wakeup(), Some(t0 + ms(3_000)));
    let commands = machine.handle(
        t0 + ms(950),
        Event::RenewalSucceeded {
            sent_at: t0 + ms(500),
            granted_ttl: ms(4_000),
        },
    );
    assert!(commands.is_empty(), "{commands:?}");
    assert_eq!(machine.valid_until(), t0 + ms(3_500));
    assert_eq!(machine.next_wakeup(), Some(t0 + ms(1_000)));
}

#[test]
fn a_slow_success_extends_from_when_it_was_sent_not_from_when_it_arrived() {
    let (mut machine, t0) = start();
    machine.handle(t0 + ms(500), Event::Tick);
    let commands = machine.handle(
        t0 + ms(2_900),
        Event::RenewalSucceeded {
            sent_at: t0 + ms(500),
            granted_ttl: ms(4_000),
        },
    );
    assert_eq!(machine.valid_until(), t0 + ms(3_500));
    // The next renewal was due at 1 s, long past: it is sent at once.
    assert_eq!(commands, [Command::SendRenewal]);
}

#[test]
fn a_success_that_arrives_after_the_deadline_does_not_revive() {
    let (mut machine, t0) = start();
    machine.handle(t0 + ms(500), Event::Tick);
    let commands = machine.handle(
        t0 + ms(3_100),
        Event::RenewalSucceeded {
            sent_at: t0 + ms(2_990),
            granted_ttl: ms(4_000),
        },
    );
    assert_eq!(
        stopped(&commands),
        Some(&LossReason::DeadlinePassed { overdue: ms(100) })
    );
    assert!(!machine.is_leading());
    // Terminal: nothing more ever comes out.
    for event in [
        Event::Tick,
        Event::RenewalFailed,
        Event::SessionLost,
        Event::ResignRequested,
        Event::RenewalSucceeded {
            sent_at: t0 + ms(3_100),
            granted_ttl: ms(4_000),
        },
    ] {
        assert!(machine.handle(t0 + ms(3_200), event).is_empty());
    }
}

#[test]
fn the_deadline_never_moves_backwards() {
    let (mut machine, t0) = start();
    machine.handle(t0 + ms(500), Event::Tick);
    machine.handle(
        t0 + ms(600),
        Event::RenewalSucceeded {
            sent_at: t0 + ms(500),
            granted_ttl: ms(4_000),
        },
    );
    assert_eq!(machine.valid_until(), t0 + ms(3_500));
    machine.handle(t0 + ms(1_000), Event::Tick);
    // An answer claiming an earlier send time, or a shorter grant, cannot shorten it.
    machine.handle(
        t0 + ms(1_100),
        Event::RenewalSucceeded {
            sent_at: t0 + ms(100),
            granted_ttl: ms(1_500),
        },
    );
    assert_eq!(machine.valid_until(), t0 + ms(3_500));
}

#[test]
fn transient_failures_retry_until_the_deadline_then_stop() {
    let (mut machine, t0) = start();
    let mut now = t0 + ms(500);
    assert_eq!(machine.handle(now, Event::Tick), [Command::SendRenewal]);
    let mut renewals = 1;
    loop {
        now += ms(100);
        let commands = machine.handle(now, Event::RenewalFailed);
        if stopped(&commands).is_some() {
            break;
        }
        assert!(commands.is_empty(), "retry waits: {commands:?}");
        let wake = machine.next_wakeup().unwrap();
        assert_eq!(wake, (now + ms(250)).min(t0 + ms(3_000)));
        now = wake;
        let commands = machine.handle(now, Event::Tick);
        if let Some(reason) = stopped(&commands) {
            assert_eq!(
                reason,
                &LossReason::DeadlinePassed {
                    overdue: Duration::ZERO
                }
            );
            break;
        }
        assert_eq!(commands, [Command::SendRenewal]);
        renewals += 1;
    }
    assert!(now >= t0 + ms(3_000) - ms(100));
    assert!(renewals >= 7, "retried {renewals} times");
    assert!(!machine.is_leading());
}

#[test]
fn fenced_renewal_or_write_stops_at_once_without_release() {
    let (mut machine, t0) = start();
    machine.handle(t0 + ms(500), Event::Tick);
    let commands = machine.handle(t0 + ms(510), Event::Fenced("epoch 7 is stale".into()));
    assert_eq!(
        commands,
        [Command::StopActing(LossReason::Fenced(
            "epoch 7 is stale".into()
        ))]
    );
    let (mut machine, t0) = start();
    let commands = machine.handle(t0 + ms(10), Event::Fenced("write refused".into()));
    assert_eq!(
        stopped(&commands),
        Some(&LossReason::Fenced("write refused".into()))
    );
}

#[test]
fn a_lost_session_stops_at_once() {
    let (mut machine, t0) = start();
    let commands = machine.handle(t0 + ms(10), Event::SessionLost);
    assert_eq!(commands, [Command::StopActing(LossReason::SessionLost)]);
    assert_eq!(machine.loss_reason(), Some(&LossReason::SessionLost));
}

#[test]
fn resigning_stops_first_then_releases() {
    let (mut machine, t0) = start();
    let commands = machine.handle(t0 + ms(10), Event::ResignRequested);
    assert_eq!(
        commands,
        [
            Command::StopActing(LossReason::Resigned),
            Command::ReleaseLease
        ]
    );
}

#[test]
fn the_granted_ttl_governs_not_the_requested_one() {
    let t0 = Instant::now();
    // etcd rounds a 4 s request up to 5 s: the holder may use the longer lease.
    let (machine, _) = LeaseMachine::new(timings(), Epoch(1), t0, ms(5_000), t0);
    assert_eq!(machine.valid_until(), t0 + ms(4_000));
    // A shorter grant shortens the leadership.
    let (machine, _) = LeaseMachine::new(timings(), Epoch(1), t0, ms(2_000), t0);
    assert_eq!(machine.valid_until(), t0 + ms(1_000));
}

#[test]
fn a_grant_within_the_margin_is_never_usable() {
    let t0 = Instant::now();
    for granted in [Duration::ZERO, ms(999), ms(1_000)] {
        let (machine, commands) = LeaseMachine::new(timings(), Epoch(1), t0, granted, t0);
        assert_eq!(
            stopped(&commands),
            Some(&LossReason::GrantedTtlTooShort { granted })
        );
        assert!(!machine.is_leading());
    }
    // The same on renewal.
    let (mut machine, t0) = start();
    machine.handle(t0 + ms(500), Event::Tick);
    let commands = machine.handle(
        t0 + ms(600),
        Event::RenewalSucceeded {
            sent_at: t0 + ms(500),
            granted_ttl: ms(800),
        },
    );
    assert!(matches!(
        stopped(&commands),
        Some(LossReason::GrantedTtlTooShort { .. })
    ));
}

#[test]
fn a_lease_won_by_a_request_sent_too_long_ago_is_lost_at_once() {
    let t0 = Instant::now();
    // The winning request took 3.2 s to come back: the store may expire it any moment.
    let (machine, commands) = LeaseMachine::new(timings(), Epoch(1), t0, ms(4_000), t0 + ms(3_200));
    assert_eq!(
        stopped(&commands),
        Some(&LossReason::DeadlinePassed { overdue: ms(200) })
    );
    assert!(!machine.is_leading());
}

#[test]
fn a_send_time_in_the_future_is_clamped_to_now() {
    let t0 = Instant::now();
    let (machine, _) = LeaseMachine::new(timings(), Epoch(1), t0 + ms(10_000), ms(4_000), t0);
    assert_eq!(machine.valid_until(), t0 + ms(3_000));

    let (mut machine, t0) = start();
    machine.handle(t0 + ms(500), Event::Tick);
    machine.handle(
        t0 + ms(600),
        Event::RenewalSucceeded {
            sent_at: t0 + ms(60_000),
            granted_ttl: ms(4_000),
        },
    );
    assert_eq!(machine.valid_until(), t0 + ms(3_600));
}

#[test]
fn an_answer_to_nothing_is_ignored() {
    let (mut machine, t0) = start();
    let commands = machine.handle(
        t0 + ms(100),
        Event::RenewalSucceeded {
            sent_at: t0 + ms(100),
            granted_ttl: ms(4_000),
        },
    );
    assert!(commands.is_empty());
    assert_eq!(machine.valid_until(), t0 + ms(3_000));
}

#[test]
fn an_absurd_grant_falls_back_to_the_requested_ttl() {
    let t0 = Instant::now();
    let (machine, commands) = LeaseMachine::new(timings(), Epoch(1), t0, Duration::MAX, t0);
    assert!(commands.is_empty());
    assert_eq!(machine.valid_until(), t0 + ms(3_000));
}

#[test]
fn a_process_stalled_past_its_deadline_stops_when_it_resumes() {
    // SIGSTOP: the holder's next event comes 10 s later, whatever it is.
    let (mut machine, t0) = start();
    machine.handle(t0 + ms(500), Event::Tick);
    let commands = machine.handle(
        t0 + ms(10_500),
        Event::RenewalSucceeded {
            sent_at: t0 + ms(500),
            granted_ttl: ms(4_000),
        },
    );
    assert_eq!(
        stopped(&commands),
        Some(&LossReason::DeadlinePassed { overdue: ms(7_500) })
    );
}

#[derive(Clone, Debug)]
enum Step {
    Advance(u64),
    Succeed { latency: u64, granted: u64 },
    Fail,
    Fenced,
    SessionLost,
    Resign,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u64..2_000).prop_map(Step::Advance),
        8 => ((0u64..3_000), (500u64..6_000)).prop_map(|(latency, granted)| Step::Succeed { latency, granted }),
        3 => Just(Step::Fail),
        1 => Just(Step::Fenced),
        1 => Just(Step::SessionLost),
        1 => Just(Step::Resign),
    ]
}

proptest! {
    /// Whatever happens: the holder is never leader at or after `sent + granted - margin`
    /// of its latest successful renewal; it stops exactly once; it never asks for a
    /// renewal while one is in flight; and once stopped it says nothing more.
    #[test]
    fn never_leads_past_the_last_good_renewal(steps in proptest::collection::vec(step(), 1..60)) {
        let t = timings();
        let t0 = Instant::now();
        let (mut machine, initial) = LeaseMachine::new(t, Epoch(1), t0, t.ttl, t0);
        prop_assert!(initial.is_empty());
        let mut now = t0;
        let mut latest_good_deadline = t0 + (t.ttl - t.safety_margin);
        let mut in_flight_since: Option<Instant> = None;
        let mut stops = 0;
        let mut stopped_already = false;
        for step in steps {
            let commands = match step {
                Step::Advance(by) => { now += ms(by); machine.handle(now, Event::Tick) }
                Step::Succeed { latency, granted } => match in_flight_since {
                    Some(sent_at) => {
                        now += ms(latency);
                        let commands = machine.handle(now, Event::RenewalSucceeded { sent_at, granted_ttl: ms(granted) });
                        if now < latest_good_deadline && ms(granted) > t.safety_margin {
                            latest_good_deadline = latest_good_deadline.max(sent_at + ms(granted) - t.safety_margin);
                        }
                        commands
                    }
                    None => machine.handle(now, Event::Tick),
                },
                Step::Fail => machine.handle(now, Event::RenewalFailed),
                Step::Fenced => machine.handle(now, Event::Fenced("x".into())),
                Step::SessionLost => machine.handle(now, Event::SessionLost),
                Step::Resign => machine.handle(now, Event::ResignRequested),
            };
            if matches!(step, Step::Succeed { .. } | Step::Fail) && in_flight_since.is_some() {
                in_flight_since = None;
            }
            for command in &commands {
                match command {
                    Command::SendRenewal => {
                        prop_assert!(in_flight_since.is_none(), "renewal requested while one is in flight");
                        in_flight_since = Some(now);
                    }
                    Command::StopActing(_) => stops += 1,
                    Command::ReleaseLease => {}
                }
            }
            if stopped_already {
                prop_assert!(commands.is_empty(), "commands after stopping: {:?}", commands);
            }
            if machine.is_leading() {
                prop_assert!(now < latest_good_deadline, "leading at {:?} past {:?}", now - t0, latest_good_deadline - t0);
                prop_assert!(machine.valid_until() <= latest_good_deadline);
            } else {
                stopped_already = true;
                in_flight_since = None;
            }
        }
        prop_assert!(stops <= 1);
        prop_assert_eq!(stops == 1, !machine.is_leading());
    }
}
