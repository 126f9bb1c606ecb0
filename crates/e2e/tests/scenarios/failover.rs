//! `kill -9` of the active instance, round after round: a standby takes over each time.

use phalanx_e2e::cluster::Disruption;
use phalanx_e2e::world::Backend;

use super::disrupt;

/// Failovers in one stream (at least 20 per backend).
const FAILOVER_ROUNDS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_postgres() {
    disrupt(Backend::Postgres, Disruption::Kill, FAILOVER_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_etcd() {
    disrupt(Backend::Etcd, Disruption::Kill, FAILOVER_ROUNDS).await;
}
