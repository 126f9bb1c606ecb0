//! Initializing a store for the node, and starting the node: the leadership first, then
//! the state, read in LDK's order, brought to the chain tip, and the tasks.

use super::*;

/// What [`Node::initialize`] found or did.
#[derive(Clone, Debug)]
pub struct Initialized {
    /// The store's identity record.
    pub identity: NodeIdentity,
    /// Whether this call recorded it (false: the store was already this node's).
    pub created: bool,
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
