//! `phalanx-bench front --gossip-channels N`: gossip ingest at a front. A synthetic graph
//! (`phalanx_gossip_sim`: every channel funded on the built-in regtest chain, every
//! message signed) is replayed by a peer to a front process (`phalanx front`) in front
//! of a backend process (`phalanx node`, SQLite), as a peer's full sync: LDK's backfill
//! from the replaying side, the front checking each signature itself and each funding
//! output through the backend. Measured: messages per second until the front's graph
//! holds the whole graph and the backend's router has all of it; the CPU time and memory
//! of the front's process, and the CPU time of the backend's meanwhile (from `/proc`).
//!
//! With `--gossip-payments-before N`, two payers (in-process nodes), each with a channel
//! to the backend, one connected through the flooded front and one to the backend
//! directly, pay the backend in turn, N times each before the ingest, then on during it:
//! the payment latency the payers see, without and with the flood, in one run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bitcoin::Amount;
use phalanx_api::{ApiClient, CreateInvoiceRequest};
use phalanx_e2e::chain::TestChain;
use phalanx_e2e::fronts::{link_section, metric_value as metric, write_certs};
use phalanx_e2e::process::{self, ConfigFile, LogFile, NodeBinary};
use phalanx_gossip_sim::{ReplayPeer, Shape, SyntheticGraph};
use phalanx_node::Node;
use phalanx_node::payments::PaymentStatus;
use phalanx_testkit::process::free_port;
use serde::Serialize;

use crate::payments::{no_violations, percentile_ms, print_violations};

/// How long the whole ingest may take.
const INGEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long the front's graph may stay the same once the peer has sent everything.
const STALL: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct GossipResult {
    bench: &'static str,
    path: &'static str,
    nodes: usize,
    channels: usize,
    messages: usize,
    /// Until the front's graph held every channel and node.
    front_seconds: f64,
    messages_per_s: f64,
    /// Until the backend's router had every new message the front handed it.
    backend_seconds: f64,
    front_cpu_s: f64,
    front_cpu_percent: f64,
    front_rss_mb: f64,
    front_peak_rss_mb: f64,
    backend_cpu_s: f64,
    backend_cpu_percent: f64,
    to_backend: u64,
    build_s: f64,
}

/// The payments made beside an ingest: their latency before it and during it.
#[derive(Serialize)]
struct PaymentsBesideResult {
    bench: &'static str,
    path: &'static str,
    /// `front`: the payer is a peer of the flooded front; `direct`: of the backend.
    via: &'static str,
    channels: usize,
    payments_before: usize,
    p50_ms_before: f64,
    p99_ms_before: f64,
    payments_during: usize,
    p50_ms_during: f64,
    p99_ms_during: f64,
    /// As many as before, once the flood is over: the baseline that comes as late in the
    /// run as the payments during it. A channel's monitor and the payer's manager grow
    /// with every payment, and so does the time to write them: thousands of payments
    /// later, "before" alone is not the same baseline.
    payments_after: usize,
    p50_ms_after: f64,
    p99_ms_after: f64,
    failed: usize,
    /// Channels in the payer's own graph afterwards: a peer of the flooded front gets the
    /// flood rebroadcast (and checks it itself, on this machine).
    payer_graph_channels: usize,
}

/// One payment of the payer to the backend: the invoice asked over the backend's API
/// (not timed), then from `pay_invoice` to the payer's record of success.
async fn pay_backend(
    payer: &Node,
    backend: &ApiClient,
    amount_msat: u64,
) -> anyhow::Result<Duration> {
    let invoice = backend
        .create_invoice(&CreateInvoiceRequest {
            amount_msat: Some(amount_msat),
            description: String::new(),
            expiry_secs: None,
        })
        .await?;
    let began = Instant::now();
    let id = payer.pay_invoice(&invoice.invoice, None).await?;
    let record = payer.wait_payment(id, Duration::from_secs(60)).await?;
    anyhow::ensure!(
        record.status == PaymentStatus::Succeeded,
        "a payment to the backend did not succeed: {record:?}"
    );
    Ok(began.elapsed())
}

