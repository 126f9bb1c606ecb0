//! Prometheus metrics of one instance, served at `GET /metrics`.
//!
//! They exist from the process's start, before the node does, so that a standby reports
//! its state too. Counters and latencies are recorded as things happen (lease renewals
//! by the campaigner, store transactions by the store adapter); peers, channels and
//! payments are read from the node when the metrics are scraped.
//!
//! | metric | type | meaning |
//! |--------|------|---------|
//! | `phalanx_server_state{state}` | gauge | 1 for this instance's state (LND's names) |
//! | `phalanx_lease_held` | gauge | 1 while this instance holds the lease |
//! | `phalanx_lease_epoch` | gauge | the epoch of the lease held (last held, after a loss) |
//! | `phalanx_leaderships_total` | counter | leases this process won (a failover onto it, or its first start) |
//! | `phalanx_lease_renewals_total{outcome}` | counter | renewals sent: `ok`, `failed`, `fenced` |
//! | `phalanx_lease_renewal_seconds` | histogram | store round trip of a renewal |
//! | `phalanx_store_transactions_total{outcome}` | counter | fenced store transactions: `committed`, `failed` |
//! | `phalanx_store_transaction_seconds` | histogram | their latency |
//! | `phalanx_peers` | gauge | connected peers |
//! | `phalanx_channels{usable}` | gauge | channels, usable or not |
//! | `phalanx_payments{direction,status}` | gauge | payment records by direction and status |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phalanx_api::ServerState;
use phalanx_cluster::RenewalObserver;
use phalanx_store::WriteObserver;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::node::Node;
use crate::payments::{Direction, PaymentStatus};

type Labels = Vec<(&'static str, &'static str)>;

