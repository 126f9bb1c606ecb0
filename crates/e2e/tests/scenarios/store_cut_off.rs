//! The active instance's store connection black-holed (its peers still reachable): it
//! must stop acting before a standby can win the next epoch.

use phalanx_e2e::cluster::Disruption;
use phalanx_e2e::world::Backend;

use super::{LAPSE_ROUNDS, disrupt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_cut_off_postgres() {
    disrupt(Backend::Postgres, Disruption::CutOffStore, LAPSE_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_cut_off_etcd() {
    disrupt(Backend::Etcd, Disruption::CutOffStore, LAPSE_ROUNDS).await;
}
