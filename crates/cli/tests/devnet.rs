//! `phalanx devnet`: the main job, on the built-in chain and on an external one.

use std::process::Command;
use std::time::{Duration, Instant};

use phalanx_regtest::{Regtest, RegtestConfig};

fn devnet(args: &[&str]) -> (i32, String, String) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .arg("devnet")
        .args(args)
        .env("PHALANX_LOG", "warn")
        .output()
        .expect("phalanx runs");
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "the devnet took {:?}",
        started.elapsed()
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_devnet_pays_every_payment_and_exits_0() {
    let (code, stdout, stderr) = devnet(&["--payments", "30", "--concurrency", "3"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("chain: built-in regtest"), "{stdout}");
    assert!(stdout.contains("channel ready"), "{stdout}");
    assert!(
        stdout.contains("done: 30 payments succeeded, 0 failed"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devnet_runs_on_an_external_chain_over_rpc() {
    // A chain the devnet did not start, reached only through --chain-rpc, as a real
    // bitcoind on regtest would be.
    let regtest = Regtest::start(RegtestConfig::default()).await.unwrap();
    let url = regtest.rpc_url_with_credentials();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        devnet(&[
            "--payments",
            "10",
            "--concurrency",
            "2",
            "--chain-rpc",
            &url,
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("chain: external regtest"), "{stdout}");
    assert!(
        stdout.contains("done: 10 payments succeeded, 0 failed"),
        "{stdout}"
    );
    // It mined on that chain: coinbase maturity, funding and six confirmations.
    assert!(
        regtest.chain().height() >= 108,
        "height {}",
        regtest.chain().height()
    );
}

#[test]
fn bad_devnet_options_are_refused() {
    let (code, _, stderr) = devnet(&["--payments", "1", "--chain-rpc", "http://127.0.0.1:1"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("credentials"), "{stderr}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, stderr) = devnet(&[
        "--payments",
        "1",
        "--chain-rpc",
        &format!("http://u:p@{closed}"),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot reach"), "{stderr}");
    let (code, _, stderr) = devnet(&["--concurrency", "0"]);
    assert_eq!(code, 2, "{stderr}");
}
