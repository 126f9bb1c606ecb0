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
        peers::connect(&self.peer_manager, node_id, address).await?;
        self.address_book
            .put(&node_id, address)
            .await
            .map_err(|source| PeerError::Store { node_id, source })?;
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
