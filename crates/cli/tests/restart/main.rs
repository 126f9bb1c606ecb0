//! Restart and cluster scenarios: `kill -9` a node in the middle of a stream of
//! payments and start it again on the same store (each backend, here); or disrupt a
//! cluster of two instances of the node round after round (kill, SIGTERM, SIGSTOP, store
//! cut off, store restarted, etcd members lost: [`cluster`]). Let the stream finish.
//! Nothing may be lost or doubled: the channel stays open (no force close, and nothing
//! reaches the chain at all during the stream) and every payment is resolved exactly
//! once, on both sides; in a cluster, never two instances are `SERVER_ACTIVE` at once.
//!
//! Alice is the node under test: `phalanx node` processes on the backend, driven over
//! her API (in a cluster, through a proxy that sends each connection to the instance
//! whose `GET /v1/ready` answers 200, as a load balancer's health check would).
//! Bob is an in-process node on SQLite. Alice funded the channel and dialled Bob, so
//! after her restart or failover she is the one who reconnects (from her address book).

mod cluster;
#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::{Amount, OutPoint};
use common::{ConfigFile, Phalanx, node};
use phalanx_api::{
    ApiClient, ChannelState, ClientError, CreateInvoiceRequest, ErrorCode, OpenChannelRequest,
    PayInvoiceRequest, Payment, PaymentDirection,
};
use phalanx_devnet::chain::ChainControl;
use phalanx_devnet::harness::{self, STEP_TIMEOUT, node_config, wait_for};
use phalanx_devnet::run::chain_config_from_url;
use phalanx_node::Node;
use phalanx_node::payments::{Direction, PaymentRecord, PaymentStatus};
use phalanx_regtest::{Regtest, RegtestConfig};

/// What Alice's wallet receives before she opens the channel.
const ALICE_FUNDS_SAT: u64 = 2_000_000;
/// The channel's capacity; half of it is pushed to Bob so that both can pay.
const CHANNEL_SAT: u64 = 1_000_000;
/// Payments the stream makes, alternating directions; each is tried until it succeeds.
const PAYMENTS: usize = 60;
/// Alice is killed once this many payments succeeded.
const KILL_AFTER: usize = 20;
/// Payments in flight at once.
const CONCURRENCY: usize = 6;
/// The smallest payment; each one adds a little, so that no two amounts are equal.
const BASE_AMOUNT_MSAT: u64 = 1_000_000;
/// How long one try may take to reach a final outcome, Alice's restart included.
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Graceful handovers in one stream, the lease moving back and forth.
const HANDOVER_ROUNDS: usize = 10;
/// Failovers in one stream (the issue asks for at least 20 per backend).
const FAILOVER_ROUNDS: usize = 20;
/// Payments between two failovers.
const PAYMENTS_PER_ROUND: usize = 4;
/// How long the whole stream may take.
const STREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the end state may take to settle (records written, HTLCs removed).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause between polls, and before trying a failed payment again.
const POLL: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite() {
    kill_alice_during_a_payment_stream(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres() {
    kill_alice_during_a_payment_stream(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd() {
    kill_alice_during_a_payment_stream(Backend::Etcd).await;
}

/// Where Alice keeps her state.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
    Etcd,
}

impl Backend {
    /// A fresh store: a file in `dir`, a new database, or a new key prefix (one server of
    /// each kind per test process).
    fn store_url(self, dir: &Path) -> String {
        match self {
            Backend::Sqlite => format!("sqlite://{}", dir.join("alice.db").display()),
            Backend::Postgres => phalanx_testkit::postgres::shared()
                .fresh_database()
                .expect("a fresh PostgreSQL database"),
            Backend::Etcd => {
                phalanx_testkit::etcd::shared().url(&phalanx_testkit::unique_name("restart"))
            }
        }
    }
}

async fn kill_alice_during_a_payment_stream(backend: Backend) {
    phalanx_testkit::init_tracing();
    let began = Instant::now();
    let World {
        dir,
        store_url,
        regtest,
        chain,
        bob,
    } = World::set_up("restart", |dir| backend.store_url(dir)).await;

    // A fixed API port, so that one client follows Alice across her restart.
    let api_listen = SocketAddr::from(([127, 0, 0, 1], phalanx_testkit::process::free_port()));
    let config = ConfigFile {
        data_dir: &dir.join("alice"),
        store_url: &store_url,
        cluster: "alice",
        chain: chain.config(),
        api_listen,
    }
    .write();
    let mut first = node("alice (first run)", &config, &[]);
    let (_, alice) = first.api().await;
    let before = first.started().await;

    fund_alice(&chain, &bob, &alice).await;
    let channel = Channel::open(&regtest, &chain, &bob, &alice).await;

    // The stream, with Alice killed in its middle and started again.
    let stream = Arc::new(Stream::new(alice.clone(), Arc::clone(&bob), PAYMENTS));
    let mut workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| tokio::spawn(worker(Arc::clone(&stream))))
        .collect();
    successes(&stream, KILL_AFTER, &mut workers, &mut first, &alice).await;
    let in_flight = stream.in_flight.load(Ordering::SeqCst);
    // Before the kill: waiting for the exit takes up to 150 ms of polling and draining.
    let killed_at = Instant::now();
    let status = first.kill().await;
    assert_eq!(status.signal(), Some(9), "alice died of SIGKILL");
    assert!(
        in_flight > 0,
        "payments were in flight when alice was killed"
    );
    let mut second = node("alice (after kill -9)", &config, &[]);
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
    let attempts = stream.attempts.lock().unwrap().clone();
    let succeeded = attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Succeeded)
        .count();
    assert_eq!(
        succeeded,
        stream.payments(),
        "the stream finished: each of its payments succeeded once"
    );

    assert_invariants(&regtest, &bob, &alice, &attempts, &channel).await;

    let failures: Vec<&str> = attempts
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::Failed(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    let failed = failures.len();
    let refused = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::NotRecorded(_)))
        .count();
    println!(
        "{backend:?}: {PAYMENTS} payments in {} tries ({failed} failed, {refused} refused \
         unrecorded); {in_flight} in flight at the kill; alice back after {down_for:?} \
         (epoch {} -> {}); stream done {stream_took:?} after the kill; {:?} in all; \
         failures: {failures:?}",
        attempts.len(),
        before.epoch,
        after.epoch,
        began.elapsed()
    );

    let status = second.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", second.stderr());
    bob.shutdown().await;
}

