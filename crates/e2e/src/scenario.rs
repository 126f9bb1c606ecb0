//! The two scenario drivers, each run by the tests in `tests/scenarios`, one file per
//! disruption: [`kill_during_a_payment_stream`] (one instance, `kill -9`, started again
//! on the same store) and [`disrupt_repeatedly`] (a cluster of two instances, disrupted
//! round after round). Nothing may be lost or doubled: the channel stays open (no force
//! close, and nothing reaches the chain at all during the stream) and every payment is
//! resolved exactly once, on both sides; in a cluster, never two instances are
//! `SERVER_ACTIVE` at once and every announced leadership is in the store's history.
//!
//! Alice is the node under test: node processes on the backend, driven over her API (in
//! a cluster, through a balancer that sends each connection to the instance whose
//! `GET /v1/ready` answers 200). Bob is an in-process node on SQLite. Alice funded the
//! channel and dialled Bob, so after her restart or failover she is the one who
//! reconnects (from her address book).

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx_api::ApiClient;
use phalanx_node::Node;
use phalanx_store::{ClusterName, StoreOptions};
use tokio::task::JoinHandle;

use crate::api::{health, ready_balancer};
use crate::chain::TestChain;
use crate::cluster::{Cluster, Disruption, OwnServer, PAYMENTS_PER_ROUND};
use crate::invariants::{
    SplitBrainWatch, assert_none, balances_add_up, chain_quiet_since, channel_usable,
    epoch_history_violations, every_payment_resolved_once, no_force_close, settled,
};
use crate::process::{API_TIMEOUT, ConfigFile, FailureLogs, NodeBinary, NodeProcess, node};
use crate::stream::{Attempt, Outcome, Stream, outcome};
use crate::world::{Backend, Channel, World};

/// Payments the single-instance stream makes, alternating directions.
const PAYMENTS: usize = 60;
/// Alice is killed once this many payments succeeded.
const KILL_AFTER: usize = 20;
/// Payments in flight at once.
pub(crate) const CONCURRENCY: usize = 6;
/// How long the whole stream may take (longer by as much per round of disruption).
pub(crate) const STREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the end state may take to settle (records written, HTLCs removed).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `kill -9` of Alice's only instance in the middle of a stream of payments on
/// `backend`; she is started again on the same store and the stream finishes.
pub async fn kill_during_a_payment_stream(binary: NodeBinary, backend: Backend) {
    let began = Instant::now();
    let world = World::set_up("restart", |dir| backend.store_url(dir)).await;

    // A fixed API port, so that one client follows Alice across her restart.
    let api_listen = SocketAddr::from(([127, 0, 0, 1], phalanx_testkit::process::free_port()));
    let config = ConfigFile::new(
        &world.dir.join("alice"),
        &world.store_url,
        "alice",
        world.chain.config(),
    )
    .api_listen(api_listen)
    .write(&binary);
    let mut first = node(&binary, "alice (first run)", &config, &[]);
    let (_, alice) = first.api().await;
    let before = first.started().await;

    world.fund_alice(&alice).await;
    let channel = Channel::open(&world, &alice).await;

    // The stream, with Alice killed in its middle and started again.
    let deadline = Instant::now() + STREAM_TIMEOUT;
    let stream = Arc::new(Stream::until(
        alice.clone(),
        Arc::clone(&world.bob),
        PAYMENTS,
        deadline,
    ));
    let mut workers = stream.spawn_workers(CONCURRENCY);
    successes(&stream, KILL_AFTER, &mut workers, &mut first, &alice).await;
    let in_flight = stream.in_flight();
    // Before the kill: waiting for the exit takes up to 150 ms of polling and draining.
    let killed_at = Instant::now();
    let status = first.kill().await;
    assert_eq!(status.signal(), Some(9), "alice died of SIGKILL");
    assert!(
        in_flight > 0,
        "payments were in flight when alice was killed"
    );
    let mut second = node(&binary, "alice (after kill -9)", &config, &[]);
    let after = second.started().await;
    let down_for = killed_at.elapsed();
    assert_eq!(after.node_id, before.node_id, "alice restarts as herself");
    assert!(
        after.epoch > before.epoch,
        "alice's epoch after the restart ({}) is greater than before ({})",
        after.epoch,
        before.epoch
    );

    for mut worker in workers {
        let outcome = outcome(&mut worker).await;
        if outcome != "done" {
            panic!(
                "the stream did not finish: {outcome}\n{}; alice's process {}",
                health(&alice).await,
                second.status()
            );
        }
    }
    let stream_took = killed_at.elapsed();
    let attempts = stream.attempts();
    let succeeded = attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Succeeded)
        .count();
    assert_eq!(
        succeeded,
        stream.payments(),
        "the stream finished: each of its payments succeeded once"
    );

    assert_invariants(&world.chain, &world.bob, &alice, &attempts, &channel).await;

    let failures: Vec<&str> = attempts
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::Failed(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    let refused = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::NotRecorded(_)))
        .count();
    println!(
        "{backend:?}: {PAYMENTS} payments in {} tries ({} failed, {refused} refused \
         unrecorded); {in_flight} in flight at the kill; alice back after {down_for:?} \
         (epoch {} -> {}); stream done {stream_took:?} after the kill; {:?} in all; \
         failures: {failures:?}",
        attempts.len(),
        failures.len(),
        before.epoch,
        after.epoch,
        began.elapsed()
    );

    let status = second.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", second.stderr());
    world.bob.shutdown().await;
}

