//! `phalanx-bench store`: fenced writes and reads on one backend, as the node does them:
//! a real leadership (renewing in the background) supplies the token of every write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use phalanx_cluster::{Campaigner, Leadership, LeaseTimings};
use phalanx_store::{ClusterName, HolderId, Store, StoreKey, StoreOptions};
use phalanx_testkit::etcd::EtcdServer;
use phalanx_testkit::postgres::PostgresServer;
use serde::Serialize;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
    Etcd,
}

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Which backend to measure.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Measure this store instead of starting one (its URL must match --backend).
    #[arg(long)]
    url: Option<String>,
    /// Seconds to measure each case (after a short warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Print one JSON object per case.
    #[arg(long)]
    json: bool,
    /// Also measure unfenced 1 KiB writes through the backend's client directly (a plain
    /// upsert on PostgreSQL, a plain put on etcd), to show what the fencing check costs.
    #[arg(long)]
    baseline: bool,
    /// Instead of the cases above: fill the store with this many MB (8 KiB values, a
    /// node's monitors and manager at about a thousand channels for 12), then time 1 KiB
    /// writes alone and while snapshots are taken back to back through the same handle,
    /// as a running node takes its backups; the slowest write during snapshots is the
    /// longest pause a snapshot cost.
    #[arg(long, value_name = "MB")]
    snapshot_pause: Option<usize>,
}

