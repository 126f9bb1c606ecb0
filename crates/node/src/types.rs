//! The concrete LDK types the node is assembled from.

use std::sync::{Arc, RwLock};

use lightning::chain::Filter;
use lightning::chain::chainmonitor;
use lightning::events::bump_transaction::sync::BumpTransactionEventHandlerSync;
use lightning::ln::channelmanager;
use lightning::ln::peer_handler::{self, IgnoringMessageHandler};
use lightning::onion_message::messenger::{self, DefaultMessageRouter};
use lightning::routing::gossip::{self, P2PGossipSync};
use lightning::routing::router::DefaultRouter;
use lightning::routing::scoring::{ProbabilisticScorer, ProbabilisticScoringFeeParameters};
use lightning::routing::utxo::UtxoLookup;
use lightning::sign::{InMemorySigner, KeysManager};
use lightning::util::persist::MonitorUpdatingPersister;
use lightning::util::sweep;
use lightning::util::wallet_utils::WalletSync;
use phalanx_store::LdkKvStore;

use crate::chain::ChainClient;
use crate::keys::{SweepSpender, WalletKeys};
use crate::logger::TracingLogger;
use crate::persist::FailStopPersister;
use crate::wallet::OnchainWallet;

/// LDK's logger.
pub type Logger = Arc<TracingLogger>;
/// The fenced store, as LDK sees it.
pub type KvStore = Arc<LdkKvStore>;
/// Keys, derived from the seed in memory only.
pub type Keys = Arc<KeysManager>;
/// Fee estimator and broadcaster: the chain source.
pub type Chain = Arc<ChainClient>;
/// The node has no transaction filter: it follows full blocks.
pub type ChainFilter = Arc<dyn Filter + Send + Sync>;
/// LDK's monitor persister over the store, writing updates as deltas.
pub type MonitorPersister = MonitorUpdatingPersister<KvStore, Logger, Keys, Keys, Chain, Chain>;
/// The persister the chain monitor calls: a failed write stops the node instead of
/// panicking inside LDK.
pub type Persister = Arc<FailStopPersister<MonitorPersister>>;
/// The chain monitor, in deferred mode.
pub type ChainMonitor =
    chainmonitor::ChainMonitor<InMemorySigner, ChainFilter, Chain, Chain, Logger, Persister, Keys>;
/// The public channel graph.
pub type NetworkGraph = gossip::NetworkGraph<Logger>;
/// Gossip without on-chain validation of announced channels.
pub type GossipSync = P2PGossipSync<Arc<NetworkGraph>, Arc<dyn UtxoLookup + Send + Sync>, Logger>;
/// Payment path scoring.
pub type Scorer = ProbabilisticScorer<Arc<NetworkGraph>, Logger>;
/// Pathfinding.
pub type Router = DefaultRouter<
    Arc<NetworkGraph>,
    Logger,
    Keys,
    Arc<RwLock<Scorer>>,
    ProbabilisticScoringFeeParameters,
    Scorer,
>;
/// Blinded path construction for onion messages.
pub type MessageRouter = DefaultMessageRouter<Arc<NetworkGraph>, Logger, Keys>;
/// The channel manager (channel keys from the seed, closing outputs to the wallet).
pub type ChannelManager = channelmanager::ChannelManager<
    Arc<ChainMonitor>,
    Chain,
    Keys,
    Keys,
    Arc<WalletKeys>,
    Chain,
    Arc<Router>,
    Arc<MessageRouter>,
    Logger,
>;
/// Onion messages (BOLT 12 offers and invoices): the channel manager makes and takes
/// the offers messages; DNS resolution and custom messages are not handled.
pub type OnionMessenger = messenger::OnionMessenger<
    Keys,
    Keys,
    Logger,
    Arc<ChannelManager>,
    Arc<MessageRouter>,
    Arc<ChannelManager>,
    Arc<ChannelManager>,
    IgnoringMessageHandler,
    IgnoringMessageHandler,
>;
/// The active backend's end of the links to front servers.
pub type LinkServer = phalanx_link::backend::LinkServer<Arc<ChannelManager>>;
/// The channel handler of the node's own peer manager: the channel manager, with the
/// events of peers on fronts sent down their links.
pub type SplitHandler = phalanx_link::backend::SplitHandler<Arc<ChannelManager>>;
/// Peers over TCP.
pub type PeerManager = peer_handler::PeerManager<
    lightning_net_tokio::SocketDescriptor,
    Arc<SplitHandler>,
    Arc<GossipSync>,
    Arc<OnionMessenger>,
    Logger,
    IgnoringMessageHandler,
    Keys,
    Arc<ChainMonitor>,
>;
/// Sweeps what closed channels leave us into the wallet.
pub type OutputSweeper = sweep::OutputSweeper<
    Chain,
    Arc<OnchainWallet>,
    Chain,
    ChainFilter,
    KvStore,
    Logger,
    Arc<SweepSpender>,
>;
/// Anchor fee bumping, paid from the wallet.
pub type BumpHandler = BumpTransactionEventHandlerSync<
    Chain,
    Arc<WalletSync<Arc<OnchainWallet>, Logger>>,
    Keys,
    Logger,
>;
