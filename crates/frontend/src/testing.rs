//! A `PeerManager` that does the handshake and `init` and nothing else (no channels, no
//! gossip), for the tests and benchmarks of the keyless handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use lightning::ln::peer_handler::{
    ErroringMessageHandler, IgnoringMessageHandler, MessageHandler, PeerManager,
};
use lightning::sign::NodeSigner;
use lightning::util::logger::{Logger, Record};
use lightning_net_tokio::SocketDescriptor;

/// Drops LDK's log lines.
pub struct Quiet;

impl Logger for Quiet {
    fn log(&self, _record: Record) {}
}

/// A peer manager with no channel or gossip handling, signing with `S`.
pub type HandshakeOnly<S> = PeerManager<
    SocketDescriptor,
    Arc<ErroringMessageHandler>,
    Arc<IgnoringMessageHandler>,
    Arc<IgnoringMessageHandler>,
    Arc<Quiet>,
    Arc<IgnoringMessageHandler>,
    Arc<S>,
    Arc<IgnoringMessageHandler>,
>;

/// A [`HandshakeOnly`] peer manager for `signer`.
pub fn handshake_only<S: NodeSigner>(signer: Arc<S>, random: [u8; 32]) -> Arc<HandshakeOnly<S>> {
    let ignoring = Arc::new(IgnoringMessageHandler {});
    Arc::new(PeerManager::new(
        MessageHandler {
            chan_handler: Arc::new(ErroringMessageHandler::new()),
            route_handler: Arc::clone(&ignoring),
            onion_message_handler: Arc::clone(&ignoring),
            custom_message_handler: Arc::clone(&ignoring),
            send_only_message_handler: ignoring,
        },
        0,
        &random,
        Arc::new(Quiet),
        signer,
    ))
}

/// Accepts peers for `node` on a loopback port, on the current runtime; returns the port's
/// address.
pub async fn listen<S: NodeSigner + Send + Sync + 'static>(
    node: Arc<HandshakeOnly<S>>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tcp) = tcp.into_std() else { continue };
            tokio::spawn(lightning_net_tokio::setup_inbound(Arc::clone(&node), tcp));
        }
    });
    Ok(address)
}
