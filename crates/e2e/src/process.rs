//! `phalanx node` as a child process of a test or a benchmark: its configuration file,
//! the two lines it prints on stdout, a client of its API, and signals. The process is
//! SIGKILLed when dropped while it runs, and its stderr is printed if the test fails.

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
/// The status `phalanx node` exits with when it stopped on its own (lease lost, fenced,
/// a write failed): restart it as a standby (see `phalanx node --help`).
pub const EXIT_NODE_STOPPED: i32 = 75;
/// How often a wait for a line looks (often: the benchmarks time takeovers with it).
const LINE_POLL: Duration = Duration::from_millis(5);

/// A binary that runs `node` and `init` as `phalanx` does: `phalanx` itself in the CLI's
/// tests, `phalanx-e2e-node` in this crate's ([`crate::node_binary!`]), the benchmark
/// re-executing itself.
#[derive(Clone, Debug)]
pub struct NodeBinary(PathBuf);

impl NodeBinary {
    /// The binary at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// This process's own binary.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self(std::env::current_exe()?))
    }
}

/// A node's configuration file; peers listen on an ephemeral port, the chain is polled
/// every 100 ms, forwards are not delayed.
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
    /// Lines of the `[cluster]` section (none when empty): `enabled`, lease timings.
    pub cluster_settings: String,
    /// More TOML, appended as is (whole sections).
    pub extra: String,
}

impl<'a> ConfigFile<'a> {
    /// A file for a node of `cluster` on `store_url` with its data in `data_dir`,
    /// following `chain`, its API on a port picked at start.
    pub fn new(
        data_dir: &'a Path,
        store_url: &'a str,
        cluster: &'a str,
        chain: &'a ChainConfig,
    ) -> Self {
        Self {
            data_dir,
            store_url,
            cluster,
            chain,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster_settings: String::new(),
            extra: String::new(),
        }
    }

    /// The API on `address`.
    pub fn api_listen(mut self, address: SocketAddr) -> Self {
        self.api_listen = address;
        self
    }

    /// `settings` (TOML lines) under `[cluster]`.
    pub fn cluster_settings(mut self, settings: impl Into<String>) -> Self {
        self.cluster_settings = settings.into();
        self
    }

    /// `sections` (TOML) appended to the file.
    pub fn extra(mut self, sections: impl Into<String>) -> Self {
        self.extra = sections.into();
        self
    }

    /// Writes `phalanx.toml` in the data directory and initializes the node's store with
    /// it (`init`, as an operator does once); returns its path.
    pub fn write(&self, binary: &NodeBinary) -> PathBuf {
        let path = self.write_uninitialized();
        initialize(binary, &path);
        path
    }

