//! Reading a node's state offline, without a chain or a network: what `phalanx backup
//! verify` does with a backup.
//!
//! [`check_state`] decodes every channel monitor with its pending updates and the
//! channel manager, as a start would, with keys from the seed and every other part
//! inert (no chain, no broadcast, no route, no persistence). LDK logs an error when the
//! manager is behind a monitor (a start would force-close those channels) or a monitor
//! behind the manager (it refuses to load); either is a failed check, as is anything
//! that does not decode.

use lightning::io;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::Transaction;
use bitcoin::secp256k1::PublicKey;
use lightning::chain::chaininterface::{
    BroadcasterInterface, ConfirmationTarget, FeeEstimator, TransactionType,
};
use lightning::chain::channelmonitor::{ChannelMonitor, ChannelMonitorUpdate, MonitorEvent};
use lightning::chain::transaction::OutPoint;
use lightning::chain::{ChannelMonitorUpdateStatus, Watch};
use lightning::ln::channelmanager::{self, ChannelManagerReadArgs};
use lightning::ln::types::ChannelId;
use lightning::onion_message::messenger::NullMessageRouter;
use lightning::routing::gossip::NetworkGraph;
use lightning::routing::router::DefaultRouter;
use lightning::routing::scoring::{
    ProbabilisticScorer, ProbabilisticScoringDecayParameters, ProbabilisticScoringFeeParameters,
};
use lightning::sign::{InMemorySigner, KeysManager};
use lightning::util::config::UserConfig;
use lightning::util::logger::{Level, Logger, Record};
use lightning::util::persist::{self, KVStoreSync, MonitorUpdatingPersister};
use lightning::util::ser::ReadableArgs;
use phalanx_secrets::Seed;
use phalanx_store::StoreKey;

/// What a node's state holds, as read offline.
#[derive(Clone, Debug, Default)]
pub struct StateReport {
    /// Channel monitors decoded (with their pending updates).
    pub monitors: usize,
    /// Whether there was a channel manager (a node that never started has none).
    pub manager: bool,
    /// The manager's channels.
    pub channels: Vec<ChannelSummary>,
}

/// One channel of the manager, and what its monitor could claim on chain now.
#[derive(Clone, Debug)]
pub struct ChannelSummary {
    /// The channel id, hex.
    pub channel_id: String,
    /// The peer.
    pub counterparty: PublicKey,
    /// The funding outpoint, once known.
    pub funding: Option<String>,
    /// Its capacity, in satoshis.
    pub capacity_sat: u64,
    /// Our side, by the monitor's claimable balances, in satoshis.
    pub our_balance_sat: u64,
}

