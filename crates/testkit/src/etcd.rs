//! Real etcd servers for tests: Debian's `etcd` binary on free loopback ports, one member
//! or a cluster of several.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use crate::process::{self, at_exit, cancel_at_exit, scratch_dir};

/// The server flags Phalanx needs for values up to 64 MiB and large batches; the same as
/// `docs/operations.md` recommends for production.
pub const PHALANX_FLAGS: &[&str] = &[
    "--max-request-bytes=73400320",
    "--max-txn-ops=10000",
    "--quota-backend-bytes=8589934592",
    "--auto-compaction-mode=revision",
    "--auto-compaction-retention=1000",
];

/// TLS settings for the client port.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// Server certificate file.
    pub cert: PathBuf,
    /// Server key file.
    pub key: PathBuf,
    /// CA for client certificates.
    pub ca: PathBuf,
    /// Require client certificates.
    pub client_cert_auth: bool,
}

/// How to start a server.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Members in the cluster.
    pub members: usize,
    /// Start with [`PHALANX_FLAGS`] (true) or etcd's defaults (false).
    pub phalanx_flags: bool,
    /// Serve clients over TLS.
    pub tls: Option<EtcdTls>,
    /// Enable authentication with a `root` user having this password.
    pub root_password: Option<String>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            members: 1,
            phalanx_flags: true,
            tls: None,
            root_password: None,
        }
    }
}

struct Member {
    name: String,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster owned by the test process. Killed and deleted on drop.
pub struct EtcdServer {
    dir: PathBuf,
    options: EtcdOptions,
    members: Mutex<Vec<Member>>,
    exit_hook: u64,
}

/// One single-member server per test process, for tests that neither stop nor
/// reconfigure it; give each test its own key prefix ([`crate::unique_name`]).
pub fn shared() -> &'static EtcdServer {
    static SHARED: OnceLock<EtcdServer> = OnceLock::new();
    SHARED.get_or_init(|| EtcdServer::start().expect("start the shared etcd server"))
}

fn etcd_binary(name: &str) -> anyhow::Result<PathBuf> {
    process::find_binary(name, "PHALANX_ETCD_BIN", &[])
}

