//! Alice as a cluster: instances of one node on PostgreSQL or etcd (the same seed and
//! store, an instance id each), and what a scenario does to it in one round
//! ([`Disruption`]). An instance that stopped comes back as a standby, as its supervisor
//! would restart it.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use phalanx_api::{ApiClient, ServerState};
use phalanx_store::Store;
use phalanx_testkit::etcd::{EtcdOptions, EtcdServer};
use phalanx_testkit::postgres::PostgresServer;
use phalanx_testkit::proxy::{Mode, TcpProxy};

use crate::STEP_TIMEOUT;
use crate::invariants::epoch_won_at;
use crate::nodes::wait_for;
use crate::process::{EXIT_NODE_STOPPED, EXIT_TIMEOUT, NodeBinary, NodeProcess, node};
use crate::stream::Stream;
use crate::world::Backend;

/// How long a standby may take to lead after the active instance stopped or lapsed (the
/// lease's TTL is 4 s; loading and reconnecting add a little).
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Payments between two disruptions.
pub const PAYMENTS_PER_ROUND: usize = 4;
/// How long payments may take to flow again after a disruption.
pub const FLOW_TIMEOUT: Duration = Duration::from_secs(120);

/// What the test does to the cluster in one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disruption {
    /// `kill -9` of the active instance: no shutdown of any kind; the lease lapses (or,
    /// on PostgreSQL, is freed when the dead holder's session ends).
    Kill,
    /// SIGTERM of the active instance: persist, resign the lease.
    Terminate,
    /// SIGSTOP of the active instance until a standby leads, then SIGCONT.
    Freeze,
    /// The active instance's store connection black-holed; its peers still reachable.
    CutOffStore,
    /// The store server stopped and started again.
    RestartStore,
    /// Of three etcd members, one lost and brought back, then two (quorum) lost and
    /// brought back.
    EtcdQuorum,
    /// The store refuses, permanently, every write of the ChannelManager by the active
    /// instance (as a full disk or a revoked permission would): it must stop on its own,
    /// though its lease is healthy, so that a standby takes over.
    RefuseManagerWrites,
}

/// A store server of the scenario's own, for the scenarios that stop it.
pub enum OwnServer {
    /// None: the scenario uses the test process's shared server.
    None,
    /// A PostgreSQL server of its own.
    Postgres(PostgresServer),
    /// An etcd cluster of its own.
    Etcd(EtcdServer),
}

impl OwnServer {
    /// The server `disruption` needs, and Alice's store URL on it (or on the shared one).
    pub fn for_scenario(backend: Backend, disruption: Disruption, dir: &Path) -> (Self, String) {
        let own = match disruption {
            Disruption::RestartStore => match backend {
                Backend::Postgres => {
                    OwnServer::Postgres(PostgresServer::start().expect("PostgreSQL starts"))
                }
                _ => OwnServer::Etcd(EtcdServer::start().expect("etcd starts")),
            },
            Disruption::EtcdQuorum => OwnServer::Etcd(
                EtcdServer::start_with(EtcdOptions {
                    members: 3,
                    ..EtcdOptions::default()
                })
                .expect("a three-member etcd starts"),
            ),
            _ => OwnServer::None,
        };
        let url = match &own {
            OwnServer::None => backend.store_url(dir),
            OwnServer::Postgres(server) => server.fresh_database().expect("a database"),
            OwnServer::Etcd(server) => server.url("alice"),
        };
        (own, url)
    }

