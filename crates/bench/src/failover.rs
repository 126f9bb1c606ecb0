//! `phalanx-bench failover`: the kill -9 scenario, measured. Alice is one node run as two
//! `phalanx node` processes (this binary re-executed as `phalanx-bench node`, the same
//! code as `phalanx node`) on PostgreSQL or etcd; Bob is an in-process node with
//! `--channels` channels to her. While payments flow both ways, the active instance is
//! killed `--rounds` times; each round measures kill to the standby's `node started`
//! (it holds the lease and has loaded the node) and kill to the next successful
//! payment into the cluster (Bob pays a fresh invoice of Alice's, tried every 20 ms).
//! The killed instance comes back as the next standby. At the end it counts force
//! closes (funding outputs spent on the chain), lost payments (the payer saw success,
//! the payee has no record of receiving) and duplicate ones (received twice, or received
//! though the payer saw it fail).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bitcoin::{Amount, OutPoint};
use clap::Args;
use phalanx_api::{
    ApiClient, CreateInvoiceRequest, PayInvoiceRequest, PaymentDirection, ServerState,
};
use phalanx_devnet::chain::ChainControl;
use phalanx_devnet::harness::{STEP_TIMEOUT, initialize_and_start, mine, node_config, wait_for};
use phalanx_devnet::run::chain_config_from_url;
use phalanx_node::Node;
use phalanx_node::payments::{Direction, PaymentStatus};
use phalanx_regtest::{Regtest, RegtestConfig};
use serde::Serialize;

use crate::store::{Backend, backend_name, start_server};

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// The shared store of the cluster: postgres or etcd.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Kills of the active instance.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Channels between Alice and Bob (opened before the cluster starts).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Payments kept in flight in the background, both ways.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// How long the payments run between two kills, in milliseconds (a random moment
    /// in the second half of it).
    #[arg(long, default_value_t = 2_000)]
    interval_ms: u64,
    /// The cluster's lease TTL in ms (`[cluster] lease_ttl_ms`; the node's default
    /// when unset). With it, set the renewal interval and margin to fit.
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
    /// `[cluster] lease_renew_interval_ms`.
    #[arg(long)]
    lease_renew_interval_ms: Option<u64>,
    /// `[cluster] lease_safety_margin_ms`.
    #[arg(long)]
    lease_safety_margin_ms: Option<u64>,
    /// Keep the scratch directory, with the instances' logs, and print its path.
    #[arg(long)]
    keep_dir: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Each channel's capacity; half of it is pushed to Bob so that both can pay.