/// Disrupts Alice's cluster of two instances on `backend` `rounds` times, as
/// `disruption` says, during one stream of payments.
pub async fn disrupt_repeatedly(
    binary: NodeBinary,
    backend: Backend,
    disruption: Disruption,
    rounds: usize,
) {
    let began = Instant::now();
    let mut own_server = None;
    let world = World::set_up("cluster", |dir| {
        let (server, url) = OwnServer::for_scenario(backend, disruption, dir);
        own_server = Some(server);
        url
    })
    .await;
    let server = own_server.expect("the store was made");
    let logs = FailureLogs::new().with("the store server's log", || server.log_tail());

    // One data directory (seed and API token) for every instance, as a shared secret
    // mount would give them; each picks its own API port.
    let alice_dir = world.dir.join("alice");
    let config =
        ConfigFile::new(&alice_dir, &world.store_url, "alice", world.chain.config()).write(&binary);
    let mut cluster = Cluster::start(
        binary,
        config,
        world.store_url.clone(),
        disruption == Disruption::CutOffStore,
    )
    .await;
    let watched = Watched::start(&cluster, &world, &alice_dir).await;
    let (alice, lease_reader) = (watched.alice.clone(), Arc::clone(&watched.lease_reader));

    world.fund_alice(&alice).await;
    let channel = Channel::open(&world, &alice).await;

    let (stream, mut workers) = watched.stream(&world, rounds);
    let mut downtimes = Vec::with_capacity(rounds);
    let mut target = 0;
    for round in 0..rounds {
        target += PAYMENTS_PER_ROUND;
        until_disruption(&stream, target, &mut workers, &mut cluster, &alice).await;
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

    let (attempts, unannounced) = watched
        .finish(&stream, workers, &world, &channel, &cluster)
        .await;

    println!(
        "{backend:?}: {rounds} rounds of {disruption:?}, {} payments in {} tries; {} \
         leaderships ({unannounced} won but not announced); per round: {downtimes:?}; \
         {:?} in all",
        stream.payments(),
        attempts.len(),
        cluster.leaderships.len(),
        began.elapsed()
    );
    cluster.terminate_all().await;
    drop(logs);
    drop(server);
    world.bob.shutdown().await;
}

/// What a cluster scenario reaches and watches Alice through: her API behind a balancer
/// that follows the active instance, her store (for the lease's history), and the
/// watch that no two instances are active at once.
pub(crate) struct Watched {
    /// The balancer in front of the instances' APIs.
    _balancer: phalanx_testkit::proxy::TcpProxy,
    /// Alice's API, through the balancer.
    pub alice: ApiClient,
    /// Alice's store, read by the test.
    pub lease_reader: Arc<dyn phalanx_store::Store>,
    watch: SplitBrainWatch,
}

impl Watched {
    /// Starts watching `cluster`, whose data directory (token) is `alice_dir`.
    pub(crate) async fn start(
        cluster: &Cluster,
        world: &World,
        alice_dir: &std::path::Path,
    ) -> Self {
        let balancer = ready_balancer(Arc::clone(&cluster.known)).await;
        let token = phalanx_api::read_token(&alice_dir.join("api-token"))
            .expect("alice's token file is where the test expects it");
        let alice = ApiClient::new(&format!("http://{}", balancer.addr()))
            .expect("the balancer's URL")
            .with_token(token)
            .with_timeout(API_TIMEOUT);
        let lease_reader = phalanx_store_connect::connect(
            &world.store_url,
            StoreOptions::new(ClusterName::new("alice").expect("a cluster name")),
        )
        .await
        .expect("the test reads Alice's store");
        let watch = SplitBrainWatch::start(Arc::clone(&cluster.known), Arc::clone(&lease_reader));
        Self {
            _balancer: balancer,
            alice,
            lease_reader,
            watch,
        }
    }

    /// An open-ended stream of payments between Alice and Bob, with time for `rounds`
    /// disruptions, and its workers.
    pub(crate) fn stream(
        &self,
        world: &World,
        rounds: usize,
    ) -> (Arc<Stream>, Vec<JoinHandle<Result<(), String>>>) {
        let deadline = Instant::now() + STREAM_TIMEOUT * (1 + rounds) as u32;
        let stream = Arc::new(Stream::open_ended(
            self.alice.clone(),
            Arc::clone(&world.bob),
            deadline,
        ));
        let workers = stream.spawn_workers(CONCURRENCY);
        (stream, workers)
    }

    /// Ends the stream, waits for its workers, and checks what every cluster scenario
    /// must leave true: [`assert_invariants`], never two active, one writer per epoch.
    /// Returns the attempts, and how many leaderships were won but never announced.
    pub(crate) async fn finish(
        self,
        stream: &Stream,
        workers: Vec<JoinHandle<Result<(), String>>>,
        world: &World,
        channel: &Channel,
        cluster: &Cluster,
    ) -> (Vec<Attempt>, usize) {
        stream.finish();
        for mut worker in workers {
            let outcome = outcome(&mut worker).await;
            assert_eq!(
                outcome,
                "done",
                "the stream did not finish\n{}",
                health(&self.alice).await
            );
        }
        let attempts = stream.attempts();
        assert_invariants(&world.chain, &world.bob, &self.alice, &attempts, channel).await;
        assert_none("never two active", &self.watch.stop().await);
        let (epoch_violations, unannounced) =
            epoch_history_violations(&*self.lease_reader, &cluster.leaderships).await;
        assert_none("one writer per epoch", &epoch_violations);
        (attempts, unannounced)
    }
}

/// Waits until the stream has made `target` payments with the active instance running,
/// then for a random moment inside the stream (not just after a payment completed).
pub(crate) async fn until_disruption(
    stream: &Stream,
    target: usize,
    workers: &mut [JoinHandle<Result<(), String>>],
    cluster: &mut Cluster,
    alice: &ApiClient,
) {
    let active = cluster.active;
    successes(
        stream,
        target,
        workers,
        &mut cluster.instances[active].process,
        alice,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 150)).await;
}

