//! The chain's blocks to every listener, at start-up and then as they come.

use super::*;

/// A monitor being brought to the tip at start-up, before the ChainMonitor takes it.
pub(super) type MonitorListener = (ChannelMonitor<InMemorySigner>, Chain, Chain, Logger);

/// Every block goes to the monitors first, then the manager, the sweeper and the wallet.
pub(super) struct ChainListeners {
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

pub(super) async fn block_poller(
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