/// Waits until the stream has made `count` payments; fails if a worker stopped or the
/// active instance `active` exited first.
async fn successes(
    stream: &Stream,
    count: usize,
    workers: &mut [tokio::task::JoinHandle<Result<(), String>>],
    active: &mut Phalanx,
    alice: &ApiClient,
) {
    let reached = wait_for("payments of the stream", STREAM_TIMEOUT, || {
        let state = if stream.succeeded.load(Ordering::SeqCst) >= count {
            Some(BeforeKill::Ready)
        } else if let Some(index) = workers.iter().position(|w| w.is_finished()) {
            Some(BeforeKill::WorkerStopped(index))
        } else if !matches!(active.child.try_wait(), Ok(None)) {
            Some(BeforeKill::AliceStopped)
        } else {
            None
        };
        async move { state }
    })
    .await;
    match reached {
        Ok(BeforeKill::Ready) => {}
        Ok(BeforeKill::WorkerStopped(index)) => panic!(
            "the stream failed before alice was killed: {}\n{}; alice's process {}",
            outcome(&mut workers[index]).await,
            health(alice).await,
            active.status()
        ),
        Ok(BeforeKill::AliceStopped) => panic!(
            "alice's process {} before she was killed, after {} payments",
            active.status(),
            stream.succeeded.load(Ordering::SeqCst)
        ),
        Err(err) => panic!(
            "{err} ({count} wanted)\n{}; alice's process {}",
            health(alice).await,
            active.status()
        ),
    }
}

// ---- setting up ----

/// What every scenario starts from: a scratch directory, Alice's store, the chain with
/// coins to give, and Bob running.
struct World {
    dir: std::path::PathBuf,
    store_url: String,
    regtest: Regtest,
    chain: ChainControl,
    bob: Arc<Node>,
}