/// Everything a scenario must leave true once its stream finished.
pub(crate) async fn assert_invariants(
    chain: &TestChain,
    bob: &Node,
    alice: &ApiClient,
    attempts: &[Attempt],
    channel: &Channel,
) {
    let funding = channel.funding;
    assert_none("no force close", &no_force_close(chain, &[funding]));
    assert_none(
        "the chain was quiet during the stream",
        &chain_quiet_since(chain, channel.chain_transactions),
    );
    let usable = settled(SETTLE_TIMEOUT, || channel_usable(bob, alice, funding)).await;
    if !usable.is_empty() {
        panic!(
            "the channel is not usable again: {usable:?}\nbob's channels: {:?}\n{}",
            bob.list_channels(),
            health(alice).await
        );
    }
    let payments = settled(SETTLE_TIMEOUT, || {
        every_payment_resolved_once(attempts, bob, alice)
    })
    .await;
    assert_none("every payment resolved exactly once", &payments);
    let balances = settled(SETTLE_TIMEOUT, || async {
        balances_add_up(attempts, bob, funding, channel.bob_outbound_before)
    })
    .await;
    assert_none("the balances add up", &balances);
}

/// Waits until the stream has made `count` payments; fails if a worker stopped or the
/// active instance `active` exited first.
pub async fn successes(
    stream: &Stream,
    count: usize,
    workers: &mut [JoinHandle<Result<(), String>>],
    active: &mut NodeProcess,
    alice: &ApiClient,
) {
    let deadline = Instant::now() + STREAM_TIMEOUT;
    loop {
        if stream.succeeded() >= count {
            return;
        }
        if let Some(index) = workers.iter().position(|w| w.is_finished()) {
            panic!(
                "the stream failed before the disruption: {}\n{}; alice's process {}",
                outcome(&mut workers[index]).await,
                health(alice).await,
                active.status()
            );
        }
        if !active.is_running() {
            panic!(
                "alice's process {} before the disruption, after {} payments",
                active.status(),
                stream.succeeded()
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "{} payments of the stream within {STREAM_TIMEOUT:?} ({count} wanted)\n{}; \
                 alice's process {}",
                stream.succeeded(),
                health(alice).await,
                active.status()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