    /// As [`Self::write`], without initializing the store.
    pub fn write_uninitialized(&self) -> PathBuf {
        std::fs::create_dir_all(self.data_dir).expect("the data directory can be made");
        let cluster_section = if self.cluster_settings.is_empty() {
            String::new()
        } else {
            format!("\n[cluster]\n{}\n", self.cluster_settings.trim_end())
        };
        let text = format!(
            r#"
network = "regtest"
data_dir = "{dir}"

[store]
url = "{store_url}"
cluster = "{cluster}"
instance_id = "a"
{cluster_section}
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
        let text = format!("{text}\n{}\n", self.extra);
        let path = self.data_dir.join("phalanx.toml");
        std::fs::write(&path, text).expect("the configuration file can be written");
        path
    }
}

/// Where a process's stderr is also written as it comes.
#[derive(Clone, Debug)]
pub enum LogFile {
    /// A file of this test process's, removed when the process is dropped in a test that
    /// did not fail: what is left of a test killed (a timeout) before it could print.
    Temporary,
    /// A file that is kept (a benchmark's `--keep-dir`).
    Kept(PathBuf),
}

/// A running node process; SIGKILLed if dropped while it runs.
pub struct NodeProcess {
    /// What to call it when printing its stderr.
    pub name: String,
    /// The process.
    pub child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    log_file: Option<(PathBuf, bool)>,
}

/// The directory of this test process's temporary log files.
fn log_dir() -> PathBuf {
    std::env::temp_dir()
        .join("phalanx-test-logs")
        .join(std::process::id().to_string())
}

/// The fields of the `node started` line.
#[derive(Clone, Debug)]
pub struct Started {
    /// `node_id=`.
    pub node_id: String,
    /// `peers=`: where it listens for peers.
    pub peers: Vec<String>,
    /// `epoch=`.
    pub epoch: u64,
}

/// Spawns `binary args...` with no `PHALANX_*` variable but those of `env`.
pub fn spawn(
    binary: &NodeBinary,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    log: LogFile,
) -> NodeProcess {
    let mut command = Command::new(&binary.0);
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
    let mut child = phalanx_testkit::process::spawn_tied(command)
        .unwrap_or_else(|err| panic!("cannot spawn {}: {err}", binary.0.display()));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&stdout);
    let out = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            lock(&lines).push(line);
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let text = Arc::clone(&stderr);
    let mut err = child.stderr.take().expect("stderr is piped");
    let (path, kept) = match log {
        LogFile::Temporary => {
            let safe_name: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            (
                log_dir().join(format!("{safe_name}-{}.log", child.id())),
                false,
            )
        }
        LogFile::Kept(path) => (path, true),
    };
    let mut file = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        })
        .ok();
    let log_file = file.is_some().then_some((path, kept));
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = err.read(&mut buffer) {
            if n == 0 {
                break;
            }
            if let Some(file) = &mut file {
                let _ = file.write_all(&buffer[..n]);
            }
            lock(&text).push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    NodeProcess {
        name: name.to_owned(),
        child,
        stdout,
        stderr,
        log_file,
    }
}