impl World {
    /// Sets up in a new scratch directory named after `scratch`; `store_url` makes
    /// Alice's store in that directory (or elsewhere).
    async fn set_up(scratch: &str, store_url: impl FnOnce(&Path) -> String) -> Self {
        let dir = phalanx_testkit::process::scratch_dir(scratch).unwrap();
        let store_url = store_url(&dir);
        let regtest = Regtest::start(RegtestConfig::default())
            .await
            .expect("regtest starts");
        let chain_config = chain_config_from_url(&regtest.rpc_url_with_credentials()).unwrap();
        let chain = ChainControl::connect(chain_config)
            .await
            .expect("the chain answers");
        chain
            .ensure_funds(Amount::from_sat(ALICE_FUNDS_SAT + 100_000))
            .await
            .expect("the chain wallet gathers coins");
        let bob_config = node_config(chain.config(), &dir, "bob", None).unwrap();
        phalanx_instance::initialize(&bob_config)
            .await
            .expect("bob's store is initialized");
        let bob = phalanx_instance::start(&bob_config, Default::default())
            .await
            .expect("bob starts");
        Self {
            dir,
            store_url,
            regtest,
            chain,
            bob,
        }
    }
}

/// Pays Alice's wallet from the chain's, over her API, and confirms it.
async fn fund_alice(chain: &ChainControl, bob: &Arc<Node>, alice: &ApiClient) {
    let address = alice
        .new_address()
        .await
        .expect("alice gives an address")
        .address;
    chain
        .send_to(&address, Amount::from_sat(ALICE_FUNDS_SAT))
        .await
        .expect("the chain wallet pays alice");
    harness::mine(chain, &[bob], 1).await.expect("a block");
    wait_for("alice's funds to confirm", STEP_TIMEOUT, || async {
        let balance = alice.balance().await.ok()?;
        (balance.onchain_confirmed_sat >= ALICE_FUNDS_SAT).then_some(())
    })
    .await
    .expect("alice is funded");
}

/// Alice opens a channel to Bob over her API, pushing half of it to him; returns its
/// funding outpoint once both sides can use it.
async fn open_channel(chain: &ChainControl, bob: &Arc<Node>, alice: &ApiClient) -> OutPoint {
    alice
        .open_channel(&OpenChannelRequest {
            node_id: bob.node_id().to_string(),
            address: Some(bob.listen_addresses()[0].to_string()),
            amount_sat: CHANNEL_SAT,
            push_msat: CHANNEL_SAT * 1000 / 2,
            public: false,
        })
        .await
        .expect("alice opens a channel to bob");
    wait_for("the funding transaction", STEP_TIMEOUT, || async {
        let channels = alice.list_channels().await.ok()?;
        channels
            .iter()
            .any(|c| c.funding_txid.is_some())
            .then_some(())
    })
    .await
    .expect("alice funds the channel");
    // Give the broadcast a moment to reach the mempool before mining.
    tokio::time::sleep(Duration::from_millis(500)).await;
    harness::mine(chain, &[bob], 6).await.expect("six blocks");
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let bob_ready = bob
            .list_channels()
            .iter()
            .any(|c| c.is_usable && c.counterparty.forwarding_info.is_some());
        let alice_ready = alice.list_channels().await.is_ok_and(|channels| {
            channels
                .iter()
                .any(|c| c.is_usable && c.state == ChannelState::Ready)
        });
        if bob_ready && alice_ready {
            break;
        }
        if Instant::now() >= deadline {
            panic!(
                "the channel is not usable on both sides after {STEP_TIMEOUT:?} \
                 (bob: {bob_ready}, alice: {alice_ready})\n{}",
                health(alice).await
            );
        }
        // The funding may have missed the first block: keep mining, slowly.
        tokio::time::sleep(Duration::from_millis(500)).await;
        chain.mine(1).await.expect("a block");
    }
    bob.list_channels()
        .iter()
        .find_map(|c| c.funding_txo)
        .expect("bob's channel has its funding outpoint")
        .into_bitcoin_outpoint()
}

/// The channel of a scenario, and what was true of it once it was usable.
struct Channel {
    funding: OutPoint,
    /// What Bob could send over it.
    bob_outbound_before: u64,
    /// How many transactions the chain had recorded.
    chain_transactions: usize,
}

impl Channel {
    /// Alice opens the channel to Bob (see [`open_channel`]).
    async fn open(
        regtest: &Regtest,
        chain: &ChainControl,
        bob: &Arc<Node>,
        alice: &ApiClient,
    ) -> Self {
        let funding = open_channel(chain, bob, alice).await;
        Self {
            funding,
            bob_outbound_before: bob_channel(bob, funding).expect("bob has the channel").1,
            chain_transactions: regtest.chain().history().transactions().len(),
        }
    }
}

