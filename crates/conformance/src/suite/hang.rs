//! Bounded time (rule 5 of `StateStore`): no call hangs, whatever the network does.

use std::future::Future;
use std::time::{Duration, Instant};

use phalanx_store::{BatchOp, HolderId, StoreError, StoreOptions};
use phalanx_testkit::proxy::Mode;

use super::{Env, key, ns};
use crate::factory::Severable;
use crate::{store_options, try_win};

/// What the scheduler of a loaded test machine may add to a bounded call.
const SLACK: Duration = Duration::from_millis(1500);

/// Short timeouts, so the bounds below are short too.
fn impatient_options() -> StoreOptions {
    let mut options = store_options("c");
    options.connect_timeout = Duration::from_secs(1);
    options.operation_timeout = Duration::from_secs(1);
    options
}

/// Runs `call`, which must fail within `bound` with an error `expected` accepts.
async fn fails_within<T>(
    what: &str,
    bound: Duration,
    expected: impl Fn(&StoreError) -> bool,
    call: impl Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    // Twice the bound, so a hang is reported as one instead of stalling the suite.
    let outcome = tokio::time::timeout(bound * 2, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung past {:?}", bound * 2));
    let took = started.elapsed();
    match outcome {
        Ok(_) => panic!("{what} succeeded with the link cut"),
        Err(err) => assert!(expected(&err), "{what}: unexpected error {}", err.report()),
    }
    assert!(
        took <= bound,
        "{what} failed after {took:?}, past {bound:?}"
    );
}

/// With the link to the server cut as a partition cuts it (nothing flows, nothing is
/// closed, so only timeouts can tell), every call fails as transient within the
/// operation timeout, or the connect timeout plus the operation timeout for a call that
/// must connect first: reads, lists, mutations, the lease's state and history, a
/// campaign, a renewal (transient, or fenced if the backend knows the lease is gone) and
/// a resignation. Opening a store behind the cut link fails in bounded time (its connect,
/// then its first request), and so does opening one at a port where nothing listens.
///
/// Backends not reached over the network (SQLite) have no link to cut: the test says so
/// and ends. SQLite's own tests stall a transaction instead and check the same bound.
pub async fn no_call_hangs_when_the_link_is_cut(env: &Env<'_>) {
    let options = impatient_options();
    let Some(Severable { place, store, link }) = env.factory.severable(options.clone()).await
    else {
        eprintln!(
            "{}: not reached over the network, no link to cut; skipped",
            env.factory.name()
        );
        return;
    };
    let call_bound = options.connect_timeout + options.operation_timeout + SLACK;
    let open_bound = options.connect_timeout + options.operation_timeout * 2 + SLACK;
    let mut lease = try_win(store.as_ref(), "a", Duration::from_secs(60))
        .await
        .expect("the first campaigner on a fresh store wins");
    let token = lease.token();
    let k = key("hang", "", "k");
    store.write(token, &k, b"v".to_vec()).await.unwrap();
    assert_eq!(store.read(&k).await.unwrap(), b"v");

    link.set_mode(Mode::Blackhole);
    let transient = |err: &StoreError| err.is_transient();
    fails_within("read", call_bound, transient, store.read(&k)).await;
    fails_within("list", call_bound, transient, store.list(&ns("hang", ""))).await;
    fails_within(
        "write",
        call_bound,
        transient,
        store.write(token, &k, b"w".to_vec()),
    )
    .await;
    let batch = vec![
        BatchOp::Put {
            key: key("hang", "", "a"),
            value: vec![1],
        },
        BatchOp::Delete { key: k.clone() },
    ];
    fails_within("apply", call_bound, transient, store.apply(token, batch)).await;
    fails_within(
        "current_lease",
        call_bound,
        transient,
        store.current_lease(),
    )
    .await;
    fails_within(
        "epoch_history",
        call_bound,
        transient,
        store.epoch_history(10),
    )
    .await;
    let campaigner = HolderId::new("b").unwrap();
    fails_within(
        "try_acquire",
        call_bound,
        transient,
        store.try_acquire(&campaigner, Duration::from_secs(60)),
    )
    .await;
    fails_within(
        "renew",
        call_bound,
        |err| err.is_transient() || err.is_fenced(),
        lease.renew(),
    )
    .await;
    fails_within("resign", call_bound, transient, lease.resign()).await;

    fails_within(
        "opening behind the cut link",
        open_bound,
        transient,
        env.factory.reopen(&place, options.clone()),
    )
    .await;
    drop(store);
    link.remove().await;
    fails_within(
        "opening at a closed port",
        open_bound,
        transient,
        env.factory.reopen(&place, options),
    )
    .await;
}
