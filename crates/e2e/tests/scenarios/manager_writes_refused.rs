//! The database refuses the active instance's ChannelManager writes (a permanent error,
//! as a full disk gives): it must stop on its own with a healthy lease, and a standby
//! takes over.

use phalanx_e2e::cluster::Disruption;
use phalanx_e2e::world::Backend;

use super::{LAPSE_ROUNDS, disrupt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manager_writes_refused_postgres() {
    disrupt(
        Backend::Postgres,
        Disruption::RefuseManagerWrites,
        LAPSE_ROUNDS,
    )
    .await;
}
