//! Building a node from the parts it is handed: the configuration, the store and the
//! leadership an instance won on it, and a seed provider.
//!
//! [`NodeBuilder::build`] runs the phases in LDK's order, each a function below: the
//! identity check ([`check_identity`]), the parts every later phase shares ([`Base`]),
//! the graph and scorer ([`Routing`]), the monitors ([`Monitors`]), the wallet, the
//! manager ([`read_manager`]), the sweeper, the sync of every listener to the tip
//! ([`sync_to_tip`]), the peer manager, and then the tasks ([`start_tasks`]).
//!
//! The builder never opens a store by URL and never campaigns: the instance layer
//! (`phalanx-instance`) does both, so an API can report that the lease is won and the
//! node is loading, and so this crate names no store backend.

use super::*;
use lightning::ln::msgs::BaseMessageHandler;

/// Builds a [`Node`] from the parts it is handed (see the [module docs](self)).
pub struct NodeBuilder {
    config: NodeConfig,
    seed_provider: Option<Arc<dyn SeedProvider>>,
    metrics: Arc<Metrics>,
}

impl NodeBuilder {
    /// A builder for the node of `config`, with metrics of its own. Its seed comes
    /// from [`NodeBuilder::seed_provider`]; without one, from the seed file of a
    /// `[seed] provider = "file"` configuration (never created here: `phalanx init`
    /// makes it). The other providers are made by the instance layer.
    pub fn new(config: &NodeConfig) -> Self {
        let seed_provider = match &config.seed.source {
            SeedSource::File { path } => {
                Some(Arc::new(FileSeedProvider::new(path.clone(), false)) as Arc<dyn SeedProvider>)
            }
            _ => None,
        };
        Self {
            config: config.clone(),
            seed_provider,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Loads the seed from `provider` instead of the configured seed file.
    pub fn seed_provider(mut self, provider: Arc<dyn SeedProvider>) -> Self {
        self.seed_provider = Some(provider);
        self
    }

    /// Records the node's store transactions and its lease into `metrics`.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Builds and starts the node on `store`, writing with `leadership`'s fence: checks
    /// that the store is this seed's node's ([`identity::check`]) before anything is
    /// read or written, connects to the chain, loads the state, syncs it to the tip and
    /// starts serving peers.
    ///
    /// `store_runtime` is the runtime `store` was opened on and `leadership` renews on
    /// (see [`StoreRuntime`]); the node owns it from now on. An error drops the
    /// leadership, which stops renewing: the lease expires and a standby may take over.
    pub async fn build(
        self,
        store: Arc<dyn Store>,
        leadership: Leadership,
        store_runtime: StoreRuntime,
    ) -> Result<Arc<Node>, BuildError> {
        let Self {
            config,
            seed_provider,
            metrics,
        } = self;
        let seed_provider = seed_provider.ok_or_else(|| {
            BuildError::Seed(SecretsError::Reference {
                reference: config.seed.source.provider().to_owned(),
                reason: "the node builder was given no provider for this seed source (phalanx-instance makes one)".to_owned(),
            })
        })?;
        let seed = seed_provider.seed().await?;
        // Before anything is loaded or announced: an empty or foreign store is never
        // taken for this node's.
        check_identity(
            &store,
            &store_runtime,
            identity::node_id_of(&seed),
            config.network,
        )
        .await?;
        let epoch = leadership.epoch();
        // The start-up after the lease is won is a standby's takeover time: log its parts.
        let won_at = Instant::now();
        metrics.won_lease(epoch.0);
        let base = Base::new(config, store, &leadership, &store_runtime, &seed, metrics).await?;

        let tip = init::validate_best_block_header(&*base.chain)
            .await
            .map_err(|err| BuildError::Sync(format!("cannot read the chain tip: {err:?}")))?;
        let tip_locator = tip.to_block_locator();
        let routing = Routing::read(&base);
        let monitors = Monitors::read(&base)?;
        let monitors_read_at = Instant::now();

        let wallet = Arc::new(OnchainWallet::load_or_create(
            &seed,
            base.config.network,
            (*base.kv).clone(),
            tip_locator,
        )?);
        let backup_key = seed.backup_key();
        drop(seed);
        wallet.stop_on_failure(base.fail_stop.clone());
        let wallet_keys = Arc::new(WalletKeys::new(Arc::clone(&base.keys), Arc::clone(&wallet)));
        let (manager_locator, channel_manager) =
            read_manager(&base, &routing, &monitors, &wallet_keys, tip_locator)?;
        let channel_manager = Arc::new(channel_manager);
        let manager_read_at = Instant::now();
        let sweeper = Arc::new(read_sweeper(
            &base.kv,
            &base.chain,
            &base.keys,
            &wallet,
            &base.logger,
            tip_locator,
        )?);

        let Monitors {
            persister,
            read: monitors,
            chain_monitor,
        } = monitors;
        let monitor_count = monitors.len();
        let listeners = Listeners {
            chain_monitor: &chain_monitor,
            manager: (manager_locator, &channel_manager),
            sweeper: &sweeper,
            wallet: &wallet,
        };
        let synced = sync_to_tip(&base, listeners, monitors).await?;
        let synced_at = Instant::now();

        let gossip_sync: Arc<GossipSync> = Arc::new(P2PGossipSync::new(
            Arc::clone(&routing.network_graph),
            None,
            Arc::clone(&base.logger),
        ));
        let onion_messenger = Arc::new(OnionMessenger::new(
            Arc::clone(&base.keys),
            Arc::clone(&base.keys),
            Arc::clone(&base.logger),
            Arc::clone(&channel_manager),
            Arc::clone(&routing.message_router),
            Arc::clone(&channel_manager),
            Arc::clone(&channel_manager),
            IgnoringMessageHandler {},
            IgnoringMessageHandler {},
        ));
        let (peer_manager, link_server) = new_peer_manager(
            &base,
            &channel_manager,
            &onion_messenger,
            &gossip_sync,
            &chain_monitor,
        );
        link_server.set_gossip(Arc::new(crate::front_gossip::FrontGossip::new(
            &base.chain,
            Arc::clone(&routing.network_graph),
            Arc::clone(&base.metrics),
        )));
        let payments =
            Arc::new(PaymentStore::load(Arc::clone(&base.kv)).map_err(BuildError::Persist)?);
        fail_unsent_payments(&payments, &channel_manager)
            .await
            .map_err(BuildError::Persist)?;
        // Before the rebroadcaster starts: a funding recorded for a channel that was never
        // funded must not reach the chain.
        let fundings: HashSet<bitcoin::Txid> = channel_manager
            .list_channels()
            .iter()
            .filter_map(|channel| channel.funding_txo.map(|outpoint| outpoint.txid))
            .collect();
        wallet.settle_funding_holds(|txid| fundings.contains(txid))?;
        let bump_handler: Arc<BumpHandler> = Arc::new(BumpTransactionEventHandlerSync::new(
            Arc::clone(&base.chain),
            Arc::new(WalletSync::new(
                Arc::clone(&wallet),
                Arc::clone(&base.logger),
            )),
            Arc::clone(&base.keys),
            Arc::clone(&base.logger),
        ));
        let events = Arc::new(EventHandler {
            channel_manager: Arc::clone(&channel_manager),
            peer_manager: Arc::clone(&peer_manager),
            link_server: Arc::clone(&link_server),
            wallet: Arc::clone(&wallet),
            chain: Arc::clone(&base.chain),
            sweeper: Arc::clone(&sweeper),
            bump_handler,
            payments: Arc::clone(&payments),
            fail_stop: base.fail_stop.clone(),
            forwarded_fees_msat: AtomicU64::new(0),
            forwarded_payments: AtomicU64::new(0),
        });
        let (listen_addresses, tcp_listeners) = bind_listeners(&base.config).await?;
        let link = bind_link(&base.config).await?;
        let link_address = match &link {
            Some((listener, _)) => {
                Some(listener.local_addr().map_err(|source| BuildError::Listen {
                    address: base.config.link.as_ref().expect("[link]").listen,
                    source,
                })?)
            }
            None => None,
        };

        let Base {
            config,
            kv,
            chain,
            logger,
            keys,
            fail_stop,
            metrics,
            ..
        } = base;
        let node = Arc::new(Node {
            network: config.network,
            alias: config.lightning.alias.clone().unwrap_or_default(),
            keys,
            chain,
            chain_monitor,
            channel_manager,
            peer_manager,
            onion_messenger,
            link_server,
            link_address,
            network_graph: Arc::clone(&routing.network_graph),
            wallet,
            payments,
            payment_locks: PaymentLocks::default(),
            address_book: Arc::new(AddressBook::new(Arc::clone(&kv))),
            events,
            sweeper,
            fail_stop,
            kv,
            metrics,
            listen_addresses,
            epoch,
            backup_key,
            cluster: config.store.cluster.as_str().to_owned(),
            leadership: Mutex::new(None),
            shutdown: watch::channel(false).0,
            background_processor: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            stopped: watch::channel(None).0,
            _store_runtime: store_runtime,
        });
        let parts = TaskParts {
            config: &config,
            logger,
            scorer: routing.scorer,
            gossip_sync,
            persister,
            tcp_listeners,
            link,
            synced,
            leadership: leadership.status(),
        };
        start_tasks(&node, parts);
        *lock(&node.leadership) = Some(leadership);

        tracing::info!(
            node_id = %node.node_id(),
            %epoch,
            network = %config.network,
            height = node.best_block_height(),
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
}

/// Refuses a store that is not this node's (never initialized, another node's or
/// another network's) before anything is read from or written to it.
async fn check_identity(
    store: &Arc<dyn Store>,
    store_runtime: &StoreRuntime,
    node_id: PublicKey,
    network: Network,
) -> Result<(), BuildError> {
    let store = Arc::clone(store);
    store_runtime
        .run(async move {
            let stored = identity::read_identity(&*store).await?;
            identity::check(&store.describe(), stored.as_ref(), node_id, network)?;
            Ok::<_, BuildError>(())
        })
        .await
        .map_err(BuildError::Runtime)?
}

/// What every later phase shares: the store as LDK sees it, the chain, the keys.
struct Base {
    config: NodeConfig,
    kv: KvStore,
    chain: Chain,
    logger: Logger,
    keys: Arc<KeysManager>,
    fail_stop: FailStop,
    metrics: Arc<Metrics>,
    /// When the build began: it seeds LDK's ephemeral randomness and timestamps.
    now: Duration,
}

impl Base {
    async fn new(
        config: NodeConfig,
        store: Arc<dyn Store>,
        leadership: &Leadership,
        store_runtime: &StoreRuntime,
        seed: &phalanx_secrets::Seed,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        let fail_stop = FailStop::new();
        let stop_on_failure = fail_stop.clone();
        let state_store: Arc<dyn StateStore> = store.clone();
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
        let runtime = tokio::runtime::Handle::current();
        let chain = ChainClient::connect(&config.chain, config.network, runtime).await?;
        chain.broadcast_only_while(leadership.fence());
        chain.confirm_lease_with(store, leadership.epoch(), store_runtime.handle());
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
        Ok(Self {
            config,
            kv,
            chain,
            logger: Arc::new(TracingLogger),
            keys,
            fail_stop,
            metrics,
            now,
        })
    }
}

/// The network graph, the scorer and the routers over them.
struct Routing {
    network_graph: Arc<NetworkGraph>,
    scorer: Arc<RwLock<Scorer>>,
    router: Arc<Router>,
    message_router: Arc<MessageRouter>,
}

impl Routing {
    fn read(base: &Base) -> Self {
        let network_graph = Arc::new(read_network_graph(
            &base.kv,
            base.config.network,
            &base.logger,
        ));
        let scorer = Arc::new(RwLock::new(read_scorer(
            &base.kv,
            &network_graph,
            &base.logger,
        )));
        let router = Arc::new(DefaultRouter::new(
            Arc::clone(&network_graph),
            Arc::clone(&base.logger),
            Arc::clone(&base.keys),
            Arc::clone(&scorer),
            ProbabilisticScoringFeeParameters::default(),
        ));
        let message_router = Arc::new(DefaultMessageRouter::new(
            Arc::clone(&network_graph),
            Arc::clone(&base.keys),
        ));
        Self {
            network_graph,
            scorer,
            router,
            message_router,
        }
    }
}

/// The stored monitors, read before the manager, and the ChainMonitor that will take
/// them once they are at the tip.
struct Monitors {
    persister: Persister,
    read: Vec<(BlockLocator, ChannelMonitor<InMemorySigner>)>,
    chain_monitor: Arc<ChainMonitor>,
}

impl Monitors {
    fn read(base: &Base) -> Result<Self, BuildError> {
        let persister = Arc::new(FailStopPersister::new(
            MonitorPersister::new(
                Arc::clone(&base.kv),
                Arc::clone(&base.logger),
                MAX_PENDING_MONITOR_UPDATES,
                Arc::clone(&base.keys),
                Arc::clone(&base.keys),
                Arc::clone(&base.chain),
                Arc::clone(&base.chain),
            ),
            base.fail_stop.clone(),
        ));
        let read = read_monitors(&base.kv, persister.inner())?;
        let chain_monitor = Arc::new(ChainMonitor::new(
            None,
            Arc::clone(&base.chain),
            Arc::clone(&base.logger),
            Arc::clone(&base.chain),
            Arc::clone(&persister),
            Arc::clone(&base.keys),
            base.keys.get_peer_storage_key(),
            // Deferred: the ChannelManager is written before its monitors (the background
            // processor keeps the order), so a SIGKILL at any instant is safe to resume from.
            true,
        ));
        Ok(Self {
            persister,
            read,
            chain_monitor,
        })
    }
}

/// Reads the ChannelManager with the monitors it depends on, or makes a new one for a
/// store that has no manager and no monitor (a node's first start).
fn read_manager(
    base: &Base,
    routing: &Routing,
    monitors: &Monitors,
    wallet_keys: &Arc<WalletKeys>,
    tip: BlockLocator,
) -> Result<(BlockLocator, ChannelManager), BuildError> {
    let stored = KVStoreSync::read(
        &*base.kv,
        persist::CHANNEL_MANAGER_PERSISTENCE_PRIMARY_NAMESPACE,
        persist::CHANNEL_MANAGER_PERSISTENCE_SECONDARY_NAMESPACE,
        persist::CHANNEL_MANAGER_PERSISTENCE_KEY,
    );
    match stored {
        Ok(bytes) => {
            let monitor_refs: Vec<&ChannelMonitor<InMemorySigner>> =
                monitors.read.iter().map(|(_, m)| m).collect();
            let args = ChannelManagerReadArgs::new(
                Arc::clone(&base.keys),
                Arc::clone(&base.keys),
                Arc::clone(wallet_keys),
                Arc::clone(&base.chain),
                Arc::clone(&monitors.chain_monitor),
                Arc::clone(&base.chain),
                Arc::clone(&routing.router),
                Arc::clone(&routing.message_router),
                Arc::clone(&base.logger),
                user_config(),
                monitor_refs,
            );
            <(BlockLocator, ChannelManager)>::read(&mut &bytes[..], args)
                .map_err(|err| BuildError::Corrupt(format!("channel manager: {err:?}")))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            if !monitors.read.is_empty() {
                // Monitors without a manager: starting fresh would lose the channels.
                return Err(BuildError::Corrupt(format!(
                    "{} channel monitors are stored but no channel manager",
                    monitors.read.len()
                )));
            }
            let params = ChainParameters {
                network: base.config.network,
                best_block: tip,
            };
            let manager = ChannelManager::new(
                Arc::clone(&base.chain),
                Arc::clone(&monitors.chain_monitor),
                Arc::clone(&base.chain),
                Arc::clone(&routing.router),
                Arc::clone(&routing.message_router),
                Arc::clone(&base.logger),
                Arc::clone(&base.keys),
                Arc::clone(&base.keys),
                Arc::clone(wallet_keys),
                user_config(),
                params,
                base.now.as_secs() as u32,
            );
            Ok((tip, manager))
        }
        Err(err) => Err(BuildError::Persist(err)),
    }
}

/// The listeners besides the monitors that [`sync_to_tip`] brings to the tip.
struct Listeners<'a> {
    chain_monitor: &'a Arc<ChainMonitor>,
    manager: (BlockLocator, &'a Arc<ChannelManager>),
    sweeper: &'a Arc<OutputSweeper>,
    wallet: &'a Arc<OnchainWallet>,
}

/// Where the sync to the tip ended: the block poller goes on from there.
struct Synced {
    tip: ValidatedBlockHeader,
    header_cache: lightning_block_sync::HeaderCache,
}

/// Brings the manager, the sweeper, the wallet and every monitor to the chain tip, then
/// hands the monitors to the ChainMonitor: nothing else may happen before.
async fn sync_to_tip(
    base: &Base,
    listeners: Listeners<'_>,
    monitors: Vec<(BlockLocator, ChannelMonitor<InMemorySigner>)>,
) -> Result<Synced, BuildError> {
    let monitor_listeners: Vec<(BlockLocator, MonitorListener)> = monitors
        .into_iter()
        .map(|(locator, monitor)| {
            let listener = (
                monitor,
                Arc::clone(&base.chain),
                Arc::clone(&base.chain),
                Arc::clone(&base.logger),
            );
            (locator, listener)
        })
        .collect();
    let (manager_locator, channel_manager) = listeners.manager;
    let mut all: Vec<(BlockLocator, &(dyn Listen + Send + Sync))> = vec![
        (
            manager_locator,
            &**channel_manager as &(dyn Listen + Send + Sync),
        ),
        (
            listeners.sweeper.current_best_block(),
            &**listeners.sweeper as &(dyn Listen + Send + Sync),
        ),
        (
            listeners.wallet.best_block(),
            &**listeners.wallet as &(dyn Listen + Send + Sync),
        ),
    ];
    for (locator, listener) in &monitor_listeners {
        all.push((*locator, listener as &(dyn Listen + Send + Sync)));
    }
    let (header_cache, tip) =
        init::synchronize_listeners(Arc::clone(&base.chain), base.config.network, all)
            .await
            .map_err(|err| BuildError::Sync(format!("{err:?}")))?;
    for (_, (monitor, ..)) in monitor_listeners {
        let channel_id = monitor.channel_id();
        listeners
            .chain_monitor
            .load_existing_monitor(channel_id, monitor)
            .map_err(|()| {
                BuildError::Corrupt(format!("channel monitor {channel_id} cannot be loaded"))
            })?;
    }
    Ok(Synced { tip, header_cache })
}

/// The peer manager, and the link server beside it (serving fronts only if `[link]`
/// is set): peers on fronts reach the channel manager and the onion messenger through
/// the server, and what those have for them leaves through the peer manager's handler.
fn new_peer_manager(
    base: &Base,
    channel_manager: &Arc<ChannelManager>,
    onion_messenger: &Arc<OnionMessenger>,
    gossip_sync: &Arc<GossipSync>,
    chain_monitor: &Arc<ChainMonitor>,
) -> (Arc<PeerManager>, Arc<LinkServer>) {
    let node_id = base
        .keys
        .get_node_id(Recipient::Node)
        .expect("the node key");
    // Fronts advertise what the node handles: channels, and onion messages.
    let active = ActiveBackend {
        node_id,
        chain_hash: *ChainHash::using_genesis_block(base.config.network).as_bytes(),
        init_features: (channel_manager.init_features()
            | onion_messenger.provided_init_features(node_id))
        .le_flags()
        .to_vec(),
        node_features: (channel_manager.node_features() | onion_messenger.provided_node_features())
            .le_flags()
            .to_vec(),
    };
    let keys = Arc::clone(&base.keys);
    let link_server = Arc::new(LinkServer::new(
        Arc::clone(channel_manager),
        base.config.store.instance_id.as_str(),
        active,
        Box::new(move |point| {
            keys.ecdh(Recipient::Node, point, None)
                .ok()
                .map(|secret| secret.secret_bytes())
        }),
    ));
    link_server.set_onion_handler(Arc::clone(onion_messenger) as _);
    let message_handler = MessageHandler {
        chan_handler: Arc::new(SplitHandler::new(Arc::clone(&link_server))),
        route_handler: Arc::clone(gossip_sync),
        onion_message_handler: Arc::clone(onion_messenger),
        custom_message_handler: IgnoringMessageHandler {},
        send_only_message_handler: Arc::clone(chain_monitor),
    };
    let peer_manager = Arc::new(PeerManager::new(
        message_handler,
        base.now.as_secs() as u32,
        &base.keys.get_secure_random_bytes(),
        Arc::clone(&base.logger),
        Arc::clone(&base.keys),
    ));
    let waking = Arc::downgrade(&peer_manager);
    link_server.set_wake(move || {
        if let Some(peer_manager) = waking.upgrade() {
            peer_manager.process_events();
        }
    });
    (peer_manager, link_server)
}

/// Binds the link's address and loads its certificates, if `[link]` is set.
async fn bind_link(
    config: &NodeConfig,
) -> Result<Option<(tokio::net::TcpListener, LinkIdentity)>, BuildError> {
    let Some(link) = &config.link else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map_err(|err| BuildError::Link(format!("{}: {err}", path.display())))
    };
    let certificate = read(&link.certificate)?;
    let key = zeroize::Zeroizing::new(read(&link.key)?);
    let ca = read(&link.ca)?;
    let identity = LinkIdentity::from_pem(&certificate, &key, &ca)
        .map_err(|err| BuildError::Link(err.to_string()))?;
    let listener = tokio::net::TcpListener::bind(link.listen)
        .await
        .map_err(|source| BuildError::Listen {
            address: link.listen,
            source,
        })?;
    Ok(Some((listener, identity)))
}

/// Binds every configured peer address, with the ports actually bound.
async fn bind_listeners(
    config: &NodeConfig,
) -> Result<(Vec<SocketAddr>, Vec<tokio::net::TcpListener>), BuildError> {
    let mut addresses = Vec::new();
    let mut listeners = Vec::new();
    for address in &config.lightning.listen {
        let failed = |source| BuildError::Listen {
            address: *address,
            source,
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(failed)?;
        addresses.push(listener.local_addr().map_err(failed)?);
        listeners.push(listener);
    }
    Ok((addresses, listeners))
}

/// What the tasks need beyond the node itself.
struct TaskParts<'a> {
    config: &'a NodeConfig,
    logger: Logger,
    scorer: Arc<RwLock<Scorer>>,
    gossip_sync: Arc<GossipSync>,
    persister: Persister,
    tcp_listeners: Vec<tokio::net::TcpListener>,
    link: Option<(tokio::net::TcpListener, LinkIdentity)>,
    synced: Synced,
    /// The leadership's status: its loss stops the node.
    leadership: watch::Receiver<LeadershipStatus>,
}

/// Starts the background processor and every loop of the node, under one supervisor.
fn start_tasks(node: &Arc<Node>, parts: TaskParts<'_>) {
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
    let handler = Arc::clone(&node.events);
    let supervisor = Supervisor {
        fail_stop: node.fail_stop.clone(),
        shutdown: node.shutdown.subscribe(),
    };
    let background_processor = tokio::spawn(supervisor.clone().background_processor(
        process_events_async(
            Arc::clone(&node.kv),
            move |event| Arc::clone(&handler).handle(event),
            Arc::clone(&node.chain_monitor),
            Arc::clone(&node.channel_manager),
            Some(Arc::clone(&node.onion_messenger)),
            BpGossipSync::p2p(parts.gossip_sync),
            Arc::clone(&node.peer_manager),
            NO_LIQUIDITY_MANAGER,
            Some(Arc::clone(&node.sweeper)),
            parts.logger,
            Some(parts.scorer),
            sleeper,
            false,
            || SystemTime::now().duration_since(UNIX_EPOCH).ok(),
        ),
    ));
    *lock(&node.background_processor) = Some(background_processor);

    // Every task runs until shutdown unless marked `Once`; one that panics, or ends
    // early, stops the node, since a node missing one of them must not keep its lease.
    let mut tasks = Vec::new();
    for listener in parts.tcp_listeners {
        tasks.push(supervisor.spawn(
            "the peer listener",
            Runs::UntilShutdown,
            peers::accept_loop(listener, Arc::clone(&node.peer_manager)),
        ));
    }
    if let Some((listener, identity)) = parts.link {
        let server = Arc::clone(&node.link_server);
        tasks.push(
            supervisor.spawn("the front link", Runs::UntilShutdown, async move {
                if let Err(err) = server.serve(listener, &identity).await {
                    tracing::error!(error = %err, "the front link stopped");
                }
            }),
        );
    }
    tasks.push(supervisor.spawn(
        "the block poller",
        Runs::UntilShutdown,
        block_poller(
            Arc::clone(node),
            parts.synced.tip,
            parts.synced.header_cache,
            parts.config.chain.poll_interval,
        ),
    ));
    tasks.push(supervisor.spawn(
        "the peer reconnector",
        Runs::UntilShutdown,
        reconnect_loop(Arc::clone(node)),
    ));
    tasks.push(supervisor.spawn(
        "the node announcer",
        Runs::UntilShutdown,
        announce_loop(Arc::clone(node)),
    ));
    tasks.push(supervisor.spawn(
        "the HTLC processor",
        Runs::UntilShutdown,
        htlc_processor(
            Arc::clone(&node.channel_manager),
            parts.config.lightning.forward_delay,
            node.shutdown.subscribe(),
        ),
    ));
    tasks.push(supervisor.spawn(
        "the wallet rebroadcaster",
        Runs::UntilShutdown,
        wallet_rebroadcaster(
            Arc::clone(&node.wallet),
            Arc::clone(&node.chain),
            node.shutdown.subscribe(),
        ),
    ));
    tasks.push(supervisor.spawn(
        "the fee refresher",
        Runs::UntilShutdown,
        fee_refresher(Arc::clone(&node.chain), node.shutdown.subscribe()),
    ));
    tasks.push(supervisor.spawn(
        "the leadership watch",
        Runs::Once,
        watch_leadership(parts.leadership, node.fail_stop.clone()),
    ));
    tasks.push(tokio::spawn(fail_stopper(Arc::clone(node))));
    tasks.push(supervisor.spawn(
        "the stale monitor update clean-up",
        Runs::Once,
        clean_stale_monitor_updates(parts.persister, node.shutdown.subscribe()),
    ));
    *lock(&node.tasks) = tasks;
}
