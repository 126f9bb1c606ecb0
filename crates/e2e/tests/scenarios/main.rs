//! The end-to-end scenarios, one file per disruption; each test runs one of
//! `phalanx_e2e::scenario`'s drivers on one backend with real node processes and real
//! store servers. They run one at a time (`.config/nextest.toml`'s `node-processes`
//! group): each loads both cores.

mod etcd_quorum;
mod failover;
mod freeze;
mod fronts;
mod handover;
mod manager_writes_refused;
mod restart;
mod secrets;
mod store_cut_off;
mod store_restart;

use phalanx_e2e::cluster::Disruption;
use phalanx_e2e::world::Backend;

/// Rounds of the scenarios whose rounds wait for a lease to lapse (a few seconds each).
const LAPSE_ROUNDS: usize = 3;

/// Runs `disruption` `rounds` times against a cluster on `backend`.
async fn disrupt(backend: Backend, disruption: Disruption, rounds: usize) {
    phalanx_testkit::init_tracing();
    phalanx_e2e::scenario::disrupt_repeatedly(
        phalanx_e2e::node_binary!(),
        backend,
        disruption,
        rounds,
    )
    .await;
}
