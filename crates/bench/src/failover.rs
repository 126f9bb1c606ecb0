//! `phalanx-bench failover`: the kill -9 scenario, measured. Alice is one node run as two
//! `phalanx node` processes (this binary re-executed as `phalanx-bench node`, the same
//! code as `phalanx node`) on PostgreSQL or etcd; Bob is an in-process node with
//! `--channels` channels to her. While a stream of payments flows both ways through a
//! load balancer in front of her instances, the active instance is killed `--rounds`
//! times; each round measures kill to the standby's `node started` (it holds the lease
//! and has loaded the node) and kill to the next successful payment into the cluster
//! (Bob pays a fresh invoice of the new active instance's, tried every 20 ms). The
//! killed instance comes back as the next standby. At the end it counts what the
//! end-to-end invariants find: force closes (funding outputs spent on the chain) and
//! payments not resolved exactly once on both sides (`phalanx_e2e::invariants`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use nix::sys::signal::Signal;
use phalanx_api::{ApiClient, CreateInvoiceRequest, ServerState};
use phalanx_devnet::harness::{
    STEP_TIMEOUT, initialize_and_start, node_config, open_channels, wait_for,
};
use phalanx_e2e::api::ready_balancer;
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::invariants::{Ledger, no_force_close, payment_violations};
use phalanx_e2e::process::{self, ConfigFile, LogFile, NodeBinary, NodeProcess};
use phalanx_e2e::stream::{Stream, outcome};
use phalanx_node::Node;
use phalanx_node::payments::PaymentStatus;
use serde::Serialize;

