//! `phalanx node` as a child process of the test: its configuration file, the two lines
//! it prints on stdout, a client of its API, and signals. The process is SIGKILLed if
//! the test ends while it runs, and its stderr is printed if the test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use phalanx_api::{ApiClient, read_token};
use phalanx_node::config::ChainConfig;

/// How long a node may take to print a line it is expected to print.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to exit once it should.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one API request may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// What differs between the configuration files of the tests.
pub struct ConfigFile<'a> {
    /// The data directory (seed, API token); the file is written in it.
    pub data_dir: &'a Path,
    /// The store's URL.
    pub store_url: &'a str,
    /// The store's cluster name.
    pub cluster: &'a str,
    /// The chain to follow.
    pub chain: &'a ChainConfig,
    /// Where the API listens (`127.0.0.1:0`: a port picked at start).
    pub api_listen: SocketAddr,
}

impl ConfigFile<'_> {
    /// Writes `phalanx.toml` in the data directory and initializes the node's store with
    /// it (`phalanx init`, as an operator does once); returns its path. Peers listen on an
    /// ephemeral port, the chain is polled every 100 ms, forwards are not delayed.
    pub fn write(&self) -> PathBuf {
        let path = self.write_uninitialized();
        initialize(&path);
        path
    }

    /// As [`Self::write`], without initializing the store.
    pub fn write_uninitialized(&self) -> PathBuf {
        std::fs::create_dir_all(self.data_dir).unwrap();
        let text = format!(
            r#"
network = "regtest"
data_dir = "{dir}"

[store]
url = "{store_url}"
cluster = "{cluster}"
instance_id = "a"

[chain]
rpc_url = "{rpc_url}"
rpc_user = "{rpc_user}"
rpc_password = "{rpc_password}"
poll_interval_ms = 100

[lightning]
listen = ["127.0.0.1:0"]
alias = "{cluster}"
forward_delay_ms = 0

[api]
listen = "{api_listen}"
"#,
            dir = self.data_dir.display(),
            store_url = self.store_url,
            cluster = self.cluster,
            rpc_url = self.chain.rpc_url,
            rpc_user = self.chain.rpc_user,
            rpc_password = self.chain.rpc_password,
            api_listen = self.api_listen,
        );
        let path = self.data_dir.join("phalanx.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A running `phalanx` process; SIGKILLed if the test ends while it runs.
pub struct Phalanx {
    /// What to call it when printing its stderr.
    pub name: String,
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// Where its stderr is also written as it comes: what is left of a test that was
    /// killed (a timeout) before it could print anything. Removed when the process is
    /// dropped in a test that did not fail.
    log_file: Option<PathBuf>,
}

/// The directory of this test process's log files.
fn log_dir() -> PathBuf {
    std::env::temp_dir()
        .join("phalanx-test-logs")
        .join(std::process::id().to_string())
}

/// The fields of the `node started` line.
#[derive(Clone, Debug)]
pub struct Started {
    pub node_id: String,
    pub peers: Vec<String>,
    pub epoch: u64,
}

/// Spawns `phalanx args...` with no `PHALANX_*` variable but those of `env`.
pub fn phalanx(name: &str, args: &[&str], env: &[(&str, &str)]) -> Phalanx {
    let mut command = Command::new(env!("CARGO_BIN_EXE_phalanx"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (variable, _) in std::env::vars() {
        if variable.starts_with("PHALANX_") {
            command.env_remove(variable);
        }
    }
    command.envs(env.iter().copied());
    let mut child = phalanx_testkit::process::spawn_tied(command).expect("spawn phalanx");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&stdout);
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line);
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let text = Arc::clone(&stderr);
    let mut err = child.stderr.take().unwrap();
    let safe_name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let log_file = log_dir().join(format!("{safe_name}-{}.log", child.id()));
    let mut file = std::fs::create_dir_all(log_dir())
        .and_then(|()| std::fs::File::create(&log_file))
        .ok();
    let log_file = file.is_some().then_some(log_file);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = err.read(&mut buffer) {
            if n == 0 {
                break;
            }
            if let Some(file) = &mut file {
                let _ = file.write_all(&buffer[..n]);
            }
            text.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    Phalanx {
        name: name.to_owned(),
        child,
        stdout,
        stderr,
        log_file,
    }
}

/// Runs `phalanx init --config <config>` to its end and returns its output; fails the
/// test unless it succeeds.
pub fn initialize(config: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["init", "--config", config.to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .expect("run phalanx init");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "phalanx init --config {} failed ({}):\n{stdout}{}",
        config.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `phalanx node --config <config> extra...`.
pub fn node(name: &str, config: &Path, extra: &[&str]) -> Phalanx {
    let mut args = vec!["node", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    phalanx(name, &args, &[])
}

impl Phalanx {
    /// The first stdout line starting with `prefix`.
    pub fn line(&self, prefix: &str) -> Option<String> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .find(|line| line.starts_with(prefix))
            .cloned()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a stdout line starting with `prefix`; fails if the process exits first
    /// or after [`LINE_TIMEOUT`].
    pub async fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            if let Some(line) = self.line(prefix) {
                return line;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads catch up before giving up.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(line) = self.line(prefix) {
                    return line;
                }
                panic!(
                    "{} exited ({status}) before printing {prefix:?}\nstderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {prefix:?} line within {LINE_TIMEOUT:?}\nstderr:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The API's URL and a client holding the token, from the `api listening` line.
    pub async fn api(&mut self) -> (String, ApiClient) {
        let line = self.wait_line("api listening on ").await;
        let rest = line.strip_prefix("api listening on ").unwrap();
        let (url, token_file) = rest.split_once(" token_file ").expect(&line);
        let token = read_token(Path::new(token_file)).expect("the token file is readable");
        let client = ApiClient::new(url)
            .unwrap()
            .with_timeout(API_TIMEOUT)
            .with_token(token);
        (url.to_owned(), client)
    }

    /// The fields of the `node started` line.
    pub async fn started(&mut self) -> Started {
        let line = self.wait_line("node started ").await;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
                .to_owned()
        };
        Started {
            node_id: field("node_id"),
            peers: field("peers").split(',').map(str::to_owned).collect(),
            epoch: field("epoch").parse().unwrap(),
        }
    }

    /// `is running`, or how the process ended.
    pub fn status(&mut self) -> String {
        match self.child.try_wait() {
            Ok(None) => "is running".to_owned(),
            Ok(Some(status)) => format!("exited ({status})"),
            Err(err) => format!("cannot be waited for: {err}"),
        }
    }

    pub fn signal(&self, signal: Signal) {
        phalanx_testkit::process::signal(&self.child, signal).unwrap();
    }

    /// Waits until the process exited; fails after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}\nstderr:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(EXIT_TIMEOUT).await
    }

    /// SIGKILL (`kill -9`: no shutdown of any kind), then waits for the exit.
    pub async fn kill(&mut self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        self.wait_exit(EXIT_TIMEOUT).await
    }
}

impl Drop for Phalanx {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let file = self
                .log_file
                .as_ref()
                .map(|path| format!(" (also in {})", path.display()))
                .unwrap_or_default();
            eprintln!("--- stderr of {}{file} ---\n{}", self.name, self.stderr());
        } else {
            if let Some(path) = &self.log_file {
                let _ = std::fs::remove_file(path);
                // The last one out removes the directory (it fails while others remain).
                let _ = std::fs::remove_dir(log_dir());
            }
            // Kept for `FailureLogs`: a scenario may fail long after this process ended.
            ENDED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((self.name.clone(), tail(&self.stderr(), ENDED_TAIL_LINES)));
        }
    }
}

/// Lines kept of each process that ended before the test failed.
const ENDED_TAIL_LINES: usize = 60;

/// The stderr tails of the processes of this test that ended (tests run one per process).
static ENDED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Prints, when the test fails, the stderr tail of every `phalanx` process that ended
/// earlier in it (those still running print theirs when dropped) and the logs named with
/// [`FailureLogs::with`] (the store servers'): a multi-process scenario's cause is
/// rarely in the process that noticed.
pub struct FailureLogs<'a> {
    extra: Vec<(String, Box<dyn Fn() -> String + 'a>)>,
}

impl<'a> FailureLogs<'a> {
    pub fn new() -> Self {
        Self { extra: Vec::new() }
    }

    /// Also prints `log()` under `name`.
    pub fn with(mut self, name: &str, log: impl Fn() -> String + 'a) -> Self {
        self.extra.push((name.to_owned(), Box::new(log)));
        self
    }
}

impl Drop for FailureLogs<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (name, tail) in ENDED.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            eprintln!("--- stderr of {name} (ended earlier; last lines) ---\n{tail}");
        }
        for (name, log) in &self.extra {
            eprintln!("--- {name} ---\n{}", log());
        }
    }
}