const CHANNEL_SAT: u64 = 200_000;
/// Each payment of the background load.
const AMOUNT_MSAT: u64 = 10_000;
/// What each channel's coin carries above the channel, for the funding's fee.
const FUNDING_FEE_RESERVE_SAT: u64 = 10_000;
/// Payments from the chain's wallet between two blocks while funding Alice.
const SENDS_PER_BLOCK: usize = 20;
/// Channels opened before confirming their fundings (LDK accepts at most 4 inbound
/// channels per peer whose funding has not confirmed).
const OPENS_AT_ONCE: usize = 4;
/// The pause between tries of the probe payment, and of a load worker after an error.
const RETRY: Duration = Duration::from_millis(20);
/// How long one payment may take to resolve.
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    backend: &'static str,
    rounds: usize,
    channels: usize,
    lease_ttl_ms: u64,
    kill_to_active_p50_ms: f64,
    kill_to_active_p99_ms: f64,
    kill_to_payment_p50_ms: f64,
    kill_to_payment_p99_ms: f64,
    payments: u64,
    force_closes: usize,
    lost_payments: usize,
    duplicate_payments: usize,
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.channels > 0, "--channels must be at least 1");
    let dir = phalanx_testkit::process::scratch_dir("bench-failover")?;
    ensure!(
        !matches!(args.backend, Backend::Sqlite),
        "a cluster needs a store that several processes share: --backend postgres or etcd"
    );
    let (server, store_url) = start_server(args.backend)?;
    let regtest = Regtest::start(RegtestConfig::default()).await?;
    let chain =
        ChainControl::connect(chain_config_from_url(&regtest.rpc_url_with_credentials())?).await?;
    let needed =
        Amount::from_sat((args.channels as u64 + 1) * (CHANNEL_SAT + FUNDING_FEE_RESERVE_SAT));
    chain
        .ensure_funds(needed + Amount::from_sat(1_000_000))
        .await?;
    let bob = initialize_and_start(&node_config(chain.config(), &dir, "bob", None)?).await?;

    // Alice's channels are opened by an instance run in this process, which then resigns
    // the lease to the cluster: the same seed (in `dir/alice`) and store.
    let alice_config = node_config(chain.config(), &dir, "alice", Some(store_url.clone()))?;
    let funding = {
        let setup = initialize_and_start(&alice_config).await?;
        let funding = open_channels(&chain, &setup, &bob, args.channels).await?;
        setup.shutdown().await;
        funding
    };
    let chain_config = chain.config();
    let lease = [
        ("lease_ttl_ms", args.lease_ttl_ms),
        ("lease_renew_interval_ms", args.lease_renew_interval_ms),
        ("lease_safety_margin_ms", args.lease_safety_margin_ms),
    ]
    .iter()
    .filter_map(|(name, value)| value.map(|v| format!("{name} = {v}\n")))
    .collect::<String>();
    let config_file = write_config(&alice_config.data_dir, &store_url, chain_config, &lease)?;
    // The instances share the token file, as they would share a secret mount.
    let token = phalanx_api::load_or_create_token(&alice_config.api.token_file)?;
    let spawn = |id: &str| Instance::spawn(&config_file, id, &dir, token.clone());

    let mut active = spawn("a")?;
    active.wait_started(with_channels(args.channels)).await?;
    let mut standby = spawn("b")?;
    standby.wait_state(ServerState::WaitingToStart).await?;
    wait_usable(&bob, args.channels).await?;

    let load = Load::start(Arc::clone(&bob), active.api.clone(), args.concurrency);
    let mut to_active = Vec::with_capacity(args.rounds);
    let mut to_payment = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let pause = args.interval_ms / 2 + rand::random::<u64>() % (args.interval_ms / 2 + 1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let killed_at = Instant::now();
        active.kill();
        standby
            .wait_started(with_channels(args.channels))
            .await
            .with_context(|| format!("round {round}: the standby did not take over"))?;
        to_active.push(killed_at.elapsed());
        load.follow(standby.api.clone());
        probe_payment(&bob, &standby.api).await.with_context(|| {
            format!("round {round}: no payment reached the new active instance")
        })?;
        to_payment.push(killed_at.elapsed());
        // The killed one comes back as the next standby, as its supervisor would start it.
        let id = active.id.clone();
        drop(active);
        let restarted = spawn(&id)?;
        restarted.wait_state(ServerState::WaitingToStart).await?;
        active = std::mem::replace(&mut standby, restarted);
        if !args.json {
            eprintln!(
                "round {round}: active after {:?}, payment after {:?}",
                to_active[round], to_payment[round]
            );
        }
    }
    let payments = load.stop().await;

    let audit = audit(&bob, &active.api, &regtest, &funding).await?;
    let report = Report {
        bench: "failover",
        backend: backend_name(args.backend),
        rounds: args.rounds,
        channels: args.channels,
        lease_ttl_ms: args.lease_ttl_ms.unwrap_or(phalanx_cluster::DEFAULT_TTL_MS),
        kill_to_active_p50_ms: percentile_ms(&mut to_active, 0.5),
        kill_to_active_p99_ms: percentile_ms(&mut to_active, 0.99),
        kill_to_payment_p50_ms: percentile_ms(&mut to_payment, 0.5),
        kill_to_payment_p99_ms: percentile_ms(&mut to_payment, 0.99),
        payments,
        force_closes: audit.force_closes,
        lost_payments: audit.lost,
        duplicate_payments: audit.duplicates,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    for problem in &audit.problems {
        eprintln!("{problem}");
    }
    drop((active, standby));
    bob.shutdown().await;
    drop(server);
    if args.keep_dir {
        eprintln!("the instances' logs are in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// A step's time limit with `channels` channels to load or re-establish: a minute, and
/// 100 ms more per channel.
fn with_channels(channels: usize) -> Duration {
    STEP_TIMEOUT + Duration::from_millis(100) * channels as u32
}

/// The nearest-rank percentile, in milliseconds.
fn percentile_ms(samples: &mut [Duration], quantile: f64) -> f64 {
    samples.sort();
    let rank = ((samples.len() as f64 * quantile).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1000.0
}

/// Opens `count` channels from `alice` to `bob`, pushing half of each to Bob, confirms
/// them and waits until both can use all; returns their funding outpoints.
///
/// In bulk: the chain's wallet first pays Alice one coin per channel (a block every
/// [`SENDS_PER_BLOCK`] payments, as Bitcoin Core limits unconfirmed chains), so that no
/// funding has to wait for the change of another; the channels are then opened
/// [`OPENS_AT_ONCE`] at a time, LDK's limit of unconfirmed inbound channels per peer.
async fn open_channels(
    chain: &ChainControl,
    alice: &Arc<Node>,
    bob: &Arc<Node>,
    count: usize,
) -> anyhow::Result<Vec<OutPoint>> {
    let coin = Amount::from_sat(CHANNEL_SAT + FUNDING_FEE_RESERVE_SAT);
    let before = alice.onchain_balance().confirmed_sat;
    let address = alice.new_address()?.to_string();
    for sent in 0..count {
        chain.send_to(&address, coin).await?;
        if (sent + 1) % SENDS_PER_BLOCK == 0 {
            chain.mine(1).await?;
        }
    }
    mine(chain, &[alice, bob], 1).await?;
    let funded_total = before + coin.to_sat() * count as u64;
    wait_for("Alice's coins to confirm", STEP_TIMEOUT, || async {
        (alice.onchain_balance().confirmed_sat >= funded_total).then_some(())
    })
    .await?;

    // LDK counts an inbound channel as unfunded until its funding confirms, and takes
    // at most four such per peer: open four, confirm them, open the next four.
    let confirmed_at_bob = || {
        bob.list_channels()
            .iter()
            .filter(|c| c.confirmations.is_some_and(|n| n > 0))
            .count()
    };
    let mut opened = 0;
    while opened < count {
        let batch = OPENS_AT_ONCE.min(count - opened);
        for _ in 0..batch {
            alice
                .open_channel(
                    bob.node_id(),
                    Some(bob.listen_addresses()[0]),
                    CHANNEL_SAT,
                    CHANNEL_SAT * 1000 / 2,
                    false,
                )
                .await?;
        }
        opened += batch;
        wait_for("the fundings to reach Bob", STEP_TIMEOUT, || async {
            let funded = bob
                .list_channels()
                .iter()
                .filter(|c| c.funding_txo.is_some())
                .count();
            (funded >= opened).then_some(())
        })
        .await?;
        // Alice broadcasts each funding once Bob's `funding_signed` is back: mine until
        // Bob sees all of them confirmed.
        wait_for("the fundings to confirm", STEP_TIMEOUT, || async {
            mine(chain, &[alice, bob], 1).await.ok()?;
            (confirmed_at_bob() >= opened).then_some(())
        })
        .await?;
    }
    mine(chain, &[alice, bob], 6).await?;
    wait_usable(bob, count).await?;
    Ok(bob
        .list_channels()
        .iter()
        .filter_map(|c| c.funding_txo.map(|o| o.into_bitcoin_outpoint()))
        .collect())
}

/// Waits until Bob can use `count` channels (with Alice's forwarding info known).
async fn wait_usable(bob: &Arc<Node>, count: usize) -> anyhow::Result<()> {
    wait_for(
        "the channels to be usable",
        with_channels(count),
        || async {
            let usable = bob
                .list_channels()
                .iter()
                .filter(|c| c.is_usable && c.counterparty.forwarding_info.is_some())
                .count();
            (usable >= count).then_some(())
        },
    )
    .await?;
    Ok(())
}

/// Writes Alice's configuration file for the cluster's processes.
fn write_config(
    data_dir: &Path,
    store_url: &str,
    chain: &phalanx_node::config::ChainConfig,
    lease: &str,
) -> anyhow::Result<PathBuf> {
    let text = format!(
        r#"network = "regtest"
data_dir = "{dir}"

[store]
url = "{store_url}"
cluster = "alice"

[cluster]
enabled = true
{lease}
[chain]
rpc_url = "{rpc_url}"
rpc_user = "{rpc_user}"
rpc_password = "{rpc_password}"
poll_interval_ms = 100

[lightning]
listen = ["127.0.0.1:0"]
forward_delay_ms = 0

[api]
listen = "127.0.0.1:0"
"#,
        dir = data_dir.display(),
        rpc_url = chain.rpc_url,
        rpc_user = chain.rpc_user,
        rpc_password = chain.rpc_password,
    );
    let path = data_dir.join("phalanx.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// One `phalanx-bench node` process of Alice's; killed when dropped.
struct Instance {
    id: String,
    child: Child,
    api: ApiClient,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Instance {
    fn spawn(
        config: &Path,
        id: &str,
        dir: &Path,
        token: phalanx_api::ApiToken,
    ) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("alice-{id}.log")))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["node", "--config"])
            .arg(config)
            .args(["--instance-id", id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = phalanx_testkit::process::spawn_tied(command)?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stdout);
        let out = child.stdout.take().context("the child's stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut instance = Self {
            id: id.to_owned(),
            child,
            api: ApiClient::new("http://127.0.0.1:1")?,
            stdout,
        };
        let line = instance.wait_line("api listening on ", STEP_TIMEOUT)?;
        let url = line
            .strip_prefix("api listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .context("the API's address")?;
        instance.api = ApiClient::new(url)?
            .with_token(token)
            .with_timeout(Duration::from_secs(10));
        Ok(instance)
    }

    fn line(&self, prefix: &str) -> Option<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|l| l.starts_with(prefix))
            .cloned()
    }

    /// Blocks (briefly polling) until a stdout line starts with `prefix`.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.line(prefix) {
                return Ok(line);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("instance {} exited ({status}) before {prefix:?}", self.id);
            }
            ensure!(
                Instant::now() < deadline,
                "instance {}: no {prefix:?} within {timeout:?}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the `node started` line: the instance leads and has loaded the node.
    async fn wait_started(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.line("node started ").is_some() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("instance {} exited ({status}) before it started", self.id);
            }
            ensure!(
                Instant::now() < deadline,
                "instance {} did not start within {timeout:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn wait_state(&self, state: ServerState) -> anyhow::Result<()> {
        wait_for("an instance's state", STEP_TIMEOUT, || async {
            (self.api.state().await.ok()? == state).then_some(())
        })
        .await?;
        Ok(())
    }

    /// `kill -9`, and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Bob pays fresh invoices of the cluster's, one at a time, until one succeeds.
async fn probe_payment(bob: &Arc<Node>, alice: &ApiClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + PAYMENT_TIMEOUT;
    loop {
        ensure!(
            Instant::now() < deadline,
            "no success within {PAYMENT_TIMEOUT:?}"
        );
        let request = CreateInvoiceRequest {
            amount_msat: Some(AMOUNT_MSAT),
            description: "failover probe".into(),
            expiry_secs: None,
        };
        let Ok(invoice) = alice.create_invoice(&request).await else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        if let Ok(id) = bob.pay_invoice(&invoice.invoice, None).await
            && let Ok(record) = bob.wait_payment(id, PAYMENT_TIMEOUT).await
            && record.status == PaymentStatus::Succeeded
        {
            return Ok(());
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Payments both ways in the background, through the active instance's API.
struct Load {
    active: Arc<Mutex<ApiClient>>,
    stop: Arc<AtomicBool>,
    succeeded: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(bob: Arc<Node>, active: ApiClient, concurrency: usize) -> Self {
        let active = Arc::new(Mutex::new(active));
        let stop = Arc::new(AtomicBool::new(false));
        let succeeded = Arc::new(AtomicU64::new(0));
        let workers = (0..concurrency)
            .map(|index| {
                let (bob, active, stop, succeeded) = (
                    Arc::clone(&bob),
                    Arc::clone(&active),
                    Arc::clone(&stop),
                    Arc::clone(&succeeded),
                );
                tokio::spawn(async move {
                    let mut to_bob = index % 2 == 0;
                    while !stop.load(Ordering::SeqCst) {
                        let alice = active.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let ok = if to_bob {
                            alice_pays(&bob, &alice).await
                        } else {
                            bob_pays(&bob, &alice).await
                        };
                        if ok {
                            succeeded.fetch_add(1, Ordering::Relaxed);
                            to_bob = !to_bob;
                        } else {
                            tokio::time::sleep(RETRY * 5).await;
                        }
                    }
                })
            })
            .collect();
        Self {
            active,
            stop,
            succeeded,
            workers,
        }
    }

    /// Sends the next payments to `api` (the new active instance).
    fn follow(&self, api: ApiClient) {
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = api;
    }

    /// Stops the workers once their payments are resolved; returns how many succeeded.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            let _ = worker.await;
        }
        self.succeeded.load(Ordering::Relaxed)
    }
}

async fn alice_pays(bob: &Node, alice: &ApiClient) -> bool {
    let Ok(invoice) = bob
        .create_invoice(Some(AMOUNT_MSAT), "failover load", None)
        .await
    else {
        return false;
    };
    let request = PayInvoiceRequest {
        invoice: invoice.to_string(),
        amount_msat: None,
        wait: true,
        timeout_secs: Some(PAYMENT_TIMEOUT.as_secs()),
    };
    matches!(
        alice.pay_invoice(&request).await,
        Ok(payment) if payment.status == phalanx_api::PaymentStatus::Succeeded
    )
}

async fn bob_pays(bob: &Node, alice: &ApiClient) -> bool {
    let request = CreateInvoiceRequest {
        amount_msat: Some(AMOUNT_MSAT),
        description: "failover load".into(),
        expiry_secs: None,
    };
    let Ok(invoice) = alice.create_invoice(&request).await else {
        return false;
    };
    let Ok(id) = bob.pay_invoice(&invoice.invoice, None).await else {
        return false;
    };
    matches!(
        bob.wait_payment(id, PAYMENT_TIMEOUT).await,
        Ok(record) if record.status == PaymentStatus::Succeeded
    )
}

/// What the ledgers and the chain say at the end.
struct Audit {
    force_closes: usize,
    lost: usize,
    duplicates: usize,
    problems: Vec<String>,
}

/// Compares both nodes' payment records (once nothing is pending) and the chain.
async fn audit(
    bob: &Arc<Node>,
    alice: &ApiClient,
    regtest: &Regtest,
    funding: &[OutPoint],
) -> anyhow::Result<Audit> {
    // (payer succeeded, payer failed, payee received) per payment hash and direction.
    type Ledger = HashMap<(String, bool), (usize, usize, usize)>;
    let settled = wait_for("every payment to resolve", PAYMENT_TIMEOUT, || async {
        let alice_payments = alice.list_payments().await.ok()?;
        let pending = alice_payments.iter().any(|p| {
            p.status == phalanx_api::PaymentStatus::Pending
                && p.direction == PaymentDirection::Outbound
        }) || bob.list_payments().iter().any(|p| {
            p.direction == Direction::Outbound
                && matches!(p.status, PaymentStatus::Pending | PaymentStatus::Accepted)
        });
        (!pending).then_some(alice_payments)
    })
    .await?;
    let mut ledger = Ledger::new();
    for p in &settled {
        // Keyed by the payer: `true` when Alice pays.
        let alice_pays = p.direction == PaymentDirection::Outbound;
        let entry = ledger
            .entry((p.payment_hash.clone(), alice_pays))
            .or_default();
        match (alice_pays, p.status) {
            (true, phalanx_api::PaymentStatus::Succeeded) => entry.0 += 1,
            (true, phalanx_api::PaymentStatus::Failed) => entry.1 += 1,
            (false, phalanx_api::PaymentStatus::Succeeded) => entry.2 += 1,
            _ => {}
        }
    }
    for p in bob.list_payments() {
        let alice_pays = p.direction == Direction::Inbound;
        let entry = ledger
            .entry((p.payment_hash.clone(), alice_pays))
            .or_default();
        match (alice_pays, p.status) {
            (false, PaymentStatus::Succeeded) => entry.0 += 1,
            (false, PaymentStatus::Failed) => entry.1 += 1,
            (true, PaymentStatus::Succeeded) => entry.2 += 1,
            _ => {}
        }
    }
    let mut problems = Vec::new();
    let (mut lost, mut duplicates) = (0, 0);
    for ((hash, alice_pays), (succeeded, failed, received)) in &ledger {
        let payer = if *alice_pays { "alice" } else { "bob" };
        if *succeeded > 0 && *received == 0 {
            lost += 1;
            problems.push(format!("lost: {payer} paid {hash}, never received"));
        }
        if *received > 1 || (*received > 0 && *failed > 0) || *succeeded > 1 {
            duplicates += 1;
            problems.push(format!(
                "duplicate: {hash} by {payer}: {succeeded} succeeded, {failed} failed, \
                 {received} received"
            ));
        }
    }
    let chain = regtest.chain();
    let force_closes = funding
        .iter()
        .filter(|outpoint| {
            chain.history().transactions().iter().any(|seen| {
                seen.tx
                    .input
                    .iter()
                    .any(|i| i.previous_output == **outpoint)
            })
        })
        .count();
    Ok(Audit {
        force_closes,
        lost,
        duplicates,
        problems,
    })
}
