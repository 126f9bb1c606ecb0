//! Reading the node's state at start-up: graph, monitors, scorer, sweeper, and the
//! payments the previous instance never sent.

use super::*;

/// The graph is a cache of gossip: an unreadable one is rebuilt, not fatal.
pub(super) fn read_network_graph(kv: &KvStore, network: Network, logger: &Logger) -> NetworkGraph {
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
pub(super) fn read_monitors(
    kv: &KvStore,
    persister: &MonitorPersister,
) -> Result<Vec<(BlockLocator, ChannelMonitor<InMemorySigner>)>, BuildError> {
    let keys = KVStoreSync::list(
        &**kv,
        persist::CHANNEL_MONITOR_PERSISTENCE_PRIMARY_NAMESPACE,
        persist::CHANNEL_MONITOR_PERSISTENCE_SECONDARY_NAMESPACE,
    )
    .map_err(BuildError::Persist)?;
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
                BuildError::Persist(io::Error::new(err.kind(), what))
            })
        })
        .collect()
}

/// The scorer is learned, not essential: an unreadable one starts over.
pub(super) fn read_scorer(kv: &KvStore, graph: &Arc<NetworkGraph>, logger: &Logger) -> Scorer {
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

pub(super) fn read_sweeper(
    kv: &KvStore,
    chain: &Chain,
    keys: &Arc<KeysManager>,
    wallet: &Arc<OnchainWallet>,
    logger: &Logger,
    tip: BlockLocator,
) -> Result<OutputSweeper, BuildError> {
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
                .map_err(|err| BuildError::Corrupt(format!("output sweeper: {err:?}")))?;
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
        Err(err) => Err(BuildError::Persist(err)),
    }
}

/// Fails the outbound payments recorded as pending that LDK does not know: the node
/// stopped after writing the record and before LDK persisted the payment (its HTLC is in
/// no monitor), so it was never sent and no event will ever resolve it.
pub(super) async fn fail_unsent_payments(
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
