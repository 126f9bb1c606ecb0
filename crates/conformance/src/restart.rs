//! A leader writing in a loop while its store restarts: what every restart test checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phalanx_cluster::{Campaigner, LeadershipStatus, LeaseTimings};
use phalanx_store::{ErrorKind, HolderId, Namespace, StoreKey};

use crate::open;

/// What the writer saw.
#[derive(Debug, Default)]
pub struct WriteLoopReport {
    /// Acknowledged writes, by number (`keys//k<n>`).
    pub acked: Vec<u64>,
    /// How many writes failed as transient.
    pub transient_errors: usize,
    /// Errors of any other kind than transient or fenced (must stay empty).
    pub other_errors: Vec<String>,
    /// Writes acknowledged after the restart finished.
    pub acked_after_restart: usize,
    /// Whether the leadership survived the restart.
    pub kept_leadership: bool,
}

/// Wins the lease on `url`, writes `keys//k1, k2 ...` in a loop, runs `restart` (which
/// blocks while it stops and starts the store) once 20 writes are in, then watches for
/// up to `settle` whether the leadership keeps writing or ends. Afterwards a new leader
/// checks that every acknowledged write is there.
pub async fn write_loop_across_restart(
    url: &str,
    timings: LeaseTimings,
    settle: Duration,
    restart: impl FnOnce() + Send + 'static,
) -> WriteLoopReport {
    let store = open(url, "c").await;
    let campaigner =
        Campaigner::new(store.clone(), HolderId::new("writer").unwrap(), timings).unwrap();
    let leadership = campaigner.campaign().await.unwrap();
    let first_epoch = leadership.epoch();
    let fence = leadership.fence();
    let report = Arc::new(Mutex::new(WriteLoopReport::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (report, stop, store) = (report.clone(), stop.clone(), store.clone());
        tokio::spawn(async move {
            let mut n = 1u64;
            while !stop.load(Ordering::SeqCst) {
                let Ok(token) = fence.current_token() else {
                    return;
                };
                let key = StoreKey::new("keys", "", &format!("k{n}")).unwrap();
                match store.write(token, &key, n.to_be_bytes().to_vec()).await {
                    Ok(()) => {
                        report.lock().unwrap().acked.push(n);
                        n += 1;
                    }
                    Err(err) => match err.kind() {
                        ErrorKind::Transient => {
                            report.lock().unwrap().transient_errors += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        ErrorKind::Fenced => {
                            fence.report_fenced(token, &err.to_string());
                            return;
                        }
                        _ => report.lock().unwrap().other_errors.push(err.report()),
                    },
                }
            }
        })
    };
    let count = || report.lock().unwrap().acked.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while count() < 20 {
        assert!(Instant::now() < deadline, "the writer never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::spawn_blocking(restart).await.unwrap();
    let after = count();
    let mut status = leadership.status();
    let deadline = Instant::now() + settle;
    while Instant::now() < deadline
        && count() < after + 20
        && *status.borrow_and_update() == LeadershipStatus::Leading
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    let kept = *leadership.status().borrow() == LeadershipStatus::Leading;
    drop(leadership);

    let mut report = std::mem::take(&mut *report.lock().unwrap());
    report.acked_after_restart = report.acked.len() - after;
    report.kept_leadership = kept;

    // A new leader (the same process campaigning again, as a restarted node would) sees
    // every acknowledged write.
    let verifier = open(url, "c").await;
    let campaigner = Campaigner::new(
        verifier.clone(),
        HolderId::new("verifier").unwrap(),
        timings,
    )
    .unwrap();
    let next = tokio::time::timeout(timings.ttl * 10, campaigner.campaign())
        .await
        .expect("a new leader after the restart")
        .unwrap();
    assert!(next.epoch() > first_epoch);
    let stored = verifier
        .list(&Namespace::new("keys", "").unwrap())
        .await
        .unwrap();
    for n in &report.acked {
        assert!(
            stored.contains(&format!("k{n}")),
            "acknowledged write {n} was lost"
        );
    }
    report
}