#[derive(Serialize)]
struct Result {
    bench: &'static str,
    backend: &'static str,
    op: &'static str,
    value_bytes: usize,
    concurrency: usize,
    ops: u64,
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Keeps a server the benchmark started alive until the end (dropping it stops it).
pub(crate) enum Server {
    None,
    Postgres(#[allow(dead_code)] PostgresServer),
    Etcd(#[allow(dead_code)] EtcdServer),
    Sqlite(std::path::PathBuf),
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Sqlite(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts `backend`'s server (a scratch directory for SQLite); returns it and a fresh
/// store URL on it.
pub(crate) fn start_server(backend: Backend) -> anyhow::Result<(Server, String)> {
    Ok(match backend {
        Backend::Sqlite => {
            let dir = phalanx_testkit::process::scratch_dir("bench-sqlite")?;
            let url = format!("sqlite://{}/node.db", dir.display());
            (Server::Sqlite(dir), url)
        }
        Backend::Postgres => {
            let server = PostgresServer::start()?;
            let url = server.fresh_database()?;
            (Server::Postgres(server), url)
        }
        Backend::Etcd => {
            let server = EtcdServer::start()?;
            let url = server.url("bench");
            (Server::Etcd(server), url)
        }
    })
}

pub fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
        Backend::Etcd => "etcd",
    }
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let (server, url) = match &args.url {
        Some(url) => (Server::None, url.clone()),
        None => start_server(args.backend)?,
    };
    let cluster = format!("bench{}", std::process::id());
    let store =
        phalanx_store_connect::connect(&url, StoreOptions::new(ClusterName::new(&cluster)?))
            .await
            .map_err(|e| anyhow::anyhow!(e.report()))?;
    let campaigner = Campaigner::new(
        store.clone(),
        HolderId::new("bench")?,
        LeaseTimings::default(),
    )?;
    let leadership = Arc::new(campaigner.campaign().await?);
    let measure = Duration::from_secs_f64(args.seconds);
    let name = backend_name(args.backend);
    if let Some(megabytes) = args.snapshot_pause {
        snapshot_pause(&store, &leadership, name, megabytes, measure, args.json).await?;
        drop(leadership);
        drop(server);
        return Ok(());
    }

    let cases: [(&'static str, usize, usize); 5] = [
        ("write", 1024, 1),
        ("write", 1024, 16),
        ("write", 1024 * 1024, 1),
        ("read", 1024, 1),
        ("read", 1024, 16),
    ];
    if !args.json {
        println!(
            "{:<10} {:<6} {:>11} {:>11} {:>12} {:>9} {:>9}",
            "backend", "op", "value", "concurrency", "ops/s", "p50 ms", "p99 ms"
        );
    }
    for (op, value_bytes, concurrency) in cases {
        let result = run_case(
            &store,
            &leadership,
            name,
            op,
            value_bytes,
            concurrency,
            measure,
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            println!(
                "{:<10} {:<6} {:>11} {:>11} {:>12.0} {:>9.2} {:>9.2}",
                result.backend,
                result.op,
                result.value_bytes,
                result.concurrency,
                result.ops_per_s,
                result.p50_ms,
                result.p99_ms
            );
        }
    }
    if args.baseline {
        for concurrency in [1, 16] {
            let result = match args.backend {
                Backend::Postgres => baseline::postgres(&url, name, concurrency, measure).await?,
                Backend::Etcd => baseline::etcd(&url, name, concurrency, measure).await?,
                Backend::Sqlite => continue,
            };
            print_result(&result, args.json)?;
        }
    }
    drop(leadership);
    drop(server);
    Ok(())
}

fn print_result(result: &Result, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
    } else {
        println!(
            "{:<10} {:<15} {:>11} {:>11} {:>12.0} {:>9.2} {:>9.2}",
            result.backend,
            result.op,
            result.value_bytes,
            result.concurrency,
            result.ops_per_s,
            result.p50_ms,
            result.p99_ms
        );
    }
    Ok(())
}

async fn run_case(
    store: &Arc<dyn Store>,
    leadership: &Arc<Leadership>,
    backend: &'static str,
    op: &'static str,
    value_bytes: usize,
    concurrency: usize,
    measure: Duration,
) -> anyhow::Result<Result> {
    const KEYS_PER_WORKER: usize = 64;
    let value = vec![0xA5u8; value_bytes];
    if op == "read" {
        // The keys the readers read.
        let token = leadership.token()?;
        for worker in 0..concurrency {
            for i in 0..KEYS_PER_WORKER {
                store
                    .write(token, &bench_key(op, worker, i), value.clone())
                    .await?;
            }
        }
    }
    let store = store.clone();
    let leadership = leadership.clone();
    measure_ops(
        backend,
        op,
        value_bytes,
        concurrency,
        measure,
        move |worker, i| {
            let store = store.clone();
            let leadership = leadership.clone();
            let value = value.clone();
            async move {
                let key = bench_key(op, worker, i % KEYS_PER_WORKER);
                if op == "write" {
                    let token = leadership.token()?;
                    store.write(token, &key, value).await?;
                } else {
                    store.read(&key).await?;
                }
                Ok(())
            }
        },
    )
    .await
}

#[derive(Serialize)]
struct PauseResult {
    bench: &'static str,
    backend: &'static str,
    state_bytes: usize,
    snapshots: u64,
    snapshot_p50_ms: f64,
    snapshot_max_ms: f64,
    write_p50_ms_alone: f64,
    write_p99_ms_alone: f64,
    write_max_ms_alone: f64,
    write_p50_ms_during: f64,
    write_p99_ms_during: f64,
    write_max_ms_during: f64,
}

/// `--snapshot-pause`: 1 KiB writes at concurrency 1, alone, then with snapshots taken
/// back to back through the same store handle.
async fn snapshot_pause(
    store: &Arc<dyn Store>,
    leadership: &Arc<Leadership>,
    backend: &'static str,
    megabytes: usize,
    measure: Duration,
    json: bool,
) -> anyhow::Result<()> {
    const VALUE_BYTES: usize = 8 * 1024;
    let token = leadership.token()?;
    let keys = megabytes * 1024 * 1024 / VALUE_BYTES;
    for i in 0..keys {
        store
            .write(token, &bench_key("state", 0, i), vec![0x5A; VALUE_BYTES])
            .await?;
    }
    let writes = |store: Arc<dyn Store>, leadership: Arc<Leadership>| {
        move |worker: usize, i: usize| {
            let store = store.clone();
            let leadership = leadership.clone();
            async move {
                let token = leadership.token()?;
                store
                    .write(token, &bench_key("write", worker, i % 64), vec![0xA5; 1024])
                    .await?;
                Ok(())
            }
        }
    };
    let alone = measure_ops(
        backend,
        "write",
        1024,
        1,
        measure,
        writes(store.clone(), leadership.clone()),
    )
    .await?;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let snapshots = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut state_bytes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let began = Instant::now();
                let entries = store.snapshot().await?;
                times.saturating_record(began.elapsed().as_micros().max(1) as u64);
                state_bytes = entries.iter().map(|(_, value)| value.len()).sum();
            }
            Ok::<_, anyhow::Error>((times, state_bytes))
        }
    });
    let during = measure_ops(
        backend,
        "write",
        1024,
        1,
        measure,
        writes(store.clone(), leadership.clone()),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (times, state_bytes) = snapshots.await??;
    let during = during?;
    let result = PauseResult {
        bench: "store-snapshot-pause",
        backend,
        state_bytes,
        snapshots: times.len(),
        snapshot_p50_ms: times.value_at_quantile(0.5) as f64 / 1000.0,
        snapshot_max_ms: times.max() as f64 / 1000.0,
        write_p50_ms_alone: alone.p50_ms,
        write_p99_ms_alone: alone.p99_ms,
        write_max_ms_alone: alone.max_ms,
        write_p50_ms_during: during.p50_ms,
        write_p99_ms_during: during.p99_ms,
        write_max_ms_during: during.max_ms,
    };
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{backend}: {} MB, {} snapshots ({:.1} / {:.1} ms p50 / max); 1 KiB writes p50 / p99 / max alone {:.2} / {:.2} / {:.2} ms, during snapshots {:.2} / {:.2} / {:.2} ms",
            result.state_bytes / 1_000_000,
            result.snapshots,
            result.snapshot_p50_ms,
            result.snapshot_max_ms,
            result.write_p50_ms_alone,
            result.write_p99_ms_alone,
            result.write_max_ms_alone,
            result.write_p50_ms_during,
            result.write_p99_ms_during,
            result.write_max_ms_during,
        );
    }
    Ok(())
}

