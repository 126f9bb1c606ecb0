//! Alice as a cluster: instances of one node on PostgreSQL or etcd (the same seed and
//! store, an instance id each), behind a proxy that sends each API connection to the
//! instance whose `GET /v1/ready` answers 200 (a load balancer's health check). While a
//! stream of payments flows both ways, the test disrupts the cluster round after round:
//!
//! | scenario | each round |
//! |---|---|
//! | `failover_*` | `kill -9` of the active instance |
//! | `handover_*` | SIGTERM of the active instance (a graceful handover) |
//! | `freeze_*` | SIGSTOP of the active instance past its lease, SIGCONT once a standby leads: it must exit without acting |
//! | `store_cut_off_*` | the active instance's store connection black-holed (its peers still reachable): it must stop before a standby can win |
//! | `store_restart_*` | the store server restarted |
//! | `etcd_member_then_quorum_loss` | one etcd member of three lost (the node keeps serving), then two (the active instance stops; nothing is lost when quorum returns) |
//! | `manager_writes_refused_postgres` | the database refuses the active instance's ChannelManager writes (a permanent error, as a full disk gives): it must stop on its own with a healthy lease |
//!
//! An instance that stopped comes back as a standby, as its supervisor would restart it.
//! Besides the stream's invariants, a watch polls every instance's state and the store's
//! lease every 50 ms: never two instances `SERVER_ACTIVE`, never one while the store says
//! another holds the lease; and every leadership an instance announced is in the store's
//! epoch history, under its id, in order.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::SystemTime;

use nix::sys::signal::Signal;
use phalanx_api::ServerState;
use phalanx_store::{ClusterName, LeaseInfo, Store, StoreOptions};
use phalanx_testkit::etcd::{EtcdOptions, EtcdServer};
use phalanx_testkit::postgres::PostgresServer;
use phalanx_testkit::proxy::{Mode, TcpProxy};

use super::*;

