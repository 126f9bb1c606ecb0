//! SIGTERM of the active instance, round after round: a graceful handover, the lease
//! moving back and forth.

use phalanx_e2e::cluster::Disruption;
use phalanx_e2e::world::Backend;

use super::disrupt;

/// Graceful handovers in one stream.
const HANDOVER_ROUNDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handover_postgres() {
    disrupt(Backend::Postgres, Disruption::Terminate, HANDOVER_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handover_etcd() {
    disrupt(Backend::Etcd, Disruption::Terminate, HANDOVER_ROUNDS).await;
}
