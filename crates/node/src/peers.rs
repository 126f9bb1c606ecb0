//! Peer connections: the listener, outbound connects, and the address book that lets the
//! node (or the instance that takes over from it) reconnect to its channel peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::secp256k1::PublicKey;
use lightning::io;
use lightning::util::persist::{KVStore, KVStoreSync};

use crate::types::{KvStore, PeerManager};

const NAMESPACE: &str = "peers";

/// How long an outbound connection may take, handshake included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The TCP connection failed.
    #[error("cannot connect to {node_id} at {address}: {reason}")]
    Unreachable {
        /// The peer.
        node_id: PublicKey,
        /// Where we tried.
        address: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Recording the peer's address in the store failed.
    #[error("cannot record the address of peer {node_id}: {source}")]
    Store {
        /// The peer.
        node_id: PublicKey,
        /// The store's error.
        #[source]
        source: io::Error,
    },
}

/// Where each peer we opened a connection to listens, in the store.
pub struct AddressBook {
    store: KvStore,
}

impl AddressBook {
    /// The address book in `store`.
    pub fn new(store: KvStore) -> Self {
        Self { store }
    }

    /// The recorded address of `node_id`.
    pub fn get(&self, node_id: &PublicKey) -> Option<SocketAddr> {
        let bytes = KVStoreSync::read(&*self.store, NAMESPACE, "", &node_id.to_string()).ok()?;
        String::from_utf8(bytes).ok()?.parse().ok()
    }

    /// Records where `node_id` listens (a fenced write), unless it is already recorded.
    pub async fn put(&self, node_id: &PublicKey, address: SocketAddr) -> Result<(), io::Error> {
        if self.get(node_id) == Some(address) {
            return Ok(());
        }
        KVStore::write(
            &*self.store,
            NAMESPACE,
            "",
            &node_id.to_string(),
            address.to_string().into_bytes(),
        )
        .await
    }
}

/// Accepts inbound peers on `listener` until the task is aborted.
pub async fn accept_loop(listener: tokio::net::TcpListener, peer_manager: Arc<PeerManager>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let peer_manager = Arc::clone(&peer_manager);
                // LDK writes each message as it is ready; Nagle would hold the small ones
                // back for the peer's delayed ACK, adding tens of ms to every round trip.
                let _ = stream.set_nodelay(true);
                match stream.into_std() {
                    Ok(stream) => {
                        tracing::debug!(%remote, "inbound peer connection");
                        tokio::spawn(lightning_net_tokio::setup_inbound(peer_manager, stream));
                    }
                    Err(err) => {
                        tracing::warn!(%remote, error = %err, "cannot take the inbound connection")
                    }
                }
            }
            Err(err) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(error = %err, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connects to `node_id` at `address` unless already connected, and waits for the
/// handshake to finish.
pub async fn connect(
    peer_manager: &Arc<PeerManager>,
    node_id: PublicKey,
    address: SocketAddr,
) -> Result<(), PeerError> {
    if peer_manager.peer_by_node_id(&node_id).is_some() {
        return Ok(());
    }
    let unreachable = |reason: String| PeerError::Unreachable {
        node_id,
        address,
        reason,
    };
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|err| unreachable(err.to_string()))?;
        let _ = stream.set_nodelay(true);
        let stream = stream
            .into_std()
            .map_err(|err| unreachable(err.to_string()))?;
        let connection =
            lightning_net_tokio::setup_outbound(Arc::clone(peer_manager), node_id, stream);
        let mut connection = Box::pin(tokio::spawn(connection));
        loop {
            if peer_manager.peer_by_node_id(&node_id).is_some() {
                return Ok(());
            }
            tokio::select! {
                _ = &mut connection => return Err(unreachable("the peer closed the connection during the handshake".into())),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(unreachable(format!(
            "no handshake within {CONNECT_TIMEOUT:?}"
        ))),
    }
}