impl EtcdServer {
    /// Starts a one-member server with [`PHALANX_FLAGS`].
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(EtcdOptions::default())
    }

    /// Starts a server with the given options.
    ///
    /// The ports are picked free and released before etcd binds them, so another process
    /// may take one meanwhile: such a start is retried on new ports.
    pub fn start_with(options: EtcdOptions) -> anyhow::Result<Self> {
        const ATTEMPTS: usize = 5;
        let mut attempt = 1;
        loop {
            match Self::start_once(options.clone()) {
                Err(err)
                    if attempt < ATTEMPTS
                        && format!("{err:#}").contains("address already in use") =>
                {
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    fn start_once(options: EtcdOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(options.members >= 1, "an etcd cluster needs a member");
        let dir = scratch_dir("etcd")?;
        let members: Vec<Member> = (0..options.members)
            .map(|i| Member {
                name: format!("m{i}"),
                data_dir: dir.join(format!("m{i}")),
                client_port: process::free_port(),
                peer_port: process::free_port(),
                child: None,
            })
            .collect();
        let dir_for_hook = dir.clone();
        let exit_hook = at_exit(move || {
            // Members are our children; their pids are in the pid files we wrote.
            for entry in fs::read_dir(&dir_for_hook).into_iter().flatten().flatten() {
                if let Some(pid) = fs::read_to_string(entry.path().join("pid"))
                    .ok()
                    .and_then(|pid| pid.trim().parse::<u32>().ok())
                {
                    process::stop_pid(pid, Signal::SIGKILL, Duration::from_secs(2));
                }
            }
            let _ = fs::remove_dir_all(&dir_for_hook);
        });
        let server = Self {
            dir,
            options,
            members: Mutex::new(members),
            exit_hook,
        };
        let count = server.options.members;
        for index in 0..count {
            server.spawn_member(index)?;
        }
        for index in 0..count {
            server.wait_healthy(index)?;
        }
        if let Some(password) = server.options.root_password.clone() {
            server.enable_auth(&password)?;
        }
        Ok(server)
    }

    fn scheme(&self) -> &'static str {
        if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn spawn_member(&self, index: usize) -> anyhow::Result<()> {
        let mut members = self.members.lock().unwrap();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let scheme = self.scheme();
        let member = &mut members[index];
        fs::create_dir_all(&member.data_dir)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", member.name)))?;
        let client_url = format!("{scheme}://127.0.0.1:{}", member.client_port);
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let mut command = Command::new(etcd_binary("etcd")?);
        command
            .arg(format!("--name={}", member.name))
            .arg(format!(
                "--data-dir={}",
                member.data_dir.join("data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=phalanx-test")
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .args(["--logger=zap", "--log-level=warn"]);
        if self.options.phalanx_flags {
            command.args(PHALANX_FLAGS);
        }
        if let Some(tls) = &self.options.tls {
            command
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()));
            if tls.client_cert_auth {
                command
                    .arg("--client-cert-auth")
                    .arg(format!("--trusted-ca-file={}", tls.ca.display()));
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = process::spawn_tied(command).context("spawn etcd")?;
        fs::write(member.data_dir.join("pid"), child.id().to_string())?;
        member.child = Some(child);
        Ok(())
    }

    fn etcdctl(&self, endpoints: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(etcd_binary("etcdctl")?);
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s");
        if let Some(tls) = &self.options.tls {
            command.arg(format!("--cacert={}", tls.ca.display()));
            if tls.client_cert_auth {
                // The server certificate carries clientAuth too; good enough for etcdctl.
                command
                    .arg(format!("--cert={}", tls.cert.display()))
                    .arg(format!("--key={}", tls.key.display()));
            }
        }
        Ok(command)
    }

    fn wait_healthy(&self, index: usize) -> anyhow::Result<()> {
        let endpoint = self.endpoint(index);
        let healthy = crate::wait_until("etcd to report healthy", Duration::from_secs(30), || {
            if !self.member_running(index) {
                return Some(false);
            }
            let output = self
                .etcdctl(&endpoint)
                .ok()?
                .args(["endpoint", "health"])
                .output()
                .ok()?;
            output.status.success().then_some(true)
        })?;
        if !healthy {
            bail!(
                "etcd member {index} exited during start-up; log:\n{}",
                self.log_tail(index)
            );
        }
        Ok(())
    }

    fn enable_auth(&self, password: &str) -> anyhow::Result<()> {
        let endpoints = self.endpoints().join(",");
        for args in [
            vec![
                "user",
                "add",
                "root",
                "--interactive=false",
                "--new-user-password",
                password,
            ],
            vec!["user", "grant-role", "root", "root"],
            vec!["auth", "enable"],
        ] {
            let output = self.etcdctl(&endpoints)?.args(&args).output()?;
            anyhow::ensure!(
                output.status.success(),
                "etcdctl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// `host:port` of member `index`'s client URL, with its scheme (`http://...`).
    pub fn endpoint(&self, index: usize) -> String {
        let port = self.members.lock().unwrap()[index].client_port;
        format!("{}://127.0.0.1:{port}", self.scheme())
    }

    /// Client endpoints of every member, with scheme.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.options.members)
            .map(|i| self.endpoint(i))
            .collect()
    }

    /// An `etcd://` store URL listing every member, with key prefix `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        let hosts = self
            .members
            .lock()
            .unwrap()
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",");
        format!("etcd://{hosts}/{prefix}")
    }

    /// True while member `index` runs.
    pub fn member_running(&self, index: usize) -> bool {
        let mut members = self.members.lock().unwrap();
        match members[index].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills member `index` with SIGKILL, keeping its data.
    pub fn kill_member(&self, index: usize) {
        if let Some(mut child) = self.members.lock().unwrap()[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts a killed member on the same data dir and ports and waits until healthy.
    pub fn restart_member(&self, index: usize) -> anyhow::Result<()> {
        anyhow::ensure!(!self.member_running(index), "member {index} is running");
        self.spawn_member(index)?;
        self.wait_healthy(index)
    }

    /// Kills every member.
    pub fn kill(&self) {
        for index in 0..self.options.members {
            self.kill_member(index);
        }
    }

    /// Restarts every killed member.
    pub fn restart(&self) -> anyhow::Result<()> {
        for index in 0..self.options.members {
            if !self.member_running(index) {
                self.spawn_member(index)?;
            }
        }
        for index in 0..self.options.members {
            self.wait_healthy(index)?;
        }
        Ok(())
    }

    /// Saves a snapshot of the (single-member) server's data to `path`, as an operator's
    /// backup would (`etcdctl snapshot save`).
    pub fn save_snapshot(&self, path: &Path) -> anyhow::Result<()> {
        anyhow::ensure!(self.options.members == 1, "snapshots of one member only");
        let output = self
            .etcdctl(&self.endpoint(0))?
            .args(["snapshot", "save"])
            .arg(path)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "etcdctl snapshot save failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Replaces the (single-member) server's data with the snapshot at `path`, as a
    /// disaster recovery does: stop the member, `etcdctl snapshot restore` into a fresh
    /// data directory, start it on the same ports.
    pub fn restore_snapshot(&self, path: &Path) -> anyhow::Result<()> {
        anyhow::ensure!(self.options.members == 1, "snapshots of one member only");
        self.kill_member(0);
        let (name, data, peer_port) = {
            let members = self.members.lock().unwrap();
            let member = &members[0];
            (
                member.name.clone(),
                member.data_dir.join("data"),
                member.peer_port,
            )
        };
        fs::remove_dir_all(&data)?;
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let output = Command::new(etcd_binary("etcdctl")?)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(path)
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--initial-cluster={name}={peer_url}"))
            .arg("--initial-cluster-token=phalanx-test")
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "etcdctl snapshot restore failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.restart_member(0)
    }

    /// The last lines of member `index`'s log.
    pub fn log_tail(&self, index: usize) -> String {
        let text = fs::read_to_string(self.dir.join(format!("m{index}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        cancel_at_exit(self.exit_hook);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
