//! The node: LDK assembled over the fenced store, started and stopped as one.
//!
//! Start-up order (LDK's, see `ChannelManagerReadArgs`): an instance wins the leadership
//! (`phalanx-instance`) and hands it to the [`NodeBuilder`], which reads the
//! monitors, read the ChannelManager with them, bring every listener (monitors, manager,
//! sweeper, wallet) to the chain tip, hand the monitors to the ChainMonitor, and only then
//! start the background processor, the peers and the block poller.
//!
//! Where things are: `builder` (the start-up from the parts handed to it), `restore`
//! (reading the graph, monitors, scorer and sweeper), `sync` (blocks to every listener),
//! `loops` (the background loops), `runtime` (the store's own runtime), `error`; and the
//! operations, each an `impl Node` of its own: `onchain`, `peering`, `channels`,
//! `payments`, `backup`. This file holds the node itself, its accessors and its shutdown.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::constants::ChainHash;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, Network, Txid};
use lightning::chain::channelmonitor::ChannelMonitor;
use lightning::chain::{BlockLocator, Listen};
use lightning::events::bump_transaction::sync::BumpTransactionEventHandlerSync;
use lightning::ln::channel_state::ChannelDetails;
use lightning::ln::channelmanager::{
    Bolt11InvoiceParameters, ChainParameters, ChannelManagerReadArgs, OptionalBolt11PaymentParams,
    OptionalOfferPaymentParams, PaymentId,
};
use lightning::ln::outbound_payment::{RecipientOnionFields, Retry};
use lightning::ln::peer_handler::{IgnoringMessageHandler, MessageHandler};
use lightning::ln::types::ChannelId;
use lightning::offers::offer::{Amount as OfferAmount, Offer};
use lightning::onion_message::messenger::DefaultMessageRouter;
use lightning::routing::gossip::P2PGossipSync;
use lightning::routing::router::{DefaultRouter, PaymentParameters, RouteParameters};
use lightning::routing::scoring::{
    ProbabilisticScorer, ProbabilisticScoringDecayParameters, ProbabilisticScoringFeeParameters,
};
use lightning::sign::Recipient;
use lightning::sign::{EntropySource, InMemorySigner, KeysManager, NodeSigner};
use lightning::types::payment::{PaymentHash, PaymentPreimage};
use lightning::util::config::UserConfig;
use lightning::util::persist::KVStoreSync;
use lightning::util::ser::ReadableArgs;
use lightning::util::wallet_utils::WalletSync;
use lightning::{io, util::persist};
use lightning_background_processor::{
    GossipSync as BpGossipSync, NO_LIQUIDITY_MANAGER, process_events_async,
};
use lightning_block_sync::poll::{ChainPoller, ValidatedBlockHeader};
use lightning_block_sync::{SpvClient, init};
use lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescription, Description};
use phalanx_cluster::{Leadership, LeadershipStatus};
use phalanx_link::ActiveBackend;
use phalanx_link::tls::LinkIdentity;
use phalanx_secrets::{FileSeedProvider, SecretsError, SeedProvider};
use phalanx_store::{Epoch, LdkKvStore, StateStore, Store, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::chain::{BroadcastOutcome, ChainClient, ChainError};
use crate::config::{NodeConfig, SeedSource};
use crate::events::EventHandler;
use crate::identity::{self, IdentityError};
use crate::keys::{SweepSpender, WalletKeys};
use crate::logger::TracingLogger;
use crate::metrics::{Metrics, NodeGauges};
use crate::payments::{Direction, PaymentLocks, PaymentRecord, PaymentStatus, PaymentStore};
use crate::peers::{self, AddressBook, PeerError};
use crate::persist::{FailStop, FailStopPersister};
use crate::tasks::{Runs, Supervisor};
use crate::types::{
    BumpHandler, Chain, ChainMonitor, ChannelManager, GossipSync, KvStore, LinkServer, Logger,
    MessageRouter, MonitorPersister, NetworkGraph, OnionMessenger, OutputSweeper, PeerManager,
    Persister, Router, Scorer, SplitHandler,
};
use crate::wallet::{OnchainWallet, WalletBalance, WalletError};

mod backup;
mod builder;
mod channels;
mod error;
mod loops;
mod onchain;
mod payments;
mod peering;
mod restore;
mod runtime;
mod sync;

pub use self::backup::BackupCreated;
pub use self::builder::NodeBuilder;
pub use self::error::BuildError;
pub use self::error::NodeError;
use self::error::*;
use self::loops::*;
use self::restore::*;
pub use self::runtime::StoreRuntime;
use self::sync::*;

/// How long an outbound payment keeps retrying other routes.
pub const PAYMENT_RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the node tries to reconnect to channel peers it is not connected to.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(5);

/// How often the wallet's unconfirmed transactions are broadcast again.
pub const WALLET_REBROADCAST_INTERVAL: Duration = Duration::from_secs(60);

/// How often fee estimates are refreshed.
pub const FEE_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// How long a cooperative close is retried while LDK is busy with the channel.
pub const CLOSE_RETRY_WINDOW: Duration = Duration::from_secs(5);

/// The final CLTV delta of keysend payments.
const KEYSEND_FINAL_CLTV_DELTA: u32 = 40;

/// Monitor updates written as deltas before the whole monitor is written again.
pub(crate) const MAX_PENDING_MONITOR_UPDATES: u64 = 100;

/// Monitors read from the store at once when the node starts.
const MONITOR_READERS: usize = 8;

/// How long after the start the stale monitor updates of a previous instance are removed.
const STALE_UPDATE_CLEANUP_DELAY: Duration = Duration::from_secs(30);

/// A running node.
pub struct Node {
    network: Network,
    alias: String,
    keys: Arc<KeysManager>,
    chain: Chain,
    chain_monitor: Arc<ChainMonitor>,
    channel_manager: Arc<ChannelManager>,
    peer_manager: Arc<PeerManager>,
    /// Onion messages (BOLT 12), for direct peers and peers on fronts.
    onion_messenger: Arc<OnionMessenger>,
    /// Peers on front servers.
    link_server: Arc<LinkServer>,
    /// Where fronts connect, if the node serves any.
    link_address: Option<SocketAddr>,
    /// The router's view of the network (gossip from direct peers and fronts).
    network_graph: Arc<NetworkGraph>,
    wallet: Arc<OnchainWallet>,
    payments: Arc<PaymentStore>,
    /// Serializes the calls that start one payment (see `PaymentLocks`).
    payment_locks: PaymentLocks,
    address_book: Arc<AddressBook>,
    events: Arc<EventHandler>,
    sweeper: Arc<OutputSweeper>,
    fail_stop: FailStop,
    kv: KvStore,
    metrics: Arc<Metrics>,
    listen_addresses: Vec<SocketAddr>,
    epoch: Epoch,
    /// The key snapshot backups are sealed with ([`phalanx_secrets::Seed::backup_key`]);
    /// the seed itself is not kept.
    backup_key: zeroize::Zeroizing<[u8; 32]>,
    /// The cluster, named in a backup's manifest.
    cluster: String,
    leadership: Mutex<Option<Leadership>>,
    /// Tells the background tasks to finish.
    shutdown: watch::Sender<bool>,
    background_processor: Mutex<Option<JoinHandle<Result<(), io::Error>>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: watch::Sender<Option<String>>,
    /// Declared last: dropped after everything that uses the store.
    _store_runtime: StoreRuntime,
}

/// What an instance forwarded since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardingStats {
    /// Fees earned (msat).
    pub fees_msat: u64,
    /// Payments forwarded.
    pub payments: u64,
}