/// The instance's metrics (see the [module docs](self)).
pub struct Metrics {
    registry: Registry,
    /// Serializes scrapes: each sets the gauges read from the node, then encodes.
    scrape: Mutex<()>,
    server_state: Family<Labels, Gauge>,
    lease_held: Gauge,
    lease_epoch: Gauge,
    leaderships: Counter,
    renewals: Family<Labels, Counter>,
    renewal_seconds: Histogram,
    transactions: Family<Labels, Counter>,
    transaction_seconds: Histogram,
    peers: Gauge,
    channels: Family<Labels, Gauge>,
    payments: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("phalanx");
        // 0.5 ms to about 4 s: a renewal or a write on loopback is well under a
        // millisecond; seconds mean trouble.
        let latency = || Histogram::new(exponential_buckets(0.000_5, 2.0, 14));
        let r = &mut registry;
        let server_state = register(
            r,
            "server_state",
            "1 for this instance's state (LND's state names)",
            Family::default(),
        );
        let lease_held = register(
            r,
            "lease_held",
            "1 while this instance holds the lease",
            Gauge::default(),
        );
        let lease_epoch = register(
            r,
            "lease_epoch",
            "The epoch of the lease this instance holds or last held",
            Gauge::default(),
        );
        let leaderships = register(
            r,
            "leaderships",
            "Leases this process won",
            Counter::default(),
        );
        let renewals = register(
            r,
            "lease_renewals",
            "Lease renewals sent, by outcome",
            Family::default(),
        );
        let renewal_seconds = register(
            r,
            "lease_renewal_seconds",
            "Store round trip of a lease renewal",
            latency(),
        );
        let transactions = register(
            r,
            "store_transactions",
            "Fenced store transactions, by outcome",
            Family::default(),
        );
        let transaction_seconds = register(
            r,
            "store_transaction_seconds",
            "Latency of a fenced store transaction",
            latency(),
        );
        let peers = register(r, "peers", "Connected peers", Gauge::default());
        let channels = register(r, "channels", "Channels, usable or not", Family::default());
        let payments = register(
            r,
            "payments",
            "Payment records by direction and status",
            Family::default(),
        );
        Self {
            registry,
            scrape: Mutex::new(()),
            server_state,
            lease_held,
            lease_epoch,
            leaderships,
            renewals,
            renewal_seconds,
            transactions,
            transaction_seconds,
            peers,
            channels,
            payments,
        }
    }

    /// Records a lease this process won.
    pub(crate) fn won_lease(&self, epoch: u64) {
        self.leaderships.inc();
        self.lease_held.set(1);
        self.lease_epoch
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// Records that this process no longer holds its lease.
    pub(crate) fn lost_lease(&self) {
        self.lease_held.set(0);
    }

    /// What the campaigner reports renewals to.
    pub(crate) fn renewal_observer(self: &Arc<Self>) -> RenewalObserver {
        let metrics = Arc::clone(self);
        Arc::new(move |took: Duration, outcome| {
            let outcome = match outcome {
                Ok(()) => "ok",
                Err(err) if err.is_fenced() => "fenced",
                Err(_) => "failed",
            };
            metrics
                .renewals
                .get_or_create(&vec![("outcome", outcome)])
                .inc();
            metrics.renewal_seconds.observe(took.as_secs_f64());
        })
    }

    /// What the store adapter reports transactions to.
    pub(crate) fn write_observer(self: &Arc<Self>) -> WriteObserver {
        let metrics = Arc::clone(self);
        Arc::new(move |took: Duration, committed| {
            let outcome = if committed { "committed" } else { "failed" };
            metrics
                .transactions
                .get_or_create(&vec![("outcome", outcome)])
                .inc();
            metrics.transaction_seconds.observe(took.as_secs_f64());
        })
    }

    /// The metrics in Prometheus' text format, with `state` as this instance's state and
    /// the node's peers, channels and payments if it runs.
    pub fn render(&self, state: ServerState, node: Option<&Node>) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for candidate in ServerState::ALL {
            self.server_state
                .get_or_create(&vec![("state", candidate.as_str())])
                .set(i64::from(candidate == state));
        }
        if let Some(node) = node {
            self.peers.set(node.list_peers().len() as i64);
            let channels = node.list_channels();
            let usable = channels.iter().filter(|c| c.is_usable).count() as i64;
            self.channels
                .get_or_create(&vec![("usable", "true")])
                .set(usable);
            self.channels
                .get_or_create(&vec![("usable", "false")])
                .set(channels.len() as i64 - usable);
            let mut counts: HashMap<(&'static str, &'static str), i64> = HashMap::new();
            for record in node.list_payments() {
                let direction = match record.direction {
                    Direction::Inbound => "inbound",
                    Direction::Outbound => "outbound",
                };
                let status = match record.status {
                    PaymentStatus::Pending => "pending",
                    PaymentStatus::Accepted => "accepted",
                    PaymentStatus::Succeeded => "succeeded",
                    PaymentStatus::Failed => "failed",
                };
                *counts.entry((direction, status)).or_default() += 1;
            }
            for direction in ["inbound", "outbound"] {
                for status in ["pending", "accepted", "succeeded", "failed"] {
                    let count = counts.get(&(direction, status)).copied().unwrap_or(0);
                    self.payments
                        .get_or_create(&vec![("direction", direction), ("status", status)])
                        .set(count);
                }
            }
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Registers `metric` under `name` and hands it back (the registry keeps a clone that
/// shares its value).
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_state_lease_and_observed_latencies() {
        let metrics = Arc::new(Metrics::new());
        metrics.won_lease(7);
        (metrics.renewal_observer())(Duration::from_millis(2), Ok(()));
        (metrics.write_observer())(Duration::from_millis(1), true);
        (metrics.write_observer())(Duration::from_millis(1), false);
        let text = metrics.render(ServerState::ServerActive, None);
        for line in [
            "phalanx_server_state{state=\"SERVER_ACTIVE\"} 1",
            "phalanx_server_state{state=\"WAITING_TO_START\"} 0",
            "phalanx_lease_held 1",
            "phalanx_lease_epoch 7",
            "phalanx_leaderships_total 1",
            "phalanx_lease_renewals_total{outcome=\"ok\"} 1",
            "phalanx_lease_renewal_seconds_count 1",
            "phalanx_store_transactions_total{outcome=\"committed\"} 1",
            "phalanx_store_transactions_total{outcome=\"failed\"} 1",
            "phalanx_store_transaction_seconds_count 2",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        metrics.lost_lease();
        let text = metrics.render(ServerState::WaitingToStart, None);
        assert!(text.contains("phalanx_lease_held 0"), "{text}");
        assert!(
            text.contains("phalanx_server_state{state=\"WAITING_TO_START\"} 1"),
            "{text}"
        );
    }
}