/// Bob's channel on `funding`: whether it is usable, and what he can send over it.
fn bob_channel(bob: &Node, funding: OutPoint) -> Option<(bool, u64)> {
    bob.list_channels()
        .iter()
        .find(|c| c.funding_txo.map(|o| o.into_bitcoin_outpoint()) == Some(funding))
        .map(|c| (c.is_usable, c.outbound_capacity_msat))
}

// ---- the stream ----

/// Which way a payment goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    AliceToBob,
    BobToAlice,
}

/// What the payer said of one try at a payment, in the end.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// The payer refused it at once and kept no record of it: no payment was made.
    NotRecorded(String),
    Succeeded,
    Failed(String),
}

/// One try at one of the stream's payments (a failed one is tried again with a new
/// invoice).
#[derive(Clone, Debug)]
struct Attempt {
    slot: usize,
    way: Way,
    payment_hash: String,
    amount_msat: u64,
    outcome: Outcome,
}

/// The stream's shared state.
struct Stream {
    alice: ApiClient,
    bob: Arc<Node>,
    deadline: Instant,
    /// The number of payments the stream makes: slots below it are taken, none above.
    payments: AtomicUsize,
    next_slot: AtomicUsize,
    succeeded: AtomicUsize,
    in_flight: AtomicUsize,
    attempts: Mutex<Vec<Attempt>>,
}

impl Stream {
    fn new(alice: ApiClient, bob: Arc<Node>, payments: usize) -> Self {
        // The failover rounds make the stream longer.
        let deadline = Instant::now() + STREAM_TIMEOUT * (1 + payments / PAYMENTS) as u32;
        Self::until(alice, bob, payments, deadline)
    }

    fn until(alice: ApiClient, bob: Arc<Node>, payments: usize, deadline: Instant) -> Self {
        Self {
            alice,
            bob,
            deadline,
            payments: AtomicUsize::new(payments),
            next_slot: AtomicUsize::new(0),
            succeeded: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            attempts: Mutex::new(Vec::new()),
        }
    }

    /// A stream that keeps paying until [`finish`](Self::finish): for scenarios whose
    /// rounds take as long as the disruption does, which no fixed count can cover (a
    /// stream that ran dry mid-round looks like payments that stopped flowing).
    fn open_ended(alice: ApiClient, bob: Arc<Node>, rounds: usize) -> Self {
        let deadline = Instant::now() + STREAM_TIMEOUT * (1 + rounds) as u32;
        Self::until(alice, bob, usize::MAX, deadline)
    }

    /// Takes no new payment; those under way go on to their end.
    fn finish(&self) {
        // A worker that took slot N after this read sees N >= the limit and stops; one
        // that took it before is counted: the limit is exactly the slots taken.
        let taken = self.next_slot.load(Ordering::SeqCst);
        self.payments.fetch_min(taken, Ordering::SeqCst);
    }

    /// The number of payments the stream makes (once finished).
    fn payments(&self) -> usize {
        self.payments.load(Ordering::SeqCst)
    }
}

/// Where the stream stands before the kill.
enum BeforeKill {
    /// Enough payments went through: time to kill Alice.
    Ready,
    /// This worker stopped (it failed).
    WorkerStopped(usize),
    /// Alice's process exited on its own.
    AliceStopped,
}

/// How a worker ended: `done`, or why not.
async fn outcome(worker: &mut tokio::task::JoinHandle<Result<(), String>>) -> String {
    match worker.await {
        Ok(Ok(())) => "done".to_owned(),
        Ok(Err(why)) => why,
        Err(err) => format!("a payment worker panicked: {err}"),
    }
}