/// Runs `operation(worker, i)` from `concurrency` workers for `measure` after a warm-up
/// and summarizes the latencies of the operations that fell inside the window.
async fn measure_ops<F, Fut>(
    backend: &'static str,
    op: &'static str,
    value_bytes: usize,
    concurrency: usize,
    measure: Duration,
    operation: F,
) -> anyhow::Result<Result>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let warmup = measure.min(Duration::from_millis(500));
    let measure_from = Instant::now() + warmup;
    let stop_at = measure_from + measure;
    let workers = (0..concurrency).map(|worker| {
        let operation = operation.clone();
        tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut i = 0usize;
            loop {
                let began = Instant::now();
                if began >= stop_at {
                    break;
                }
                operation(worker, i).await?;
                let done = Instant::now();
                if began >= measure_from && done <= stop_at {
                    histogram
                        .saturating_record(done.duration_since(began).as_micros().max(1) as u64);
                }
                i += 1;
            }
            Ok::<_, anyhow::Error>(histogram)
        })
    });
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for histogram in futures::future::try_join_all(workers).await? {
        total.add(histogram?)?;
    }
    let ops = total.len();
    Ok(Result {
        bench: "store",
        backend,
        op,
        value_bytes,
        concurrency,
        ops,
        ops_per_s: ops as f64 / measure.as_secs_f64(),
        p50_ms: total.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: total.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: total.max() as f64 / 1000.0,
    })
}

/// Unfenced writes through each backend's client, same table or key layout: the floor
/// the fenced writes are compared with.
mod baseline {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Result, measure_ops};

    const UPSERT: &str =
        "INSERT INTO phalanx_kv (cluster, primary_ns, secondary_ns, key, value, epoch)
         VALUES ('baseline', 'bench', 'plain', $1, $2, 0)
         ON CONFLICT (cluster, primary_ns, secondary_ns, key) DO UPDATE SET value = excluded.value";

    pub async fn postgres(
        url: &str,
        backend: &'static str,
        concurrency: usize,
        measure: Duration,
    ) -> anyhow::Result<Result> {
        let mut clients = Vec::new();
        for _ in 0..concurrency {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let upsert = client.prepare(UPSERT).await?;
            clients.push(Arc::new((client, upsert)));
        }
        let clients = Arc::new(clients);
        measure_ops(
            backend,
            "write-unfenced",
            1024,
            concurrency,
            measure,
            move |worker, i| {
                let client = clients[worker].clone();
                async move {
                    let (client, upsert) = &*client;
                    let key = format!("w{worker}-{}", i % 64);
                    client.execute(upsert, &[&key, &vec![0xA5u8; 1024]]).await?;
                    Ok(())
                }
            },
        )
        .await
    }

    pub async fn etcd(
        url: &str,
        backend: &'static str,
        concurrency: usize,
        measure: Duration,
    ) -> anyhow::Result<Result> {
        let hosts: Vec<String> = url
            .trim_start_matches("etcd://")
            .split('/')
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|host| format!("http://{host}"))
            .collect();
        let client = etcd_client::Client::connect(hosts, None).await?;
        measure_ops(
            backend,
            "write-unfenced",
            1024,
            concurrency,
            measure,
            move |worker, i| {
                let mut kv = client.kv_client();
                async move {
                    kv.put(
                        format!("/baseline/w{worker}-{}", i % 64),
                        vec![0xA5u8; 1024],
                        None,
                    )
                    .await?;
                    Ok(())
                }
            },
        )
        .await
    }
}

fn bench_key(op: &str, worker: usize, i: usize) -> StoreKey {
    StoreKey::new("bench", op, &format!("w{worker}-{i}")).expect("valid bench key")
}
