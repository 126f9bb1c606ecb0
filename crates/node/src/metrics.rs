//! Prometheus metrics of one instance, served at `GET /metrics`.
//!
//! They exist from the process's start, before the node does, so that a standby reports
//! its state too. Counters and latencies are recorded as things happen (lease renewals
//! by the campaigner, store transactions by the store adapter); peers, channels and
//! payments are handed in as [`NodeGauges`] when the metrics are scraped. This module
//! is a leaf: it knows nothing of the node, which feeds it.
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
//! | `phalanx_store_written_bytes_total{kind}` | counter | bytes of values committed, by what they are: the namespace (`monitors`, `monitor_updates`, `payments`, ...) or, for LDK's top-level objects, the key (`manager`, `network_graph`, `scorer`) |
//! | `phalanx_peers` | gauge | connected peers (directly or through fronts) |
//! | `phalanx_fronts` | gauge | front servers linked to this instance |
//! | `phalanx_peers_on_fronts` | gauge | of the peers, those connected through fronts |
//! | `phalanx_front_gossip_total{outcome}` | counter | verified gossip from fronts: `new` in the router's graph, `ignored` (had it), `malformed` |
//! | `phalanx_front_funding_checks_total{outcome}` | counter | funding outputs fronts asked for: `found`, `unknown` |
//! | `phalanx_channels{usable}` | gauge | channels, usable or not |
//! | `phalanx_payments{direction,status}` | gauge | payment records by direction and status |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phalanx_api::ServerState;
use phalanx_cluster::RenewalObserver;
use phalanx_store::{StoreKey, WriteObserver, WriteReport};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

type Labels = Vec<(&'static str, &'static str)>;

/// The payment directions and statuses, as labelled.
pub const PAYMENT_DIRECTIONS: [&str; 2] = ["inbound", "outbound"];
/// See [`PAYMENT_DIRECTIONS`].
pub const PAYMENT_STATUSES: [&str; 4] = ["pending", "accepted", "succeeded", "failed"];

