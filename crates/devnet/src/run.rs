//! `phalanx devnet`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::Amount;
use phalanx_node::Node;
use phalanx_node::config::ChainConfig;
use phalanx_node::control::NodeService;
use phalanx_regtest::{Regtest, RegtestConfig};

use crate::DevnetError;
use crate::chain::ChainControl;
use crate::harness::{fund, initialize_and_start, node_config, open_channel};
use crate::invariants;
use crate::stream::{self, Stats};

/// What the devnet does.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Stop after this many payments (run until interrupted when `None`).
    pub payments: Option<u64>,
    /// Payments in flight at once.
    pub concurrency: usize,
    /// The amount of each payment.
    pub amount_msat: u64,
    /// Leave the nodes running after the payments, printing their API addresses.
    pub keep: bool,
    /// An external regtest chain, `http://user:pass@host:port` (built-in chain when `None`).
    pub chain_rpc: Option<String>,
    /// Where the nodes keep their data (a temporary directory when `None`).
    pub data_dir: Option<PathBuf>,
}

impl Default for DevnetOptions {
    fn default() -> Self {
        Self {
            payments: None,
            concurrency: 4,
            amount_msat: 1_000_000,
            keep: false,
            chain_rpc: None,
            data_dir: None,
        }
    }
}

/// How the payments went.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Payments that succeeded.
    pub succeeded: u64,
    /// Payments that failed.
    pub failed: u64,
    /// The last failure.
    pub last_failure: Option<String>,
    /// Successful payments per second.
    pub payments_per_s: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// What the invariants found once the payments settled (see [`crate::invariants`]):
    /// a payment not resolved exactly once on both sides, a funding output spent.
    pub violations: Vec<String>,
}

impl Summary {
    /// Whether every payment succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.failed == 0
    }
}

/// Parses `http://user:pass@host:port` into the node's chain configuration.
pub fn chain_config_from_url(url: &str) -> Result<ChainConfig, DevnetError> {
    let parsed = url::Url::parse(url)
        .map_err(|err| DevnetError::Invalid(format!("--chain-rpc {url:?}: {err}")))?;
    if parsed.scheme() != "http" {
        return Err(DevnetError::Invalid(format!(
            "--chain-rpc {url:?}: only http:// is supported"
        )));
    }
    if parsed.username().is_empty() || parsed.password().is_none() {
        return Err(DevnetError::Invalid(format!(
            "--chain-rpc {url:?}: give the credentials as http://user:pass@host:port"
        )));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| DevnetError::Invalid(format!("--chain-rpc {url:?}: no host")))?;
    let port = parsed.port().unwrap_or(18443);
    Ok(ChainConfig {
        rpc_url: format!("http://{host}:{port}"),
        rpc_user: parsed.username().to_owned(),
        rpc_password: parsed.password().unwrap_or_default().to_owned(),
        rest_url: None,
        esplora_url: None,
        poll_interval: Duration::from_millis(100),
    })
}

