//! The lease: one winner, rising epochs, expiry and renewal, hand-over, takeovers racing
//! writes, separate clusters, and the cluster driver's self-fencing on the backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx_cluster::{Campaigner, ElectionState, LeadershipStatus, LossReason};
use phalanx_store::testing::{Fault, FaultyStore};
use phalanx_store::{Epoch, ErrorKind, FencingToken, HolderId, StateStore};

use super::{Env, holds_until_exit, key, leader, ns};
use crate::{store_options, try_win, win_within};

/// Of several handles campaigning at once, exactly one wins, round after round.
pub async fn exactly_one_of_several_campaigners_wins(env: &Env<'_>) {
    let (place, first) = env.fresh().await;
    let mut stores = vec![first];
    for _ in 1..4 {
        stores.push(env.reopen(&place).await);
    }
    let mut last_epoch = 0;
    for round in 0..10 {
        let attempts = stores.iter().enumerate().map(|(i, store)| {
            let store = store.clone();
            async move { try_win(store.as_ref(), &format!("h{i}"), Duration::from_secs(30)).await }
        });
        let outcomes = futures::future::join_all(attempts).await;
        let winners: Vec<_> = outcomes.into_iter().flatten().collect();
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let epoch = winners[0].token().epoch().0;
        assert!(
            epoch > last_epoch,
            "round {round}: epoch {epoch} after {last_epoch}"
        );
        last_epoch = epoch;
        for winner in winners {
            winner.resign().await.unwrap();
        }
    }
}

/// Every new leadership has a higher epoch, recorded in the history, newest first.
pub async fn epochs_increase_and_are_recorded(env: &Env<'_>) {
    let (_place, store) = env.fresh().await;
    let mut epochs = Vec::new();
    for i in 0..5 {
        let lease = win_within(
            store.as_ref(),
            &format!("h{i}"),
            Duration::from_secs(30),
            Duration::from_secs(5),
        )
        .await;
        let info = store
            .current_lease()
            .await
            .unwrap()
            .expect("someone holds it");
        assert_eq!(info.holder, format!("h{i}"));
        assert_eq!(info.epoch, lease.token().epoch());
        epochs.push(lease.token().epoch());
        lease.resign().await.unwrap();
    }
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    let history = store.epoch_history(3).await.unwrap();
    let recorded: Vec<_> = history
        .iter()
        .map(|r| (r.epoch, r.holder.clone()))
        .collect();
    assert_eq!(
        recorded,
        [
            (epochs[4], "h4".to_owned()),
            (epochs[3], "h3".to_owned()),
            (epochs[2], "h2".to_owned())
        ]
    );
    assert!(
        history
            .iter()
            .all(|r| r.acquired_at_unix_ms > 1_600_000_000_000)
    );
    assert!(
        store.current_lease().await.unwrap().is_none(),
        "resigned: nobody holds it"
    );
}

/// A holder that wins again gets a new epoch; its old token is fenced.
pub async fn a_stale_token_of_the_same_holder_is_fenced(env: &Env<'_>) {
    let (_place, store, old_token, lease) = leader(env).await;
    lease.resign().await.unwrap();
    let again = win_within(
        store.as_ref(),
        "a",
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .await;
    assert!(again.token().epoch() > old_token.epoch());
    let err = store
        .write(old_token, &key("p", "", "k"), vec![1])
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
    store
        .write(again.token(), &key("p", "", "k"), vec![2])
        .await
        .unwrap();
}

/// A holder that stops renewing loses the lease to a campaigner after the TTL (at once
/// when it lets go of SQLite's lock); its renewals and writes are fenced after that.
pub async fn an_unrenewed_lease_passes_to_the_other_campaigner(env: &Env<'_>) {
    let (place, a) = env.fresh().await;
    let b = env.reopen(&place).await;
    let ttl = env.factory.ttl();
    let mut lease = try_win(a.as_ref(), "a", ttl).await.unwrap();
    let token = lease.token();
    assert!(
        try_win(b.as_ref(), "b", ttl).await.is_none(),
        "held: b must not win"
    );
    if holds_until_exit(a.as_ref()) {
        // The lock outlives any TTL while its holder keeps it ...
        tokio::time::sleep(ttl * 2).await;
        assert!(try_win(b.as_ref(), "b", ttl).await.is_none());
        // ... and is free the moment the holder lets go.
        drop(lease);
        let b_lease = win_within(b.as_ref(), "b", ttl, Duration::from_secs(2)).await;
        assert!(b_lease.token().epoch() > token.epoch());
    } else {
        let started = Instant::now();
        let b_lease = win_within(b.as_ref(), "b", ttl, ttl * 5).await;
        assert!(
            started.elapsed() >= ttl / 2,
            "won after {:?}, before the TTL",
            started.elapsed()
        );
        assert!(b_lease.token().epoch() > token.epoch());
        let err = lease.renew().await.unwrap_err();
        assert!(err.is_fenced(), "{err}");
    }
    let err = a
        .write(token, &key("p", "", "k"), vec![1])
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
}

/// A holder that renews keeps the lease for many TTLs.
pub async fn renewals_keep_the_lease(env: &Env<'_>) {
    let (place, a) = env.fresh().await;
    let b = env.reopen(&place).await;
    let ttl = env.factory.ttl();
    let mut lease = try_win(a.as_ref(), "a", ttl).await.unwrap();
    let until = Instant::now() + ttl * 4;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        lease.renew().await.unwrap();
        assert!(try_win(b.as_ref(), "b", ttl).await.is_none());
    }
    a.write(lease.token(), &key("p", "", "k"), vec![1])
        .await
        .unwrap();
}