/// Takes the stream's payments one after the other, trying each until it succeeds.
/// Fails when a payment stays unresolved, a record is lost, or the stream takes too long.
async fn worker(stream: Arc<Stream>) -> Result<(), String> {
    loop {
        let slot = stream.next_slot.fetch_add(1, Ordering::SeqCst);
        if slot >= stream.payments() {
            return Ok(());
        }
        let way = if slot.is_multiple_of(2) {
            Way::AliceToBob
        } else {
            Way::BobToAlice
        };
        let amount_msat = BASE_AMOUNT_MSAT + slot as u64 * 1_000;
        loop {
            if Instant::now() > stream.deadline {
                return Err(format!(
                    "payment {slot} did not succeed within {STREAM_TIMEOUT:?}"
                ));
            }
            stream.in_flight.fetch_add(1, Ordering::SeqCst);
            let attempt = match way {
                Way::AliceToBob => alice_pays(&stream, slot, amount_msat).await,
                Way::BobToAlice => bob_pays(&stream, slot, amount_msat).await,
            };
            stream.in_flight.fetch_sub(1, Ordering::SeqCst);
            let attempt = attempt?;
            let done = attempt.outcome == Outcome::Succeeded;
            stream.attempts.lock().unwrap().push(attempt);
            if done {
                stream.succeeded.fetch_add(1, Ordering::SeqCst);
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Alice pays an invoice of Bob's over her API, which may vanish at any moment.
async fn alice_pays(stream: &Stream, slot: usize, amount_msat: u64) -> Result<Attempt, String> {
    let api = &stream.alice;
    let invoice = stream
        .bob
        .create_invoice(Some(amount_msat), &format!("restart {slot}"), None)
        .await
        .map_err(|err| format!("bob cannot make an invoice: {err}"))?;
    let payment_hash = invoice.payment_hash().to_string();
    let attempt = |outcome| Attempt {
        slot,
        way: Way::AliceToBob,
        payment_hash: payment_hash.clone(),
        amount_msat,
        outcome,
    };
    let request = PayInvoiceRequest {
        invoice: invoice.to_string(),
        amount_msat: None,
        wait: false,
        timeout_secs: None,
    };
    let deadline = Instant::now() + PAYMENT_TIMEOUT;
    // Hand the payment over. A request that died with her may or may not have been acted
    // on: once she is back, her record says which.
    let mut answer = api.pay_invoice(&request).await;
    while let Err(err) = answer {
        match when_up(deadline, || api.get_payment(&payment_hash)).await {
            Ok(_) => break,
            Err(lookup) if is_unknown_payment(&lookup) => {
                if !unavailable(&err) {
                    return Ok(attempt(Outcome::NotRecorded(err.to_string())));
                }
                // It never reached her: send it again.
                answer = api.pay_invoice(&request).await;
            }
            Err(lookup) => {
                return Err(format!(
                    "alice's payment {payment_hash} cannot be looked up: {lookup}"
                ));
            }
        }
    }
    // Follow it to its end, across her restart.
    loop {
        match when_up(deadline, || api.get_payment(&payment_hash)).await {
            Ok(payment) => match payment.status {
                phalanx_api::PaymentStatus::Succeeded => return Ok(attempt(Outcome::Succeeded)),
                phalanx_api::PaymentStatus::Failed => {
                    return Ok(attempt(Outcome::Failed(
                        payment.failure_reason.unwrap_or_default(),
                    )));
                }
                phalanx_api::PaymentStatus::Pending if Instant::now() > deadline => {
                    return Err(format!(
                        "alice's payment {payment_hash} is still pending after \
                         {PAYMENT_TIMEOUT:?}: {payment:?}"
                    ));
                }
                phalanx_api::PaymentStatus::Pending => tokio::time::sleep(POLL).await,
            },
            Err(err) if is_unknown_payment(&err) => {
                return Err(format!(
                    "alice lost her record of payment {payment_hash} after taking it: {err}"
                ));
            }
            Err(err) => {
                return Err(format!(
                    "alice's payment {payment_hash} cannot be followed: {err}"
                ));
            }
        }
    }
}

/// Bob pays an invoice Alice makes over her API (asked again while she is away).
async fn bob_pays(stream: &Stream, slot: usize, amount_msat: u64) -> Result<Attempt, String> {
    let api = &stream.alice;
    let deadline = Instant::now() + PAYMENT_TIMEOUT;
    let request = CreateInvoiceRequest {
        amount_msat: Some(amount_msat),
        description: format!("restart {slot}"),
        expiry_secs: None,
    };
    let invoice = when_up(deadline, || api.create_invoice(&request))
        .await
        .map_err(|err| format!("alice cannot make an invoice: {err}"))?;
    let payment_hash = invoice.payment_hash;
    let outcome = match stream.bob.pay_invoice(&invoice.invoice, None).await {
        Ok(id) => {
            let record = stream
                .bob
                .wait_payment(id, deadline.saturating_duration_since(Instant::now()))
                .await
                .map_err(|err| format!("bob lost his payment {payment_hash}: {err}"))?;
            match record.status {
                PaymentStatus::Succeeded => Outcome::Succeeded,
                PaymentStatus::Failed => Outcome::Failed(record.failure_reason.unwrap_or_default()),
                PaymentStatus::Pending | PaymentStatus::Accepted => {
                    return Err(format!(
                        "bob's payment {payment_hash} is still pending after \
                         {PAYMENT_TIMEOUT:?}: {record:?}"
                    ));
                }
            }
        }
        // Refused at once (no usable channel while Alice is away): recorded as failed.
        // An invoice's payment id is its hash.
        Err(err) => match stream.bob.outbound_payment(payment_id_of(&payment_hash)) {
            Some(record) if record.status == PaymentStatus::Failed => {
                Outcome::Failed(err.to_string())
            }
            Some(record) => {
                return Err(format!(
                    "bob refused payment {payment_hash} ({err}) but recorded it as {:?}",
                    record.status
                ));
            }
            None => Outcome::NotRecorded(err.to_string()),
        },
    };
    Ok(Attempt {
        slot,
        way: Way::BobToAlice,
        payment_hash,
        amount_msat,
        outcome,
    })
}

/// Whether Alice's API answers at all, for failure messages: a wedged node stops
/// answering, a node waiting on its peer does not.
async fn health(alice: &ApiClient) -> String {
    let probe = alice.clone().with_timeout(Duration::from_secs(5));
    match probe.info().await {
        Ok(info) => format!(
            "alice's API answers: height {}, {} peers, {} of {} channels usable",
            info.block_height, info.num_peers, info.num_usable_channels, info.num_channels
        ),
        Err(err) => format!("alice's API does not answer: {err}"),
    }
}

/// Whether Alice could not answer: not running, starting, or killed mid-request.
fn unavailable(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Connect { .. }
            | ClientError::Timeout(_)
            | ClientError::Api { status: 503, .. }
    )
}

fn is_unknown_payment(err: &ClientError) -> bool {
    matches!(err, ClientError::Api { error, .. } if error.code == ErrorCode::UnknownPayment)
}

/// Calls `call` until Alice answers, or `deadline` passes.
async fn when_up<T, F, Fut>(deadline: Instant, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    loop {
        match call().await {
            Err(err) if unavailable(&err) && Instant::now() < deadline => {
                tokio::time::sleep(POLL).await
            }
            answer => return answer,
        }
    }
}

// ---- the invariants ----

/// Everything a scenario must leave true once its stream finished.
async fn assert_invariants(
    regtest: &Regtest,
    bob: &Arc<Node>,
    alice: &ApiClient,
    attempts: &[Attempt],
    channel: &Channel,
) {
    let funding = channel.funding;
    assert_no_force_close(regtest, funding);
    assert_chain_quiet_since(regtest, channel.chain_transactions);
    assert_channel_usable_again(bob, alice, funding).await;
    assert_each_payment_resolved_once(attempts, bob, alice).await;
    assert_balances_add_up(attempts, bob, funding, channel.bob_outbound_before).await;
}

/// Nothing reached the chain since it had recorded `recorded` transactions: the stream
/// needs none, so any transaction would come from an instance acting where it must not
/// (a stale one broadcasting from memory, a sweep of a closed channel).
fn assert_chain_quiet_since(regtest: &Regtest, recorded: usize) {
    let chain = regtest.chain();
    let history = chain.history();
    let since: Vec<_> = history.transactions()[recorded..]
        .iter()
        .map(|seen| seen.txid)
        .collect();
    assert!(
        since.is_empty(),
        "transactions reached the chain during the stream: {since:?}"
    );
}

/// No force close: nothing on the chain ever spent the channel's funding output.
fn assert_no_force_close(regtest: &Regtest, funding: OutPoint) {
    let chain = regtest.chain();
    let spenders: Vec<_> = chain
        .history()
        .transactions()
        .iter()
        .filter(|seen| seen.tx.input.iter().any(|i| i.previous_output == funding))
        .map(|seen| seen.txid)
        .collect();
    assert!(
        spenders.is_empty(),
        "the funding output {funding} was spent (a force close?) by {spenders:?}"
    );
}

/// The channel is still there on both sides, and usable again.
async fn assert_channel_usable_again(bob: &Arc<Node>, alice: &ApiClient, funding: OutPoint) {
    let funding_txid = funding.txid.to_string();
    let usable = wait_for(
        "the channel to be usable on both sides again",
        SETTLE_TIMEOUT,
        || async {
            let bob_usable = bob_channel(bob, funding).is_some_and(|(usable, _)| usable);
            let alice_usable = alice.list_channels().await.ok()?.iter().any(|c| {
                c.funding_txid.as_deref() == Some(&funding_txid)
                    && c.funding_output_index == Some(funding.vout)
                    && c.is_usable
                    && c.state == ChannelState::Ready
            });
            (bob_usable && alice_usable).then_some(())
        },
    )
    .await;
    if let Err(err) = usable {
        panic!(
            "{err}\nbob's channels: {:?}\n{}\nalice's channels: {:?}",
            bob.list_channels(),
            health(alice).await,
            alice.list_channels().await
        );
    }
}

/// Every payment of the stream is resolved (succeeded or failed) exactly once on each
/// side, the payer and the payee agree, and nobody has payments the stream did not make.
async fn assert_each_payment_resolved_once(
    attempts: &[Attempt],
    bob: &Arc<Node>,
    alice: &ApiClient,
) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let alice_payments = alice
            .list_payments()
            .await
            .expect("alice lists her payments");
        let found = violations(
            attempts,
            &Ledger::of_alice(&alice_payments),
            &Ledger::of_bob(&bob.list_payments()),
        );
        if found.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} violations after {SETTLE_TIMEOUT:?} (the first 20):\n{}",
            found.len(),
            found
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(POLL).await;
    }
}

