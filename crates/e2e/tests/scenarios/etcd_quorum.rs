//! One etcd member of three lost (the node keeps serving), then two: the active instance
//! stops, and nothing is lost when quorum returns.

use phalanx_e2e::cluster::Disruption;
use phalanx_e2e::world::Backend;

use super::disrupt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_member_then_quorum_loss() {
    disrupt(Backend::Etcd, Disruption::EtcdQuorum, 1).await;
}