/// A payer node `name` connected to the backend `backend_id` at `address` (a front's or
/// its own), with a confirmed channel to it.
async fn payer_through(
    chain: &TestChain,
    dir: &std::path::Path,
    name: &str,
    backend_id: bitcoin::secp256k1::PublicKey,
    address: SocketAddr,
) -> anyhow::Result<Arc<Node>> {
    let payer =
        phalanx_e2e::nodes::start(&phalanx_e2e::nodes::node_config(chain, dir, name, None)).await;
    phalanx_e2e::nodes::fund(chain, &payer, Amount::from_sat(3_000_000)).await;
    payer
        .open_channel(backend_id, Some(address), 2_000_000, 0, false)
        .await?;
    // The funding reaches the mempool once the backend signed the first commitment.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !payer
        .list_channels()
        .iter()
        .any(|c| c.counterparty.node_id == backend_id && c.funding_txo.is_some())
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the payer's channel was not funded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    phalanx_devnet::harness::mine(chain.control(), &[&payer], 6).await?;
    while !phalanx_devnet::harness::usable_with(&payer, backend_id) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the payer's channel is not usable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(payer)
}

/// CPU seconds (user and system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which may hold spaces, in parentheses.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("a /proc stat line")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .context("clock ticks per second")?;
    Ok(ticks as f64 / per_second as f64)
}

/// What of the flood runs at nice 19, as if on a machine of its own.
#[derive(Clone, Copy)]
pub struct LowestPriority {
    /// The front's process.
    pub front: bool,
    /// The chain and the replaying peer (in the bench's process).
    pub flood: bool,
}

/// A tokio runtime whose threads all run at nice 19, for what stands in for other
/// machines; shut down in the background when dropped (inside the bench's own runtime).
fn lowest_priority_runtime() -> anyhow::Result<phalanx_link::runtime::OwnRuntime> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-flood")
        .on_thread_start(|| {
            let thread = nix::unistd::gettid().as_raw() as libc::id_t;
            // SAFETY: setpriority reads only its integer arguments.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, 19) } != 0 {
                eprintln!(
                    "cannot lower a flood thread's priority: {}",
                    std::io::Error::last_os_error()
                );
            }
        })
        .enable_all()
        .build()?;
    Ok(runtime.into())
}

