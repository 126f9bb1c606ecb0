//! The driver on a real (SQLite) store, with faults injected around it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx_store::testing::{Fault, Faults, FaultyStore};
use phalanx_store::{ClusterName, StateStore, Store, StoreKey, StoreOptions};
use phalanx_store_sqlite::SqliteStore;

use super::*;

fn timings() -> LeaseTimings {
    LeaseTimings {
        ttl: Duration::from_millis(900),
        renew_interval: Duration::from_millis(100),
        safety_margin: Duration::from_millis(300),
        retry_interval: Duration::from_millis(50),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    url: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/node.db", dir.path().display());
        Self { _dir: dir, url }
    }

    async fn instance(&self, name: &str) -> (Arc<FaultyStore>, Arc<Faults>, Campaigner) {
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&self.url, StoreOptions::new(ClusterName::new("c").unwrap()))
                .await
                .unwrap(),
        );
        let faulty = Arc::new(FaultyStore::new(store));
        let faults = faulty.faults();
        let campaigner =
            Campaigner::new(faulty.clone(), HolderId::new(name).unwrap(), timings()).unwrap();
        (faulty, faults, campaigner)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_keep_the_leadership_well_past_the_ttl() {
    let fixture = Fixture::new();
    let (store, _faults, campaigner) = fixture.instance("a").await;
    let leadership = campaigner.campaign().await.unwrap();
    assert_eq!(
        *campaigner.state().borrow(),
        ElectionState::Leading {
            epoch: leadership.epoch()
        }
    );
    let key = StoreKey::new("ns", "", "k").unwrap();
    for i in 0..10u8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let token = leadership.token().expect("still leader 3 s in");
        store.write(token, &key, vec![i]).await.unwrap();
    }
    assert!(leadership.valid_until() > Instant::now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_renewals_self_fence_by_the_deadline_even_if_the_store_answers_writes() {
    let fixture = Fixture::new();
    let (store, faults, campaigner) = fixture.instance("a").await;
    let leadership = campaigner.campaign().await.unwrap();
    let mut status = leadership.status();
    faults.set_renew(Fault::Transient);
    let stopped_renewing = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(5), leadership.lost())
        .await
        .expect("self-fenced");
    let elapsed = stopped_renewing.elapsed();
    assert!(
        matches!(reason, LossReason::DeadlinePassed { .. }),
        "{reason}"
    );
    // ttl - margin = 600 ms after the last good renewal, which was at most 100 ms before;
    // the bound leaves room for a loaded machine, but not for waiting on the store.
    assert!(elapsed <= Duration::from_millis(1_500), "{elapsed:?}");
    assert!(matches!(
        *status.borrow_and_update(),
        LeadershipStatus::Lost(_)
    ));
    // The token is refused locally although SQLite itself would still take the epoch.
    let err = leadership.token().unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(matches!(
        *campaigner.state().borrow(),
        ElectionState::Lost {
            reason: LossReason::DeadlinePassed { .. },
            ..
        }
    ));
    // The driver handed the lock back: a new campaign wins a higher epoch at once.
    faults.set_renew(Fault::None);
    let next = tokio::time::timeout(Duration::from_secs(2), campaigner.campaign())
        .await
        .unwrap()
        .unwrap();
    assert!(next.epoch() > leadership.epoch());
    let _ = store;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_cannot_delay_self_fencing() {
    let fixture = Fixture::new();
    let (_store, faults, campaigner) = fixture.instance("a").await;
    let leadership = campaigner.campaign().await.unwrap();
    faults.set_renew(Fault::Stall);
    let started = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(5), leadership.lost())
        .await
        .expect("self-fenced while the renewal hangs");
    assert!(
        matches!(reason, LossReason::DeadlinePassed { .. }),
        "{reason}"
    );
    assert!(
        started.elapsed() <= Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    faults.set_renew(Fault::None);
}

/// A process paused past its deadline (SIGSTOP, a VM pause) wakes with its renewal
/// driver not yet run. Here the runtime's only thread is blocked instead, so the driver
/// cannot run: the token must be refused on the caller's clock alone.
#[tokio::test(flavor = "current_thread")]
async fn a_paused_holder_is_refused_its_token_before_the_driver_runs() {
    let fixture = Fixture::new();
    let (_store, _faults, campaigner) = fixture.instance("a").await;
    let leadership = campaigner.campaign().await.unwrap();
    assert!(leadership.token().is_ok());
    let fence = leadership.fence();

    std::thread::sleep(timings().ttl);

    assert_eq!(
        *leadership.status().borrow(),
        LeadershipStatus::Leading,
        "the driver ran while the runtime was blocked"
    );
    let refused = fence
        .current_token()
        .expect_err("no token past the deadline");
    assert!(refused.is_fenced(), "{refused}");
    assert!(leadership.token().is_err());
    assert!(
        matches!(
            &*leadership.status().borrow(),
            LeadershipStatus::Lost(LossReason::DeadlinePassed { .. })
        ),
        "the refusal ends the leadership for everyone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_renewal_or_write_ends_the_leadership_at_once() {
    let fixture = Fixture::new();
    let (_store, faults, campaigner) = fixture.instance("a").await;
    let leadership = campaigner.campaign().await.unwrap();
    faults.set_renew(Fault::Fenced);
    let reason = tokio::time::timeout(Duration::from_secs(2), leadership.lost())
        .await
        .unwrap();
    assert!(matches!(reason, LossReason::Fenced(_)), "{reason}");
    faults.set_renew(Fault::None);

    // A writer that was refused reports it through the fence source.
    let leadership = tokio::time::timeout(Duration::from_secs(5), campaigner.campaign())
        .await
        .unwrap()
        .unwrap();
    let fence = leadership.fence();
    let token = fence.current_token().unwrap();
    fence.report_fenced(token, "write refused: epoch is stale");
    assert!(fence.current_token().unwrap_err().is_fenced());
    assert_eq!(
        leadership.lost().await,
        LossReason::Fenced("write refused: epoch is stale".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resigning_hands_over_to_the_other_campaigner_within_a_second() {
    let fixture = Fixture::new();
    let (_a_store, _a_faults, a) = fixture.instance("a").await;
    let (_b_store, _b_faults, b) = fixture.instance("b").await;
    let leadership = a.campaign().await.unwrap();
    let b_campaign = tokio::spawn(async move {
        let won = b.campaign().await.unwrap();
        (Instant::now(), won, b)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resigned_at = Instant::now();
    leadership.resign().await.unwrap();
    let (won_at, won, b) = b_campaign.await.unwrap();
    let epoch = won.epoch();
    assert!(won_at.duration_since(resigned_at) < Duration::from_secs(1));
    assert_eq!(epoch.0, 2);
    assert!(matches!(
        *a.state().borrow(),
        ElectionState::Lost {
            reason: LossReason::Resigned,
            ..
        }
    ));
    assert_eq!(*b.state().borrow(), ElectionState::Leading { epoch });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_leadership_resigns() {
    let fixture = Fixture::new();
    let (_a_store, _a_faults, a) = fixture.instance("a").await;
    let (_b_store, _b_faults, b) = fixture.instance("b").await;
    let leadership = a.campaign().await.unwrap();
    drop(leadership);
    let won = tokio::time::timeout(Duration::from_secs(2), b.campaign())
        .await
        .expect("won after the drop")
        .unwrap();
    assert_eq!(won.epoch().0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_campaign_failures_are_retried_and_permanent_ones_returned() {
    let fixture = Fixture::new();
    let (_store, faults, campaigner) = fixture.instance("a").await;
    faults.set_acquire(Fault::Transient);
    let campaign = tokio::spawn(async move { campaigner.campaign().await.map(|l| l.epoch()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!campaign.is_finished());
    faults.set_acquire(Fault::None);
    let epoch = tokio::time::timeout(Duration::from_secs(2), campaign)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(epoch.0, 1);

    let err = Campaigner::new(
        Arc::new(FaultyStore::new(Arc::new(
            SqliteStore::open(
                &fixture.url,
                StoreOptions::new(ClusterName::new("c").unwrap()),
            )
            .await
            .unwrap(),
        ))),
        HolderId::new("x").unwrap(),
        LeaseTimings {
            safety_margin: Duration::ZERO,
            ..timings()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("safety margin"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resigning_while_the_store_hangs_returns_instead_of_hanging() {
    let fixture = Fixture::new();
    let (_store, faults, campaigner) = fixture.instance("a").await;
    let leadership = campaigner.campaign().await.unwrap();
    faults.set_renew(Fault::Stall);
    // Let a renewal get stuck.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), leadership.resign())
        .await
        .expect("resign returned")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        *campaigner.state().borrow(),
        ElectionState::Lost {
            reason: LossReason::Resigned,
            ..
        }
    ));
    faults.set_renew(Fault::None);
}
