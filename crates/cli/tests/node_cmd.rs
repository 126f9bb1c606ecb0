//! `phalanx node`: the real binary on the in-process regtest chain, driven through its
//! REST API and signals.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bitcoin::Network;
use nix::sys::signal::Signal;
use phalanx_api::{ApiClient, ClientError, ErrorCode, ServerState};
use phalanx_e2e::process::{self, EXIT_TIMEOUT, LogFile, NodeBinary, NodeProcess};
use phalanx_node::config::ChainConfig;
use phalanx_regtest::{Regtest, RegtestConfig};

/// The binary under test.
fn phalanx_binary() -> NodeBinary {
    NodeBinary::new(env!("CARGO_BIN_EXE_phalanx"))
}

/// `phalanx args...` with no `PHALANX_*` variable but those of `env`.
fn phalanx(name: &str, args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
    process::spawn(&phalanx_binary(), name, args, env, LogFile::Temporary)
}

/// `phalanx node --config <config> extra...`.
fn node(name: &str, config: &Path, extra: &[&str]) -> NodeProcess {
    process::node(&phalanx_binary(), name, config, extra)
}

/// `phalanx init --config <config>`, which must succeed; its output.
fn initialize(config: &Path) -> String {
    process::initialize(&phalanx_binary(), config)
}

async fn regtest() -> Regtest {
    let regtest = Regtest::start(RegtestConfig::default())
        .await
        .expect("regtest starts");
    regtest.mine(101, None);
    regtest
}

/// A configuration file in `dir`: SQLite under `dir`, both listeners on ephemeral ports;
/// the store is initialized with it.
fn write_config(dir: &Path, rpc_url: &str) -> PathBuf {
    let path = write_uninitialized_config(dir, rpc_url);
    initialize(&path);
    path
}

