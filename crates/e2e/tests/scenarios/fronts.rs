//! Alice's cluster behind two keyless fronts behind haproxy: the front holding Bob, then
//! the active backend, killed in turn during a payment stream.

use phalanx_e2e::fronts::{FrontDisruption, fronts_under_disruption};

/// Rounds: each disruption twice.
const ROUNDS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fronts_survive_their_own_and_the_active_backends_death() {
    phalanx_testkit::init_tracing();
    fronts_under_disruption(
        phalanx_e2e::node_binary!(),
        &[
            FrontDisruption::KillFront,
            FrontDisruption::KillActiveBackend,
        ],
        ROUNDS,
    )
    .await;
}
