//! `phalanx store check` against real stores and bad URLs.

use std::process::Command;
use std::time::{Duration, Instant};

fn phalanx(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(args)
        .env_remove("PHALANX_STORE_URL")
        .output()
        .expect("run phalanx");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn checks_a_sqlite_and_a_postgres_store() {
    let dir = phalanx_testkit::process::scratch_dir("cli").unwrap();
    let url = format!("sqlite://{}/node.db", dir.display());
    let (ok, stdout, stderr) = phalanx(&["store", "check", "--url", &url, "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["cluster"], "default");
    assert!(report["lease"].is_null());

    let pg = phalanx_testkit::postgres::shared()
        .fresh_database()
        .unwrap();
    let (ok, stdout, stderr) = phalanx(&["store", "check", "--url", &pg, "--cluster", "node-a"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("lease:   free"), "{stdout}");
    assert!(stdout.contains("cluster: node-a"), "{stdout}");
}

#[test]
fn bad_urls_fail_with_the_reason_in_bounded_time() {
    let closed = phalanx_testkit::process::free_port();
    for (url, needle) in [
        ("mysql://u@h/db", "unknown store scheme \"mysql\""),
        ("postgres://h/db", "names no user"),
        ("etcd://a:xyz/p", "invalid port"),
        ("sqlite:///no/such/dir/node.db", "does not exist"),
        (
            &format!("postgres://u@127.0.0.1:{closed}/db") as &str,
            "cannot connect to PostgreSQL at postgres://u@127.0.0.1",
        ),
        (
            &format!("etcd://127.0.0.1:{closed}/p") as &str,
            "cannot reach etcd",
        ),
    ] {
        let started = Instant::now();
        let (ok, _stdout, stderr) = phalanx(&[
            "store",
            "check",
            "--url",
            url,
            "--connect-timeout-ms",
            "2000",
        ]);
        assert!(!ok, "{url} succeeded");
        assert!(stderr.contains(needle), "{url}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{url} took {:?}",
            started.elapsed()
        );
    }
    let (ok, _, stderr) = phalanx(&[
        "store",
        "check",
        "--url",
        "sqlite:///tmp/x.db",
        "--cluster",
        "bad/name",
    ]);
    assert!(!ok);
    assert!(stderr.contains("cluster name"), "{stderr}");
}