/// What a running node reports at a scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeGauges {
    /// Connected peers.
    pub peers: usize,
    /// Front servers linked.
    pub fronts: usize,
    /// Peers connected through fronts.
    pub peers_on_fronts: usize,
    /// Channels.
    pub channels: usize,
    /// Of them, usable ones.
    pub usable_channels: usize,
    /// Payment records by (direction, status), labelled as in [`PAYMENT_DIRECTIONS`]
    /// and [`PAYMENT_STATUSES`]; missing pairs are zero.
    pub payments: HashMap<(&'static str, &'static str), usize>,
}

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
    written_bytes: Family<Vec<(&'static str, String)>, Counter>,
    peers: Gauge,
    fronts: Gauge,
    peers_on_fronts: Gauge,
    front_gossip: Family<Labels, Counter>,
    front_funding_checks: Family<Labels, Counter>,
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
        let written_bytes = register(
            r,
            "store_written_bytes",
            "Bytes of values committed to the store, by what they are",
            Family::default(),
        );
        let peers = register(r, "peers", "Connected peers", Gauge::default());
        let fronts = register(r, "fronts", "Front servers linked", Gauge::default());
        let peers_on_fronts = register(
            r,
            "peers_on_fronts",
            "Peers connected through front servers",
            Gauge::default(),
        );
        let front_gossip = register(
            r,
            "front_gossip",
            "Verified gossip from fronts, by what the router's graph did with it",
            Family::default(),
        );
        let front_funding_checks = register(
            r,
            "front_funding_checks",
            "Funding outputs fronts asked for, by outcome",
            Family::default(),
        );
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
            written_bytes,
            peers,
            fronts,
            peers_on_fronts,
            front_gossip,
            front_funding_checks,
            channels,
            payments,
        }
    }

    /// Records a piece of gossip from a front: `new`, `ignored`, `malformed`, or `dropped`
    /// (the thread that applies it is gone).
    pub fn front_gossip(&self, outcome: &'static str) {
        self.front_gossip
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// Records a front's funding check: `found` or `unknown`.
    pub fn front_funding_check(&self, outcome: &'static str) {
        self.front_funding_checks
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// Records a lease this process won.
    pub fn won_lease(&self, epoch: u64) {
        self.leaderships.inc();
        self.lease_held.set(1);
        self.lease_epoch
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// Records that this process no longer holds its lease.
    pub fn lost_lease(&self) {
        self.lease_held.set(0);
    }

    /// What the campaigner reports renewals to.
    pub fn renewal_observer(self: &Arc<Self>) -> RenewalObserver {
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
    pub fn write_observer(self: &Arc<Self>) -> WriteObserver {
        let metrics = Arc::clone(self);
        Arc::new(move |report: &WriteReport| {
            let outcome = if report.committed {
                "committed"
            } else {
                "failed"
            };
            metrics
                .transactions
                .get_or_create(&vec![("outcome", outcome)])
                .inc();
            metrics
                .transaction_seconds
                .observe(report.took.as_secs_f64());
            if report.committed {
                for (key, bytes) in &report.written {
                    metrics
                        .written_bytes
                        .get_or_create(&vec![("kind", written_kind(key).to_owned())])
                        .inc_by(*bytes as u64);
                }
            }
        })
    }

    /// The metrics in Prometheus' text format, with `state` as this instance's state and
    /// the running node's `gauges` if it runs.
    pub fn render(&self, state: ServerState, gauges: Option<&NodeGauges>) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for candidate in ServerState::ALL {
            self.server_state
                .get_or_create(&vec![("state", candidate.as_str())])
                .set(i64::from(candidate == state));
        }
        if let Some(gauges) = gauges {
            let gauge = |count: usize| i64::try_from(count).unwrap_or(i64::MAX);
            self.peers.set(gauge(gauges.peers));
            self.fronts.set(gauge(gauges.fronts));
            self.peers_on_fronts.set(gauge(gauges.peers_on_fronts));
            self.channels
                .get_or_create(&vec![("usable", "true")])
                .set(gauge(gauges.usable_channels));
            self.channels
                .get_or_create(&vec![("usable", "false")])
                .set(gauge(
                    gauges.channels.saturating_sub(gauges.usable_channels),
                ));
            for direction in PAYMENT_DIRECTIONS {
                for status in PAYMENT_STATUSES {
                    let count = gauges.payments.get(&(direction, status)).copied();
                    self.payments
                        .get_or_create(&vec![("direction", direction), ("status", status)])
                        .set(gauge(count.unwrap_or(0)));
                }
            }
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// What a written key holds, as a label of few values: its namespace, or for the
/// top-level objects LDK keeps in the empty namespace (the manager, the network graph,
/// the scorer), its key. Never a channel's or a payment's name.
fn written_kind(key: &StoreKey) -> &str {
    match key.primary() {
        "" => key.key(),
        primary => primary,
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
        let key = |primary: &str, secondary: &str, key: &str| {
            StoreKey::new(primary, secondary, key).unwrap()
        };
        let report = |committed, written| WriteReport {
            took: Duration::from_millis(1),
            committed,
            written,
        };
        (metrics.write_observer())(&report(
            true,
            vec![
                (key("", "", "manager"), 1000),
                (key("monitors", "", "ab_0"), 700),
                (key("monitor_updates", "ab_0", "7"), 30),
            ],
        ));
        (metrics.write_observer())(&report(
            true,
            vec![(key("monitor_updates", "ab_0", "8"), 20)],
        ));
        // A write that failed kept nothing.
        (metrics.write_observer())(&report(false, vec![(key("", "", "manager"), 5)]));
        let gauges = NodeGauges {
            peers: 2,
            fronts: 2,
            peers_on_fronts: 1,
            channels: 3,
            usable_channels: 1,
            payments: HashMap::from([(("outbound", "succeeded"), 5)]),
        };
        let text = metrics.render(ServerState::ServerActive, Some(&gauges));
        for line in [
            "phalanx_server_state{state=\"SERVER_ACTIVE\"} 1",
            "phalanx_server_state{state=\"WAITING_TO_START\"} 0",
            "phalanx_lease_held 1",
            "phalanx_lease_epoch 7",
            "phalanx_leaderships_total 1",
            "phalanx_lease_renewals_total{outcome=\"ok\"} 1",
            "phalanx_lease_renewal_seconds_count 1",
            "phalanx_store_transactions_total{outcome=\"committed\"} 2",
            "phalanx_store_transactions_total{outcome=\"failed\"} 1",
            "phalanx_store_transaction_seconds_count 3",
            "phalanx_store_written_bytes_total{kind=\"manager\"} 1000",
            "phalanx_store_written_bytes_total{kind=\"monitors\"} 700",
            "phalanx_store_written_bytes_total{kind=\"monitor_updates\"} 50",
            "phalanx_peers 2",
            "phalanx_fronts 2",
            "phalanx_peers_on_fronts 1",
            "phalanx_channels{usable=\"true\"} 1",
            "phalanx_channels{usable=\"false\"} 2",
            "phalanx_payments{direction=\"outbound\",status=\"succeeded\"} 5",
            "phalanx_payments{direction=\"inbound\",status=\"pending\"} 0",
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
