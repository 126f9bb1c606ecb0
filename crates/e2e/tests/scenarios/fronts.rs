//! Alice's cluster behind two keyless fronts behind haproxy: a gossip flood at a front,
//! then the active backend and the front holding Bob killed in turn, during a payment
//! stream.

use phalanx_e2e::fronts::{FrontDisruption, fronts_under_disruption};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fronts_survive_a_gossip_flood_their_own_and_the_active_backends_death() {
    phalanx_testkit::init_tracing();
    // Each kill twice; the flood first, so that its peer (gossip only) lives through
    // the backends' deaths after it.
    let rounds = [
        FrontDisruption::GossipFlood,
        FrontDisruption::KillActiveBackend,
        FrontDisruption::KillFront,
        FrontDisruption::KillActiveBackend,
        FrontDisruption::KillFront,
    ];
    fronts_under_disruption(phalanx_e2e::node_binary!(), &rounds, rounds.len()).await;
}
