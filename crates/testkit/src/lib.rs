//! Test fixtures for Phalanx, shared by every crate's tests and by the benchmarks.
//!
//! Nothing here is a mock: [`postgres::PostgresServer`] and [`etcd::EtcdServer`] are the
//! real servers, started from the system binaries (Debian's `postgresql` and
//! `etcd-server`) on free loopback ports in temp directories. They stop when dropped, and
//! also when the test process exits or dies:
//!
//! - servers are spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so the
//!   kernel kills them if the test process is killed;
//! - an `atexit` hook stops the servers still running when the process exits normally
//!   (shared servers live in statics, which Rust never drops);
//! - temp directories of dead test processes are removed by the next test process.
//!
//! Shared servers ([`postgres::shared`], [`etcd::shared`]) serve every test of one test
//! process; each test takes its own database or key prefix. Tests that stop or restart a
//! server start a dedicated one.

#![warn(missing_docs)]

pub mod blackhole;
pub mod etcd;
pub mod haproxy;
pub mod http;
pub mod moto;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod tls;

use std::time::{Duration, Instant};

/// Installs a `tracing` subscriber for tests once (filter with `RUST_LOG`, default `info`
/// for Phalanx crates). Output goes through the test harness's capture.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,phalanx=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A name nobody else in this machine's test runs uses: `prefix_<pid>_<random>`, made of
/// characters valid in SQL identifiers, etcd keys and cluster names.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
