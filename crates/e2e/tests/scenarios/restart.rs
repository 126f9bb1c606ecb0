//! `kill -9` of a node's only instance in the middle of a payment stream; it is started
//! again on the same store, on each backend.

use phalanx_e2e::scenario::kill_during_a_payment_stream;
use phalanx_e2e::world::Backend;

async fn kill_and_restart(backend: Backend) {
    phalanx_testkit::init_tracing();
    kill_during_a_payment_stream(phalanx_e2e::node_binary!(), backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite() {
    kill_and_restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres() {
    kill_and_restart(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd() {
    kill_and_restart(Backend::Etcd).await;
}
