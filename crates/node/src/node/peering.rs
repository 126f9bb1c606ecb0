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
}