/// Resigning lets a waiting campaigner win within a second, back and forth.
pub async fn resigning_hands_over_within_a_second(env: &Env<'_>) {
    let (place, first) = env.fresh().await;
    let timings = env.factory.timings();
    let mut holding = Campaigner::new(first, HolderId::new("a").unwrap(), timings).unwrap();
    let mut waiting = Campaigner::new(
        env.reopen(&place).await,
        HolderId::new("b").unwrap(),
        timings,
    )
    .unwrap();
    let mut current = holding.campaign().await.unwrap();
    for round in 0..4 {
        let campaign = tokio::spawn(async move {
            let leadership = waiting.campaign().await.unwrap();
            (Instant::now(), leadership, waiting)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old_epoch = current.epoch();
        let resigned_at = Instant::now();
        current.resign().await.unwrap();
        let (won_at, next, campaigner) = campaign.await.unwrap();
        let handover = won_at - resigned_at;
        assert!(
            handover < Duration::from_secs(1),
            "round {round}: handover took {handover:?}"
        );
        assert!(next.epoch() > old_epoch);
        current = next;
        waiting = std::mem::replace(&mut holding, campaigner);
    }
    assert!(current.token().is_ok());
}

/// Writes racing a takeover either commit before it (and the new leader reads them) or
/// are fenced: none is acknowledged after the new leader read the state. Many rounds.
pub async fn writes_racing_a_takeover_are_fenced(env: &Env<'_>) {
    let (place, a) = env.fresh().await;
    let b = env.reopen(&place).await;
    let ttl = env.factory.ttl();
    let rounds = if ttl >= Duration::from_secs(1) { 8 } else { 25 };
    let k = key("race", "", "counter");
    let mut value: u64 = 0;
    for round in 0..rounds {
        let lease = win_within(a.as_ref(), "a", ttl, ttl * 5).await;
        let token = lease.token();
        // `a` writes as fast as it can until it is fenced.
        let writer = {
            let a = a.clone();
            let k = k.clone();
            let start = value;
            tokio::spawn(async move {
                let mut acked = start;
                let mut next = start + 1;
                loop {
                    match a.write(token, &k, next.to_be_bytes().to_vec()).await {
                        Ok(()) => {
                            acked = next;
                            next += 1;
                        }
                        Err(err) if err.is_fenced() => return acked,
                        Err(err) => {
                            panic!("round {round}: unexpected write error {}", err.report())
                        }
                    }
                }
            })
        };
        // End `a`'s leadership the way each backend loses it to a stalled holder.
        if holds_until_exit(a.as_ref()) {
            tokio::time::sleep(Duration::from_millis(20 + round as u64 * 3)).await;
            drop(lease);
        } else {
            std::mem::forget(lease); // never renewed, never resigned: it must expire
        }
        let b_lease = win_within(b.as_ref(), "b", ttl, ttl * 5).await;
        let seen = u64::from_be_bytes(b.read(&k).await.unwrap().try_into().unwrap());
        let last_acked = writer.await.unwrap();
        assert!(
            last_acked <= seen,
            "round {round}: a's write {last_acked} was acknowledged after b took over and read {seen}"
        );
        assert_eq!(
            u64::from_be_bytes(b.read(&k).await.unwrap().try_into().unwrap()),
            seen,
            "round {round}: a fenced write changed the value after the takeover"
        );
        value = seen;
        b_lease.resign().await.unwrap();
    }
}

/// Two clusters in one store keep separate keys and leases.
pub async fn clusters_on_one_store_are_separate(env: &Env<'_>) {
    let (place, one) = env.factory.fresh(store_options("one")).await;
    let two = env.reopen_as(&place, "two").await;
    let lease_one = try_win(one.as_ref(), "a", Duration::from_secs(30))
        .await
        .unwrap();
    one.write(lease_one.token(), &key("p", "", "k"), b"one".to_vec())
        .await
        .unwrap();
    if holds_until_exit(one.as_ref()) {
        // One SQLite file has one lock: a second cluster cannot lead while the first does.
        assert!(
            try_win(two.as_ref(), "b", Duration::from_secs(30))
                .await
                .is_none()
        );
        drop(lease_one);
    }
    let lease_two = try_win(two.as_ref(), "b", Duration::from_secs(30))
        .await
        .expect("separate lease");
    let history: Vec<_> = two
        .epoch_history(10)
        .await
        .unwrap()
        .into_iter()
        .map(|record| (record.epoch, record.holder))
        .collect();
    assert_eq!(
        history,
        [(lease_two.token().epoch(), "b".to_owned())],
        "epochs are per cluster"
    );
    assert_eq!(
        two.read(&key("p", "", "k")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(two.list(&ns("p", "")).await.unwrap().is_empty());
    two.write(lease_two.token(), &key("p", "", "k"), b"two".to_vec())
        .await
        .unwrap();
    // Tokens of one cluster mean nothing in the other.
    let err = two
        .write(FencingToken::new(Epoch(5)), &key("p", "", "x"), vec![])
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
}

/// The cluster driver on the real backend: renewals keep the leadership for many TTLs;
/// when renewals hang it stops on its own clock by `ttl - margin`; the lease then passes
/// to another instance with a higher epoch.
pub async fn campaigners_and_self_fencing_on_the_backend(env: &Env<'_>) {
    let (place, store) = env.fresh().await;
    let timings = env.factory.timings();
    let faulty = Arc::new(FaultyStore::new(store));
    let faults = faulty.faults();
    let campaigner = Campaigner::new(faulty.clone(), HolderId::new("a").unwrap(), timings).unwrap();
    let leadership = campaigner.campaign().await.unwrap();
    let mut status = leadership.status();
    tokio::time::sleep(timings.ttl * 3).await;
    assert_eq!(
        *status.borrow_and_update(),
        LeadershipStatus::Leading,
        "renewals keep it"
    );
    let token = leadership.token().unwrap();
    faulty
        .write(token, &key("p", "", "k"), vec![1])
        .await
        .unwrap();

    faults.set_renew(Fault::Stall);
    let stalled_at = Instant::now();
    let reason = tokio::time::timeout(timings.ttl * 3, leadership.lost())
        .await
        .expect("stopped on its own clock");
    assert!(
        matches!(reason, LossReason::DeadlinePassed { .. }),
        "{reason}"
    );
    assert!(
        stalled_at.elapsed() <= timings.ttl * 2,
        "stopped after {:?}",
        stalled_at.elapsed()
    );
    assert!(leadership.token().unwrap_err().is_fenced());
    let state = campaigner.state().borrow().clone();
    assert!(
        matches!(
            &state,
            ElectionState::Lost {
                reason: LossReason::DeadlinePassed { .. },
                ..
            }
        ),
        "{state:?}"
    );
    // The stuck renewal returns (a process would exit instead), and the lease passes on.
    faults.set_renew(Fault::None);
    let other = env.reopen(&place).await;
    let lease = win_within(other.as_ref(), "b", timings.ttl, timings.ttl * 6).await;
    assert!(lease.token().epoch() > token.epoch());
    let err = faulty
        .write(token, &key("p", "", "k"), vec![2])
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
}
