//! An instance started while its store cannot be reached waits for it, as it waits for
//! the lease; it does not exit (a standby restarted by its supervisor during a database
//! restart would otherwise be gone when the database comes back).

use std::sync::Arc;
use std::time::Duration;

use phalanx_node::config::ChainConfig;
use phalanx_node::metrics::Metrics;
use phalanx_testkit::postgres::PostgresServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_waits_for_a_store_that_is_down() {
    phalanx_testkit::init_tracing();
    let server = PostgresServer::start().expect("PostgreSQL starts");
    let url = server.fresh_database().expect("a database");
    let dir = tempfile::tempdir().unwrap();
    let chain = ChainConfig {
        rpc_url: "http://127.0.0.1:1".into(),
        rpc_user: "unused".into(),
        rpc_password: "unused".into(),
        rest_url: None,
        esplora_url: None,
        poll_interval: Duration::from_millis(100),
    };
    let config = phalanx_devnet::harness::node_config(&chain, dir.path(), "alice", Some(url))
        .expect("a configuration");
    // `phalanx init` first: the seed file and the store's identity record.
    phalanx_instance::initialize(&config)
        .await
        .expect("the store is initialized");
    server.stop().expect("PostgreSQL stops");

    let campaign = tokio::spawn(async move {
        phalanx_instance::campaign(&config, &Arc::new(Metrics::new()))
            .await
            .map(|won| won.epoch())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !campaign.is_finished(),
        "the campaign gave up while the store was down: {:?}",
        campaign.await
    );
    tokio::task::block_in_place(|| server.start_again()).expect("PostgreSQL starts again");
    let epoch = tokio::time::timeout(Duration::from_secs(30), campaign)
        .await
        .expect("the campaign wins once the store is back")
        .expect("the campaign task ran")
        .expect("the campaign wins");
    assert!(epoch.0 >= 1, "{epoch:?}");
}
