//! The conformance suite on postgres.

phalanx_conformance::conformance_tests!(phalanx_conformance::factory::Postgres);

use std::time::Duration;

use phalanx_cluster::LeaseTimings;
use phalanx_conformance::restart::write_loop_across_restart;
use phalanx_testkit::postgres::PostgresServer;

/// PostgreSQL stopped and started under a write loop: only transient errors, no
/// acknowledged write lost, and the leadership ends cleanly (its session died, so a
/// standby could have taken over at once) or continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_a_write_loop() {
    phalanx_conformance::factory::init();
    let server = std::sync::Arc::new(PostgresServer::start().unwrap());
    let url = server.fresh_database().unwrap();
    let restarted = server.clone();
    let report = write_loop_across_restart(
        &url,
        LeaseTimings::default(),
        Duration::from_secs(10),
        move || {
            restarted.stop().unwrap();
            std::thread::sleep(Duration::from_millis(500));
            restarted.start_again().unwrap();
        },
    )
    .await;
    eprintln!("{report:?}");
    assert!(report.other_errors.is_empty(), "{:?}", report.other_errors);
    if report.kept_leadership {
        assert!(
            report.acked_after_restart > 0,
            "kept the leadership but wrote nothing: {report:?}"
        );
    }
    // The lease session died with the server, so the leadership cannot have survived.
    assert!(!report.kept_leadership, "{report:?}");
}
