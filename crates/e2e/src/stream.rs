//! A stream of payments both ways between Alice, a node driven over its API (which may
//! vanish at any moment: killed, restarted, failing over), and Bob, an in-process node.
//! Each of the stream's payments is tried until it succeeds, and every try is recorded
//! as an [`Attempt`] with what the payer said of it, for
//! [`crate::invariants::payment_violations`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lightning::ln::channelmanager::PaymentId;
use phalanx_api::{ApiClient, CreateInvoiceRequest, PayInvoiceRequest};
use phalanx_node::Node;
use phalanx_node::payments::PaymentStatus;
use tokio::task::JoinHandle;

use crate::api::{POLL, is_unknown_payment, unavailable, when_up};

/// The smallest payment; each one adds a little, so that no two amounts are equal.
pub const BASE_AMOUNT_MSAT: u64 = 1_000_000;
/// How long one try may take to reach a final outcome, a restart of Alice included.
pub const PAYMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Which way a payment goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Alice pays an invoice of Bob's.
    AliceToBob,
    /// Bob pays an invoice of Alice's.
    BobToAlice,
}

/// What the payer said of one try at a payment, in the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The payer refused it at once and kept no record of it: no payment was made.
    NotRecorded(String),
    /// It succeeded.
    Succeeded,
    /// It failed, for this reason.
    Failed(String),
}

/// One try at one of the stream's payments (a failed one is tried again with a new
/// invoice).
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Which of the stream's payments.
    pub slot: usize,
    /// Who paid.
    pub way: Way,
    /// The invoice's payment hash (hex).
    pub payment_hash: String,
    /// What the invoice asked.
    pub amount_msat: u64,
    /// What the payer said.
    pub outcome: Outcome,
    /// When the try began.
    pub began: Instant,
    /// How long it took to its outcome.
    pub took: Duration,
}

/// The stream's shared state.
pub struct Stream {
    /// Alice's API (a cluster's: through a load balancer).
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
    /// A stream of `payments` payments, each of which must succeed before `deadline`.
    pub fn until(alice: ApiClient, bob: Arc<Node>, payments: usize, deadline: Instant) -> Self {
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
    pub fn open_ended(alice: ApiClient, bob: Arc<Node>, deadline: Instant) -> Self {
        Self::until(alice, bob, usize::MAX, deadline)
    }

    /// Takes no new payment; those under way go on to their end.
    pub fn finish(&self) {
        // A worker that took slot N after this read sees N >= the limit and stops; one
        // that took it before is counted: the limit is exactly the slots taken.
        let taken = self.next_slot.load(Ordering::SeqCst);
        self.payments.fetch_min(taken, Ordering::SeqCst);
    }

    /// The number of payments the stream makes (once finished).
    pub fn payments(&self) -> usize {
        self.payments.load(Ordering::SeqCst)
    }

    /// How many of its payments succeeded so far.
    pub fn succeeded(&self) -> usize {
        self.succeeded.load(Ordering::SeqCst)
    }

    /// How many tries are under way right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The median time to success of the tries that began in `from..to`, and how many
    /// there were.
    pub fn median_success(&self, from: Instant, to: Instant) -> (Option<Duration>, usize) {
        let mut took: Vec<Duration> = lock(&self.attempts)
            .iter()
            .filter(|a| a.outcome == Outcome::Succeeded && a.began >= from && a.began < to)
            .map(|a| a.took)
            .collect();
        took.sort();
        (took.get(took.len() / 2).copied(), took.len())
    }

    /// Records a payment a scenario made beside the stream (a BOLT 12 offer paid between
    /// rounds), so that the invariants count it as one of the stream's.
    pub fn record_beside(&self, attempt: Attempt) {
        lock(&self.attempts).push(attempt);
    }

    /// Every try so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.attempts).clone()
    }

    /// Starts `count` workers that take the stream's payments one after the other.
    pub fn spawn_workers(self: &Arc<Self>, count: usize) -> Vec<JoinHandle<Result<(), String>>> {
        (0..count)
            .map(|_| tokio::spawn(worker(Arc::clone(self))))
            .collect()
    }
}

/// How a worker ended: `done`, or why not.
pub async fn outcome(worker: &mut JoinHandle<Result<(), String>>) -> String {
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
                    "payment {slot} did not succeed before the stream's deadline"
                ));
            }
            stream.in_flight.fetch_add(1, Ordering::SeqCst);
            let began = Instant::now();
            let attempt = match way {
                Way::AliceToBob => alice_pays(&stream, slot, amount_msat).await,
                Way::BobToAlice => bob_pays(&stream, slot, amount_msat).await,
            };
            stream.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut attempt = attempt?;
            attempt.began = began;
            attempt.took = began.elapsed();
            let done = attempt.outcome == Outcome::Succeeded;
            lock(&stream.attempts).push(attempt);
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
        .create_invoice(Some(amount_msat), &format!("stream {slot}"), None)
        .await
        .map_err(|err| format!("bob cannot make an invoice: {err}"))?;
    let payment_hash = invoice.payment_hash().to_string();
    let attempt = |outcome| Attempt {
        slot,
        way: Way::AliceToBob,
        payment_hash: payment_hash.clone(),
        amount_msat,
        outcome,
        began: Instant::now(),
        took: Duration::ZERO,
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
        description: format!("stream {slot}"),
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
        Err(err) => match stream
            .bob
            .outbound_payment(invoice_payment_id(&payment_hash)?)
        {
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
        began: Instant::now(),
        took: Duration::ZERO,
    })
}

/// The payment id of paying the invoice whose hash is `payment_hash` (hex): the node
/// pays an invoice once, under its hash.
fn invoice_payment_id(payment_hash: &str) -> Result<PaymentId, String> {
    hex32(payment_hash)
        .map(PaymentId)
        .ok_or_else(|| format!("the API gave a payment hash that is not 32 bytes: {payment_hash}"))
}

/// 32 bytes from their hex (a payment hash or id, as the API gives them).
pub(crate) fn hex32(hex: &str) -> Option<[u8; 32]> {
    hex::decode(hex)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
