//! A real load balancer: Debian's `haproxy`, in TCP mode, on a free loopback port in a
//! scratch directory, in front of a list of servers, stopped when dropped.
//!
//! It sends each new connection to the server with the fewest (`leastconn`), checks every
//! server every 200 ms (its port, or an HTTP health endpoint beside it), and sends a
//! connection whose server refuses it to another one (`option redispatch`), as an
//! operator's balancer in front of fronts would.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::{free_port, scratch_dir, spawn_tied};

/// A server behind the balancer.
#[derive(Clone, Copy, Debug)]
pub struct Server {
    /// Where connections go.
    pub address: SocketAddr,
    /// The port, on the same host, of its HTTP health endpoint (`GET /v1/ready`); `None`:
    /// the connection port itself is checked.
    pub ready_port: Option<u16>,
}

/// A running haproxy.
pub struct Haproxy {
    child: Child,
    address: SocketAddr,
    dir: PathBuf,
}

impl Haproxy {
    /// Starts haproxy balancing TCP connections over `servers`, each checked by a TCP
    /// connection to its port.
    pub fn start(servers: &[SocketAddr]) -> anyhow::Result<Self> {
        let servers: Vec<Server> = servers
            .iter()
            .map(|address| Server {
                address: *address,
                ready_port: None,
            })
            .collect();
        Self::start_servers(&servers)
    }

    /// Starts haproxy balancing TCP connections over `servers`, sending connections only
    /// to those whose `GET /v1/ready` answers 200 on their `ready_port` (a front's API:
    /// 503 while it has no backend).
    pub fn start_servers(servers: &[Server]) -> anyhow::Result<Self> {
        let dir = scratch_dir("haproxy")?;
        let mut last_error = None;
        // Another process may take the free port before haproxy binds it: try again.
        for _ in 0..5 {
            let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let config = dir.join("haproxy.cfg");
            std::fs::write(&config, config_text(address, servers))?;
            let log = std::fs::File::create(dir.join("haproxy.log"))?;
            let mut command = Command::new("haproxy");
            command
                .arg("-db")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            let child = spawn_tied(command).context("run haproxy (apt-get install haproxy)")?;
            let mut haproxy = Self {
                child,
                address,
                dir: dir.clone(),
            };
            match haproxy.wait_listening(Duration::from_secs(10)) {
                Ok(()) => return Ok(haproxy),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("at least one try"))
    }

    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("haproxy exited ({status}): {}", self.log_tail());
            }
            if TcpStream::connect_timeout(&self.address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "haproxy did not listen within {timeout:?}: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The end of haproxy's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config_text(address: SocketAddr, servers: &[Server]) -> String {
    let mut text = format!(
        "global\n    maxconn 1000\n\n\
         defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 1h\n    \
         timeout server 1h\n    timeout check 1s\n    retries 3\n    option redispatch\n\n\
         frontend peers\n    bind {address}\n    default_backend fronts\n\n\
         backend fronts\n    balance leastconn\n"
    );
    if servers.iter().any(|server| server.ready_port.is_some()) {
        text.push_str("    option httpchk GET /v1/ready\n    http-check expect status 200\n");
    }
    for (index, server) in servers.iter().enumerate() {
        let port = server
            .ready_port
            .map(|port| format!(" port {port}"))
            .unwrap_or_default();
        text.push_str(&format!(
            "    server front{index} {} check{port} inter 200ms fall 1 rise 1\n",
            server.address
        ));
    }
    text
}