/// A connected peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerDetails {
    /// Its node id.
    pub node_id: PublicKey,
    /// Its address as seen on the connection, when known.
    pub address: Option<String>,
    /// Whether it dialled us.
    pub inbound: bool,
}

/// A channel being opened: LDK's temporary id (replaced by the funding's once the
/// funding transaction is made) and the id that stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenedChannel {
    /// The temporary channel id.
    pub temporary_channel_id: ChannelId,
    /// The user channel id, which stays for the channel's life.
    pub user_channel_id: u128,
}

/// LDK's configuration for a Phalanx node.
pub fn user_config() -> UserConfig {
    let mut config = UserConfig::default();
    // Channels are private unless opened as public.
    config.channel_handshake_config.announce_for_forwarding = false;
    config
        .channel_handshake_limits
        .force_announced_channel_preference = false;
    // The protocol maximum, so a busy channel is not limited by our own setting.
    config.channel_handshake_config.our_max_accepted_htlcs = 483;
    // An LSP forwards to its clients' private channels.
    config.accept_forwards_to_priv_channels = true;
    config
}

impl Node {
    /// The node's public key.
    pub fn node_id(&self) -> PublicKey {
        self.channel_manager.get_our_node_id()
    }

    /// The network.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The alias from the configuration.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Where the node accepts peers (with the ports actually bound).
    pub fn listen_addresses(&self) -> &[SocketAddr] {
        &self.listen_addresses
    }

    /// Where front servers connect (`[link] listen`, with the port bound), if set.
    pub fn link_address(&self) -> Option<SocketAddr> {
        self.link_address
    }

    /// Whether `peer` is connected, directly or through a front.
    pub fn is_peer_connected(&self, peer: &PublicKey) -> bool {
        self.peer_manager.peer_by_node_id(peer).is_some() || self.link_server.has_peer(peer)
    }

    /// The epoch of the leadership this instance writes with.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The height of the best block the node has processed.
    pub fn best_block_height(&self) -> u32 {
        self.channel_manager.current_best_block().height
    }

    /// The best block the node has processed.
    pub fn best_block(&self) -> BlockLocator {
        self.channel_manager.current_best_block()
    }