/// Reads `entries` (every key of a node's store) as a start would, with `seed`'s keys;
/// returns what it holds, or why a node started from it would not be safe.
pub fn check_state(entries: &[(StoreKey, Vec<u8>)], seed: &Seed) -> Result<StateReport, String> {
    let kv = Arc::new(MemoryKv::new(entries));
    let logger = Arc::new(CapturingLogger::default());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let keys = Arc::new(KeysManager::new(
        &seed.ldk_seed(),
        now.as_secs(),
        now.subsec_nanos(),
        true,
    ));
    let broadcaster = Arc::new(NoBroadcast::default());
    let fees = Arc::new(FixedFees);
    let persister = MonitorUpdatingPersister::new(
        Arc::clone(&kv),
        Arc::clone(&logger),
        crate::node::MAX_PENDING_MONITOR_UPDATES,
        Arc::clone(&keys),
        Arc::clone(&keys),
        Arc::clone(&broadcaster),
        Arc::clone(&fees),
    );
    let monitor_keys = kv
        .list(
            persist::CHANNEL_MONITOR_PERSISTENCE_PRIMARY_NAMESPACE,
            persist::CHANNEL_MONITOR_PERSISTENCE_SECONDARY_NAMESPACE,
        )
        .map_err(|e| e.to_string())?;
    let mut monitors = Vec::with_capacity(monitor_keys.len());
    for key in &monitor_keys {
        // LDK panics on a gap in a monitor's updates: find one first, and say so.
        check_update_sequence(&kv, &keys, key)?;
        let (_, monitor) = persister
            .read_channel_monitor_with_updates(key)
            .map_err(|err| format!("channel monitor {key}: {err}"))?;
        monitors.push(monitor);
    }
    let mut report = StateReport {
        monitors: monitors.len(),
        ..StateReport::default()
    };
    let manager_bytes = match kv.read(
        persist::CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE,
        persist::CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE,
        persist::CHANNEL_MANAGER_PERSISTENCE_KEY,
    ) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            if monitors.is_empty() {
                return Ok(report);
            }
            return Err(format!(
                "{} channel monitors but no channel manager: a node started from it would lose its channels",
                monitors.len()
            ));
        }
        Err(err) => return Err(err.to_string()),
    };

    let graph = Arc::new(NetworkGraph::new(
        bitcoin::Network::Regtest,
        Arc::clone(&logger),
    ));
    let scorer = Arc::new(RwLock::new(ProbabilisticScorer::new(
        ProbabilisticScoringDecayParameters::default(),
        Arc::clone(&graph),
        Arc::clone(&logger),
    )));
    let router = Arc::new(DefaultRouter::new(
        graph,
        Arc::clone(&logger),
        Arc::clone(&keys),
        scorer,
        ProbabilisticScoringFeeParameters::default(),
    ));
    let watch = Arc::new(InertWatch);
    let args = ChannelManagerReadArgs::new(
        Arc::clone(&keys),
        Arc::clone(&keys),
        Arc::clone(&keys),
        Arc::clone(&fees),
        Arc::clone(&watch),
        Arc::clone(&broadcaster),
        router,
        Arc::new(NullMessageRouter {}),
        Arc::clone(&logger),
        UserConfig::default(),
        monitors.iter().collect(),
    );
    type OfflineManager = channelmanager::ChannelManager<
        Arc<InertWatch>,
        Arc<NoBroadcast>,
        Arc<KeysManager>,
        Arc<KeysManager>,
        Arc<KeysManager>,
        Arc<FixedFees>,
        Arc<OfflineRouter>,
        Arc<NullMessageRouter>,
        Arc<CapturingLogger>,
    >;
    let read =
        <(lightning::chain::BlockLocator, OfflineManager)>::read(&mut &manager_bytes[..], args);
    let errors = logger.errors();
    let (_, manager) = read.map_err(|err| {
        format!(
            "the channel manager does not load ({err:?}){}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(": {}", errors.join("; "))
            }
        )
    })?;
    if !errors.is_empty() {
        return Err(format!(
            "a node started from this state would not be safe: {}",
            errors.join("; ")
        ));
    }
    report.manager = true;
    for channel in manager.list_channels() {
        let our_balance_sat = monitors
            .iter()
            .find(|m| m.channel_id() == channel.channel_id)
            .map(|m| {
                m.get_claimable_balances()
                    .iter()
                    .map(|b| b.claimable_amount_satoshis())
                    .sum()
            })
            .unwrap_or(0);
        report.channels.push(ChannelSummary {
            channel_id: channel.channel_id.to_string(),
            counterparty: channel.counterparty.node_id,
            funding: channel.funding_txo.map(|o| o.to_string()),
            capacity_sat: channel.channel_value_satoshis,
            our_balance_sat,
        });
    }
    Ok(report)
}

/// Checks that the updates stored beside monitor `key` follow its last update without a
/// gap (one missing would make LDK apply the next out of order, which it refuses by
/// panicking).
fn check_update_sequence(kv: &MemoryKv, keys: &Arc<KeysManager>, key: &str) -> Result<(), String> {
    let bytes = kv
        .read(
            persist::CHANNEL_MONITOR_PERSISTENCE_PRIMARY_NAMESPACE,
            persist::CHANNEL_MONITOR_PERSISTENCE_SECONDARY_NAMESPACE,
            key,
        )
        .map_err(|e| format!("channel monitor {key}: {e}"))?;
    let body = bytes
        .strip_prefix(persist::MONITOR_UPDATING_PERSISTER_PREPEND_SENTINEL)
        .unwrap_or(&bytes);
    let read = <Option<(
        lightning::chain::BlockLocator,
        ChannelMonitor<InMemorySigner>,
    )>>::read(&mut &body[..], (&**keys, &**keys))
    .map_err(|e| format!("channel monitor {key} does not decode: {e:?}"))?;
    let Some((_, monitor)) = read else {
        return Ok(());
    };
    let latest = monitor.get_latest_update_id();
    let mut pending: Vec<u64> = kv
        .list(
            persist::CHANNEL_MONITOR_UPDATE_PERSISTENCE_PRIMARY_NAMESPACE,
            key,
        )
        .map_err(|e| e.to_string())?
        .iter()
        .map(|name| {
            name.parse::<u64>()
                .map_err(|_| format!("channel monitor {key}: an update named {name:?}"))
        })
        .collect::<Result<_, _>>()?;
    pending.retain(|id| *id > latest);
    pending.sort_unstable();
    for (expected, found) in (latest + 1..).zip(&pending) {
        if *found != expected {
            return Err(format!(
                "channel monitor {key} is at update {latest}, and its update {expected} is missing (the next stored is {found})"
            ));
        }
    }
    Ok(())
}

