//! Crashes of a lease holder in its own process (`phalanx-store-holder`): paused past its
//! TTL with SIGSTOP, killed with SIGKILL in the middle of its writes. The child opens the
//! store by its URL ([`Place::url`](crate::factory::Place::url)).

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use phalanx_store::Store;

use super::{Env, holds_until_exit, key, ns};
use crate::holder::{EXIT_FENCED, HolderProcess, WriteMode};
use crate::{try_win, win_within};

/// A holder process paused with SIGSTOP past its TTL writes nothing once it resumes: it
/// finds its deadline passed and exits as fenced. Where the lease expires, another
/// instance takes over meanwhile; with SQLite's lock, nobody can until it exits.
///
/// A write the holder sent before the pause may still complete (and be acknowledged
/// after it resumes); it reached the store before the takeover, so the new leader reads
/// it. The checks: every acknowledged value is at most what the new leader read after
/// taking over, and the value never changes after that.
pub async fn a_holder_paused_past_its_ttl_is_fenced_when_it_resumes(env: &Env<'_>) {
    // The holder runs in a child process, which opens the store by its URL.
    let (place, other) = env.fresh().await;
    let timings = env.factory.timings();
    let mut holder = HolderProcess::spawn(
        env.holder_binary,
        place.url(),
        "paused",
        timings,
        WriteMode::Seq,
    );
    let epoch = holder.wait_leader(Duration::from_secs(20));
    holder.wait_acked(20, Duration::from_secs(20));
    holder.signal(Signal::SIGSTOP);
    let seq = key("holder", "", "seq");
    let read_seq = |store: Arc<dyn Store>| {
        let seq = seq.clone();
        async move { u64::from_be_bytes(store.read(&seq).await.unwrap().try_into().unwrap()) }
    };

    let takeover = if holds_until_exit(other.as_ref()) {
        tokio::time::sleep(timings.ttl * 2).await;
        assert!(
            try_win(other.as_ref(), "other", timings.ttl)
                .await
                .is_none(),
            "the paused process keeps SQLite's lock"
        );
        None
    } else {
        let lease = win_within(other.as_ref(), "other", timings.ttl, timings.ttl * 5).await;
        assert!(lease.token().epoch().0 > epoch);
        let seen = read_seq(other.clone()).await;
        other
            .write(
                lease.token(),
                &key("holder", "", "marker"),
                b"new leader".to_vec(),
            )
            .await
            .unwrap();
        Some((lease, seen))
    };

    holder.signal(Signal::SIGCONT);
    let status = holder.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(EXIT_FENCED),
        "output: {:?}",
        holder.lines()
    );
    assert!(holder.lines().iter().any(|line| line.starts_with("FENCED")));
    let last_acked = holder.acked().into_iter().max().unwrap();

    match takeover {
        Some((lease, seen)) => {
            assert!(
                last_acked <= seen,
                "write {last_acked} was acknowledged, but the new leader read {seen}"
            );
            assert_eq!(
                read_seq(other.clone()).await,
                seen,
                "the old holder wrote after the takeover"
            );
            assert_eq!(
                other.read(&key("holder", "", "marker")).await.unwrap(),
                b"new leader"
            );
            drop(lease);
        }
        None => {
            // It exited, so its lock is gone: the other instance wins and finds exactly
            // what was acknowledged (nothing was written after the resume).
            let lease =
                win_within(other.as_ref(), "other", timings.ttl, Duration::from_secs(5)).await;
            assert!(lease.token().epoch().0 > epoch);
            assert_eq!(read_seq(other.clone()).await, last_acked);
        }
    }
}

/// SIGKILL of a holder in the middle of a write loop loses no acknowledged write, and the
/// next leader takes over with a higher epoch. Rounds go on until
/// [`MID_WRITE_KILLS`] holders were killed while writing (a starved machine may make a
/// holder fence itself first, which proves nothing about a kill); fewer than
/// [`REQUIRED_MID_WRITE_KILLS`] in [`MAX_KILL_ROUNDS`] rounds fails the test.
pub async fn kill_9_loses_no_acknowledged_write(env: &Env<'_>) {
    // Each holder runs in a child process, which opens the store by its URL.
    let (place, other) = env.fresh().await;
    let timings = env.factory.timings();
    let mut last_epoch = 0;
    let mut killed_writing = 0;
    let mut rounds = 0;
    while killed_writing < MID_WRITE_KILLS && rounds < MAX_KILL_ROUNDS {
        let round = rounds;
        rounds += 1;
        let mut holder = HolderProcess::spawn(
            env.holder_binary,
            place.url(),
            &format!("victim{round}"),
            timings,
            WriteMode::Keys,
        );
        let epoch = holder.wait_leader(Duration::from_secs(20));
        assert!(epoch > last_epoch);
        last_epoch = epoch;
        let fenced = holder.wait_acked_unless_fenced(
            30 + rand::random::<u32>() as usize % 100,
            Duration::from_secs(30),
        );
        holder.signal(Signal::SIGKILL);
        let status = holder.wait_exit(Duration::from_secs(10));
        let fenced = fenced || holder.lines().iter().any(|line| line.starts_with("FENCED"));
        if !fenced && status.signal() == Some(Signal::SIGKILL as i32) {
            killed_writing += 1;
        } else {
            // What it acknowledged before it stopped must survive all the same.
            eprintln!("round {round}: the holder fenced itself before the kill ({status})");
        }
        let acked = holder.acked();
        let lease = win_within(other.as_ref(), "survivor", timings.ttl, timings.ttl * 6).await;
        assert!(lease.token().epoch().0 > epoch);
        let stored = other.list(&ns("keys", "")).await.unwrap();
        for n in &acked {
            assert!(
                stored.contains(&format!("k{n}")),
                "round {round}: acknowledged write {n} lost"
            );
        }
        lease.resign().await.unwrap();
    }
    assert!(
        killed_writing >= REQUIRED_MID_WRITE_KILLS,
        "only {killed_writing} of {rounds} holders were killed while writing (the others fenced \
         themselves first): too few to show anything about a kill in the middle of a write"
    );
}

/// Holders killed while writing that [`kill_9_loses_no_acknowledged_write`] aims for.
pub const MID_WRITE_KILLS: usize = 3;
/// Holders killed while writing that it requires.
pub const REQUIRED_MID_WRITE_KILLS: usize = 2;
/// Rounds it runs at most.
pub const MAX_KILL_ROUNDS: usize = 10;