    /// The LDK chain monitor.
    pub fn chain_monitor(&self) -> &Arc<ChainMonitor> {
        &self.chain_monitor
    }

    /// The on-chain wallet.
    pub fn wallet(&self) -> &Arc<OnchainWallet> {
        &self.wallet
    }

    /// The chain client.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// What this instance forwarded since it started.
    pub fn forwarding_stats(&self) -> ForwardingStats {
        ForwardingStats {
            fees_msat: self.events.forwarded_fees_msat.load(Ordering::Relaxed),
            payments: self.events.forwarded_payments.load(Ordering::Relaxed),
        }
    }

    /// The router's network graph.
    pub fn network_graph(&self) -> &Arc<NetworkGraph> {
        &self.network_graph
    }

    /// The metrics this node records into (handed to its builder).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What the node reports at a metrics scrape: peers, channels, payments.
    pub fn gauges(&self) -> NodeGauges {
        let channels = self.list_channels();
        let mut payments = HashMap::new();
        for record in self.payments.list() {
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
            *payments.entry((direction, status)).or_default() += 1;
        }
        NodeGauges {
            peers: self.list_peers().len(),
            fronts: self.link_server.fronts(),
            peers_on_fronts: self.link_server.peers().len(),
            channels: channels.len(),
            usable_channels: channels.iter().filter(|c| c.is_usable).count(),
            payments,
        }
    }

    /// Why the node stopped, if it did.
    pub fn stop_reason(&self) -> Option<String> {
        self.stopped
            .borrow()
            .clone()
            .or_else(|| self.fail_stop.reason())
    }

    /// Whether this instance may act as the node right now: it has not stopped, and its
    /// leadership's local deadline has not passed. The deadline is checked here, not only
    /// by the renewal task, because a process that was paused (SIGSTOP, a VM freeze) may
    /// answer a request before that task has run again and noticed.
    pub fn holds_leadership(&self) -> bool {
        self.stop_reason().is_none()
            && lock(&self.leadership)
                .as_ref()
                .is_some_and(|leadership| leadership.token().is_ok())
    }

    /// Resolves when the node has stopped (fail-stop or shutdown), with the reason.
    pub async fn stopped(&self) -> String {
        let mut receiver = self.stopped.subscribe();
        loop {
            if let Some(reason) = receiver.borrow_and_update().clone() {
                return reason;
            }
            if receiver.changed().await.is_err() {
                return "the node is gone".into();
            }
        }
    }

    fn check_running(&self) -> Result<(), NodeError> {
        match self.stop_reason() {
            Some(reason) => Err(NodeError::Stopped(reason)),
            None => Ok(()),
        }
    }

    /// Stops the node cleanly: no more peers, the background processor writes the
    /// manager and flushes the monitors one last time, and the lease is resigned so
    /// another instance can take over at once.
    pub async fn shutdown(&self) {
        self.stop_tasks("shut down", Stopping::Cleanly).await;
        // Removals LDK allowed to be lazy; losing them is harmless, but a clean stop
        // leaves no stale monitor updates behind. A fail-stopped node writes no more.
        if self.fail_stop.reason().is_none() {
            self.kv.flush_lazy_removes().await;
        }
        let leadership = lock(&self.leadership).take();
        if let Some(leadership) = leadership
            && let Err(err) = leadership.resign().await
        {
            tracing::warn!(error = %err, "resigning the lease failed; it will expire");
        }
        tracing::info!(node_id = %self.node_id(), "node stopped");
    }

    async fn stop_tasks(&self, reason: &str, how: Stopping) {
        if self.shutdown.send_replace(true) {
            // Already stopping.
            let _ = self.stopped().await;
            return;
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.peer_manager.disconnect_all_peers();
        self.link_server.close();
        let background_processor = lock(&self.background_processor).take();
        if let Some(task) = background_processor {
            if how == Stopping::FailStop {
                // A fail-stopped node writes no more on purpose, and a write already
                // out to an unreachable store would hold the exit for the whole
                // operation timeout. Stopping here is a crash at this instant, which
                // the persisted state is built to survive (the manager is written
                // before the monitors it depends on are flushed).
                task.abort();
            }
            match task.await {
                Err(err) if err.is_cancelled() => {
                    tracing::info!("the background processor was stopped without a last write")
                }
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "the last write of the background processor failed")
                }
                Err(err) => tracing::error!(error = %err, "the background processor panicked"),
            }
        }
        let reason = self.fail_stop.reason().unwrap_or_else(|| reason.to_owned());
        // It acts no more; the lease itself is resigned (or expires) after this.
        self.metrics.lost_lease();
        self.stopped.send_replace(Some(reason));
    }
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

/// How the node's tasks are stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stopping {
    /// On request: the background processor writes the manager and flushes the
    /// monitors one last time.
    Cleanly,
    /// On fail-stop: everything is stopped where it is, as by a crash.
    FailStop,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