/// What Bob can send changed by exactly what he received less what he sent (a direct
/// channel: no fees; Bob did not fund it: no commitment fee).
async fn assert_balances_add_up(
    attempts: &[Attempt],
    bob: &Arc<Node>,
    funding: OutPoint,
    bob_outbound_before: u64,
) {
    let total = |way| -> u64 {
        attempts
            .iter()
            .filter(|a| a.way == way && a.outcome == Outcome::Succeeded)
            .map(|a| a.amount_msat)
            .sum()
    };
    let expected = bob_outbound_before + total(Way::AliceToBob) - total(Way::BobToAlice);
    let settled = wait_for("bob's balance to settle", SETTLE_TIMEOUT, || async {
        bob_channel(bob, funding).filter(|&(_, outbound)| outbound == expected)
    })
    .await;
    if settled.is_err() {
        let actual = bob_channel(bob, funding).map(|(_, outbound)| outbound);
        panic!(
            "bob can send {actual:?} msat over the channel, not {expected} ({bob_outbound_before} \
             before, +{} received, -{} sent)",
            total(Way::AliceToBob),
            total(Way::BobToAlice)
        );
    }
}

/// A payment record, whoever keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    status: Status,
    amount_msat: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Succeeded,
    Failed,
}

/// One node's payment records, by direction and payment hash.
struct Ledger {
    name: &'static str,
    outbound: HashMap<String, Vec<Entry>>,
    inbound: HashMap<String, Vec<Entry>>,
}