    /// The last lines of the server's log (every member's, for etcd).
    pub fn log_tail(&self) -> String {
        match self {
            OwnServer::None => "(the shared server)".to_owned(),
            OwnServer::Postgres(server) => server.log_tail(),
            OwnServer::Etcd(server) => (0..server.endpoints().len())
                .map(|member| format!("member {member}:\n{}", server.log_tail(member)))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// Stops the server and starts it again on the same data and ports.
    pub async fn restart(&self) {
        match self {
            OwnServer::None => panic!("the scenario has no server of its own"),
            OwnServer::Postgres(server) => {
                server.stop().expect("PostgreSQL stops");
                // Down long enough for every connection and renewal to notice.
                tokio::time::sleep(Duration::from_secs(1)).await;
                blocking(|| server.start_again()).await;
            }
            OwnServer::Etcd(server) => {
                server.kill();
                tokio::time::sleep(Duration::from_secs(1)).await;
                blocking(|| server.restart()).await;
            }
        }
    }

    /// The scenario's own etcd (it fails the test if there is none).
    pub fn etcd(&self) -> &EtcdServer {
        match self {
            OwnServer::Etcd(server) => server,
            _ => panic!("the scenario runs its own etcd"),
        }
    }
}

/// Runs a blocking testkit call without stalling the test's runtime.
async fn blocking(call: impl FnOnce() -> anyhow::Result<()>) {
    tokio::task::block_in_place(call).expect("the store server starts again");
}

/// What one round took.
#[derive(Debug)]
#[allow(dead_code)] // Printed, not read.
pub enum Round {
    /// The disruption to the standby's `node started`.
    TakenOver(Duration),
    /// The active instance stopped acting `ahead` of the new epoch being won, and its
    /// process exited `exited_after` it stopped acting.
    FencedAhead {
        /// How long before the new epoch was won the active instance stopped acting.
        ahead: Duration,
        /// How long after it stopped acting its process exited.
        exited_after: Duration,
    },
    /// The active instance kept serving.
    Served,
    /// The active instance stopped; the disruption to the next `node started`.
    Stopped(Duration),
}

/// One `phalanx node` process of Alice's.
pub struct Instance {
    /// Its instance id.
    pub id: &'static str,
    /// Its process.
    pub process: NodeProcess,
    /// Its own API (not through the balancer).
    pub api: ApiClient,
    /// Whether its `node started` line was counted.
    pub announced: bool,
    /// The proxy between it and the store, in the scenario that cuts it off.
    store_proxy: Option<TcpProxy>,
}

/// Alice's instances, and the leaderships they announced.
pub struct Cluster {
    binary: NodeBinary,
    config: PathBuf,
    store_url: String,
    /// Whether each instance reaches the store through a proxy of its own.
    proxy_store: bool,
    /// The running instances (and those that stopped, until restarted).
    pub instances: Vec<Instance>,
    /// The index of the instance that announced the latest leadership.
    pub active: usize,
    /// Every instance ever started, by id (for the balancer and the watch).
    pub known: Arc<Mutex<Vec<(&'static str, ApiClient)>>>,
    /// Leaderships announced by `node started` lines, in order: (instance id, epoch).
    pub leaderships: Vec<(&'static str, u64)>,
    node_id: Option<String>,
    spawned: usize,
    /// Flags of each instance's own, by id (its link address, say).
    instance_args: Vec<(&'static str, Vec<String>)>,
}

impl Cluster {
    /// Starts instance `a`, waits until it leads, then starts `b` as its standby.
    pub async fn start(
        binary: NodeBinary,
        config: PathBuf,
        store_url: String,
        proxy_store: bool,
    ) -> Self {
        Self::start_with(binary, config, store_url, proxy_store, Vec::new()).await
    }

    /// [`Cluster::start`], each instance also given the flags `instance_args` lists
    /// for its id (every time it is started).
    pub async fn start_with(
        binary: NodeBinary,
        config: PathBuf,
        store_url: String,
        proxy_store: bool,
        instance_args: Vec<(&'static str, Vec<String>)>,
    ) -> Self {
        let mut cluster = Self {
            binary,
            config,
            store_url,
            proxy_store,
            instances: Vec::new(),
            active: 0,
            known: Arc::new(Mutex::new(Vec::new())),
            leaderships: Vec::new(),
            node_id: None,
            spawned: 0,
            instance_args,
        };
        cluster.spawn("a").await;
        cluster.next_leader(Instant::now()).await;
        cluster.spawn_standby("b").await;
        cluster
    }

    /// Starts an instance with id `id`; returns its index.
    pub async fn spawn(&mut self, id: &'static str) -> usize {
        let mut args = vec!["--instance-id", id, "--cluster-enabled"];
        let store_proxy = if self.proxy_store {
            let target = loopback_port(&self.store_url);
            Some(
                TcpProxy::to(SocketAddr::from(([127, 0, 0, 1], target)))
                    .await
                    .expect("the store proxy listens"),
            )
        } else {
            None
        };
        let url = store_proxy.as_ref().map(|proxy| {
            self.store_url.replace(
                &format!("127.0.0.1:{}", loopback_port(&self.store_url)),
                &proxy.addr().to_string(),
            )
        });
        if let Some(url) = &url {
            args.extend(["--store-url", url]);
        }
        if let Some((_, own)) = self.instance_args.iter().find(|(own, _)| *own == id) {
            args.extend(own.iter().map(String::as_str));
        }
        self.spawned += 1;
        let mut process = node(
            &self.binary,
            &format!("alice {id} (#{})", self.spawned),
            &self.config,
            &args,
        );
        let (_, api) = process.api().await;
        self.known.lock().unwrap().push((id, api.clone()));
        self.instances.push(Instance {
            id,
            process,
            api,
            announced: false,
            store_proxy,
        });
        self.instances.len() - 1
    }

    /// Starts an instance that must wait as a standby (another one leads).
    pub async fn spawn_standby(&mut self, id: &'static str) {
        let index = self.spawn(id).await;
        let api = &self.instances[index].api;
        wait_for(
            "the new instance to wait as a standby",
            STEP_TIMEOUT,
            || async { (api.state().await.ok()? == ServerState::WaitingToStart).then_some(()) },
        )
        .await;
    }

    /// Waits until an instance announces a new leadership (its `node started` line);
    /// checks it is the same node with a higher epoch, and makes it the active one.
    /// Returns the time from `since`.
    pub async fn next_leader(&mut self, since: Instant) -> Duration {
        let deadline = Instant::now() + TAKEOVER_TIMEOUT;
        loop {
            let fresh = self
                .instances
                .iter()
                .position(|i| !i.announced && i.process.line("node started ").is_some());
            if let Some(index) = fresh {
                let took = since.elapsed();
                let instance = &mut self.instances[index];
                instance.announced = true;
                let started = instance.process.started().await;
                let node_id = self.node_id.get_or_insert(started.node_id.clone());
                assert_eq!(&started.node_id, node_id, "every instance is the same node");
                if let Some((_, last)) = self.leaderships.last() {
                    assert!(
                        started.epoch > *last,
                        "the new epoch {} is above the last one {last}",
                        started.epoch
                    );
                }
                self.leaderships.push((instance.id, started.epoch));
                self.active = index;
                return took;
            }
            if Instant::now() > deadline {
                let statuses: Vec<String> = self
                    .instances
                    .iter_mut()
                    .map(|i| {
                        let status = i.process.status();
                        format!("{}: {status}", i.process.name)
                    })
                    .collect();
                panic!("no instance took over within {TAKEOVER_TIMEOUT:?}: {statuses:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a standby in place of each instance that exited, as a supervisor would.
    pub async fn restart_stopped(&mut self, round: usize) {
        let mut index = 0;
        while index < self.instances.len() {
            if self.instances[index].process.is_running() {
                index += 1;
                continue;
            }
            assert_ne!(
                index, self.active,
                "round {round}: the active instance exited"
            );
            let stopped = self.instances.remove(index);
            if self.active > index {
                self.active -= 1;
            }
            self.spawn_standby(stopped.id).await;
        }
    }

    /// SIGTERM to every instance; each must exit 0 (a clean stop).
    pub async fn terminate_all(&mut self) {
        for instance in &mut self.instances {
            let status = instance.process.terminate().await;
            assert_eq!(status.code(), Some(0), "{}", instance.process.stderr());
        }
    }

    /// The instance that announced the latest leadership.
    pub fn active_instance(&mut self) -> &mut Instance {
        &mut self.instances[self.active]
    }

    /// `kill -9` of the active instance; a standby must take over.
    pub async fn kill_active(&mut self, round: usize) -> Round {
        let since = Instant::now();
        let status = self.active_instance().process.kill().await;
        assert_eq!(status.signal(), Some(9), "round {round}: died of SIGKILL");
        Round::TakenOver(self.next_leader(since).await)
    }

    /// SIGTERM of the active instance: it must stop cleanly and a standby take over.
    pub async fn terminate_active(&mut self, round: usize) -> Round {
        let since = Instant::now();
        let process = &mut self.active_instance().process;
        let status = process.terminate().await;
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: the active instance stopped cleanly\n{}",
            process.stderr()
        );
        Round::TakenOver(self.next_leader(since).await)
    }

    /// SIGSTOP until a standby leads, then SIGCONT: the old instance must notice that
    /// its lease lapsed and exit without acting (the watch checks it never says
    /// `SERVER_ACTIVE` again; the invariants that nothing it did reached the chain or
    /// changed a payment).
    pub async fn freeze_active(&mut self, round: usize) -> Round {
        let since = Instant::now();
        let frozen = self.active;
        self.instances[frozen].process.signal(Signal::SIGSTOP);
        let took = self.next_leader(since).await;
        let process = &mut self.instances[frozen].process;
        process.signal(Signal::SIGCONT);
        let status = process.wait_exit(EXIT_TIMEOUT).await;
        assert_eq!(
            status.code(),
            Some(EXIT_NODE_STOPPED),
            "round {round}: the woken instance stopped on its own\n{}",
            process.stderr()
        );
        let stderr = process.stderr();
        assert!(
            stderr.contains("lost the leadership") || stderr.contains("fenced"),
            "round {round}: the woken instance says it lost its lease\n{stderr}"
        );
        Round::TakenOver(took)
    }

    /// Black-holes the active instance's store connection: it must stop acting (its
    /// state leaves `SERVER_ACTIVE`) before the store grants the next epoch, exit, and
    /// a standby must take over.
    pub async fn cut_off_active(&mut self, round: usize, store: &dyn Store) -> Round {
        let since = Instant::now();
        let old = self.active;
        self.instances[old]
            .store_proxy
            .as_ref()
            .expect("each instance has a store proxy")
            .set_mode(Mode::Blackhole);
        let api = self.instances[old]
            .api
            .clone()
            .with_timeout(Duration::from_millis(500));
        let stopped_acting = wait_for(
            "the cut-off instance to stop acting",
            TAKEOVER_TIMEOUT,
            || {
                let api = api.clone();
                async move {
                    match api.state().await {
                        Ok(ServerState::ServerActive) => None,
                        _ => Some(SystemTime::now()),
                    }
                }
            },
        )
        .await;
        self.next_leader(since).await;
        let epoch = self.leaderships.last().expect("a new leadership").1;
        let won_at = epoch_won_at(store, epoch).await;
        let ahead = won_at.duration_since(stopped_acting).unwrap_or_else(|_| {
            panic!(
                "round {round}: the store granted epoch {epoch} at {won_at:?}, before \
                     the cut-off instance stopped acting at {stopped_acting:?}"
            )
        });
        let process = &mut self.instances[old].process;
        let status = process.wait_exit(EXIT_TIMEOUT).await;
        assert_eq!(
            status.code(),
            Some(EXIT_NODE_STOPPED),
            "round {round}: the cut-off instance stopped on its own\n{}",
            process.stderr()
        );
        let exited_after = SystemTime::now()
            .duration_since(stopped_acting)
            .unwrap_or_default();
        Round::FencedAhead {
            ahead,
            exited_after,
        }
    }

    /// Makes the database refuse (a permanent error) every write of the ChannelManager
    /// under the active instance's epoch: it must exit 75 on its own, naming the failed
    /// write, and a standby (a new epoch, whose writes pass) must take over.
    pub async fn refuse_manager_writes(&mut self, round: usize) -> Round {
        let since = Instant::now();
        let old = self.active;
        let epoch = self.leaderships.last().expect("a leadership").1;
        let database = self
            .store_url
            .rsplit('/')
            .next()
            .expect("a database name")
            .to_owned();
        let refuse = format!(
            "CREATE OR REPLACE FUNCTION refuse_manager_{round}() RETURNS trigger
                 LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.key = 'manager' AND NEW.epoch = {epoch} THEN
                     RAISE EXCEPTION 'could not extend file: No space left on device';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_manager_{round} BEFORE INSERT OR UPDATE ON phalanx_kv
                 FOR EACH ROW EXECUTE FUNCTION refuse_manager_{round}();"
        );
        phalanx_testkit::postgres::shared()
            .psql(&database, &refuse)
            .expect("the trigger is installed");
        let process = &mut self.instances[old].process;
        let status = process.wait_exit(EXIT_TIMEOUT).await;
        let stopped_after = since.elapsed();
        let stderr = process.stderr();
        assert_eq!(
            status.code(),
            Some(EXIT_NODE_STOPPED),
            "round {round}: the instance whose writes fail stopped on its own\n{stderr}"
        );
        assert!(
            stderr.contains("No space left on device"),
            "round {round}: it says which write failed\n{stderr}"
        );
        let took = self.next_leader(since).await;
        println!(
            "round {round}: refused writes to exit {stopped_after:?}, to the next leader {took:?}"
        );
        Round::Stopped(took)
    }

    /// Restarts the store server under load. The active instance may ride it out (its
    /// lease outlives a short outage) or stop (a write failed: fail-stop); either way
    /// payments must flow again afterwards, through it or a standby.
    pub async fn restart_store(
        &mut self,
        round: usize,
        server: &OwnServer,
        stream: &Stream,
        target: &mut usize,
    ) -> Round {
        let since = Instant::now();
        let old = self.active;
        server.restart().await;
        let round_report = self.served_or_taken_over(since, stream, target).await;
        if let Round::Stopped(_) = round_report {
            let process = &mut self.instances[old].process;
            let status = process.wait_exit(EXIT_TIMEOUT).await;
            assert_eq!(
                status.code(),
                Some(EXIT_NODE_STOPPED),
                "round {round}: an instance stops only on its own\n{}",
                process.stderr()
            );
        }
        round_report
    }

    /// Waits until either a standby announces a leadership, or the active instance
    /// serves `PAYMENTS_PER_ROUND` more payments (moving `target` on).
    pub async fn served_or_taken_over(
        &mut self,
        since: Instant,
        stream: &Stream,
        target: &mut usize,
    ) -> Round {
        let goal = stream.succeeded() + PAYMENTS_PER_ROUND;
        let deadline = Instant::now() + FLOW_TIMEOUT;
        loop {
            if self
                .instances
                .iter()
                .any(|i| !i.announced && i.process.line("node started ").is_some())
            {
                return Round::Stopped(self.next_leader(since).await);
            }
            let alive = self.active_instance().process.is_running();
            if alive && stream.succeeded() >= goal {
                *target = (*target).max(goal);
                return Round::Served;
            }
            assert!(
                Instant::now() < deadline,
                "payments did not flow again within {FLOW_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills one etcd member of three: the node must keep serving under the same epoch.
    /// Brings it back, then kills two: the active instance must stop, and no standby can
    /// win until quorum returns; then one does and payments flow again.
    pub async fn lose_members(
        &mut self,
        etcd: &EtcdServer,
        stream: &Stream,
        target: &mut usize,
    ) -> Round {
        let epoch = self.leaderships.last().expect("a leadership").1;
        etcd.kill_member(0);
        let kept = self
            .served_or_taken_over(Instant::now(), stream, target)
            .await;
        assert!(
            matches!(kept, Round::Served),
            "with one etcd member of three down the node kept serving: {kept:?}"
        );
        let again = self
            .served_or_taken_over(Instant::now(), stream, target)
            .await;
        assert!(matches!(again, Round::Served), "{again:?}");
        assert_eq!(
            self.leaderships.last().expect("a leadership").1,
            epoch,
            "no failover while one member was down"
        );
        blocking(|| etcd.restart_member(0)).await;

        let since = Instant::now();
        etcd.kill_member(1);
        etcd.kill_member(2);
        let old = self.active;
        let process = &mut self.instances[old].process;
        let status = process.wait_exit(TAKEOVER_TIMEOUT).await;
        assert_eq!(
            status.code(),
            Some(EXIT_NODE_STOPPED),
            "without quorum the active instance stopped on its own\n{}",
            process.stderr()
        );
        let stopped_after = since.elapsed();
        // Past any lease the lost quorum could still have granted: nobody leads.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            self.instances
                .iter()
                .all(|i| i.announced || i.process.line("node started ").is_none()),
            "a standby won a leadership without quorum"
        );
        blocking(|| etcd.restart()).await;
        let took = self.next_leader(since).await;
        println!("quorum lost: the active instance stopped after {stopped_after:?}");
        Round::Stopped(took)
    }
}

/// The port of the single loopback host in a store URL.
fn loopback_port(url: &str) -> u16 {
    let rest = url
        .split_once("127.0.0.1:")
        .unwrap_or_else(|| panic!("{url} names one loopback host"))
        .1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("a port after the host")
}
