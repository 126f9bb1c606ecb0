//! Opening, listing and closing channels.

use super::*;

impl Node {
    /// Opens a channel to a connected peer (connecting first when `address` is given),
    /// funded from the wallet.
    pub async fn open_channel(
        &self,
        node_id: PublicKey,
        address: Option<SocketAddr>,
        amount_sat: u64,
        push_msat: u64,
        public: bool,
    ) -> Result<OpenedChannel, NodeError> {
        self.check_running()?;
        if let Some(address) = address {
            self.connect_peer(node_id, address).await?;
        }
        if !self.is_peer_connected(&node_id) {
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
            .map_err(|err| NodeError::Lightning {
                op: "cannot open the channel",
                err,
            })?;
        tracing::info!(channel = %channel_id, peer = %node_id, amount_sat, push_msat, public, "opening channel");
        Ok(OpenedChannel {
            temporary_channel_id: channel_id,
            user_channel_id,
        })
    }

    /// The channels.
    pub fn list_channels(&self) -> Vec<ChannelDetails> {
        self.channel_manager.list_channels()
    }

    /// Closes a channel: cooperatively, or by broadcasting our commitment (`force`).
    pub async fn close_channel(
        &self,
        channel_id: &ChannelId,
        force: bool,
    ) -> Result<(), NodeError> {
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
                .map_err(|err| NodeError::Lightning {
                    op: "cannot force-close the channel",
                    err,
                });
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
                    if self.is_peer_connected(&channel.counterparty.node_id)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(channel = %channel.channel_id, reason = %err, "close refused for now; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => {
                    return Err(NodeError::Lightning {
                        op: "cannot close the channel",
                        err,
                    });
                }
            }
        }
    }

    pub(super) fn find_channel(&self, channel_id: &ChannelId) -> Result<ChannelDetails, NodeError> {
        self.channel_manager
            .list_channels()
            .into_iter()
            .find(|c| c.channel_id == *channel_id)
            .ok_or_else(|| NodeError::UnknownChannel(channel_id.to_string()))
    }
}
