//! SIGSTOP of the active instance past its lease, SIGCONT once a standby leads: the
//! woken instance must exit without acting.

use phalanx_e2e::cluster::Disruption;
use phalanx_e2e::world::Backend;

use super::{LAPSE_ROUNDS, disrupt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn freeze_postgres() {
    disrupt(Backend::Postgres, Disruption::Freeze, LAPSE_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn freeze_etcd() {
    disrupt(Backend::Etcd, Disruption::Freeze, LAPSE_ROUNDS).await;
}