/// Runs the devnet until its payments are done (or `interrupt` resolves), printing
/// progress to stdout.
pub async fn run(
    options: DevnetOptions,
    interrupt: impl Future<Output = ()>,
) -> Result<Summary, DevnetError> {
    tokio::pin!(interrupt);
    let (_regtest, chain_config) = match &options.chain_rpc {
        Some(url) => {
            let config = chain_config_from_url(url)?;
            println!("chain: external regtest at {}", config.rpc_url);
            (None, config)
        }
        None => {
            let regtest = Regtest::start(RegtestConfig::default())
                .await
                .map_err(|err| {
                    DevnetError::Chain(format!("cannot start the built-in regtest chain: {err}"))
                })?;
            println!(
                "chain: built-in regtest at {} (user {}, password {})",
                regtest.rpc_url(),
                regtest.rpc_user(),
                regtest.rpc_password()
            );
            let config = chain_config_from_url(&regtest.rpc_url_with_credentials())?;
            (Some(regtest), config)
        }
    };
    let chain = ChainControl::connect(chain_config).await?;

    let (_temp, dir) = match &options.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = std::env::temp_dir().join(format!("phalanx-devnet-{}", std::process::id()));
            (Some(TempDir(temp.clone(), !options.keep)), temp)
        }
    };
    println!("data: {}", dir.display());

    println!("funding the chain wallet (mining to maturity)...");
    chain.ensure_funds(Amount::from_sat(5_000_000)).await?;
    let alice = initialize_and_start(&node_config(chain.config(), &dir, "alice", None)?).await?;
    let bob = initialize_and_start(&node_config(chain.config(), &dir, "bob", None)?).await?;
    let (stop_apis, apis_stopped) = tokio::sync::watch::channel(false);
    let alice_api = serve_api(&alice, &dir.join("alice"), apis_stopped.clone()).await?;
    let bob_api = serve_api(&bob, &dir.join("bob"), apis_stopped).await?;
    println!(
        "alice: {} peers at {}, api {alice_api}",
        alice.node_id(),
        alice.listen_addresses()[0]
    );
    println!(
        "bob:   {} peers at {}, api {bob_api}",
        bob.node_id(),
        bob.listen_addresses()[0]
    );

    let channel_sat = 1_000_000;
    if alice.list_channels().iter().all(|c| !c.is_usable) {
        if alice.onchain_balance().confirmed_sat < channel_sat + 50_000 {
            println!("funding alice's wallet...");
            fund(&chain, &alice, Amount::from_sat(2_000_000)).await?;
        }
        println!(
            "opening a {channel_sat} sat channel alice -> bob and waiting for 6 confirmations..."
        );
        open_channel(&chain, &alice, &bob, channel_sat, channel_sat * 1000 / 2).await?;
    }
    println!(
        "channel ready; streaming payments of {} msat, {} in flight, both ways",
        options.amount_msat, options.concurrency
    );

    let stats = Arc::new(Mutex::new(Stats::default()));
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let mut payments = tokio::spawn(stream::run(
        Arc::clone(&alice),
        Arc::clone(&bob),
        stream::Plan {
            count: options.payments,
            concurrency: options.concurrency,
            amount_msat: options.amount_msat,
            both_ways: true,
        },
        Arc::clone(&stats),
        stop,
    ));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = &mut payments => break,
            _ = ticker.tick() => print_status(&stats, options.payments, &alice, &bob),
            _ = &mut interrupt, if !interrupted => {
                println!("interrupted; finishing the payments in flight...");
                interrupted = true;
                let _ = stop_sender.send(true);
            }
        }
    }
    let summary = {
        let stats = stats.lock().unwrap_or_else(|e| e.into_inner());
        Summary {
            succeeded: stats.succeeded,
            failed: stats.failed,
            last_failure: stats.last_failure.clone(),
            payments_per_s: stats.rate(),
            p50_ms: stats.latency_ms(0.5),
            p99_ms: stats.latency_ms(0.99),
            violations: Vec::new(),
        }
    };
    let mut summary = summary;
    summary.violations = invariants::between(&chain, &alice, &bob).await;
    println!(
        "done: {} payments succeeded, {} failed, {:.1}/s, p50 {:.1} ms, p99 {:.1} ms{}",
        summary.succeeded,
        summary.failed,
        summary.payments_per_s,
        summary.p50_ms,
        summary.p99_ms,
        summary
            .last_failure
            .as_ref()
            .map(|f| format!(" (last failure: {f})"))
            .unwrap_or_default()
    );
    if summary.violations.is_empty() {
        println!(
            "invariants: none violated (each payment resolved once on both sides, no funding spent)"
        );
    } else {
        println!("invariants: {} violated:", summary.violations.len());
        for violation in &summary.violations {
            println!("  {violation}");
        }
    }

    if options.keep && !interrupted {
        println!("--keep: the nodes keep running; stop with Ctrl-C");
        for (name, api) in [("alice", &alice_api), ("bob", &bob_api)] {
            let token_file = dir.join(name).join("api-token");
            let token = std::fs::read_to_string(&token_file).unwrap_or_default();
            println!(
                "{name}: api {api} token {} token_file {}",
                token.trim(),
                token_file.display()
            );
            println!(
                "  try: phalanx ctl --api {api} --token-file {} getinfo",
                token_file.display()
            );
        }
        interrupt.await;
    }
    let _ = stop_apis.send(true);
    alice.shutdown().await;
    bob.shutdown().await;
    Ok(summary)
}

/// Serves the REST API of `node` on a free loopback port; returns its base URL.
async fn serve_api(
    node: &Arc<Node>,
    data_dir: &std::path::Path,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<String, DevnetError> {
    let token = phalanx_api::load_or_create_token(&data_dir.join("api-token"))
        .map_err(|err| DevnetError::Io(format!("API token: {err}")))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| DevnetError::Io(format!("API listener: {err}")))?;
    let address = listener
        .local_addr()
        .map_err(|err| DevnetError::Io(format!("API listener: {err}")))?;
    let service = Arc::new(NodeService::new());
    let _ = service.set_node(Arc::clone(node));
    tokio::spawn(phalanx_api::serve(listener, service, token, async move {
        let _ = stop.wait_for(|stop| *stop).await;
    }));
    Ok(format!("http://{address}"))
}

fn print_status(stats: &Mutex<Stats>, target: Option<u64>, alice: &Node, bob: &Node) {
    let stats = stats.lock().unwrap_or_else(|e| e.into_inner());
    let of = target.map(|t| format!("/{t}")).unwrap_or_default();
    let balance = |node: &Node| {
        node.list_channels()
            .iter()
            .map(|c| c.outbound_capacity_msat / 1000)
            .sum::<u64>()
    };
    println!(
        "[{:>5.0}s] payments {}{} ok, {} failed | {:.1}/s | p50 {:.1} ms p99 {:.1} ms | height {} | spendable alice {} sat, bob {} sat",
        stats.elapsed().as_secs_f64(),
        stats.succeeded,
        of,
        stats.failed,
        stats.rate(),
        stats.latency_ms(0.5),
        stats.latency_ms(0.99),
        alice.best_block_height(),
        balance(alice),
        balance(bob),
    );
}

/// A directory removed when dropped (when `.1` is set).
struct TempDir(PathBuf, bool);

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