impl Ledger {
    fn of_alice(payments: &[Payment]) -> Self {
        let mut ledger = Ledger::new("alice");
        for p in payments {
            let status = match p.status {
                phalanx_api::PaymentStatus::Pending => Status::Pending,
                phalanx_api::PaymentStatus::Succeeded => Status::Succeeded,
                phalanx_api::PaymentStatus::Failed => Status::Failed,
            };
            ledger.add(
                p.direction == PaymentDirection::Outbound,
                &p.payment_hash,
                status,
                p.amount_msat,
            );
        }
        ledger
    }

    fn of_bob(records: &[PaymentRecord]) -> Self {
        let mut ledger = Ledger::new("bob");
        for r in records {
            let status = match r.status {
                PaymentStatus::Pending | PaymentStatus::Accepted => Status::Pending,
                PaymentStatus::Succeeded => Status::Succeeded,
                PaymentStatus::Failed => Status::Failed,
            };
            ledger.add(
                r.direction == Direction::Outbound,
                &r.payment_hash,
                status,
                r.amount_msat,
            );
        }
        ledger
    }

    fn new(name: &'static str) -> Self {
        Self {
            name,
            outbound: HashMap::new(),
            inbound: HashMap::new(),
        }
    }

    fn add(&mut self, outbound: bool, hash: &str, status: Status, amount_msat: Option<u64>) {
        let side = if outbound {
            &mut self.outbound
        } else {
            &mut self.inbound
        };
        side.entry(hash.to_owned()).or_default().push(Entry {
            status,
            amount_msat,
        });
    }