/// The status `phalanx node` exits with when it stopped on its own (lease lost, fenced,
/// a write failed): restart it as a standby (see `phalanx node --help`).
const EXIT_NODE_STOPPED: i32 = 75;
/// Rounds of the scenarios whose rounds wait for a lease to lapse (a few seconds each).
const LAPSE_ROUNDS: usize = 3;
/// How long a standby may take to lead after the active instance stopped or lapsed (the
/// lease's TTL is 4 s; loading and reconnecting add a little).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the watch's store reads may take before a sweep skips the lease.
const LEASE_READ_TIMEOUT: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_postgres() {
    disrupt_repeatedly(Backend::Postgres, Disruption::Kill, FAILOVER_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_etcd() {
    disrupt_repeatedly(Backend::Etcd, Disruption::Kill, FAILOVER_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handover_postgres() {
    disrupt_repeatedly(Backend::Postgres, Disruption::Terminate, HANDOVER_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handover_etcd() {
    disrupt_repeatedly(Backend::Etcd, Disruption::Terminate, HANDOVER_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn freeze_postgres() {
    disrupt_repeatedly(Backend::Postgres, Disruption::Freeze, LAPSE_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn freeze_etcd() {
    disrupt_repeatedly(Backend::Etcd, Disruption::Freeze, LAPSE_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_cut_off_postgres() {
    disrupt_repeatedly(Backend::Postgres, Disruption::CutOffStore, LAPSE_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_cut_off_etcd() {
    disrupt_repeatedly(Backend::Etcd, Disruption::CutOffStore, LAPSE_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_restart_postgres() {
    disrupt_repeatedly(Backend::Postgres, Disruption::RestartStore, LAPSE_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_restart_etcd() {
    disrupt_repeatedly(Backend::Etcd, Disruption::RestartStore, LAPSE_ROUNDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manager_writes_refused_postgres() {
    disrupt_repeatedly(
        Backend::Postgres,
        Disruption::RefuseManagerWrites,
        LAPSE_ROUNDS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_member_then_quorum_loss() {
    disrupt_repeatedly(Backend::Etcd, Disruption::EtcdQuorum, 1).await;
}

/// What the test does to the cluster in one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disruption {
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
enum OwnServer {
    None,
    Postgres(PostgresServer),
    Etcd(EtcdServer),
}

impl OwnServer {
    /// The server `disruption` needs, and Alice's store URL on it (or on the shared one).
    fn for_scenario(backend: Backend, disruption: Disruption, dir: &Path) -> (Self, String) {
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
    fn log_tail(&self) -> String {
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
    async fn restart(&self) {
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

    fn etcd(&self) -> &EtcdServer {
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

/// Disrupts the cluster `rounds` times during one stream of payments.
async fn disrupt_repeatedly(backend: Backend, disruption: Disruption, rounds: usize) {
    phalanx_testkit::init_tracing();
    let began = Instant::now();
    let mut own_server = None;
    let world = World::set_up("cluster", |dir| {
        let (server, url) = OwnServer::for_scenario(backend, disruption, dir);
        own_server = Some(server);
        url
    })
    .await;
    let server = own_server.expect("the store was made");
    let logs =
        crate::common::FailureLogs::new().with("the store server's log", || server.log_tail());
    let World {
        dir,
        store_url,
        regtest,
        chain,
        bob,
    } = &world;

    // One data directory (seed and API token) for every instance, as a shared secret
    // mount would give them; each picks its own API port.
    let config = ConfigFile {
        data_dir: &dir.join("alice"),
        store_url,
        cluster: "alice",
        chain: chain.config(),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
    .write();
    let mut cluster = Cluster::start(
        config,
        store_url.clone(),
        disruption == Disruption::CutOffStore,
    )
    .await;
    let balancer = {
        let known = Arc::clone(&cluster.known);
        TcpProxy::start(Arc::new(move || {
            let instances: Vec<ApiClient> = known
                .lock()
                .unwrap()
                .iter()
                .map(|(_, api)| api.clone())
                .collect();
            Box::pin(async move { active_instance(&instances).await })
        }))
        .await
        .expect("the proxy listens")
    };
    let token = phalanx_api::read_token(&dir.join("alice").join("api-token"))
        .expect("alice's token file is where the test expects it");
    let alice = ApiClient::new(&format!("http://{}", balancer.addr()))
        .unwrap()
        .with_token(token)
        .with_timeout(common::API_TIMEOUT);
    let lease_reader = phalanx_store_connect::connect(
        store_url,
        StoreOptions::new(ClusterName::new("alice").unwrap()),
    )
    .await
    .expect("the test reads Alice's store");
    let watch = SplitBrainWatch::start(Arc::clone(&cluster.known), Arc::clone(&lease_reader));

    fund_alice(chain, bob, &alice).await;
    let channel = Channel::open(regtest, chain, bob, &alice).await;

    let stream = Arc::new(Stream::open_ended(alice.clone(), Arc::clone(bob), rounds));
    let mut workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| tokio::spawn(worker(Arc::clone(&stream))))
        .collect();
    let mut downtimes = Vec::with_capacity(rounds);
    let mut target = 0;
    for round in 0..rounds {
        target += PAYMENTS_PER_ROUND;
        let active = cluster.active;
        successes(
            &stream,
            target,
            &mut workers,
            &mut cluster.instances[active].process,
            &alice,
        )
        .await;
        // A random moment inside the stream, not just after a payment completed.
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 150)).await;
        let report = match disruption {
            Disruption::Kill => cluster.kill_active(round).await,
            Disruption::Terminate => cluster.terminate_active(round).await,
            Disruption::Freeze => cluster.freeze_active(round).await,
            Disruption::CutOffStore => cluster.cut_off_active(round, &*lease_reader).await,
            Disruption::RestartStore => {
                cluster
                    .restart_store(round, &server, &stream, &mut target)
                    .await
            }
            Disruption::EtcdQuorum => {
                cluster
                    .lose_members(server.etcd(), &stream, &mut target)
                    .await
            }
            Disruption::RefuseManagerWrites => cluster.refuse_manager_writes(round).await,
        };
        downtimes.push(report);
        cluster.restart_stopped(round).await;
    }

    stream.finish();
    for mut worker in workers {
        let outcome = outcome(&mut worker).await;
        assert_eq!(
            outcome,
            "done",
            "the stream did not finish\n{}",
            health(&alice).await
        );
    }
    let attempts = stream.attempts.lock().unwrap().clone();
    assert_invariants(regtest, bob, &alice, &attempts, &channel).await;
    let breaches = watch.stop().await;
    assert!(
        breaches.is_empty(),
        "split brain seen by the watch ({} times; the first 10):\n{}",
        breaches.len(),
        breaches[..breaches.len().min(10)].join("\n")
    );
    let unannounced = assert_epoch_history(&*lease_reader, &cluster.leaderships).await;

    println!(
        "{backend:?}: {rounds} rounds of {disruption:?}, {} payments in {} tries; {} \
         leaderships ({unannounced} won but not announced); per round: {downtimes:?}; \
         {:?} in all",
        stream.payments(),
        attempts.len(),
        cluster.leaderships.len(),
        began.elapsed()
    );
    for instance in &mut cluster.instances {
        let status = instance.process.terminate().await;
        assert_eq!(status.code(), Some(0), "{}", instance.process.stderr());
    }
    drop(logs);
    drop(server);
    bob.shutdown().await;
}

/// What one round took.
#[derive(Debug)]
#[allow(dead_code)] // Printed, not read.
enum Round {
    /// The disruption to the standby's `node started`.
    TakenOver(Duration),
    /// The active instance stopped acting `ahead` of the new epoch being won, and its
    /// process exited `exited_after` it stopped acting.
    FencedAhead {
        ahead: Duration,
        exited_after: Duration,
    },
    /// The active instance kept serving.
    Served,
    /// The active instance stopped; the disruption to the next `node started`.
    Stopped(Duration),
}

/// One `phalanx node` process of Alice's.
struct Instance {
    id: &'static str,
    process: Phalanx,
    api: ApiClient,
    /// Whether its `node started` line was counted.
    announced: bool,
    /// The proxy between it and the store, in the scenario that cuts it off.
    store_proxy: Option<TcpProxy>,
}

/// Alice's instances, and the leaderships they announced.
struct Cluster {
    config: PathBuf,
    store_url: String,
    /// Whether each instance reaches the store through a proxy of its own.
    proxy_store: bool,
    instances: Vec<Instance>,
    /// The index of the instance that announced the latest leadership.
    active: usize,
    /// Every instance ever started, by id (for the balancer and the watch).
    known: Arc<Mutex<Vec<(&'static str, ApiClient)>>>,
    /// Leaderships announced by `node started` lines, in order: (instance id, epoch).
    leaderships: Vec<(&'static str, u64)>,
    node_id: Option<String>,
    spawned: usize,
}

impl Cluster {
    /// Starts instance `a`, waits until it leads, then starts `b` as its standby.
    async fn start(config: PathBuf, store_url: String, proxy_store: bool) -> Self {
        let mut cluster = Self {
            config,
            store_url,
            proxy_store,
            instances: Vec::new(),
            active: 0,
            known: Arc::new(Mutex::new(Vec::new())),
            leaderships: Vec::new(),
            node_id: None,
            spawned: 0,
        };
        cluster.spawn("a").await;
        cluster.next_leader(Instant::now()).await;
        cluster.spawn_standby("b").await;
        cluster
    }

    /// Starts an instance with id `id`; returns its index.
    async fn spawn(&mut self, id: &'static str) -> usize {
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
        self.spawned += 1;
        let mut process = node(
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
    async fn spawn_standby(&mut self, id: &'static str) {
        let index = self.spawn(id).await;
        let api = &self.instances[index].api;
        wait_for(
            "the new instance to wait as a standby",
            STEP_TIMEOUT,
            || async { (api.state().await.ok()? == ServerState::WaitingToStart).then_some(()) },
        )
        .await
        .expect("a new instance waits while another leads");
    }

    /// Waits until an instance announces a new leadership (its `node started` line);
    /// checks it is the same node with a higher epoch, and makes it the active one.
    /// Returns the time from `since`.
    async fn next_leader(&mut self, since: Instant) -> Duration {
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
    async fn restart_stopped(&mut self, round: usize) {
        let mut index = 0;
        while index < self.instances.len() {
            if self.instances[index].process.status() == "is running" {
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

    fn active_instance(&mut self) -> &mut Instance {
        &mut self.instances[self.active]
    }

    async fn kill_active(&mut self, round: usize) -> Round {
        let since = Instant::now();
        let status = self.active_instance().process.kill().await;
        assert_eq!(status.signal(), Some(9), "round {round}: died of SIGKILL");
        Round::TakenOver(self.next_leader(since).await)
    }

    async fn terminate_active(&mut self, round: usize) -> Round {
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
    async fn freeze_active(&mut self, round: usize) -> Round {
        let since = Instant::now();
        let frozen = self.active;
        self.instances[frozen].process.signal(Signal::SIGSTOP);
        let took = self.next_leader(since).await;
        let process = &mut self.instances[frozen].process;
        process.signal(Signal::SIGCONT);
        let status = process.wait_exit(common::EXIT_TIMEOUT).await;
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
    async fn cut_off_active(&mut self, round: usize, store: &dyn Store) -> Round {
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
        .await
        .expect("an instance cut off from its store stops acting");
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
        let status = process.wait_exit(common::EXIT_TIMEOUT).await;
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
    async fn refuse_manager_writes(&mut self, round: usize) -> Round {
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
        let status = process.wait_exit(common::EXIT_TIMEOUT).await;
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
    async fn restart_store(
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
            let status = process.wait_exit(common::EXIT_TIMEOUT).await;
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
    async fn served_or_taken_over(
        &mut self,
        since: Instant,
        stream: &Stream,
        target: &mut usize,
    ) -> Round {
        let goal = stream.succeeded.load(Ordering::SeqCst) + PAYMENTS_PER_ROUND;
        let deadline = Instant::now() + STREAM_TIMEOUT;
        loop {
            if self
                .instances
                .iter()
                .any(|i| !i.announced && i.process.line("node started ").is_some())
            {
                return Round::Stopped(self.next_leader(since).await);
            }
            let alive = self.active_instance().process.status() == "is running";
            if alive && stream.succeeded.load(Ordering::SeqCst) >= goal {
                *target = (*target).max(goal);
                return Round::Served;
            }
            assert!(
                Instant::now() < deadline,
                "payments did not flow again within {STREAM_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills one etcd member of three: the node must keep serving under the same epoch.
    /// Brings it back, then kills two: the active instance must stop, and no standby can
    /// win until quorum returns; then one does and payments flow again.
    async fn lose_members(
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

/// When the store granted `epoch`, by its clock (the machine's: the store runs here).
async fn epoch_won_at(store: &dyn Store, epoch: u64) -> SystemTime {
    let history = store
        .epoch_history(16)
        .await
        .expect("the store's epoch history");
    let record = history
        .iter()
        .find(|r| r.epoch.0 == epoch)
        .unwrap_or_else(|| panic!("epoch {epoch} is in the history: {history:?}"));
    SystemTime::UNIX_EPOCH + Duration::from_millis(record.acquired_at_unix_ms as u64)
}

/// Checks the store's epoch history against the leaderships the instances announced:
/// newest first, epochs and times in order, each announced one recorded under the
/// instance that announced it. Returns how many were won but never announced (an
/// instance that won and then stopped while loading).
async fn assert_epoch_history(store: &dyn Store, announced: &[(&'static str, u64)]) -> usize {
    let history = store
        .epoch_history(10_000)
        .await
        .expect("the store's epoch history");
    for pair in history.windows(2) {
        assert!(
            pair[0].epoch > pair[1].epoch
                && pair[0].acquired_at_unix_ms >= pair[1].acquired_at_unix_ms,
            "the epoch history is out of order: {pair:?}"
        );
    }
    for (id, epoch) in announced {
        let record = history.iter().find(|r| r.epoch.0 == *epoch);
        assert!(
            record.is_some_and(|r| r.holder == *id),
            "instance {id} announced epoch {epoch}; the store's history says {record:?}"
        );
    }
    let first = announced.first().map_or(0, |(_, epoch)| *epoch);
    history.iter().filter(|r| r.epoch.0 >= first).count() - announced.len()
}

/// The address of the instance whose `GET /v1/ready` answers 200, if one does: the
/// health check a load balancer would make.
async fn active_instance(instances: &[ApiClient]) -> Option<SocketAddr> {
    for api in instances {
        let probe = api.clone().with_timeout(Duration::from_secs(1));
        if probe.ready().await.is_ok() {
            return api.base_url().trim_start_matches("http://").parse().ok();
        }
    }
    None
}

/// Polls every instance's state and the store's lease, and records each sweep that saw
/// two instances `SERVER_ACTIVE`, one `SERVER_ACTIVE` while the store said another held
/// the lease (the same lease read before and after the states), or the epoch go down.
struct SplitBrainWatch {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl SplitBrainWatch {
    fn start(instances: Arc<Mutex<Vec<(&'static str, ApiClient)>>>, store: Arc<dyn Store>) -> Self {
        let stop = tokio::sync::watch::channel(false).0;
        let mut stopped = stop.subscribe();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut highest_epoch = 0;
            while !*stopped.borrow() {
                let known = instances.lock().unwrap().clone();
                let before = read_lease(&*store).await;
                let states = futures::future::join_all(known.iter().map(|(id, api)| {
                    let probe = api.clone().with_timeout(Duration::from_millis(500));
                    async move { (*id, probe.state().await.ok()) }
                }))
                .await;
                let after = read_lease(&*store).await;
                let active: Vec<&str> = states
                    .iter()
                    .filter(|(_, s)| *s == Some(ServerState::ServerActive))
                    .map(|(id, _)| *id)
                    .collect();
                if active.len() > 1 {
                    seen.push(format!("{} instances active: {states:?}", active.len()));
                }
                if let (Some(before), Some(after)) = (&before, &after)
                    && before == after
                {
                    for id in &active {
                        if *id != before.holder {
                            seen.push(format!(
                                "instance {id} was SERVER_ACTIVE while the store said {} \
                                 held epoch {}",
                                before.holder, before.epoch
                            ));
                        }
                    }
                }
                for lease in [&before, &after].into_iter().flatten() {
                    if lease.epoch.0 < highest_epoch {
                        seen.push(format!(
                            "the store's epoch went down from {highest_epoch} to {}",
                            lease.epoch
                        ));
                    }
                    highest_epoch = highest_epoch.max(lease.epoch.0);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stopped.changed() => {}
                }
            }
            seen
        });
        Self { stop, task }
    }

    async fn stop(self) -> Vec<String> {
        self.stop.send_replace(true);
        self.task.await.expect("the watch ran")
    }
}

/// The store's lease, if it answers in time and someone holds it unexpired.
async fn read_lease(store: &dyn Store) -> Option<LeaseInfo> {
    match tokio::time::timeout(LEASE_READ_TIMEOUT, store.current_lease()).await {
        Ok(Ok(Some(lease))) if lease.expires_in.is_none_or(|left| !left.is_zero()) => Some(lease),
        _ => None,
    }
}
