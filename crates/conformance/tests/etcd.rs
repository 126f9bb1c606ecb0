//! The conformance suite on etcd.

phalanx_conformance::conformance_tests!(phalanx_conformance::factory::Etcd);

use std::time::Duration;

use phalanx_cluster::LeaseTimings;
use phalanx_conformance::restart::write_loop_across_restart;
use phalanx_testkit::etcd::EtcdServer;

/// etcd killed with SIGKILL and restarted on the same data dir under a write loop: only
/// transient errors, no acknowledged write lost, and the leadership either continues
/// (the restart was shorter than the lease) or ends cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_killed_and_restarted_under_a_write_loop() {
    phalanx_conformance::factory::init();
    let server = std::sync::Arc::new(EtcdServer::start().unwrap());
    let url = server.url("restart");
    let restarted = server.clone();
    let report = write_loop_across_restart(
        &url,
        LeaseTimings::default(),
        Duration::from_secs(10),
        move || {
            restarted.kill();
            std::thread::sleep(Duration::from_millis(300));
            restarted.restart().unwrap();
        },
    )
    .await;
    eprintln!("{report:?}");
    assert!(report.other_errors.is_empty(), "{:?}", report.other_errors);
    assert!(
        report.transient_errors > 0 || report.acked_after_restart > 0,
        "{report:?}"
    );
    if report.kept_leadership {
        assert!(
            report.acked_after_restart >= 20,
            "kept the leadership but stopped writing: {report:?}"
        );
    }
}
