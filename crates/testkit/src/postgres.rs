//! A real PostgreSQL server for tests: `initdb` + `postgres` on a free loopback port.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use crate::process::{self, at_exit, cancel_at_exit, scratch_dir, scratch_root};
use crate::tls::ServerTls;

/// The database superuser every test server has.
pub const SUPERUSER: &str = "postgres";

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct PostgresOptions {
    /// Require this password (SCRAM) for TCP connections; trust when `None`.
    pub password: Option<String>,
    /// Serve TLS with this certificate; with `require_tls`, refuse plain TCP.
    pub tls: Option<ServerTls>,
    /// Only accept TLS connections over TCP.
    pub require_tls: bool,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

/// A running PostgreSQL server owned by the test process. Stopped and deleted on drop.
pub struct PostgresServer {
    dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    owner: Option<(u32, u32)>,
    options: PostgresOptions,
    child: Mutex<Option<Child>>,
    exit_hook: u64,
}

/// One server per test process, for tests that neither stop nor reconfigure it; give each
/// test its own database with [`PostgresServer::fresh_database`].
pub fn shared() -> &'static PostgresServer {
    static SHARED: OnceLock<PostgresServer> = OnceLock::new();
    SHARED.get_or_init(|| PostgresServer::start().expect("start the shared PostgreSQL server"))
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort_by_key(|path| {
        path.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.reverse();
    let postgres = process::find_binary("postgres", "PHALANX_PG_BIN", &versions)?;
    // Follow symlinks (Debian links /usr/local/bin/postgres into its versioned dir) so
    // initdb and postgres come from the same version.
    let postgres = fs::canonicalize(&postgres).unwrap_or(postgres);
    Ok(postgres.parent().expect("binary has a parent").to_owned())
}

impl PostgresServer {
    /// Starts a server with trust authentication and no TLS.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(PostgresOptions::default())
    }

    /// Starts a server with the given options.
    pub fn start_with(options: PostgresOptions) -> anyhow::Result<Self> {
        let bin_dir = bin_dir()?;
        let owner = process::server_user("postgres")?;
        let template = template_cluster(&bin_dir, owner)?;
        let dir = scratch_dir("pg")?;
        let data_dir = dir.join("data");
        let socket_dir = dir.join("socket");
        fs::create_dir_all(&socket_dir)?;
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data_dir)
            .status()
            .context("copy the template cluster")?;
        anyhow::ensure!(status.success(), "cp -a {} failed", template.display());

        let method = if options.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let host_kind = if options.require_tls {
            "hostssl"
        } else {
            "host"
        };
        fs::write(
            data_dir.join("pg_hba.conf"),
            format!(
                "local all all trust\nlocal replication all trust\n{host_kind} all all 127.0.0.1/32 {method}\n{host_kind} all all ::1/128 {method}\nhost replication all 127.0.0.1/32 {method}\n"
            ),
        )?;
        if let Some(tls) = &options.tls {
            tls.write_server_files(&data_dir)?;
        }
        process::chown_tree(&dir, owner)?;

        let exit_hook = stop_at_exit(&dir);
        let server = Self {
            dir,
            data_dir,
            socket_dir,
            port: 0,
            bin_dir,
            owner,
            options,
            child: Mutex::new(None),
            exit_hook,
        };
        server.boot_on_free_port()
    }

    fn boot_on_free_port(mut self) -> anyhow::Result<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            self.port = process::free_port();
            match self.boot() {
                Ok(()) => {
                    if let Some(password) = self.options.password.clone() {
                        self.psql(
                            "postgres",
                            &format!("ALTER USER {SUPERUSER} PASSWORD '{password}'"),
                        )?;
                    }
                    return Ok(self);
                }
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn boot(&self) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))?;
        let mut command = Command::new(self.bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.socket_dir.display()
            ))
            .args(["-c", "max_connections=400"])
            .args(["-c", "logging_collector=off"])
            .args(["-c", "log_min_messages=warning"]);
        if self.options.tls.is_some() {
            command.args([
                "-c",
                "ssl=on",
                "-c",
                "ssl_cert_file=server.crt",
                "-c",
                "ssl_key_file=server.key",
            ]);
        }
        for (name, value) in &self.options.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        let child = process::spawn_tied(command).context("spawn postgres")?;
        *self.child.lock().unwrap() = Some(child);
        let ready = crate::wait_until(
            "postgres to accept connections",
            Duration::from_secs(30),
            || {
                if !self.is_running() {
                    return Some(false);
                }
                self.psql("postgres", "SELECT 1").ok().map(|_| true)
            },
        )?;
        if !ready {
            bail!("postgres exited during start-up; log:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// Starts a hot standby of this server, streaming from it (`pg_basebackup -R`). With
    /// `synchronous_standby_names` set on this server (in [`PostgresOptions::settings`]),
    /// it is a synchronous standby: commits wait for it.
    pub fn start_standby(&self) -> anyhow::Result<PostgresServer> {
        let dir = scratch_dir("pg-standby")?;
        let data_dir = dir.join("data");
        let socket_dir = dir.join("socket");
        fs::create_dir_all(&socket_dir)?;
        process::chown_tree(&dir, self.owner)?;
        let mut command = Command::new(self.bin_dir.join("pg_basebackup"));
        command
            .arg("-D")
            .arg(&data_dir)
            .args(["-h", &self.socket_dir.display().to_string()])
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER])
            .args(["-R", "-X", "stream", "-c", "fast", "-w"])
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        let output = command.output().context("run pg_basebackup")?;
        if !output.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let exit_hook = stop_at_exit(&dir);
        let standby = PostgresServer {
            dir,
            data_dir,
            socket_dir,
            port: 0,
            bin_dir: self.bin_dir.clone(),
            owner: self.owner,
            // Read-only: no password change, no TLS files of its own.
            options: PostgresOptions {
                settings: vec![("hot_standby".into(), "on".into())],
                ..Default::default()
            },
            child: Mutex::new(None),
            exit_hook,
        };
        standby.boot_on_free_port()
    }

    /// Waits until a synchronous standby is streaming from this server.
    pub fn wait_for_synchronous_standby(&self, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_until("a synchronous standby", timeout, || {
            self.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')",
            )
            .ok()
            .filter(|count| count != "0")
            .map(|_| ())
        })
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket directory (for `psql -h`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// A `postgres://` URL for database `db` over TCP, with the password if there is one.
    pub fn url(&self, db: &str) -> String {
        match &self.options.password {
            Some(password) => format!(
                "postgres://{SUPERUSER}:{password}@127.0.0.1:{}/{db}",
                self.port
            ),
            None => format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// Creates a new, uniquely named database and returns its URL.
    pub fn fresh_database(&self) -> anyhow::Result<String> {
        let name = crate::unique_name("test");
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs SQL with `psql` over the unix socket as the superuser; returns its output.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let output = Command::new(self.bin_dir.join("psql"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db])
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("run psql")?;
        if !output.status.success() {
            bail!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// True while the postmaster runs.
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap();
        match child.as_mut() {
            Some(process) => matches!(process.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the server with a fast shutdown, keeping its data and port.
    pub fn stop(&self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            if !process::stop_pid(child.id(), Signal::SIGINT, Duration::from_secs(20)) {
                bail!("postgres did not stop within 20 s; it was killed");
            }
            let _ = child.wait();
        }
        Ok(())
    }

    /// Kills the postmaster with SIGKILL, as a crash would.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same data and port.
    pub fn start_again(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_running(), "postgres is already running");
        crate::wait_until(
            "the old postmaster to release its port",
            Duration::from_secs(20),
            || {
                (!self.data_dir.join("postmaster.pid").exists()
                    || std::net::TcpListener::bind(("127.0.0.1", self.port)).is_ok())
                .then_some(())
            },
        )?;
        self.boot()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.stop();
        cancel_at_exit(self.exit_hook);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Stops the postmaster whose data lives in `dir/data` and deletes `dir` when the process
/// exits (for servers never dropped, such as [`shared`]).
fn stop_at_exit(dir: &Path) -> u64 {
    let dir = dir.to_owned();
    at_exit(move || {
        // The postmaster's pid is the first line of postmaster.pid.
        if let Some(pid) = fs::read_to_string(dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
        {
            process::stop_pid(pid, Signal::SIGINT, Duration::from_secs(5));
        }
        let _ = fs::remove_dir_all(&dir);
    })
}

/// An `initdb`-ed cluster shared by all test processes of this machine, copied for each
/// server (copying takes milliseconds; initdb takes seconds).
fn template_cluster(bin_dir: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<PathBuf> {
    let version = bin_dir
        .parent()
        .and_then(|v| v.file_name())
        .and_then(|v| v.to_str())
        .unwrap_or("pg")
        .to_owned();
    let root = scratch_root();
    fs::create_dir_all(&root)?;
    let template = root.join(format!(
        "template-pg{version}-uid{}",
        owner.map_or(nix::unistd::getuid().as_raw(), |o| o.0)
    ));
    let complete = template.join("PHALANX_TEMPLATE_COMPLETE");
    let lock = File::create(root.join(format!("template-pg{version}.lock")))?;
    lock.lock().context("lock the template cluster")?;
    if !complete.exists() {
        let _ = fs::remove_dir_all(&template);
        fs::create_dir_all(&template)?;
        process::chown_tree(&template, owner)?;
        let mut command = Command::new(bin_dir.join("initdb"));
        command
            .arg("-D")
            .arg(&template)
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .current_dir(&root);
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
        let output = command.output().context("run initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        File::create(&complete)?;
    }
    Ok(template)
}
