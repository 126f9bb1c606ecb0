//! Connecting to peers and listing them.

use super::*;

impl Node {
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
        self.reach_peer(node_id, address).await?;
        self.address_book
            .put(&node_id, address)
            .await
            .map_err(|source| PeerError::Store { node_id, source })?;
        Ok(())
    }

    /// Connects to a peer unless it is connected. A node with fronts linked dials
    /// through one of them (so its own address stays behind them); without any, it
    /// dials itself.
    pub(super) async fn reach_peer(
        &self,
        node_id: PublicKey,
        address: SocketAddr,
    ) -> Result<(), PeerError> {
        if self.is_peer_connected(&node_id) {
            Ok(())
        } else if self
            .link_server
            .connect_through_front(node_id, &address.to_string())
        {
            self.wait_for_front_session(node_id, address).await
        } else {
            peers::connect(&self.peer_manager, node_id, address).await
        }
    }

    /// Waits until `node_id` has a session through a front, up to the connect timeout.
    async fn wait_for_front_session(
        &self,
        node_id: PublicKey,
        address: SocketAddr,
    ) -> Result<(), PeerError> {
        let deadline = tokio::time::Instant::now() + peers::CONNECT_TIMEOUT;
        while !self.link_server.has_peer(&node_id) {
            if tokio::time::Instant::now() >= deadline {
                return Err(PeerError::Unreachable {
                    node_id,
                    address,
                    reason: format!(
                        "no session through a front within {:?}",
                        peers::CONNECT_TIMEOUT
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Disconnects a peer (channels stay open; it reconnects later if there are any).
    pub fn disconnect_peer(&self, node_id: PublicKey) -> Result<(), NodeError> {
        if self.link_server.disconnect(&node_id) {
            return Ok(());
        }
        if self.peer_manager.peer_by_node_id(&node_id).is_none() {
            return Err(NodeError::PeerNotConnected(node_id));
        }
        self.peer_manager.disconnect_by_node_id(node_id);
        Ok(())
    }

    /// Connected peers: direct ones, then those on front servers (whose address is
    /// `front:NAME`).
    pub fn list_peers(&self) -> Vec<PeerDetails> {
        let direct = self
            .peer_manager
            .list_peers()
            .into_iter()
            .map(|peer| PeerDetails {
                node_id: peer.counterparty_node_id,
                address: peer.socket_address.map(|a| a.to_string()),
                inbound: peer.is_inbound_connection,
            });
        let on_fronts = self
            .link_server
            .peers()
            .into_iter()
            .map(|peer| PeerDetails {
                node_id: peer.node_id,
                address: Some(format!("front:{}", peer.front)),
                inbound: peer.inbound,
            });
        direct.chain(on_fronts).collect()
    }
}
