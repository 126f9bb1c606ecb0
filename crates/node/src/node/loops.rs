//! The node's background loops, each run by the task supervisor.

use super::*;

/// Removes monitor updates already folded into their monitors: lazy removals lost when
/// the previous instance died. They are harmless (never replayed) but take space. Waits a
/// while first, so that a takeover does not read every monitor twice while peers reconnect.
pub(super) async fn clean_stale_monitor_updates(
    persister: Persister,
    mut shutdown: watch::Receiver<bool>,
) {
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

/// Keeps the node connected to every channel peer whose address it knows.
pub(super) async fn reconnect_loop(node: Arc<Node>) {
    let mut shutdown = node.shutdown.subscribe();
    loop {
        // Peers on fronts count as connected: dialling them directly would only be
        // refused while their session lasts.
        let connected: HashSet<PublicKey> =
            node.list_peers().into_iter().map(|p| p.node_id).collect();
        let wanted: HashSet<PublicKey> = node
            .channel_manager
            .list_channels()
            .into_iter()
            .map(|c| c.counterparty.node_id)
            .collect();
        for peer in wanted.difference(&connected) {
            if let Some(address) = node.address_book.get(peer) {
                let (node, peer) = (Arc::clone(&node), *peer);
                tokio::spawn(async move {
                    // Its address is in the book already: reach it, nothing to record.
                    match node.reach_peer(peer, address).await {
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
pub(super) async fn htlc_processor(
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
pub(super) async fn wallet_rebroadcaster(
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

pub(super) async fn fee_refresher(chain: Chain, mut shutdown: watch::Receiver<bool>) {
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

pub(super) async fn watch_leadership(
    mut status: watch::Receiver<LeadershipStatus>,
    fail_stop: FailStop,
) {
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
pub(super) async fn fail_stopper(node: Arc<Node>) {
    let reason = node.fail_stop.triggered().await;
    node.chain.stop_broadcasting();
    node.peer_manager.disconnect_all_peers();
    tracing::error!(%reason, node_id = %node.node_id(), "fail-stop: the node no longer acts");
    let node2 = Arc::clone(&node);
    // stop_tasks aborts this task's siblings (and this one): run it detached.
    tokio::spawn(async move { node2.stop_tasks(&reason, Stopping::FailStop).await });
}

/// How often the announcer looks at the fronts' public addresses.
const ANNOUNCE_CHECK: Duration = Duration::from_secs(10);
/// How often the node announcement is sent again when nothing changed (as LDK advises
/// for nodes that announce: peers forget stale ones).
const ANNOUNCE_AGAIN: Duration = Duration::from_secs(3600);

/// Announces the node at the public addresses of its fronts (their load balancers'),
/// when they change and every hour: signed here, sent to direct peers by the
/// `PeerManager` and to every front (which relay it) from the node's own graph. The
/// graph keeps a node announcement only once the node has a public channel in it, so
/// until then the announcer tries again at each look.
pub(super) async fn announce_loop(node: Arc<Node>) {
    let mut shutdown = node.shutdown.subscribe();
    let mut announced: Option<(Vec<String>, Instant)> = None;
    let our_id = lightning::routing::gossip::NodeId::from_pubkey(&node.node_id());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ANNOUNCE_CHECK) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let addresses = node.link_server.public_addresses();
        if addresses.is_empty() {
            continue;
        }
        let due = announced
            .as_ref()
            .is_none_or(|(sent, at)| *sent != addresses || at.elapsed() >= ANNOUNCE_AGAIN);
        if !due {
            continue;
        }
        let parsed: Vec<lightning::ln::msgs::SocketAddress> = addresses
            .iter()
            .filter_map(|address| address.parse().ok())
            .take(100)
            .collect();
        let mut alias = [0u8; 32];
        let name = node.alias.as_bytes();
        alias[..name.len().min(32)].copy_from_slice(&name[..name.len().min(32)]);
        node.peer_manager
            .broadcast_node_announcement([0x5a, 0x4e, 0x58], alias, parsed);
        let message = node
            .network_graph
            .read_only()
            .node(&our_id)
            .and_then(|info| info.announcement_info.as_ref())
            .and_then(|info| info.announcement_message().cloned());
        if let Some(msg) = message {
            // To every front; the backend's own peers have it from the PeerManager.
            let _ = node.link_server.route_events(vec![
                lightning::ln::msgs::MessageSendEvent::BroadcastNodeAnnouncement { msg },
            ]);
            tracing::info!(?addresses, "announced the node at its fronts' addresses");
            announced = Some((addresses, Instant::now()));
        }
    }
}
