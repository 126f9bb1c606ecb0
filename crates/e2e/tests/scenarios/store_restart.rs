//! The store server restarted under load: the active instance rides it out or stops on
//! its own, and payments flow again either way.

use phalanx_e2e::cluster::Disruption;
use phalanx_e2e::world::Backend;

use super::{LAPSE_ROUNDS, disrupt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_restart_postgres() {
    disrupt(Backend::Postgres, Disruption::RestartStore, LAPSE_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_restart_etcd() {
    disrupt(Backend::Etcd, Disruption::RestartStore, LAPSE_ROUNDS).await;
}
