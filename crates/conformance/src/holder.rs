//! Drives the `phalanx-store-holder` child process from a test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use phalanx_cluster::LeaseTimings;

/// Exit status of a holder that was fenced (by the store or its own deadline).
pub const EXIT_FENCED: i32 = 3;

/// What the holder writes.
#[derive(Clone, Copy, Debug)]
pub enum WriteMode {
    /// Overwrite `holder//seq` with 1, 2, 3 ...
    Seq,
    /// Write `keys//k<n>` for n = 1, 2, 3 ...
    Keys,
}

/// A running holder and everything it printed.
pub struct HolderProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl HolderProcess {
    /// Starts `binary` (the `phalanx-store-holder` executable) for `url`.
    pub fn spawn(
        binary: &Path,
        url: &str,
        holder: &str,
        timings: LeaseTimings,
        mode: WriteMode,
    ) -> Self {
        let mut child = Command::new(binary)
            .args(["--url", url, "--holder", holder])
            .args(["--ttl-ms", &timings.ttl.as_millis().to_string()])
            .args([
                "--renew-ms",
                &timings.renew_interval.as_millis().to_string(),
            ])
            .args([
                "--margin-ms",
                &timings.safety_margin.as_millis().to_string(),
            ])
            .args([
                "--retry-ms",
                &timings.retry_interval.as_millis().to_string(),
            ])
            .args([
                "--mode",
                match mode {
                    WriteMode::Seq => "seq",
                    WriteMode::Keys => "keys",
                },
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn phalanx-store-holder");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a printed line satisfies `matches`; panics with the output otherwise.
    pub fn wait_for_line(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|line| matches(line)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "holder printed no {what} within {timeout:?}; output: {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the holder leads; returns its epoch.
    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        let line = self.wait_for_line("LEADER", timeout, |line| line.starts_with("LEADER "));
        line["LEADER ".len()..].parse().expect("epoch")
    }

    /// The write numbers acknowledged so far.
    pub fn acked(&self) -> Vec<u64> {
        self.lines()
            .iter()
            .filter_map(|line| line.strip_prefix("ACK "))
            .map(|n| n.parse().expect("ACK number"))
            .collect()
    }

    /// Waits until at least `count` writes were acknowledged.
    pub fn wait_acked(&self, count: usize, timeout: Duration) {
        self.wait_acked_until(count, timeout, false);
    }

    /// Waits until at least `count` writes were acknowledged, or until the holder
    /// fenced itself first (a starved machine can hold its renewals past a short
    /// deadline; it then stops writing, which is correct too). True if it fenced.
    pub fn wait_acked_unless_fenced(&self, count: usize, timeout: Duration) -> bool {
        self.wait_acked_until(count, timeout, true)
    }

    /// Polls for `count` acknowledgements, giving up early (true) on a fence if
    /// `stop_when_fenced`; panics with the output's tail after `timeout`.
    fn wait_acked_until(&self, count: usize, timeout: Duration, stop_when_fenced: bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if stop_when_fenced && self.lines().iter().any(|line| line.starts_with("FENCED")) {
                return true;
            }
            if self.acked().len() >= count {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "holder acknowledged {} of {count} writes within {timeout:?}; output tail: {:?}",
                self.acked().len(),
                self.lines().iter().rev().take(5).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal (SIGSTOP, SIGCONT, SIGKILL ...).
    pub fn signal(&self, signal: Signal) {
        phalanx_testkit::process::signal(&self.child, signal).expect("signal the holder");
    }

    /// Waits for the holder to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the holder") {
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "holder still running after {timeout:?}; output tail: {:?}",
                self.lines().iter().rev().take(5).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for HolderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