fn write_uninitialized_config(dir: &Path, rpc_url: &str) -> PathBuf {
    let chain = ChainConfig {
        rpc_url: rpc_url.to_owned(),
        rpc_user: "phalanx".into(),
        rpc_password: "phalanx".into(),
        rest_url: None,
        esplora_url: None,
        poll_interval: Duration::from_millis(100),
    };
    let store_url = format!("sqlite://{}/node.db", dir.display());
    process::ConfigFile::new(dir, &store_url, "cli-test", &chain).write_uninitialized()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_api_stops_on_sigterm_and_restarts_as_the_same_node() {
    let regtest = regtest().await;
    let dir = phalanx_testkit::process::scratch_dir("node-cmd").unwrap();
    let config = write_config(&dir, &regtest.rpc_url());

    let mut first = node("node", &config, &[]);
    let (url, api) = first.api().await;
    let started = first.started().await;
    assert_eq!(started.peers.len(), 1);
    let peer: std::net::SocketAddr = started.peers[0].parse().unwrap();
    assert_ne!(peer.port(), 0, "the bound peer port is printed");
    std::net::TcpStream::connect(peer).expect("the node accepts peers");

    assert_eq!(api.state().await.unwrap(), ServerState::ServerActive);
    let info = api.info().await.unwrap();
    assert_eq!(info.node_id, started.node_id);
    assert_eq!(info.network, "regtest");
    assert_eq!(info.alias, "cli-test");
    assert_eq!(info.epoch, started.epoch);
    assert_eq!(info.block_height, 101);
    assert_eq!(info.listen_addresses, started.peers);
    let address = api.new_address().await.unwrap().address;
    address
        .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()
        .unwrap()
        .require_network(Network::Regtest)
        .expect("a regtest address");
    let balance = api.balance().await.unwrap();
    assert_eq!(balance.onchain_total_sat, 0);
    assert!(api.list_channels().await.unwrap().is_empty());
    assert!(api.list_payments().await.unwrap().is_empty());

    let anonymous = ApiClient::new(&url).unwrap();
    match anonymous.info().await {
        Err(ClientError::Api { status: 401, error }) => {
            assert_eq!(error.code, ErrorCode::Unauthorized)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(
        anonymous.state().await.unwrap(),
        ServerState::ServerActive,
        "the probe needs no token"
    );

    let status = first.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", first.stderr());

    // Same data directory: same seed, same store, same node; a new leadership.
    let mut second = node("node", &config, &[]);
    let (_, api) = second.api().await;
    let restarted = second.started().await;
    assert_eq!(restarted.node_id, started.node_id);
    assert!(restarted.epoch > started.epoch);
    assert_eq!(api.info().await.unwrap().node_id, started.node_id);
    let status = second.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", second.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_exits_2_naming_the_field() {
    let dir = phalanx_testkit::process::scratch_dir("node-cmd").unwrap();
    let run = |file: &str, extra: &[&str], env: &[(&str, &str)]| {
        let path = dir.join("bad.toml");
        std::fs::write(&path, file).unwrap();
        let mut args = vec!["node", "--config", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        phalanx("phalanx", &args, env)
    };
    let chain = "[chain]\nrpc_url = \"http://u:p@127.0.0.1:1\"\n";
    for (file, extra, env, needle) in [
        (
            format!("network = \"moon\"\n{chain}"),
            &[][..],
            &[][..],
            "network: \"moon\" is not one of",
        ),
        (
            "network = \"regtest\"\n".to_owned(),
            &[],
            &[],
            "chain.rpc_url: required",
        ),
        // A flag wins over the file: the network is fine, the chain is still missing.
        (
            "network = \"moon\"\n".to_owned(),
            &["--network", "regtest"],
            &[],
            "chain.rpc_url: required",
        ),
        // So does the environment.
        (
            format!("network = \"regtest\"\n{chain}"),
            &[],
            &[("PHALANX_API_LISTEN", "8080")],
            "api.listen",
        ),
        (
            "network = \"regtest\"\n[chain]\nrpc_ulr = \"x\"\n".to_owned(),
            &[],
            &[],
            "unknown field `rpc_ulr`",
        ),
    ] {
        let mut process = run(&file, extra, env);
        let status = process.wait_exit(EXIT_TIMEOUT).await;
        let stderr = process.stderr();
        assert_eq!(status.code(), Some(2), "{file:?}: {stderr}");
        assert!(stderr.contains(needle), "{file:?}: {stderr}");
        assert!(
            process.stdout_lines().is_empty(),
            "nothing starts on a bad configuration"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_chain_exits_1_with_the_reason() {
    let dir = phalanx_testkit::process::scratch_dir("node-cmd").unwrap();
    let closed = phalanx_testkit::process::free_port();
    let config = write_config(&dir, &format!("http://127.0.0.1:{closed}"));
    let began = Instant::now();
    let mut process = node("node", &config, &[]);
    process.api().await;
    let status = process.wait_exit(EXIT_TIMEOUT).await;
    let stderr = process.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot start the node"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{closed}")), "{stderr}");
    assert!(process.line("node started").is_none());
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "took {:?}",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_waits_on_its_own_api_and_takes_over_when_the_leader_stops() {
    let regtest = regtest().await;
    let dir = phalanx_testkit::process::scratch_dir("node-cmd").unwrap();
    let config = write_config(&dir, &regtest.rpc_url());

    let mut leader = node("node", &config, &["--cluster-enabled"]);
    let (leader_url, _) = leader.api().await;
    let led = leader.started().await;

    let mut standby = node(
        "node",
        &config,
        &["--instance-id", "b", "--cluster-enabled"],
    );
    let (standby_url, standby_api) = standby.api().await;
    assert_ne!(standby_url, leader_url, "each instance has its own API");
    assert_eq!(
        standby_api.state().await.unwrap(),
        ServerState::WaitingToStart
    );
    // Both serve their own metrics: the leader renews and writes, the standby waits.
    let (_, leader_api) = leader.api().await;
    let leader_metrics = leader_api.metrics().await.unwrap();
    for line in [
        "phalanx_server_state{state=\"SERVER_ACTIVE\"} 1",
        "phalanx_lease_held 1",
        &format!("phalanx_lease_epoch {}", led.epoch),
        "phalanx_leaderships_total 1",
        "phalanx_peers 0",
    ] {
        assert!(
            leader_metrics.contains(line),
            "no {line:?} in\n{leader_metrics}"
        );
    }
    let counter = |text: &str, series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        counter(
            &leader_metrics,
            "phalanx_store_transactions_total{outcome=\"committed\"}"
        ) > 0
    );
    let standby_metrics = standby_api.metrics().await.unwrap();
    for line in [
        "phalanx_server_state{state=\"WAITING_TO_START\"} 1",
        "phalanx_lease_held 0",
        "phalanx_leaderships_total 0",
    ] {
        assert!(
            standby_metrics.contains(line),
            "no {line:?} in\n{standby_metrics}"
        );
    }
    match standby_api.info().await {
        Err(ClientError::Api { status: 503, error }) => {
            assert_eq!(error.code, ErrorCode::NotActive);
            assert_eq!(error.state, Some(ServerState::WaitingToStart));
        }
        other => panic!("expected 503 not_active, got {other:?}"),
    }

    // A standby stopped while it waits exits at once, cleanly.
    let mut other = node(
        "node",
        &config,
        &["--instance-id", "c", "--cluster-enabled"],
    );
    other.api().await;
    let status = other.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", other.stderr());
    assert!(other.line("node started").is_none());

    // Without `[cluster] enabled`, a second instance refuses to start instead of waiting.
    let mut single = node("node", &config, &["--instance-id", "d"]);
    let status = single.wait_exit(EXIT_TIMEOUT).await;
    assert_eq!(status.code(), Some(1), "{}", single.stderr());
    assert!(
        single
            .stderr()
            .contains("the lease of this cluster is held by"),
        "{}",
        single.stderr()
    );
    assert!(single.stderr().contains("--cluster-enabled"));

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        standby.line("node started").is_none(),
        "the standby started while the leader runs"
    );
    assert_eq!(
        standby_api.state().await.unwrap(),
        ServerState::WaitingToStart
    );

    // Renewals every 0.5 s: by now the leader has sent several.
    let leader_metrics = leader_api.metrics().await.unwrap();
    assert!(
        counter(
            &leader_metrics,
            "phalanx_lease_renewals_total{outcome=\"ok\"}"
        ) >= 2,
        "{leader_metrics}"
    );
    let status = leader.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", leader.stderr());
    let took_over = standby.started().await;
    assert_eq!(took_over.node_id, led.node_id);
    assert!(took_over.epoch > led.epoch);
    assert_eq!(
        standby_api.state().await.unwrap(),
        ServerState::ServerActive
    );
    assert_eq!(standby_api.info().await.unwrap().epoch, took_over.epoch);

    let status = standby.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", standby.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_misses_its_lease_deadline_exits_75_and_a_standby_takes_over() {
    let regtest = regtest().await;
    let dir = phalanx_testkit::process::scratch_dir("node-cmd").unwrap();
    let config = write_config(&dir, &regtest.rpc_url());

    let mut leader = node("node", &config, &["--cluster-enabled"]);
    let (_, leader_api) = leader.api().await;
    let led = leader.started().await;
    let mut standby = node(
        "node",
        &config,
        &["--instance-id", "b", "--cluster-enabled"],
    );
    let (_, standby_api) = standby.api().await;
    assert_eq!(
        standby_api.state().await.unwrap(),
        ServerState::WaitingToStart
    );

    // Frozen past the lease's deadline (4 s TTL, 1 s margin), the leader cannot have
    // renewed in time: once thawed it must stop acting (fail-stop) and exit for a restart.
    leader.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(6)).await;
    leader.signal(Signal::SIGCONT);
    let status = leader.wait_exit(EXIT_TIMEOUT).await;
    assert_eq!(status.code(), Some(75), "{}", leader.stderr());
    assert!(leader.stderr().contains("lost the leadership"));
    assert!(
        leader_api.state().await.is_err(),
        "the leader's API is gone with it"
    );

    let took_over = standby.started().await;
    assert_eq!(took_over.node_id, led.node_id);
    assert!(took_over.epoch > led.epoch);
    assert_eq!(
        standby_api.state().await.unwrap(),
        ServerState::ServerActive
    );
    let status = standby.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", standby.stderr());
}

/// An empty store is not a new node: `phalanx node` refuses a store that `phalanx init`
/// did not record as this node's, and a store recorded for another seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_not_this_nodes_is_refused_with_exit_2() {
    let regtest = regtest().await;
    let dir = phalanx_testkit::process::scratch_dir("node-cmd").unwrap();
    let config = write_uninitialized_config(&dir, &regtest.rpc_url());
    let store_url = format!("sqlite://{}/node.db", dir.display());
    let check = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
            .args([
                "store",
                "check",
                "--url",
                &store_url,
                "--cluster",
                "cli-test",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };

    // A seed, and a store never initialized with it.
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["seed", "new", "--out", dir.join("seed").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let mut refused = node("node", &config, &[]);
    let status = refused.wait_exit(EXIT_TIMEOUT).await;
    let stderr = refused.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("holds no node identity"), "{stderr}");
    assert!(stderr.contains("run `phalanx init`"), "{stderr}");
    assert!(refused.line("node started").is_none());
    assert!(check().contains("node:    none recorded"), "{}", check());

    let first = initialize(&config);
    assert!(first.starts_with("initialized node_id="), "{first}");
    let node_id = first
        .split_whitespace()
        .find_map(|field| field.strip_prefix("node_id="))
        .unwrap()
        .to_owned();
    let again = initialize(&config);
    assert!(
        again.starts_with(&format!("already initialized node_id={node_id}")),
        "{again}"
    );
    let report = check();
    assert!(
        report.contains(&format!("node:    {node_id} on regtest")),
        "{report}"
    );

    let mut accepted = node("node", &config, &[]);
    let started = accepted.started().await;
    assert_eq!(started.node_id, node_id);
    assert!(accepted.terminate().await.success());

    // A lost seed file: the node refuses (exit 2) and makes no new seed of its own.
    std::fs::rename(dir.join("seed"), dir.join("seed.kept")).unwrap();
    let mut lost = node("node", &config, &[]);
    let status = lost.wait_exit(EXIT_TIMEOUT).await;
    let stderr = lost.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("seed (provider file)"), "{stderr}");
    assert!(
        !dir.join("seed").exists(),
        "a node's start never makes a seed"
    );

    // Another seed (the lost one replaced by a new one) with the same store.
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["seed", "new", "--out", dir.join("seed").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let mut foreign = node("node", &config, &[]);
    let status = foreign.wait_exit(EXIT_TIMEOUT).await;
    let stderr = foreign.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("belongs to node {node_id} on regtest")),
        "{stderr}"
    );
    std::fs::rename(dir.join("seed.kept"), dir.join("seed")).unwrap();
}