/// A process's resident memory now and at its peak, in MiB, from `/proc/PID/status`.
fn memory_mb(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

pub async fn ingest(
    nodes: usize,
    channels: usize,
    updates_per_channel: u8,
    payments_before: usize,
    nice: LowestPriority,
    payers_via: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let LowestPriority {
        front: front_nice,
        flood: flood_nice,
    } = nice;
    for via in payers_via {
        anyhow::ensure!(
            via == "front" || via == "direct",
            "--gossip-payers takes front and direct, not {via}"
        );
    }
    let dir = phalanx_testkit::process::scratch_dir("bench-gossip")?;
    let flood_runtime = flood_nice.then(lowest_priority_runtime).transpose()?;
    let chain = match &flood_runtime {
        // Its server and connections are tasks of the runtime it starts on.
        Some(runtime) => runtime.spawn(TestChain::start()).await?,
        None => TestChain::start().await,
    };
    let built = Instant::now();
    let shape = Shape {
        updates_per_channel,
        ..Shape::new(nodes, channels)
    };
    let graph = Arc::new(
        SyntheticGraph::build(shape, &mut chain.chain()).map_err(|err| anyhow::anyhow!("{err}"))?,
    );
    let build_s = built.elapsed().as_secs_f64();
    let messages = graph.messages();

    let certs = dir.join("link");
    write_certs(&certs, &["front-1"]);
    let binary = NodeBinary::current_exe()?;
    let alice_dir = dir.join("alice");
    let store_url = format!("sqlite://{}", alice_dir.join("node.db").display());
    let config = ConfigFile::new(&alice_dir, &store_url, "alice", chain.config())
        .extra(link_section(&certs))
        .write(&binary);
    let link = format!("127.0.0.1:{}", free_port());
    let mut backend = process::node(&binary, "alice", &config, &["--link-listen", &link]);
    let (_, backend_api) = backend.api().await;
    let backend_peers: SocketAddr = backend
        .started()
        .await
        .peers
        .first()
        .context("the backend's peer address")?
        .parse()?;

    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let file = |name: &str| certs.join(name).display().to_string();
    let mut front = process::spawn(
        &binary,
        "front-1",
        &[
            "front-server",
            "--name",
            "front-1",
            "--listen",
            &listen.to_string(),
            "--backends",
            &link,
            "--certificate",
            &file("front-1.crt"),
            "--key",
            &file("front-1.key"),
            "--ca",
            &file("ca.crt"),
            "--api-listen",
            "127.0.0.1:0",
        ],
        &[],
        LogFile::Temporary,
    );
    let line = front.wait_line("front started").await;
    if front_nice {
        // Each of the front's threads: a nice value is per thread on Linux.
        let pid = front.child.id();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let tid = task?.file_name();
            let status = std::process::Command::new("renice")
                .args(["-n", "19", "-p"])
                .arg(&tid)
                .stdout(std::process::Stdio::null())
                .status()
                .context("renice")?;
            anyhow::ensure!(status.success(), "renice of the front's thread {tid:?}");
        }
    }
    let front_api = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("api="))
        .context("the front's API address")?
        .to_owned();
    let state = front_state(&front_api).await?;
    let node_id: bitcoin::secp256k1::PublicKey = state["node_id"]
        .as_str()
        .context("the front's node id")?
        .parse()?;

    // The payers' baseline, before the flood, in turn.
    // Small: a payer alone makes thousands of payments in a mainnet-size ingest.
    const PAYMENT_MSAT: u64 = 100_000;
    let mut payers = Vec::new();
    if payments_before > 0 && payers_via.iter().any(|via| via == "front") {
        payers.push((
            "front",
            payer_through(&chain, &dir, "payer-front", node_id, listen).await?,
        ));
    }
    if payments_before > 0 && payers_via.iter().any(|via| via == "direct") {
        payers.push((
            "direct",
            payer_through(&chain, &dir, "payer-direct", node_id, backend_peers).await?,
        ));
    }
    let mut before = vec![Vec::with_capacity(payments_before); payers.len()];
    for _ in 0..payments_before {
        for (index, (_, payer)) in payers.iter().enumerate() {
            before[index].push(pay_backend(payer, &backend_api, PAYMENT_MSAT).await?);
        }
    }
    // During the flood: in turn, one payment after another, until the ingest is over.
    let (stop_paying, mut stopped) = tokio::sync::watch::channel(false);
    let paying = (!payers.is_empty()).then(|| {
        let backend_api = backend_api.clone();
        let payers: Vec<Arc<Node>> = payers.iter().map(|(_, p)| Arc::clone(p)).collect();
        tokio::spawn(async move {
            let mut during = vec![Vec::new(); payers.len()];
            let mut failed = vec![0usize; payers.len()];
            while !*stopped.borrow_and_update() {
                for (index, payer) in payers.iter().enumerate() {
                    match pay_backend(payer, &backend_api, PAYMENT_MSAT).await {
                        Ok(took) => during[index].push(took),
                        Err(err) => {
                            failed[index] += 1;
                            eprintln!("a payment during the ingest failed: {err:#}");
                        }
                    }
                }
            }
            (during, failed)
        })
    });

    let (front_pid, backend_pid) = (front.child.id(), backend.child.id());
    let (front_cpu0, backend_cpu0) = (cpu_seconds(front_pid)?, cpu_seconds(backend_pid)?);
    let peer = Arc::new(ReplayPeer::new(Arc::clone(&graph), rand::random()));
    let began = Instant::now();
    let connected = match &flood_runtime {
        // The connection is a task of the runtime it is made on.
        Some(runtime) => {
            let peer = Arc::clone(&peer);
            runtime
                .spawn(async move { peer.connect(node_id, listen).await })
                .await?
        }
        None => peer.connect(node_id, listen).await,
    };
    anyhow::ensure!(connected, "cannot reach the front");
    let expected_new =
        graph.good_channels().len() * (1 + usize::from(updates_per_channel)) + graph.nodes();
    let mut ticked = Instant::now();
    let mut violations = Vec::new();
    // The last change of the front's graph: 30 s without one while the replay is done is
    // a stall, reported as such rather than waited out.
    let (mut last_size, mut last_change) = ((0, 0), Instant::now());
    let front_seconds = loop {
        let state = front_state(&front_api).await?;
        let (in_graph, nodes_in_graph) = (
            state["graph_channels"].as_u64().unwrap_or(0) as usize,
            state["graph_nodes"].as_u64().unwrap_or(0) as usize,
        );
        if in_graph >= channels && nodes_in_graph >= nodes {
            break began.elapsed();
        }
        if (in_graph, nodes_in_graph) != last_size {
            (last_size, last_change) = ((in_graph, nodes_in_graph), Instant::now());
        } else if peer.finished() && last_change.elapsed() > STALL {
            violations.push(format!(
                "the front's graph stopped at {in_graph} of {channels} channels and \
                 {nodes_in_graph} of {nodes} nodes"
            ));
            break last_change.duration_since(began);
        }
        anyhow::ensure!(
            began.elapsed() < INGEST_TIMEOUT,
            "the front's graph has {in_graph} of {channels} channels and {nodes_in_graph} of \
             {nodes} nodes after {INGEST_TIMEOUT:?}"
        );
        if ticked.elapsed() >= Duration::from_secs(10) {
            peer.tick();
            ticked = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let new_series = "phalanx_front_gossip_total{outcome=\"new\"}";
    let backend_seconds = loop {
        let text = backend_api.metrics().await.unwrap_or_default();
        let handed = front_state(&front_api).await?["gossip_to_backend"]
            .as_u64()
            .unwrap_or(0);
        // All the front handed over (all there is, unless the front stalled).
        if metric(&text, new_series) as usize >= expected_new
            || (!violations.is_empty() && metric(&text, new_series) >= handed)
        {
            break began.elapsed();
        }
        anyhow::ensure!(
            began.elapsed() < INGEST_TIMEOUT,
            "the backend took {} of {expected_new} new messages",
            metric(&text, new_series)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (front_cpu1, backend_cpu1) = (cpu_seconds(front_pid)?, cpu_seconds(backend_pid)?);
    let _ = stop_paying.send(true);
    let mut beside = Vec::new();
    if let Some(paying) = paying {
        let (during, failed) = paying.await?;
        let mut after = vec![Vec::with_capacity(payments_before); payers.len()];
        for _ in 0..payments_before {
            for (index, (_, payer)) in payers.iter().enumerate() {
                after[index].push(pay_backend(payer, &backend_api, PAYMENT_MSAT).await?);
            }
        }
        for (((((via, payer), mut before), mut during), failed), mut after) in
            payers.iter().zip(before).zip(during).zip(failed).zip(after)
        {
            if failed > 0 {
                violations.push(format!(
                    "{failed} payments of the payer {via} failed during the ingest"
                ));
            }
            beside.push(PaymentsBesideResult {
                bench: "front",
                path: "payments-during-ingest",
                via,
                channels,
                payments_before: before.len(),
                p50_ms_before: percentile_ms(&mut before, 0.5),
                p99_ms_before: percentile_ms(&mut before, 0.99),
                payments_during: during.len(),
                p50_ms_during: percentile_ms(&mut during, 0.5),
                p99_ms_during: percentile_ms(&mut during, 0.99),
                payments_after: after.len(),
                p50_ms_after: percentile_ms(&mut after, 0.5),
                p99_ms_after: percentile_ms(&mut after, 0.99),
                failed,
                payer_graph_channels: payer.network_graph().read_only().channels().len(),
            });
        }
    }
    let (front_rss_mb, front_peak_rss_mb) = memory_mb(front_pid)?;
    let state = front_state(&front_api).await?;
    let to_backend = state["gossip_to_backend"].as_u64().unwrap_or(0);
    let backend_text = backend_api.metrics().await.unwrap_or_default();

    let elapsed = backend_seconds.as_secs_f64();
    let result = GossipResult {
        bench: "front",
        path: "gossip-ingest",
        nodes,
        channels,
        messages,
        front_seconds: front_seconds.as_secs_f64(),
        messages_per_s: messages as f64 / front_seconds.as_secs_f64(),
        backend_seconds: elapsed,
        front_cpu_s: front_cpu1 - front_cpu0,
        front_cpu_percent: 100.0 * (front_cpu1 - front_cpu0) / elapsed,
        front_rss_mb,
        front_peak_rss_mb,
        backend_cpu_s: backend_cpu1 - backend_cpu0,
        backend_cpu_percent: 100.0 * (backend_cpu1 - backend_cpu0) / elapsed,
        to_backend,
        build_s,
    };
    // What must hold: the front handed over each new message once, and the backend took
    // each as new (none refused for arriving before what it needs).
    if to_backend as usize != expected_new {
        violations.push(format!(
            "the front handed the backend {to_backend} messages, not {expected_new}"
        ));
    }
    let (_, front_metrics) = phalanx_testkit::http::get(&front_api, "/metrics").await?;
    let found_not_taken = metric(
        &front_metrics,
        "phalanx_front_funding_found_not_taken_total",
    );
    if found_not_taken != 0 {
        violations.push(format!(
            "{found_not_taken} channels whose funding output was found did not enter the \
             front's graph (its log names them)"
        ));
    }
    let ignored = metric(
        &backend_text,
        "phalanx_front_gossip_total{outcome=\"ignored\"}",
    );
    if ignored != 0 {
        violations.push(format!("the backend ignored {ignored} messages"));
    }
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "gossip ingest: {messages} messages ({nodes} nodes, {channels} channels) in {:.1} s \
             at the front ({:.0}/s), {:.1} s to the backend's router; front CPU {:.1} s ({:.0}%), \
             RSS {:.0} MiB (peak {:.0}); backend CPU {:.1} s ({:.0}%); graph built in {:.1} s",
            result.front_seconds,
            result.messages_per_s,
            result.backend_seconds,
            result.front_cpu_s,
            result.front_cpu_percent,
            result.front_rss_mb,
            result.front_peak_rss_mb,
            result.backend_cpu_s,
            result.backend_cpu_percent,
            result.build_s
        );
    }
    for beside in &beside {
        if json {
            println!("{}", serde_json::to_string(beside)?);
        } else {
            println!(
                "payments to the backend, payer {}: p50 {:.1} ms, p99 {:.1} ms before ({} \
                 payments); p50 {:.1} ms, p99 {:.1} ms during ({} payments, {} failed); \
                 p50 {:.1} ms, p99 {:.1} ms after ({} payments)",
                beside.via,
                beside.p50_ms_before,
                beside.p99_ms_before,
                beside.payments_before,
                beside.p50_ms_during,
                beside.p99_ms_during,
                beside.payments_during,
                beside.failed,
                beside.p50_ms_after,
                beside.p99_ms_after,
                beside.payments_after
            );
        }
    }
    print_violations(&violations);
    for (_, payer) in payers {
        payer.shutdown().await;
    }
    let _ = front.terminate().await;
    let _ = backend.terminate().await;
    no_violations(&violations)
}

async fn front_state(api: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = phalanx_testkit::http::get(api, "/v1/state").await?;
    anyhow::ensure!(status == 200, "the front's state: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}
