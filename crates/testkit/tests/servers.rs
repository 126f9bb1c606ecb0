//! The fixtures start real servers that answer, restart, and clean up after themselves.

use std::time::Duration;

use phalanx_testkit::etcd::{EtcdOptions, EtcdServer};
use phalanx_testkit::postgres::{PostgresOptions, PostgresServer};
use phalanx_testkit::tls::TestPki;

#[test]
fn postgres_starts_answers_restarts_and_cleans_up() {
    let server = PostgresServer::start().unwrap();
    let url = server.fresh_database().unwrap();
    assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
    assert_eq!(server.psql("postgres", "SELECT 40 + 2").unwrap(), "42");
    server.stop().unwrap();
    assert!(!server.is_running());
    assert!(server.psql("postgres", "SELECT 1").is_err());
    server.start_again().unwrap();
    assert_eq!(server.psql("postgres", "SELECT 1").unwrap(), "1");
    let socket_dir = server.socket_dir().to_owned();
    drop(server);
    assert!(!socket_dir.exists(), "scratch dir removed on drop");
}

#[test]
fn postgres_with_password_and_tls() {
    let pki = TestPki::generate("client").unwrap();
    let server = PostgresServer::start_with(PostgresOptions {
        password: Some("s3cret".into()),
        tls: Some(pki.server().clone()),
        require_tls: true,
        ..Default::default()
    })
    .unwrap();
    assert!(server.url("db").contains(":s3cret@"));
    assert_eq!(server.psql("postgres", "SHOW ssl").unwrap(), "on");
}

#[test]
fn etcd_starts_restarts_and_runs_as_a_cluster() {
    let server = EtcdServer::start().unwrap();
    assert!(server.url("p").starts_with("etcd://127.0.0.1:"));
    server.kill();
    assert!(!server.member_running(0));
    server.restart().unwrap();
    assert!(server.member_running(0));

    let cluster = EtcdServer::start_with(EtcdOptions {
        members: 3,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(cluster.endpoints().len(), 3);
    assert_eq!(cluster.url("p").matches(',').count(), 2);
    cluster.kill_member(1);
    std::thread::sleep(Duration::from_millis(100));
    assert!(cluster.member_running(0) && !cluster.member_running(1));
    cluster.restart_member(1).unwrap();
}
