//! A stream of payments between nodes, with its statistics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use phalanx_node::Node;
use phalanx_node::payments::PaymentStatus;

/// How long one payment may take before it counts as failed.
pub const PAYMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a stream has done so far.
pub struct Stats {
    started: Instant,
    latencies_us: Histogram<u64>,
    /// Payments that succeeded (sender saw success, receiver recorded it).
    pub succeeded: u64,
    /// Payments that failed, with the last reason.
    pub failed: u64,
    /// The last failure.
    pub last_failure: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            latencies_us: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("valid histogram bounds"),
            succeeded: 0,
            failed: 0,
            last_failure: None,
        }
    }
}

impl Stats {
    /// Payments per second since the stream started.
    pub fn rate(&self) -> f64 {
        self.succeeded as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// The latency at `quantile` (0..1), in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latencies_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Seconds since the stream started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn record(&mut self, result: Result<Duration, String>) {
        match result {
            Ok(latency) => {
                self.succeeded += 1;
                let _ = self.latencies_us.record(latency.as_micros().max(1) as u64);
            }
            Err(reason) => {
                self.failed += 1;
                self.last_failure = Some(reason);
            }
        }
    }
}

/// One payment of `amount_msat` from `payer` to an invoice of `payee`: succeeded only
/// when the payer saw success and the payee recorded it as received.
pub async fn pay_once(
    payer: &Node,
    payee: &Node,
    amount_msat: u64,
    description: &str,
) -> Result<Duration, String> {
    let started = Instant::now();
    let invoice = payee
        .create_invoice(Some(amount_msat), description, None)
        .await
        .map_err(|e| e.to_string())?;
    let id = payer
        .pay_invoice(&invoice.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    let record = payer
        .wait_payment(id, PAYMENT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    match record.status {
        PaymentStatus::Succeeded => {}
        status => {
            return Err(format!(
                "{status:?}: {}",
                record.failure_reason.unwrap_or_default()
            ));
        }
    }
    let latency = started.elapsed();
    let hash = lightning::types::payment::PaymentHash(invoice.payment_hash().0);
    match payee.wait_inbound(hash, PAYMENT_TIMEOUT).await {
        Some(record) if record.status == PaymentStatus::Succeeded => {}
        other => return Err(format!("the payer saw success but the payee has {other:?}")),
    }
    Ok(latency)
}

/// What a stream sends.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// How many payments (until stopped when `None`).
    pub count: Option<u64>,
    /// Payments in flight at once.
    pub concurrency: usize,
    /// The amount of each.
    pub amount_msat: u64,
    /// Alternate the direction.
    pub both_ways: bool,
}

/// Runs the payments of `plan` from `a` to `b` (and back when `both_ways`), until done or
/// `stop` is set.
pub async fn run(
    a: Arc<Node>,
    b: Arc<Node>,
    plan: Plan,
    stats: Arc<Mutex<Stats>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let Plan {
        count,
        concurrency,
        amount_msat,
        both_ways,
    } = plan;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (a, b, stats, next, stop) = (
            Arc::clone(&a),
            Arc::clone(&b),
            Arc::clone(&stats),
            Arc::clone(&next),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                if *stop.borrow() {
                    return;
                }
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if count.is_some_and(|count| n >= count) {
                    return;
                }
                let (payer, payee) = if both_ways && n % 2 == 1 {
                    (&b, &a)
                } else {
                    (&a, &b)
                };
                let result =
                    pay_once(payer, payee, amount_msat, &format!("devnet payment {n}")).await;
                stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(result);
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
}