/// Runs `binary init --config <config>` to its end, with no `PHALANX_*` variable, and
/// returns its stdout; fails the test unless it succeeds.
pub fn initialize(binary: &NodeBinary, config: &Path) -> String {
    let mut command = Command::new(&binary.0);
    command
        .args(["init", "--config", &config.display().to_string()])
        .stdin(Stdio::null());
    for (variable, _) in std::env::vars() {
        if variable.starts_with("PHALANX_") {
            command.env_remove(variable);
        }
    }
    let output = command.output().expect("run init");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "init --config {} failed ({}):\n{stdout}{}",
        config.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `binary node --config <config> extra...`, its stderr in a temporary log file.
pub fn node(binary: &NodeBinary, name: &str, config: &Path, extra: &[&str]) -> NodeProcess {
    let config = config.display().to_string();
    let mut args = vec!["node", "--config", &config];
    args.extend_from_slice(extra);
    spawn(binary, name, &args, &[], LogFile::Temporary)
}

impl NodeProcess {
    /// The first stdout line starting with `prefix`.
    pub fn line(&self, prefix: &str) -> Option<String> {
        lock(&self.stdout)
            .iter()
            .find(|line| line.starts_with(prefix))
            .cloned()
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.stdout).clone()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Waits for a stdout line starting with `prefix`; an error if the process exits
    /// first or after `timeout`.
    pub async fn wait_line_within(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.line(prefix) {
                return Ok(line);
            }
            if let Some(status) = self.child.try_wait().map_err(|err| err.to_string())? {
                // Let the reader threads catch up before giving up.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(line) = self.line(prefix) {
                    return Ok(line);
                }
                return Err(format!(
                    "{} exited ({status}) before printing {prefix:?}",
                    self.name
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: no {prefix:?} line within {timeout:?}",
                    self.name
                ));
            }
            tokio::time::sleep(LINE_POLL).await;
        }
    }

    /// As [`Self::wait_line_within`] with [`LINE_TIMEOUT`]; fails the test with the
    /// process's stderr.
    pub async fn wait_line(&mut self, prefix: &str) -> String {
        match self.wait_line_within(prefix, LINE_TIMEOUT).await {
            Ok(line) => line,
            Err(err) => panic!("{err}\nstderr:\n{}", self.stderr()),
        }
    }

    /// The API's URL and a client holding the token, from the `api listening` line.
    pub async fn api(&mut self) -> (String, ApiClient) {
        let line = self.wait_line("api listening on ").await;
        let rest = line.strip_prefix("api listening on ").expect("the prefix");
        let (url, token_file) = rest.split_once(" token_file ").expect(&line);
        let token = read_token(Path::new(token_file)).expect("the token file is readable");
        let client = ApiClient::new(url)
            .expect("the API's URL")
            .with_timeout(API_TIMEOUT)
            .with_token(token);
        (url.to_owned(), client)
    }

    /// The fields of the `node started` line, once printed within `timeout`.
    pub async fn started_within(&mut self, timeout: Duration) -> Result<Started, String> {
        let line = self.wait_line_within("node started ", timeout).await?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
                .ok_or_else(|| format!("no {name}= in {line:?}"))
        };
        Ok(Started {
            node_id: field("node_id")?,
            peers: field("peers")?.split(',').map(str::to_owned).collect(),
            epoch: field("epoch")?
                .parse()
                .map_err(|err| format!("epoch in {line:?}: {err}"))?,
        })
    }

    /// The fields of the `node started` line; fails the test after [`LINE_TIMEOUT`].
    pub async fn started(&mut self) -> Started {
        match self.started_within(LINE_TIMEOUT).await {
            Ok(started) => started,
            Err(err) => panic!("{err}\nstderr:\n{}", self.stderr()),
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `is running`, or how the process ended.
    pub fn status(&mut self) -> String {
        match self.child.try_wait() {
            Ok(None) => "is running".to_owned(),
            Ok(Some(status)) => format!("exited ({status})"),
            Err(err) => format!("cannot be waited for: {err}"),
        }
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        phalanx_testkit::process::signal(&self.child, signal).expect("the signal is sent");
    }

    /// Waits until the process exited; fails after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited for") {
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
            tokio::time::sleep(Duration::from_millis(20)).await;
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

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let file = self
                .log_file
                .as_ref()
                .map(|(path, _)| format!(" (also in {})", path.display()))
                .unwrap_or_default();
            eprintln!("--- stderr of {}{file} ---\n{}", self.name, self.stderr());
        } else {
            if let Some((path, false)) = &self.log_file {
                let _ = std::fs::remove_file(path);
                // The last one out removes the directory (it fails while others remain).
                let _ = std::fs::remove_dir(log_dir());
            }
            // Kept for `FailureLogs`: a scenario may fail long after this process ended.
            lock(&ENDED).push((self.name.clone(), tail(&self.stderr(), ENDED_TAIL_LINES)));
        }
    }
}

/// Lines kept of each process that ended before the test failed.
const ENDED_TAIL_LINES: usize = 60;

/// The stderr tails of the processes of this test that ended (nextest runs one test per
/// process).
static ENDED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Prints, when the test fails, the stderr tail of every node process that ended
/// earlier in it (those still running print theirs when dropped) and the logs named with
/// [`FailureLogs::with`] (the store servers'): a multi-process scenario's cause is
/// rarely in the process that noticed.
#[derive(Default)]
pub struct FailureLogs<'a> {
    extra: Vec<(String, Box<dyn Fn() -> String + 'a>)>,
}

impl<'a> FailureLogs<'a> {
    /// Prints only the ended processes' tails.
    pub fn new() -> Self {
        Self::default()
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
        for (name, tail) in lock(&ENDED).iter() {
            eprintln!("--- stderr of {name} (ended earlier; last lines) ---\n{tail}");
        }
        for (name, log) in &self.extra {
            eprintln!("--- {name} ---\n{}", log());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
