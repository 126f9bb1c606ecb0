//! The node: LDK assembled over the fenced store, started and stopped as one.
//!
//! Start-up order (LDK's, see `ChannelManagerReadArgs`): win the leadership, read the
//! monitors, read the ChannelManager with them, bring every listener (monitors, manager,
//! sweeper, wallet) to the chain tip, hand the monitors to the ChainMonitor, and only then
//! start the background processor, the peers and the block poller.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate, Network, Txid};
use lightning::chain::channelmonitor::ChannelMonitor;
use lightning::chain::{BlockLocator, Listen};
use lightning::events::bump_transaction::sync::BumpTransactionEventHandlerSync;
use lightning::ln::channel_state::ChannelDetails;
use lightning::ln::channelmanager::{
    Bolt11InvoiceParameters, ChainParameters, ChannelManagerReadArgs, OptionalBolt11PaymentParams,
    PaymentId,
};
use lightning::ln::outbound_payment::{RecipientOnionFields, Retry};
use lightning::ln::peer_handler::{IgnoringMessageHandler, MessageHandler};
use lightning::ln::types::ChannelId;
use lightning::onion_message::messenger::DefaultMessageRouter;
use lightning::routing::gossip::P2PGossipSync;
use lightning::routing::router::{DefaultRouter, PaymentParameters, RouteParameters};
use lightning::routing::scoring::{
    ProbabilisticScorer, ProbabilisticScoringDecayParameters, ProbabilisticScoringFeeParameters,
};
use lightning::sign::{EntropySource, InMemorySigner, KeysManager, NodeSigner};
use lightning::types::payment::{PaymentHash, PaymentPreimage};
use lightning::util::config::UserConfig;
use lightning::util::persist::KVStoreSync;
use lightning::util::ser::ReadableArgs;
use lightning::util::wallet_utils::WalletSync;
use lightning::{io, util::persist};
use lightning_background_processor::{
    GossipSync as BpGossipSync, NO_LIQUIDITY_MANAGER, NO_ONION_MESSENGER, process_events_async,
};
use lightning_block_sync::poll::{ChainPoller, ValidatedBlockHeader};
use lightning_block_sync::{SpvClient, init};
use lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescription, Description};
use phalanx_cluster::{Campaigner, Leadership, LeadershipStatus};
use phalanx_secrets::{FileSeedProvider, SeedProvider};
use phalanx_store::{LdkKvStore, LeaseStore, StateStore, StoreError, StoreOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::chain::{BroadcastOutcome, ChainClient, ChainError};
use crate::config::NodeConfig;
use crate::events::EventHandler;
use crate::identity::{self, IDENTITY_SCHEMA_VERSION, IdentityError, NodeIdentity};
use crate::keys::{SweepSpender, WalletKeys};
use crate::logger::TracingLogger;
use crate::metrics::Metrics;
use crate::payments::{Direction, PaymentLocks, PaymentRecord, PaymentStatus, PaymentStore};
use crate::peers::{self, AddressBook, PeerError};
use crate::persist::{FailStop, FailStopPersister};
use crate::tasks::{Runs, Supervisor};
use crate::types::{
    BumpHandler, Chain, ChainMonitor, ChannelManager, GossipSync, KvStore, Logger,
    MonitorPersister, NetworkGraph, OutputSweeper, PeerManager, Persister, Scorer,
};
use crate::wallet::{OnchainWallet, WalletBalance, WalletError};

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
const MAX_PENDING_MONITOR_UPDATES: u64 = 100;
/// Monitors read from the store at once when the node starts.
const MONITOR_READERS: usize = 8;
/// How long after the start the stale monitor updates of a previous instance are removed.
const STALE_UPDATE_CLEANUP_DELAY: Duration = Duration::from_secs(30);

/// Why the node could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The seed could not be loaded or created.
    #[error("seed: {0}")]
    Seed(#[from] phalanx_secrets::SecretsError),
    /// The state store failed or refused (see [`StoreError::kind`]).
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// Reading or writing the node's state failed.
    #[error("state store: {0}")]
    Persist(#[source] io::Error),
    /// The stored state cannot be decoded.
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    /// The chain source failed.
    #[error("chain source: {0}")]
    Chain(#[from] ChainError),
    /// Block sync failed.
    #[error("chain sync: {0}")]
    Sync(String),
    /// The on-chain wallet refused.
    #[error("{0}")]
    Wallet(#[from] WalletError),
    /// A peer address could not be bound.
    #[error("cannot listen for peers on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A peer could not be reached.
    #[error("{0}")]
    Peer(#[from] PeerError),
    /// The request names something invalid.
    #[error("{0}")]
    InvalidRequest(String),
    /// A BOLT11 invoice that cannot be paid.
    #[error("invalid invoice: {0}")]
    InvalidInvoice(String),
    /// The peer is not connected.
    #[error("peer {0} is not connected")]
    PeerNotConnected(PublicKey),
    /// No such channel.
    #[error("no channel {0}")]
    UnknownChannel(String),
    /// No such payment.
    #[error("no payment {0}")]
    UnknownPayment(String),
    /// The payment could not be started, or failed.
    #[error("payment failed: {0}")]
    PaymentFailed(String),
    /// Not enough funds.
    #[error("insufficient funds: {0}")]
    InsufficientFunds(String),
    /// LDK refused the operation.
    #[error("{0}")]
    Lightning(String),
    /// Another instance leads the cluster and this one is not allowed to wait for it.
    #[error(
        "the lease of this cluster is held by {0}; stop that instance, or set `[cluster] enabled = true` (--cluster-enabled) on every instance to run this one as its standby"
    )]
    LeaseHeldElsewhere(String),
    /// The node stopped (fenced, lost its lease, or a write failed) and does nothing more.
    #[error("the node has stopped: {0}")]
    Stopped(String),
    /// An on-chain send was handed to the chain source, whose answer was lost: the
    /// transaction is kept (its coins stay spent) and rebroadcast until it confirms.
    #[error(
        "transaction {txid} was sent but the chain source's answer was lost ({reason}): it is kept and rebroadcast, and may confirm; look it up before sending again"
    )]
    SendOutcomeUnknown {
        /// The transaction.
        txid: Txid,
        /// What happened.
        reason: String,
    },
    /// The store is not this node's: no identity record (never initialized), or another
    /// node's or network's. The operator must act; restarting cannot help.
    #[error("{0}")]
    Identity(#[from] IdentityError),
}

/// What [`Node::initialize`] found or did.
#[derive(Clone, Debug)]
pub struct Initialized {
    /// The store's identity record.
    pub identity: NodeIdentity,
    /// Whether this call recorded it (false: the store was already this node's).
    pub created: bool,
}

fn persist_error(err: io::Error) -> NodeError {
    NodeError::Persist(err)
}

/// A running node.
pub struct Node {
    network: Network,
    alias: String,
    keys: Arc<KeysManager>,
    chain: Chain,
    chain_monitor: Arc<ChainMonitor>,
    channel_manager: Arc<ChannelManager>,
    peer_manager: Arc<PeerManager>,
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
    epoch: u64,
    leadership: Mutex<Option<Leadership>>,
    /// Tells the background tasks to finish.
    shutdown: watch::Sender<bool>,
    background_processor: Mutex<Option<JoinHandle<Result<(), io::Error>>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: watch::Sender<Option<String>>,
    /// Declared last: dropped after everything that uses the store.
    _store_runtime: StoreRuntime,
}

/// The runtime that runs all store I/O and the lease renewals.
///
/// LDK calls the store synchronously (`KVStoreSync`) while it holds its own locks, and
/// the node's runtime workers may be blocked on those same locks (a peer message being
/// handled, say). A store future that needed one of those workers would never finish:
/// a deadlock. On its own runtime, store I/O and the lease always make progress, whatever
/// the node's workers are doing.
struct StoreRuntime(Option<tokio::runtime::Runtime>);

impl StoreRuntime {
    fn new() -> Result<Self, NodeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("phalanx-store")
            .enable_all()
            .build()
            .map_err(|err| {
                NodeError::Persist(io::Error::new(
                    io::ErrorKind::Other,
                    format!("cannot start the store runtime: {err}"),
                ))
            })?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the store runtime lives until drop")
            .handle()
            .clone()
    }
}

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        // Dropping a runtime inside another one would block; this does not.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A task aborted when its handle is dropped (when `Node::start` is cancelled, say).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<Result<T, NodeError>> {
    async fn join(mut self) -> Result<T, NodeError> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(err) => Err(NodeError::Persist(io::Error::new(
                io::ErrorKind::Other,
                format!("the store task failed: {err}"),
            ))),
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    /// Records in the store of `config` that it belongs to this node (the seed's node id,
    /// creating the seed file if there is none, and the network): what `phalanx init`
    /// does, once, before the node's first start. Takes the lease for the write, so no
    /// instance may be running. A store that already names this node is left as it is;
    /// one that names another node or network is an error.
    pub async fn initialize(config: &NodeConfig) -> Result<Initialized, NodeError> {
        let seed = FileSeedProvider::new(config.seed_file.clone(), true).seed()?;
        let node_id = identity::node_id_of(&seed);
        drop(seed);
        let store_runtime = StoreRuntime::new()?;
        let url = config.store.url.clone();
        let options = StoreOptions::new(config.store.cluster.clone());
        let instance = config.store.instance_id.clone();
        let lease_timings = config.store.lease;
        let network = config.network;
        let work = AbortOnDrop(store_runtime.handle().spawn(async move {
            let store = phalanx_store_connect::connect(&url, options).await?;
            let lease_store: Arc<dyn LeaseStore> = store.clone();
            let campaigner = Campaigner::new(lease_store, instance, lease_timings)?;
            let mut election = campaigner.state();
            let leadership = tokio::select! {
                won = campaigner.campaign() => won?,
                holder = led_by_another(&mut election, campaigner.holder()) => {
                    return Err(NodeError::LeaseHeldElsewhere(holder));
                }
            };
            let stored = identity::read_identity(&*store).await?;
            let outcome = match stored {
                Some(stored) => {
                    identity::check(&store.describe(), Some(&stored), node_id, network)?;
                    Initialized {
                        identity: stored,
                        created: false,
                    }
                }
                None => {
                    let record = NodeIdentity {
                        node_id,
                        network,
                        created_at_unix: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs(),
                        schema_version: IDENTITY_SCHEMA_VERSION,
                    };
                    store
                        .write(leadership.token()?, &identity::identity_key(), record.encode())
                        .await?;
                    tracing::info!(%node_id, %network, store = store.describe(), "recorded the node's identity");
                    Initialized {
                        identity: record,
                        created: true,
                    }
                }
            };
            leadership.resign().await?;
            Ok::<_, NodeError>(outcome)
        }));
        work.join().await
    }

    /// Starts the node described by `config`: loads the seed, connects to the store and
    /// wins its leadership (waiting while another instance holds it), checks that the
    /// store is this node's ([`Node::initialize`]), connects to the chain, loads the
    /// state, syncs to the tip and starts serving peers.
    pub async fn start(config: &NodeConfig) -> Result<Arc<Node>, NodeError> {
        Self::start_with_metrics(config, Arc::new(Metrics::new())).await
    }

    /// As [`Self::start`], recording lease renewals, store transactions and the lease
    /// won into `metrics`.
    pub async fn start_with_metrics(
        config: &NodeConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Node>, NodeError> {
        let seed = FileSeedProvider::new(config.seed_file.clone(), true).seed()?;
        let node_id = identity::node_id_of(&seed);
        let network = config.network;
        let store_runtime = StoreRuntime::new()?;
        let url = config.store.url.clone();
        let options = StoreOptions::new(config.store.cluster.clone());
        let instance = config.store.instance_id.clone();
        let renewal_observer = metrics.renewal_observer();
        let cluster_enabled = config.store.cluster_enabled;
        let lease_timings = config.store.lease;
        // Connecting, campaigning and renewing run on the store runtime (see StoreRuntime).
        let won = AbortOnDrop(store_runtime.handle().spawn(async move {
            let store = phalanx_store_connect::connect(&url, options).await?;
            let lease_store: Arc<dyn LeaseStore> = store.clone();
            let campaigner = Campaigner::new(lease_store, instance, lease_timings)?
                .observe_renewals(renewal_observer);
            let leadership = if cluster_enabled {
                campaigner.campaign().await?
            } else {
                // One instance only: another live leader is a mistake to report, not a
                // leader to wait for. Its own lease (a restart after a crash) is waited for.
                let mut election = campaigner.state();
                tokio::select! {
                    won = campaigner.campaign() => won?,
                    holder = led_by_another(&mut election, campaigner.holder()) => {
                        return Err(NodeError::LeaseHeldElsewhere(holder));
                    }
                }
            };
            // Before anything is loaded or announced: an empty or foreign store is never
            // taken for this node's.
            let stored = identity::read_identity(&*store).await?;
            identity::check(&store.describe(), stored.as_ref(), node_id, network)?;
            Ok::<_, NodeError>((store, leadership))
        }));
        let (store, leadership) = won.join().await?;
        let epoch = leadership.epoch();
        // The start-up after the lease is won is a standby's takeover time: log its parts.
        let won_at = Instant::now();

        let runtime = tokio::runtime::Handle::current();
        let state_store: Arc<dyn StateStore> = store.clone();
        metrics.won_lease(epoch.0);
        let fail_stop = FailStop::new();
        let stop_on_failure = fail_stop.clone();
        let kv: KvStore = Arc::new(LdkKvStore::observed(
            state_store,
            leadership.fence(),
            store_runtime.handle(),
            Some(metrics.write_observer()),
            // Any write that failed for good stops the node, whoever asked for it: the
            // manager's writer (the background processor) only ends, and the wallet's
            // and the sweeper's callers may only log.
            Some(Arc::new(move |err: &StoreError| {
                stop_on_failure.trigger(format!("a store write failed: {}", err.report()))
            })),
        ));
        let chain = ChainClient::connect(&config.chain, config.network, runtime.clone()).await?;
        chain.broadcast_only_while(leadership.fence());
        chain.confirm_lease_with(store.clone(), epoch, store_runtime.handle().clone());
        let logger: Logger = Arc::new(TracingLogger);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // The starting time only seeds ephemeral randomness; it must differ between runs.
        let keys = Arc::new(KeysManager::new(
            &seed.ldk_seed(),
            now.as_secs(),
            now.subsec_nanos(),
            true,
        ));

        let tip = init::validate_best_block_header(&*chain)
            .await
            .map_err(|err| NodeError::Sync(format!("cannot read the chain tip: {err:?}")))?;
        let tip_locator = tip.to_block_locator();

        let network_graph = Arc::new(read_network_graph(&kv, config.network, &logger));
        let scorer = Arc::new(RwLock::new(read_scorer(&kv, &network_graph, &logger)));
        let router = Arc::new(DefaultRouter::new(
            Arc::clone(&network_graph),
            Arc::clone(&logger),
            Arc::clone(&keys),
            Arc::clone(&scorer),
            ProbabilisticScoringFeeParameters::default(),
        ));
        let message_router = Arc::new(DefaultMessageRouter::new(
            Arc::clone(&network_graph),
            Arc::clone(&keys),
        ));

        let persister = Arc::new(FailStopPersister::new(
            MonitorPersister::new(
                Arc::clone(&kv),
                Arc::clone(&logger),
                MAX_PENDING_MONITOR_UPDATES,
                Arc::clone(&keys),
                Arc::clone(&keys),
                Arc::clone(&chain),
                Arc::clone(&chain),
            ),
            fail_stop.clone(),
        ));
        let monitors = read_monitors(&kv, persister.inner())?;
        let monitors_read_at = Instant::now();
        let chain_monitor = Arc::new(ChainMonitor::new(
            None,
            Arc::clone(&chain),
            Arc::clone(&logger),
            Arc::clone(&chain),
            Arc::clone(&persister),
            Arc::clone(&keys),
            keys.get_peer_storage_key(),
            // Deferred: the ChannelManager is written before its monitors (the background
            // processor keeps the order), so a SIGKILL at any instant is safe to resume from.
            true,
        ));

        let wallet = Arc::new(OnchainWallet::load_or_create(
            &seed,
            config.network,
            (*kv).clone(),
            tip_locator,
        )?);
        drop(seed);
        wallet.stop_on_failure(fail_stop.clone());
        let wallet_keys = Arc::new(WalletKeys::new(Arc::clone(&keys), Arc::clone(&wallet)));

        let (manager_locator, channel_manager) = match KVStoreSync::read(
            &*kv,
            persist::CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE,
            persist::CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE,
            persist::CHANNEL_MANAGER_PERSISTENCE_KEY,
        ) {
            Ok(bytes) => {
                let monitor_refs: Vec<&ChannelMonitor<InMemorySigner>> =
                    monitors.iter().map(|(_, m)| m).collect();
                let args = ChannelManagerReadArgs::new(
                    Arc::clone(&keys),
                    Arc::clone(&keys),
                    Arc::clone(&wallet_keys),
                    Arc::clone(&chain),
                    Arc::clone(&chain_monitor),
                    Arc::clone(&chain),
                    Arc::clone(&router),
                    Arc::clone(&message_router),
                    Arc::clone(&logger),
                    user_config(),
                    monitor_refs,
                );
                <(BlockLocator, ChannelManager)>::read(&mut &bytes[..], args)
                    .map_err(|err| NodeError::Corrupt(format!("channel manager: {err:?}")))?
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if !monitors.is_empty() {
                    // Monitors without a manager: starting fresh would lose the channels.
                    return Err(NodeError::Corrupt(format!(
                        "{} channel monitors are stored but no channel manager",
                        monitors.len()
                    )));
                }
                let params = ChainParameters {
                    network: config.network,
                    best_block: tip_locator,
                };
                let manager = ChannelManager::new(
                    Arc::clone(&chain),
                    Arc::clone(&chain_monitor),
                    Arc::clone(&chain),
                    Arc::clone(&router),
                    Arc::clone(&message_router),
                    Arc::clone(&logger),
                    Arc::clone(&keys),
                    Arc::clone(&keys),
                    Arc::clone(&wallet_keys),
                    user_config(),
                    params,
                    now.as_secs() as u32,
                );
                (tip_locator, manager)
            }
            Err(err) => return Err(persist_error(err)),
        };
        let channel_manager = Arc::new(channel_manager);
        let manager_read_at = Instant::now();

        let sweeper = Arc::new(read_sweeper(
            &kv,
            &chain,
            &keys,
            &wallet,
            &logger,
            tip_locator,
        )?);

        let monitor_count = monitors.len();
        // Bring everything to the tip before anything else happens.
        let monitor_listeners: Vec<(BlockLocator, MonitorListener)> = monitors
            .into_iter()
            .map(|(locator, monitor)| {
                (
                    locator,
                    (
                        monitor,
                        Arc::clone(&chain),
                        Arc::clone(&chain),
                        Arc::clone(&logger),
                    ),
                )
            })
            .collect();
        let mut listeners: Vec<(BlockLocator, &(dyn Listen + Send + Sync))> = vec![
            (
                manager_locator,
                &*channel_manager as &(dyn Listen + Send + Sync),
            ),
            (
                sweeper.current_best_block(),
                &*sweeper as &(dyn Listen + Send + Sync),
            ),
            (wallet.best_block(), &*wallet as &(dyn Listen + Send + Sync)),
        ];
        for (locator, listener) in &monitor_listeners {
            listeners.push((*locator, listener as &(dyn Listen + Send + Sync)));
        }
        let (header_cache, synced_tip) =
            init::synchronize_listeners(Arc::clone(&chain), config.network, listeners)
                .await
                .map_err(|err| NodeError::Sync(format!("{err:?}")))?;
        let synced_at = Instant::now();
        for (_, (monitor, ..)) in monitor_listeners {
            let channel_id = monitor.channel_id();
            chain_monitor
                .load_existing_monitor(channel_id, monitor)
                .map_err(|()| {
                    NodeError::Corrupt(format!("channel monitor {channel_id} cannot be loaded"))
                })?;
        }

        let gossip_sync: Arc<GossipSync> = Arc::new(P2PGossipSync::new(
            Arc::clone(&network_graph),
            None,
            Arc::clone(&logger),
        ));
        let message_handler = MessageHandler {
            chan_handler: Arc::clone(&channel_manager),
            route_handler: Arc::clone(&gossip_sync),
            onion_message_handler: IgnoringMessageHandler {},
            custom_message_handler: IgnoringMessageHandler {},
            send_only_message_handler: Arc::clone(&chain_monitor),
        };
        let peer_manager = Arc::new(PeerManager::new(
            message_handler,
            now.as_secs() as u32,
            &keys.get_secure_random_bytes(),
            Arc::clone(&logger),
            Arc::clone(&keys),
        ));

        let payments = Arc::new(PaymentStore::load(Arc::clone(&kv)).map_err(persist_error)?);
        fail_unsent_payments(&payments, &channel_manager)
            .await
            .map_err(persist_error)?;
        // Before the rebroadcaster starts: a funding recorded for a channel that was never
        // funded must not reach the chain.
        let fundings: HashSet<bitcoin::Txid> = channel_manager
            .list_channels()
            .iter()
            .filter_map(|channel| channel.funding_txo.map(|outpoint| outpoint.txid))
            .collect();
        wallet.settle_funding_holds(|txid| fundings.contains(txid))?;
        let address_book = Arc::new(AddressBook::new(Arc::clone(&kv)));
        let bump_handler: Arc<BumpHandler> = Arc::new(BumpTransactionEventHandlerSync::new(
            Arc::clone(&chain),
            Arc::new(WalletSync::new(Arc::clone(&wallet), Arc::clone(&logger))),
            Arc::clone(&keys),
            Arc::clone(&logger),
        ));
        let events = Arc::new(EventHandler {
            channel_manager: Arc::clone(&channel_manager),
            peer_manager: Arc::clone(&peer_manager),
            wallet: Arc::clone(&wallet),
            chain: Arc::clone(&chain),
            sweeper: Arc::clone(&sweeper),
            bump_handler,
            payments: Arc::clone(&payments),
            fail_stop: fail_stop.clone(),
            forwarded_fees_msat: AtomicU64::new(0),
            forwarded_payments: AtomicU64::new(0),
        });

        let mut listen_addresses = Vec::new();
        let mut tcp_listeners = Vec::new();
        for address in &config.lightning.listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| NodeError::Listen {
                    address: *address,
                    source,
                })?;
            listen_addresses.push(listener.local_addr().map_err(|source| NodeError::Listen {
                address: *address,
                source,
            })?);
            tcp_listeners.push(listener);
        }

        let (shutdown, _) = watch::channel(false);
        let node = Arc::new(Node {
            network: config.network,
            alias: config.lightning.alias.clone().unwrap_or_default(),
            keys,
            chain: Arc::clone(&chain),
            chain_monitor: Arc::clone(&chain_monitor),
            channel_manager: Arc::clone(&channel_manager),
            peer_manager: Arc::clone(&peer_manager),
            network_graph: Arc::clone(&network_graph),
            wallet: Arc::clone(&wallet),
            payments,
            payment_locks: PaymentLocks::default(),
            address_book,
            events: Arc::clone(&events),
            sweeper: Arc::clone(&sweeper),
            fail_stop: fail_stop.clone(),
            kv: Arc::clone(&kv),
            metrics: Arc::clone(&metrics),
            listen_addresses,
            epoch: epoch.0,
            leadership: Mutex::new(None),
            shutdown,
            background_processor: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            stopped: watch::channel(None).0,
            _store_runtime: store_runtime,
        });

        // The background processor: events, persistence in LDK's order, timers.
        let stop_signal = node.shutdown.subscribe();
        let sleeper = move |duration: Duration| {
            let mut stop = stop_signal.clone();
            Box::pin(async move {
                tokio::select! {
                    _ = tokio::time::sleep(duration) => false,
                    _ = stop.wait_for(|stop| *stop) => true,
                }
            })
        };
        let handler = Arc::clone(&events);
        let supervisor = Supervisor {
            fail_stop: fail_stop.clone(),
            shutdown: node.shutdown.subscribe(),
        };
        let background_processor = tokio::spawn(supervisor.clone().background_processor(
            process_events_async(
                Arc::clone(&kv),
                move |event| Arc::clone(&handler).handle(event),
                Arc::clone(&chain_monitor),
                Arc::clone(&channel_manager),
                NO_ONION_MESSENGER,
                BpGossipSync::p2p(Arc::clone(&gossip_sync)),
                Arc::clone(&peer_manager),
                NO_LIQUIDITY_MANAGER,
                Some(Arc::clone(&sweeper)),
                Arc::clone(&logger),
                Some(scorer),
                sleeper,
                false,
                || SystemTime::now().duration_since(UNIX_EPOCH).ok(),
            ),
        ));
        *lock(&node.background_processor) = Some(background_processor);

        // Every task runs until shutdown unless marked `Once`; one that panics, or ends
        // early, stops the node, since a node missing one of them must not keep its lease.
        let mut tasks = Vec::new();
        for listener in tcp_listeners {
            tasks.push(supervisor.spawn(
                "the peer listener",
                Runs::UntilShutdown,
                peers::accept_loop(listener, Arc::clone(&peer_manager)),
            ));
        }
        tasks.push(supervisor.spawn(
            "the block poller",
            Runs::UntilShutdown,
            block_poller(
                Arc::clone(&node),
                synced_tip,
                header_cache,
                config.chain.poll_interval,
            ),
        ));
        tasks.push(supervisor.spawn(
            "the peer reconnector",
            Runs::UntilShutdown,
            reconnect_loop(Arc::clone(&node)),
        ));
        tasks.push(supervisor.spawn(
            "the HTLC processor",
            Runs::UntilShutdown,
            htlc_processor(
                Arc::clone(&channel_manager),
                config.lightning.forward_delay,
                node.shutdown.subscribe(),
            ),
        ));
        tasks.push(supervisor.spawn(
            "the wallet rebroadcaster",
            Runs::UntilShutdown,
            wallet_rebroadcaster(
                Arc::clone(&wallet),
                Arc::clone(&chain),
                node.shutdown.subscribe(),
            ),
        ));
        tasks.push(supervisor.spawn(
            "the fee refresher",
            Runs::UntilShutdown,
            fee_refresher(Arc::clone(&chain), node.shutdown.subscribe()),
        ));
        tasks.push(supervisor.spawn(
            "the leadership watch",
            Runs::Once,
            watch_leadership(leadership.status(), fail_stop.clone()),
        ));
        tasks.push(tokio::spawn(fail_stopper(Arc::clone(&node))));
        tasks.push(supervisor.spawn(
            "the stale monitor update clean-up",
            Runs::Once,
            clean_stale_monitor_updates(Arc::clone(&persister), node.shutdown.subscribe()),
        ));
        *lock(&node.tasks) = tasks;
        *lock(&node.leadership) = Some(leadership);

        tracing::info!(
            node_id = %node.node_id(),
            %epoch,
            network = %config.network,
            height = synced_tip.to_block_locator().height,
            listen = ?node.listen_addresses,
            monitors = monitor_count,
            monitors_read_ms = millis(monitors_read_at - won_at),
            wallet_and_manager_read_ms = millis(manager_read_at - monitors_read_at),
            sweeper_and_chain_sync_ms = millis(synced_at - manager_read_at),
            since_lease_won_ms = millis(won_at.elapsed()),
            "node started"
        );
        Ok(node)
    }

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

    /// The epoch of the leadership this instance writes with.
    pub fn epoch(&self) -> u64 {
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

    /// The LDK channel manager (for tests and the API).
    pub fn channel_manager(&self) -> &Arc<ChannelManager> {
        &self.channel_manager
    }

    /// The LDK peer manager.
    pub fn peer_manager(&self) -> &Arc<PeerManager> {
        &self.peer_manager
    }

    /// The LDK chain monitor.
    pub fn chain_monitor(&self) -> &Arc<ChainMonitor> {
        &self.chain_monitor
    }

    /// The channel graph.
    pub fn network_graph(&self) -> &Arc<NetworkGraph> {
        &self.network_graph
    }

    /// The on-chain wallet.
    pub fn wallet(&self) -> &Arc<OnchainWallet> {
        &self.wallet
    }

    /// The chain client.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Outputs being swept to the wallet.
    pub fn sweeper(&self) -> &Arc<OutputSweeper> {
        &self.sweeper
    }

    /// Forwarding fees earned since this instance started (msat), and the number of
    /// payments forwarded.
    pub fn forwarding_stats(&self) -> (u64, u64) {
        (
            self.events.forwarded_fees_msat.load(Ordering::Relaxed),
            self.events.forwarded_payments.load(Ordering::Relaxed),
        )
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

    // ---- on-chain ----

    /// A new receive address of the on-chain wallet.
    pub fn new_address(&self) -> Result<bitcoin::Address, NodeError> {
        self.check_running()?;
        Ok(self.wallet.new_address()?)
    }

    /// The on-chain balance.
    pub fn onchain_balance(&self) -> WalletBalance {
        self.wallet.balance()
    }

    /// Sends on chain: `amount`, or everything when `None`. Returns the txid once the
    /// chain source accepted the transaction.
    pub async fn send_onchain(
        &self,
        address: &str,
        amount: Option<Amount>,
        fee_rate: Option<FeeRate>,
    ) -> Result<Txid, NodeError> {
        self.check_running()?;
        let fee_rate = match fee_rate {
            Some(rate) => rate,
            None => {
                use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
                let sat_per_kwu = self
                    .chain
                    .get_est_sat_per_1000_weight(ConfirmationTarget::OutputSpendingFee);
                FeeRate::from_sat_per_kwu(u64::from(sat_per_kwu))
            }
        };
        let tx = self.wallet.create_send(address, amount, fee_rate)?;
        let txid = tx.compute_txid();
        if let Err(err) = self.chain.broadcast(vec![tx]).await {
            match err.broadcast_outcome() {
                BroadcastOutcome::Refused => {
                    // Never accepted: its inputs are ours to spend again.
                    let _ = self.wallet.forget_transaction(txid);
                    return Err(err.into());
                }
                BroadcastOutcome::AlreadyConfirmed => {}
                BroadcastOutcome::Unknown => {
                    // It may be in a mempool: forgetting it would let a retried
                    // withdrawal pay again from other coins. The rebroadcaster sends it.
                    tracing::warn!(%txid, %address, error = %err, "on-chain send: outcome unknown; keeping the transaction");
                    return Err(NodeError::SendOutcomeUnknown {
                        txid,
                        reason: err.to_string(),
                    });
                }
            }
        }
        tracing::info!(%txid, %address, ?amount, "sent on chain");
        Ok(txid)
    }

    // ---- peers ----

    /// Connects to a peer and remembers its address for reconnection.
    pub async fn connect_peer(
        &self,
        node_id: PublicKey,
        address: SocketAddr,
    ) -> Result<(), NodeError> {
        self.check_running()?;
        if node_id == self.node_id() {
            return Err(NodeError::InvalidRequest(
                "cannot connect to ourselves".into(),
            ));
        }
        peers::connect(&self.peer_manager, node_id, address).await?;
        self.address_book
            .put(&node_id, address)
            .await
            .map_err(|source| PeerError::Store { node_id, source })?;
        Ok(())
    }

    /// Disconnects a peer (channels stay open; it reconnects later if there are any).
    pub fn disconnect_peer(&self, node_id: PublicKey) -> Result<(), NodeError> {
        if self.peer_manager.peer_by_node_id(&node_id).is_none() {
            return Err(NodeError::PeerNotConnected(node_id));
        }
        self.peer_manager.disconnect_by_node_id(node_id);
        Ok(())
    }

    /// Connected peers: node id, remote address (when known) and whether they dialled us.
    pub fn list_peers(&self) -> Vec<(PublicKey, Option<String>, bool)> {
        self.peer_manager
            .list_peers()
            .into_iter()
            .map(|peer| {
                (
                    peer.counterparty_node_id,
                    peer.socket_address.map(|a| a.to_string()),
                    peer.is_inbound_connection,
                )
            })
            .collect()
    }

    // ---- channels ----

    /// Opens a channel to a connected peer (connecting first when `address` is given),
    /// funded from the wallet. Returns the temporary channel id and the user channel id.
    pub async fn open_channel(
        &self,
        node_id: PublicKey,
        address: Option<SocketAddr>,
        amount_sat: u64,
        push_msat: u64,
        public: bool,
    ) -> Result<(ChannelId, u128), NodeError> {
        self.check_running()?;
        if let Some(address) = address {
            self.connect_peer(node_id, address).await?;
        }
        if self.peer_manager.peer_by_node_id(&node_id).is_none() {
            return Err(NodeError::PeerNotConnected(node_id));
        }
        if push_msat > amount_sat.saturating_mul(1000) {
            return Err(NodeError::InvalidRequest(format!(
                "push_msat {push_msat} is more than the channel ({amount_sat} sat)"
            )));
        }
        let available = self.wallet.balance().confirmed_sat;
        if amount_sat > available {
            return Err(NodeError::InsufficientFunds(format!(
                "a {amount_sat} sat channel needs more than the {available} sat confirmed in the wallet"
            )));
        }
        let mut config = user_config();
        config.channel_handshake_config.announce_for_forwarding = public;
        let user_channel_id: u128 = rand::random();
        let channel_id = self
            .channel_manager
            .create_channel(
                node_id,
                amount_sat,
                push_msat,
                user_channel_id,
                None,
                Some(config),
            )
            .map_err(|err| NodeError::Lightning(format!("{err:?}")))?;
        tracing::info!(channel = %channel_id, peer = %node_id, amount_sat, push_msat, public, "opening channel");
        Ok((channel_id, user_channel_id))
    }

    /// The channels.
    pub fn list_channels(&self) -> Vec<ChannelDetails> {
        self.channel_manager.list_channels()
    }

    /// Closes a channel: cooperatively, or by broadcasting our commitment (`force`).
    pub async fn close_channel(&self, channel_id: &str, force: bool) -> Result<(), NodeError> {
        self.check_running()?;
        let channel = self.find_channel(channel_id)?;
        if force {
            tracing::warn!(channel = %channel.channel_id, peer = %channel.counterparty.node_id, "force-closing on the operator's request");
            return self
                .channel_manager
                .force_close_broadcasting_latest_txn(
                    &channel.channel_id,
                    &channel.counterparty.node_id,
                    "closed by the operator".into(),
                )
                .map_err(|err| NodeError::Lightning(format!("{err:?}")));
        }
        // LDK refuses to start a shutdown while a monitor update is being written, which
        // is most of the time on a busy channel: retry for a moment while the peer is
        // connected, instead of handing the operator a transient refusal.
        let deadline = tokio::time::Instant::now() + CLOSE_RETRY_WINDOW;
        loop {
            match self
                .channel_manager
                .close_channel(&channel.channel_id, &channel.counterparty.node_id)
            {
                Ok(()) => return Ok(()),
                Err(lightning::util::errors::APIError::ChannelUnavailable { err })
                    if self
                        .peer_manager
                        .peer_by_node_id(&channel.counterparty.node_id)
                        .is_some()
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(channel = %channel.channel_id, reason = %err, "close refused for now; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => return Err(NodeError::Lightning(format!("{err:?}"))),
            }
        }
    }

    fn find_channel(&self, channel_id: &str) -> Result<ChannelDetails, NodeError> {
        let bytes = <[u8; 32]>::try_from(hex::decode(channel_id).map_err(|_| {
            NodeError::InvalidRequest(format!("channel id {channel_id:?} is not hex"))
        })?)
        .map_err(|_| {
            NodeError::InvalidRequest(format!("channel id {channel_id:?} is not 32 bytes"))
        })?;
        let wanted = ChannelId(bytes);
        self.channel_manager
            .list_channels()
            .into_iter()
            .find(|c| c.channel_id == wanted)
            .ok_or_else(|| NodeError::UnknownChannel(channel_id.to_owned()))
    }

    // ---- payments ----

    /// Makes a BOLT11 invoice (zero-amount when `amount_msat` is `None`) and records it.
    pub async fn create_invoice(
        &self,
        amount_msat: Option<u64>,
        description: &str,
        expiry_secs: Option<u32>,
    ) -> Result<Bolt11Invoice, NodeError> {
        self.invoice(amount_msat, None, description, expiry_secs)
            .await
    }

    /// Makes a hold invoice for `payment_hash`: a payment to it is held (status
    /// `accepted`) until [`Self::settle_hold_invoice`] gives the preimage or
    /// [`Self::cancel_hold_invoice`] fails it back. Unsettled HTLCs are failed back by LDK
    /// before they expire.
    pub async fn create_hold_invoice(
        &self,
        amount_msat: Option<u64>,
        payment_hash: PaymentHash,
        description: &str,
        expiry_secs: Option<u32>,
    ) -> Result<Bolt11Invoice, NodeError> {
        if self
            .payments
            .get(Direction::Inbound, &payment_hash.to_string())
            .is_some()
        {
            return Err(NodeError::InvalidRequest(format!(
                "an invoice for {payment_hash} exists"
            )));
        }
        self.invoice(amount_msat, Some(payment_hash), description, expiry_secs)
            .await
    }

    /// Makes an invoice (a hold invoice when the hash is ours to give) and records it.
    async fn invoice(
        &self,
        amount_msat: Option<u64>,
        hold: Option<PaymentHash>,
        description: &str,
        expiry_secs: Option<u32>,
    ) -> Result<Bolt11Invoice, NodeError> {
        self.check_running()?;
        if amount_msat == Some(0) {
            return Err(NodeError::InvalidRequest(
                "an invoice amount must be positive".into(),
            ));
        }
        let description = Description::new(description.to_owned())
            .map_err(|err| NodeError::InvalidRequest(format!("invoice description: {err}")))?;
        let params = Bolt11InvoiceParameters {
            amount_msats: amount_msat,
            description: Bolt11InvoiceDescription::Direct(description),
            invoice_expiry_delta_secs: expiry_secs,
            payment_hash: hold,
            ..Default::default()
        };
        let invoice = self
            .channel_manager
            .create_bolt11_invoice(params)
            .map_err(|err| NodeError::Lightning(format!("cannot create the invoice: {err:?}")))?;
        let hash = invoice.payment_hash().to_string();
        let mut record = PaymentRecord::pending(Direction::Inbound, hash.clone(), hash);
        record.amount_msat = amount_msat;
        record.invoice = Some(invoice.to_string());
        record.hold = hold.is_some();
        self.payments.put(record).await.map_err(persist_error)?;
        Ok(invoice)
    }

    /// Claims the held payment of a hold invoice with its preimage.
    pub fn settle_hold_invoice(&self, preimage: PaymentPreimage) -> Result<(), NodeError> {
        self.check_running()?;
        let hash: PaymentHash = preimage.into();
        let record = self.held_record(&hash)?;
        tracing::info!(payment_hash = %record.payment_hash, "settling hold invoice");
        self.channel_manager.claim_funds(preimage);
        Ok(())
    }

    /// Fails back the held payment of a hold invoice.
    pub async fn cancel_hold_invoice(&self, payment_hash: PaymentHash) -> Result<(), NodeError> {
        self.check_running()?;
        let record = self.held_record(&payment_hash)?;
        self.channel_manager.fail_htlc_backwards(&payment_hash);
        self.payments
            .update(
                Direction::Inbound,
                &record.payment_id,
                || record.clone(),
                |r| {
                    r.status = PaymentStatus::Failed;
                    r.failure_reason = Some("cancelled".into());
                },
            )
            .await
            .map_err(persist_error)?;
        Ok(())
    }

    fn held_record(&self, payment_hash: &PaymentHash) -> Result<PaymentRecord, NodeError> {
        let hash = payment_hash.to_string();
        let record = self
            .payments
            .get(Direction::Inbound, &hash)
            .filter(|r| r.hold)
            .ok_or_else(|| NodeError::UnknownPayment(hash.clone()))?;
        if record.status != PaymentStatus::Accepted {
            return Err(NodeError::InvalidRequest(format!(
                "hold invoice {hash} is {:?}, not accepted",
                record.status
            )));
        }
        Ok(record)
    }

    /// Pays a BOLT11 invoice (`amount_msat` for a zero-amount invoice). Returns the
    /// payment id once the payment is recorded and handed to LDK; see [`Self::wait_payment`].
    pub async fn pay_invoice(
        &self,
        invoice: &str,
        amount_msat: Option<u64>,
    ) -> Result<String, NodeError> {
        self.check_running()?;
        let invoice = Bolt11Invoice::from_str(invoice.trim())
            .map_err(|err| NodeError::InvalidInvoice(err.to_string()))?;
        if invoice.network() != self.network {
            return Err(NodeError::InvalidInvoice(format!(
                "the invoice is for {}, this node runs on {}",
                invoice.network(),
                self.network
            )));
        }
        if invoice.is_expired() {
            return Err(NodeError::InvalidInvoice("the invoice has expired".into()));
        }
        if invoice.recover_payee_pub_key() == self.node_id() {
            return Err(NodeError::InvalidInvoice("the invoice is ours".into()));
        }
        let amount = match (invoice.amount_milli_satoshis(), amount_msat) {
            (Some(_), Some(_)) => {
                return Err(NodeError::InvalidRequest(
                    "the invoice has an amount; do not give another".into(),
                ));
            }
            (None, None) => {
                return Err(NodeError::InvalidRequest(
                    "the invoice has no amount; give amount_msat".into(),
                ));
            }
            (Some(amount), None) | (None, Some(amount)) => amount,
        };
        if amount == 0 {
            return Err(NodeError::InvalidRequest(
                "the amount must be positive".into(),
            ));
        }
        let payment_hash = PaymentHash(invoice.payment_hash().0);
        // One payment per invoice: the id is the hash, so paying twice is refused by LDK too.
        let payment_id = PaymentId(payment_hash.0);
        let id = hex::encode(payment_id.0);
        // Concurrent calls for one invoice take turns: the later one finds the record.
        let _turn = self.payment_locks.lock(payment_id.0).await;
        if let Some(existing) = self.payments.get(Direction::Outbound, &id) {
            match existing.status {
                PaymentStatus::Succeeded => {
                    return Err(NodeError::PaymentFailed(
                        "this invoice was already paid".into(),
                    ));
                }
                PaymentStatus::Pending | PaymentStatus::Accepted => return Ok(id),
                PaymentStatus::Failed => {}
            }
        }
        let mut record =
            PaymentRecord::pending(Direction::Outbound, id.clone(), payment_hash.to_string());
        record.amount_msat = Some(amount);
        record.invoice = Some(invoice.to_string());
        self.payments.put(record).await.map_err(persist_error)?;
        let params = OptionalBolt11PaymentParams {
            retry_strategy: Retry::Timeout(PAYMENT_RETRY_TIMEOUT),
            ..Default::default()
        };
        let amount_arg = if invoice.amount_milli_satoshis().is_some() {
            None
        } else {
            Some(amount)
        };
        if let Err(err) = self
            .channel_manager
            .pay_for_bolt11_invoice(&invoice, payment_id, amount_arg, params)
        {
            return Err(self.refused_payment(&id, format!("{err:?}")).await);
        }
        Ok(id)
    }

    /// Sends `amount_msat` to `node_id` without an invoice (keysend).
    pub async fn keysend(&self, node_id: PublicKey, amount_msat: u64) -> Result<String, NodeError> {
        self.check_running()?;
        if amount_msat == 0 {
            return Err(NodeError::InvalidRequest(
                "the amount must be positive".into(),
            ));
        }
        if node_id == self.node_id() {
            return Err(NodeError::InvalidRequest("cannot pay ourselves".into()));
        }
        let preimage = PaymentPreimage(self.keys.get_secure_random_bytes());
        let payment_hash: PaymentHash = preimage.into();
        let payment_id = PaymentId(self.keys.get_secure_random_bytes());
        let id = hex::encode(payment_id.0);
        let mut record =
            PaymentRecord::pending(Direction::Outbound, id.clone(), payment_hash.to_string());
        record.amount_msat = Some(amount_msat);
        self.payments.put(record).await.map_err(persist_error)?;
        let route_params = RouteParameters::from_payment_params_and_value(
            PaymentParameters::for_keysend(node_id, KEYSEND_FINAL_CLTV_DELTA, false),
            amount_msat,
        );
        if let Err(err) = self.channel_manager.send_spontaneous_payment(
            Some(preimage),
            RecipientOnionFields::spontaneous_empty(amount_msat),
            payment_id,
            route_params,
            Retry::Timeout(PAYMENT_RETRY_TIMEOUT),
        ) {
            return Err(self.refused_payment(&id, format!("{err:?}")).await);
        }
        Ok(id)
    }

    /// Waits until the outbound payment `id` succeeds or fails, or `timeout` passes.
    pub async fn wait_payment(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<PaymentRecord, NodeError> {
        self.payments
            .wait_final(Direction::Outbound, id, timeout)
            .await
            .ok_or_else(|| NodeError::UnknownPayment(id.to_owned()))
    }

    /// Waits until the inbound payment `payment_hash` is received (or failed), or
    /// `timeout` passes; returns its record then.
    pub async fn wait_inbound(
        &self,
        payment_hash: &str,
        timeout: Duration,
    ) -> Option<PaymentRecord> {
        self.payments
            .wait_final(Direction::Inbound, payment_hash, timeout)
            .await
    }

    /// Every payment, oldest first.
    pub fn list_payments(&self) -> Vec<PaymentRecord> {
        self.payments.list()
    }

    /// The payments with this hash.
    pub fn payments_by_hash(&self, payment_hash: &str) -> Vec<PaymentRecord> {
        self.payments.by_hash(payment_hash)
    }

    /// One payment by direction and id.
    pub fn payment(&self, direction: Direction, id: &str) -> Option<PaymentRecord> {
        self.payments.get(direction, id)
    }

    // ---- stopping ----

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

impl Node {
    /// Records that LDK refused to start outbound payment `id`, and says why.
    async fn refused_payment(&self, id: &str, why: String) -> NodeError {
        let recorded = self
            .payments
            .update(
                Direction::Outbound,
                id,
                || unreachable_record(id),
                |r| {
                    r.status = PaymentStatus::Failed;
                    r.failure_reason = Some(why.clone());
                },
            )
            .await;
        match recorded {
            Ok(_) => NodeError::PaymentFailed(why),
            Err(err) => persist_error(err),
        }
    }
}

fn unreachable_record(id: &str) -> PaymentRecord {
    // The record was written just before; this only runs if it vanished.
    PaymentRecord::pending(Direction::Outbound, id.to_owned(), String::new())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves with a description of the holder once the campaign sees the lease held by
/// an instance other than `me` (or by a holder the store does not name).
async fn led_by_another(
    election: &mut watch::Receiver<phalanx_cluster::ElectionState>,
    me: &phalanx_store::HolderId,
) -> String {
    loop {
        if let phalanx_cluster::ElectionState::Campaigning { leader } =
            &*election.borrow_and_update()
        {
            match leader {
                Some(lease) if lease.holder != me.as_str() => {
                    return format!("instance {} (epoch {})", lease.holder, lease.epoch);
                }
                None => return "another process".to_owned(),
                Some(_) => {}
            }
        }
        if election.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Removes monitor updates already folded into their monitors: lazy removals lost when
/// the previous instance died. They are harmless (never replayed) but take space. Waits a
/// while first, so that a takeover does not read every monitor twice while peers reconnect.
async fn clean_stale_monitor_updates(persister: Persister, mut shutdown: watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(STALE_UPDATE_CLEANUP_DELAY) => {}
        _ = shutdown.wait_for(|stop| *stop) => return,
    }
    let cleanup =
        tokio::task::spawn_blocking(move || persister.inner().cleanup_stale_updates(true));
    match cleanup.await {
        Ok(Ok(())) => tracing::debug!("stale monitor updates cleaned"),
        Ok(Err(err)) => tracing::warn!(error = %err, "cleaning stale monitor updates failed"),
        Err(err) => tracing::warn!(error = %err, "cleaning stale monitor updates panicked"),
    }
}

/// The graph is a cache of gossip: an unreadable one is rebuilt, not fatal.
fn read_network_graph(kv: &KvStore, network: Network, logger: &Logger) -> NetworkGraph {
    match KVStoreSync::read(
        &**kv,
        persist::NETWORK_GRAPH_PERSISTENCE_PRIMARY_NAMESPACE,
        persist::NETWORK_GRAPH_PERSISTENCE_SECONDARY_NAMESPACE,
        persist::NETWORK_GRAPH_PERSISTENCE_KEY,
    ) {
        Ok(bytes) => match NetworkGraph::read(&mut &bytes[..], Arc::clone(logger)) {
            Ok(graph) => graph,
            Err(err) => {
                tracing::warn!(error = ?err, "stored network graph unreadable; starting empty");
                NetworkGraph::new(network, Arc::clone(logger))
            }
        },
        Err(_) => NetworkGraph::new(network, Arc::clone(logger)),
    }
}

/// Reads every stored channel monitor with its pending updates, [`MONITOR_READERS`] at
/// a time: one after another, each costs a few store round trips, which with a thousand
/// channels was most of a standby's takeover.
///
/// LDK's own `read_all_channel_monitors_with_updates` reads one at a time. Unlike it,
/// this fails on a monitor stale since LDK 0.0.118 (instead of skipping it), which a
/// node created on LDK 0.3 cannot have.
fn read_monitors(
    kv: &KvStore,
    persister: &MonitorPersister,
) -> Result<Vec<(BlockLocator, ChannelMonitor<InMemorySigner>)>, NodeError> {
    let keys = KVStoreSync::list(
        &**kv,
        persist::CHANNEL_MONITOR_PERSISTENCE_PRIMARY_NAMESPACE,
        persist::CHANNEL_MONITOR_PERSISTENCE_SECONDARY_NAMESPACE,
    )
    .map_err(persist_error)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let read = Mutex::new(Vec::with_capacity(keys.len()));
    std::thread::scope(|scope| {
        for _ in 0..MONITOR_READERS.min(keys.len()) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(key) = keys.get(index) else { return };
                    let result = persister.read_channel_monitor_with_updates(key);
                    let failed = result.is_err();
                    lock(&read).push((index, result));
                    if failed {
                        // The others finish the monitor in hand and stop.
                        next.store(keys.len(), Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    let mut read = read.into_inner().unwrap_or_else(|e| e.into_inner());
    // The store's order, as LDK's reader returns them.
    read.sort_by_key(|(index, _)| *index);
    read.into_iter()
        .map(|(index, result)| {
            result.map_err(|err| {
                let what = format!("channel monitor {}: {err}", keys[index]);
                NodeError::Persist(io::Error::new(err.kind(), what))
            })
        })
        .collect()
}

/// The scorer is learned, not essential: an unreadable one starts over.
fn read_scorer(kv: &KvStore, graph: &Arc<NetworkGraph>, logger: &Logger) -> Scorer {
    let decay = ProbabilisticScoringDecayParameters::default();
    if let Ok(bytes) = KVStoreSync::read(
        &**kv,
        persist::SCORER_PERSISTENCE_PRIMARY_NAMESPACE,
        persist::SCORER_PERSISTENCE_SECONDARY_NAMESPACE,
        persist::SCORER_PERSISTENCE_KEY,
    ) {
        match Scorer::read(
            &mut &bytes[..],
            (decay, Arc::clone(graph), Arc::clone(logger)),
        ) {
            Ok(scorer) => return scorer,
            Err(err) => tracing::warn!(error = ?err, "stored scorer unreadable; starting fresh"),
        }
    }
    ProbabilisticScorer::new(decay, Arc::clone(graph), Arc::clone(logger))
}

fn read_sweeper(
    kv: &KvStore,
    chain: &Chain,
    keys: &Arc<KeysManager>,
    wallet: &Arc<OnchainWallet>,
    logger: &Logger,
    tip: BlockLocator,
) -> Result<OutputSweeper, NodeError> {
    match KVStoreSync::read(
        &**kv,
        persist::OUTPUT_SWEEPER_PERSISTENCE_PRIMARY_NAMESPACE,
        persist::OUTPUT_SWEEPER_PERSISTENCE_SECONDARY_NAMESPACE,
        persist::OUTPUT_SWEEPER_PERSISTENCE_KEY,
    ) {
        Ok(bytes) => {
            let args = (
                Arc::clone(chain),
                Arc::clone(chain),
                None,
                Arc::new(SweepSpender::new(Arc::clone(keys), Arc::clone(wallet))),
                Arc::clone(wallet),
                Arc::clone(kv),
                Arc::clone(logger),
            );
            let (_, sweeper) = <(BlockLocator, OutputSweeper)>::read(&mut &bytes[..], args)
                .map_err(|err| NodeError::Corrupt(format!("output sweeper: {err:?}")))?;
            Ok(sweeper)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(OutputSweeper::new(
            tip,
            Arc::clone(chain),
            Arc::clone(chain),
            None,
            Arc::new(SweepSpender::new(Arc::clone(keys), Arc::clone(wallet))),
            Arc::clone(wallet),
            Arc::clone(kv),
            Arc::clone(logger),
        )),
        Err(err) => Err(persist_error(err)),
    }
}

/// A monitor being brought to the tip at start-up, before the ChainMonitor takes it.
type MonitorListener = (ChannelMonitor<InMemorySigner>, Chain, Chain, Logger);

/// Every block goes to the monitors first, then the manager, the sweeper and the wallet.
struct ChainListeners {
    chain_monitor: Arc<ChainMonitor>,
    channel_manager: Arc<ChannelManager>,
    sweeper: Arc<OutputSweeper>,
    wallet: Arc<OnchainWallet>,
}

impl Listen for ChainListeners {
    fn filtered_block_connected(
        &self,
        header: &bitcoin::block::Header,
        txdata: &lightning::chain::transaction::TransactionData,
        height: u32,
    ) {
        self.chain_monitor
            .filtered_block_connected(header, txdata, height);
        self.channel_manager
            .filtered_block_connected(header, txdata, height);
        self.sweeper
            .filtered_block_connected(header, txdata, height);
        self.wallet.filtered_block_connected(header, txdata, height);
    }

    fn blocks_disconnected(&self, fork_point: BlockLocator) {
        self.chain_monitor.blocks_disconnected(fork_point);
        self.channel_manager.blocks_disconnected(fork_point);
        self.sweeper.blocks_disconnected(fork_point);
        self.wallet.blocks_disconnected(fork_point);
    }
}

async fn block_poller(
    node: Arc<Node>,
    tip: ValidatedBlockHeader,
    header_cache: lightning_block_sync::HeaderCache,
    interval: Duration,
) {
    let listeners = Arc::new(ChainListeners {
        chain_monitor: Arc::clone(&node.chain_monitor),
        channel_manager: Arc::clone(&node.channel_manager),
        sweeper: Arc::clone(&node.sweeper),
        wallet: Arc::clone(&node.wallet),
    });
    let poller = ChainPoller::new(Arc::clone(&node.chain), node.network);
    let mut client = SpvClient::new(tip, poller, header_cache, listeners);
    let mut shutdown = node.shutdown.subscribe();
    let mut failing = false;
    loop {
        match client.poll_best_tip().await {
            Ok(_) => {
                if failing {
                    tracing::info!("chain source reachable again");
                    failing = false;
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = ?err, url = node.chain.url(), "polling the chain failed; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Fails the outbound payments recorded as pending that LDK does not know: the node
/// stopped after writing the record and before LDK persisted the payment (its HTLC is in
/// no monitor), so it was never sent and no event will ever resolve it.
async fn fail_unsent_payments(
    payments: &PaymentStore,
    channel_manager: &ChannelManager,
) -> Result<(), io::Error> {
    use lightning::ln::channelmanager::RecentPaymentDetails;
    let known: HashSet<String> = channel_manager
        .list_recent_payments()
        .into_iter()
        .map(|p| match p {
            RecentPaymentDetails::AwaitingInvoice { payment_id }
            | RecentPaymentDetails::Pending { payment_id, .. }
            | RecentPaymentDetails::Fulfilled { payment_id, .. }
            | RecentPaymentDetails::Abandoned { payment_id, .. } => hex::encode(payment_id.0),
        })
        .collect();
    for record in payments.list() {
        if record.direction != Direction::Outbound
            || record.status != PaymentStatus::Pending
            || known.contains(&record.payment_id)
        {
            continue;
        }
        tracing::warn!(payment_hash = %record.payment_hash, "failing a payment that was never sent (the node stopped before handing it over)");
        let id = record.payment_id.clone();
        payments
            .update(
                Direction::Outbound,
                &id,
                || record.clone(),
                |r| {
                    r.status = PaymentStatus::Failed;
                    r.failure_reason =
                        Some("never sent: the node stopped before handing it over".into());
                },
            )
            .await?;
    }
    Ok(())
}

/// Keeps the node connected to every channel peer whose address it knows.
async fn reconnect_loop(node: Arc<Node>) {
    let mut shutdown = node.shutdown.subscribe();
    loop {
        let connected: HashSet<PublicKey> = node
            .peer_manager
            .list_peers()
            .into_iter()
            .map(|p| p.counterparty_node_id)
            .collect();
        let wanted: HashSet<PublicKey> = node
            .channel_manager
            .list_channels()
            .into_iter()
            .map(|c| c.counterparty.node_id)
            .collect();
        for peer in wanted.difference(&connected) {
            if let Some(address) = node.address_book.get(peer) {
                let peer_manager = Arc::clone(&node.peer_manager);
                let peer = *peer;
                tokio::spawn(async move {
                    match peers::connect(&peer_manager, peer, address).await {
                        Ok(()) => tracing::info!(%peer, %address, "reconnected to channel peer"),
                        Err(err) => tracing::debug!(%peer, error = %err, "reconnecting failed"),
                    }
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Processes received HTLCs (forwards and payments to us) within `delay` of their
/// arrival. LDK's background processor does it too, after a random delay of about 50 ms
/// meant for privacy; with `delay` 0 a payment is handled as soon as it is committed.
async fn htlc_processor(
    channel_manager: Arc<ChannelManager>,
    delay: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // The check is one atomic load; polling it is cheaper than waking on every change.
    let interval = if delay.is_zero() {
        Duration::from_millis(2)
    } else {
        delay
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if channel_manager.needs_pending_htlc_processing() {
            channel_manager.process_pending_htlc_forwards();
        }
    }
}

/// Sends the wallet's unconfirmed transactions again, at once and then every
/// [`WALLET_REBROADCAST_INTERVAL`]: one recorded before a crash and never broadcast, or
/// whose broadcast's answer was lost, would otherwise keep its coins locked, unsent, for
/// good. bitcoind answers a transaction it already has with success, so this is cheap.
async fn wallet_rebroadcaster(
    wallet: Arc<OnchainWallet>,
    chain: Chain,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        for tx in wallet.unconfirmed_sends() {
            let txid = tx.compute_txid();
            match chain.broadcast(vec![tx]).await {
                Ok(_) => tracing::debug!(%txid, "rebroadcast an unconfirmed wallet transaction"),
                Err(ChainError::BroadcastStopped) => {
                    // Switched off: the node is stopping; wait for it.
                    let _ = shutdown.wait_for(|stop| *stop).await;
                    return;
                }
                Err(err) => {
                    tracing::warn!(%txid, error = %err, "rebroadcasting an unconfirmed wallet transaction failed")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(WALLET_REBROADCAST_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

async fn fee_refresher(chain: Chain, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FEE_REFRESH_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Err(err) = chain.refresh_fee_estimates().await {
            tracing::warn!(error = %err, "refreshing fee estimates failed; keeping the last ones");
        }
    }
}

async fn watch_leadership(mut status: watch::Receiver<LeadershipStatus>, fail_stop: FailStop) {
    let lost = status
        .wait_for(|s| !matches!(s, LeadershipStatus::Leading))
        .await
        .map(|s| s.clone());
    match lost {
        Ok(LeadershipStatus::Lost(reason)) => {
            fail_stop.trigger(format!("lost the leadership: {reason}"))
        }
        Ok(other) => fail_stop.trigger(format!("leadership ended: {other:?}")),
        Err(_) => fail_stop.trigger("the leadership task ended"),
    }
}

/// On fail-stop: stop broadcasting first, then stop everything else. Never closes a
/// channel, never writes again on purpose.
async fn fail_stopper(node: Arc<Node>) {
    let reason = node.fail_stop.triggered().await;
    node.chain.stop_broadcasting();
    node.peer_manager.disconnect_all_peers();
    tracing::error!(%reason, node_id = %node.node_id(), "fail-stop: the node no longer acts");
    let node2 = Arc::clone(&node);
    // stop_tasks aborts this task's siblings (and this one): run it detached.
    tokio::spawn(async move { node2.stop_tasks(&reason, Stopping::FailStop).await });
}