type OfflineGraph = NetworkGraph<Arc<CapturingLogger>>;
type OfflineScorer = ProbabilisticScorer<Arc<OfflineGraph>, Arc<CapturingLogger>>;
type OfflineRouter = DefaultRouter<
    Arc<OfflineGraph>,
    Arc<CapturingLogger>,
    Arc<KeysManager>,
    Arc<RwLock<OfflineScorer>>,
    ProbabilisticScoringFeeParameters,
    OfflineScorer,
>;

/// A store's entries, as LDK reads them.
struct MemoryKv {
    values: Mutex<BTreeMap<(String, String, String), Vec<u8>>>,
}

impl MemoryKv {
    fn new(entries: &[(StoreKey, Vec<u8>)]) -> Self {
        let values = entries
            .iter()
            .map(|(key, value)| {
                (
                    (
                        key.primary().to_owned(),
                        key.secondary().to_owned(),
                        key.key().to_owned(),
                    ),
                    value.clone(),
                )
            })
            .collect();
        Self {
            values: Mutex::new(values),
        }
    }
}

impl KVStoreSync for MemoryKv {
    fn read(&self, primary: &str, secondary: &str, key: &str) -> Result<Vec<u8>, io::Error> {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values
            .get(&(primary.to_owned(), secondary.to_owned(), key.to_owned()))
            .cloned()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{primary}/{secondary}/{key}"),
                )
            })
    }

    fn write(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
        buf: Vec<u8>,
    ) -> Result<(), io::Error> {
        // Reading a monitor may clean up its updates; offline, nothing is kept.
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.insert(
            (primary.to_owned(), secondary.to_owned(), key.to_owned()),
            buf,
        );
        Ok(())
    }

    fn remove(
        &self,
        primary: &str,
        secondary: &str,
        key: &str,
        _lazy: bool,
    ) -> Result<(), io::Error> {
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.remove(&(primary.to_owned(), secondary.to_owned(), key.to_owned()));
        Ok(())
    }

    fn list(&self, primary: &str, secondary: &str) -> Result<Vec<String>, io::Error> {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        Ok(values
            .keys()
            .filter(|(p, s, _)| p == primary && s == secondary)
            .map(|(_, _, k)| k.clone())
            .collect())
    }
}

/// Keeps LDK's error lines (a stale manager or monitor is reported so).
#[derive(Default)]
struct CapturingLogger {
    errors: Mutex<Vec<String>>,
}

impl CapturingLogger {
    fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Logger for CapturingLogger {
    fn log(&self, record: Record) {
        if record.level >= Level::Error {
            self.errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(record.args.to_string());
        }
    }
}

/// Never broadcasts: offline, what LDK would send is only counted.
#[derive(Default)]
struct NoBroadcast {
    transactions: Mutex<usize>,
}

impl BroadcasterInterface for NoBroadcast {
    fn broadcast_transactions(&self, txs: &[(&Transaction, TransactionType)]) {
        *self.transactions.lock().unwrap_or_else(|e| e.into_inner()) += txs.len();
    }
}

/// A fee rate for reading; nothing is spent offline.
struct FixedFees;

impl FeeEstimator for FixedFees {
    fn get_est_sat_per_1000_weight(&self, _target: ConfirmationTarget) -> u32 {
        253
    }
}

/// Takes the monitors handed over on reading and keeps nothing.
struct InertWatch;

impl Watch<InMemorySigner> for InertWatch {
    fn watch_channel(
        &self,
        _channel_id: ChannelId,
        _monitor: ChannelMonitor<InMemorySigner>,
    ) -> Result<ChannelMonitorUpdateStatus, ()> {
        Ok(ChannelMonitorUpdateStatus::Completed)
    }

    fn update_channel(
        &self,
        _channel_id: ChannelId,
        _update: &ChannelMonitorUpdate,
    ) -> ChannelMonitorUpdateStatus {
        ChannelMonitorUpdateStatus::Completed
    }

    fn release_pending_monitor_events(
        &self,
    ) -> Vec<(OutPoint, ChannelId, Vec<MonitorEvent>, PublicKey)> {
        Vec::new()
    }
}