    fn sent(&self, hash: &str) -> &[Entry] {
        self.outbound.get(hash).map_or(&[], Vec::as_slice)
    }

    fn received(&self, hash: &str) -> Vec<Entry> {
        self.inbound
            .get(hash)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|e| e.status == Status::Succeeded)
            .copied()
            .collect()
    }
}

/// Everything wrong with the two ledgers, given what the stream saw.
fn violations(attempts: &[Attempt], alice: &Ledger, bob: &Ledger) -> Vec<String> {
    let mut found = Vec::new();
    for ledger in [alice, bob] {
        let name = ledger.name;
        for (hash, entries) in &ledger.outbound {
            if entries.len() > 1 {
                found.push(format!(
                    "{name} has {} records of payment {hash}",
                    entries.len()
                ));
            }
            if entries.iter().any(|e| e.status == Status::Pending) {
                found.push(format!("{name}'s payment {hash} is still pending"));
            }
        }
        for (hash, entries) in &ledger.inbound {
            if entries.len() > 1 {
                found.push(format!(
                    "{name} has {} records of receiving {hash}",
                    entries.len()
                ));
            }
        }
    }
    for attempt in attempts {
        let (payer, payee) = match attempt.way {
            Way::AliceToBob => (alice, bob),
            Way::BobToAlice => (bob, alice),
        };
        let hash = &attempt.payment_hash;
        let slot = attempt.slot;
        let sent = payer.sent(hash);
        let received = payee.received(hash);
        let (p, q) = (payer.name, payee.name);
        match &attempt.outcome {
            Outcome::NotRecorded(why) => {
                if !sent.is_empty() {
                    found.push(format!(
                        "payment {slot} ({hash}): {p} refused it ({why}) yet recorded {sent:?}"
                    ));
                }
                if !received.is_empty() {
                    found.push(format!(
                        "payment {slot} ({hash}): {q} received it though {p} refused it ({why})"
                    ));
                }
            }
            Outcome::Succeeded => {
                if sent.iter().map(|e| e.status).collect::<Vec<_>>() != [Status::Succeeded] {
                    found.push(format!(
                        "payment {slot} ({hash}): {p} saw it succeed, its records say {sent:?}"
                    ));
                }
                let once =
                    received.len() == 1 && received[0].amount_msat == Some(attempt.amount_msat);
                if !once {
                    found.push(format!(
                        "payment {slot} ({hash}) of {} msat: {p} saw it succeed, {q} received \
                         {received:?}",
                        attempt.amount_msat
                    ));
                }
            }
            Outcome::Failed(why) => {
                if sent.iter().map(|e| e.status).collect::<Vec<_>>() != [Status::Failed] {
                    found.push(format!(
                        "payment {slot} ({hash}): {p} saw it fail ({why}), its records say {sent:?}"
                    ));
                }
                if !received.is_empty() {
                    found.push(format!(
                        "payment {slot} ({hash}): {q} received it though {p} saw it fail ({why})"
                    ));
                }
            }
        }
    }
    // Nothing sent or received that the stream did not make.
    let made: HashMap<&str, &Attempt> = attempts
        .iter()
        .map(|a| (a.payment_hash.as_str(), a))
        .collect();
    for (ledger, way) in [(alice, Way::AliceToBob), (bob, Way::BobToAlice)] {
        for hash in ledger.outbound.keys() {
            if made.get(hash.as_str()).is_none_or(|a| a.way != way) {
                found.push(format!(
                    "{} has an outbound payment {hash} the stream never made",
                    ledger.name
                ));
            }
        }
    }
    for (ledger, way) in [(alice, Way::BobToAlice), (bob, Way::AliceToBob)] {
        for hash in ledger.inbound.keys() {
            if !ledger.received(hash).is_empty()
                && made.get(hash.as_str()).is_none_or(|a| a.way != way)
            {
                found.push(format!(
                    "{} received a payment {hash} the stream never made",
                    ledger.name
                ));
            }
        }
    }
    found
}

/// The payment id of paying the invoice with this hash (hex): the hash itself.
fn payment_id_of(payment_hash: &str) -> lightning::ln::channelmanager::PaymentId {
    let bytes = hex::decode(payment_hash).expect("the API gives hex hashes");
    lightning::ln::channelmanager::PaymentId(bytes.try_into().expect("32 bytes"))
}