use crate::payments::percentile_ms;
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
/// What each channel's coin carries above the channel, for the funding's fee.
const FUNDING_FEE_RESERVE_SAT: u64 = 10_000;
/// Each probe payment.
const PROBE_MSAT: u64 = 10_000;
/// The pause between tries of the probe payment.
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
    payments: usize,
    force_closes: usize,
    payment_violations: usize,
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.channels > 0, "--channels must be at least 1");
    ensure!(
        !matches!(args.backend, Backend::Sqlite),
        "a cluster needs a store that several processes share: --backend postgres or etcd"
    );
    let dir = phalanx_testkit::process::scratch_dir("bench-failover")?;
    let (server, store_url) = start_server(args.backend)?;
    let chain = TestChain::start().await;
    let bob = initialize_and_start(&node_config(chain.config(), &dir, "bob", None)?).await?;

    // Alice's channels are opened by an instance run in this process, which then resigns
    // the lease to the cluster: the same seed (in `dir/alice`) and store.
    let alice_config = node_config(chain.config(), &dir, "alice", Some(store_url.clone()))?;
    let fundings = {
        let setup = initialize_and_start(&alice_config).await?;
        let fundings = open_channels(
            chain.control(),
            &setup,
            &bob,
            args.channels,
            CHANNEL_SAT,
            FUNDING_FEE_RESERVE_SAT,
        )
        .await?;
        setup.shutdown().await;
        fundings
    };
    let lease: String = [
        ("lease_ttl_ms", args.lease_ttl_ms),
        ("lease_renew_interval_ms", args.lease_renew_interval_ms),
        ("lease_safety_margin_ms", args.lease_safety_margin_ms),
    ]
    .iter()
    .filter_map(|(name, value)| value.map(|v| format!("{name} = {v}\n")))
    .collect();
    let config_file = ConfigFile::new(&alice_config.data_dir, &store_url, "alice", chain.config())
        .cluster_settings(format!("enabled = true\n{lease}"))
        .write_uninitialized();
    // The instances share the token file, as they would share a secret mount.
    phalanx_api::load_or_create_token(&alice_config.api.token_file)?;
    let binary = NodeBinary::current_exe()?;
    let mut instances = Instances {
        binary,
        config: config_file,
        dir: dir.clone(),
        known: Default::default(),
        spawned: 0,
    };
    let timeout = with_channels(args.channels);

    let (mut active, _) = instances.spawn("a").await;
    active
        .started_within(timeout)
        .await
        .map_err(anyhow::Error::msg)?;
    let (mut standby, mut standby_api) = instances.spawn("b").await;
    // Which instance id each process runs as; they trade places every round.
    let (mut active_id, mut standby_id) = ("a", "b");
    wait_state(&standby_api, ServerState::WaitingToStart).await?;
    let balancer = ready_balancer(Arc::clone(&instances.known)).await;
    let token = phalanx_api::read_token(&alice_config.api.token_file)?;
    let alice = ApiClient::new(&format!("http://{}", balancer.addr()))?
        .with_token(token)
        .with_timeout(Duration::from_secs(10));

    // Enough time for every round and every payment's own budget.
    let deadline = Instant::now()
        + (Duration::from_millis(args.interval_ms) + timeout) * args.rounds as u32
        + PAYMENT_TIMEOUT * 2;
    let stream = Arc::new(Stream::open_ended(
        alice.clone(),
        Arc::clone(&bob),
        deadline,
    ));
    let mut workers = stream.spawn_workers(args.concurrency);
    let mut to_active = Vec::with_capacity(args.rounds);
    let mut to_payment = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let pause = args.interval_ms / 2 + rand::random::<u64>() % (args.interval_ms / 2 + 1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let killed_at = Instant::now();
        active.signal(Signal::SIGKILL);
        standby
            .started_within(timeout)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("round {round}: the standby did not take over"))?;
        to_active.push(killed_at.elapsed());
        probe_payment(&bob, &standby_api).await.with_context(|| {
            format!("round {round}: no payment reached the new active instance")
        })?;
        to_payment.push(killed_at.elapsed());
        // The killed one comes back as the next standby, as its supervisor would start it.
        drop(active);
        let (restarted, restarted_api) = instances.spawn(active_id).await;
        wait_state(&restarted_api, ServerState::WaitingToStart).await?;
        active = std::mem::replace(&mut standby, restarted);
        standby_api = restarted_api;
        std::mem::swap(&mut active_id, &mut standby_id);
        if !args.json {
            eprintln!(
                "round {round}: active after {:?}, payment after {:?}",
                to_active[round], to_payment[round]
            );
        }
    }
    stream.finish();
    let mut problems = Vec::new();
    for mut worker in workers.drain(..) {
        let ended = outcome(&mut worker).await;
        if ended != "done" {
            problems.push(format!("a payment worker stopped: {ended}"));
        }
    }

    let force_closes = no_force_close(&chain, &fundings);
    let payments = settled_payments(&stream, &bob, &alice).await;
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
        payments: stream.payments(),
        force_closes: force_closes.len(),
        payment_violations: payments.len(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    for problem in problems.iter().chain(&force_closes).chain(&payments) {
        eprintln!("{problem}");
    }
    drop((active, standby, balancer));
    bob.shutdown().await;
    drop(server);
    if args.keep_dir {
        eprintln!("the instances' logs are in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Alice's instances: `phalanx-bench node` processes, their logs kept in the scratch
/// directory, each known to the load balancer.
struct Instances {
    binary: NodeBinary,
    config: std::path::PathBuf,
    dir: std::path::PathBuf,
    known: Arc<std::sync::Mutex<Vec<(&'static str, ApiClient)>>>,
    spawned: usize,
}

impl Instances {
    /// Starts instance `id`; returns it and a client of its own API.
    async fn spawn(&mut self, id: &'static str) -> (NodeProcess, ApiClient) {
        self.spawned += 1;
        let config = self.config.display().to_string();
        let mut process = process::spawn(
            &self.binary,
            &format!("alice {id} (#{})", self.spawned),
            &["node", "--config", &config, "--instance-id", id],
            &[],
            LogFile::Kept(log_path(&self.dir, id)),
        );
        let (_, api) = process.api().await;
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, api.clone()));
        (process, api)
    }
}

fn log_path(dir: &Path, id: &str) -> std::path::PathBuf {
    dir.join(format!("alice-{id}.log"))
}

/// A step's time limit with `channels` channels to load or re-establish: a minute, and
/// 100 ms more per channel.
fn with_channels(channels: usize) -> Duration {
    STEP_TIMEOUT + Duration::from_millis(100) * channels as u32
}

async fn wait_state(api: &ApiClient, state: ServerState) -> anyhow::Result<()> {
    wait_for("an instance's state", STEP_TIMEOUT, || async {
        (api.state().await.ok()? == state).then_some(())
    })
    .await?;
    Ok(())
}

/// Bob pays fresh invoices of the new active instance's, one at a time, until one
/// succeeds.
async fn probe_payment(bob: &Node, alice: &ApiClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + PAYMENT_TIMEOUT;
    loop {
        ensure!(
            Instant::now() < deadline,
            "no success within {PAYMENT_TIMEOUT:?}"
        );
        let request = CreateInvoiceRequest {
            amount_msat: Some(PROBE_MSAT),
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

/// The stream's payments checked on both sides once they settled. The probes are Bob's
/// payments the stream did not make: they are left out of Bob's ledger.
async fn settled_payments(stream: &Stream, bob: &Node, alice: &ApiClient) -> Vec<String> {
    let attempts = stream.attempts();
    let made: std::collections::HashSet<String> =
        attempts.iter().map(|a| a.payment_hash.clone()).collect();
    phalanx_e2e::invariants::settled(PAYMENT_TIMEOUT, || async {
        let Ok(payments) = alice.list_payments().await else {
            return vec!["alice does not list her payments".to_owned()];
        };
        let alice_payments: Vec<_> = payments
            .into_iter()
            .filter(|p| made.contains(&p.payment_hash))
            .collect();
        let bob_records: Vec<_> = bob
            .list_payments()
            .into_iter()
            .filter(|r| made.contains(&r.payment_hash))
            .collect();
        payment_violations(
            &attempts,
            &Ledger::of_api("alice", &alice_payments),
            &Ledger::of_node("bob", &bob_records),
        )
    })
    .await
}
