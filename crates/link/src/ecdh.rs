//! The handshake's ECDH across the link: a front asks ([`EcdhClient`]), the backend
//! answers with the node key it alone holds ([`serve_ecdh`]).
//!
//! LDK asks a `NodeSigner` for the ECDH synchronously, from inside
//! `PeerManager::read_event`, so [`EcdhClient::ecdh`] blocks its caller until the answer
//! comes or `timeout` passes; the link itself runs on tasks of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::secp256k1::PublicKey;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, rustls};
use tokio_util::codec::Framed;

use crate::tls::{LinkIdentity, expected_name};
use crate::{Frame, Hello, LinkCodec, LinkError, Role};

type Waiting = Arc<Mutex<HashMap<u64, std::sync::mpsc::Sender<Option<[u8; 32]>>>>>;

/// A front's link to a backend, for the handshake's ECDH. The link runs on a runtime of
/// its own (one thread): [`ecdh`](Self::ecdh) blocks a thread of the caller's runtime,
/// and a task that thread would wake next (tokio keeps it for the same thread) would
/// wait with it.
pub struct EcdhClient {
    frames: mpsc::UnboundedSender<Frame>,
    waiting: Waiting,
    next: AtomicU64,
    timeout: Duration,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for EcdhClient {
    fn drop(&mut self) {
        // Without blocking: the client may be dropped on an async thread.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl EcdhClient {
    /// Dials the backend at `address` over mutual TLS and exchanges hellos.
    pub async fn connect(
        identity: &LinkIdentity,
        name: &str,
        address: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, LinkError> {
        let config = identity.client_config()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("phalanx-link")
            .enable_all()
            .build()?;
        let (opened, open) = tokio::sync::oneshot::channel();
        let name = name.to_owned();
        runtime.spawn(async move {
            let _ = opened.send(open_link(config, name, address).await);
        });
        let (frames, waiting) = open
            .await
            .map_err(|_| LinkError::Protocol("the link's runtime stopped".into()))??;
        Ok(Self {
            frames,
            waiting,
            next: AtomicU64::new(1),
            timeout,
            runtime: Some(runtime),
        })
    }

    /// The shared secret of the node key with `point`, asked of the backend; blocks until
    /// it answers, refuses, the link fails, or the timeout passes.
    pub fn ecdh(&self, point: &PublicKey) -> Result<[u8; 32], LinkError> {
        let request = self.next.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = std::sync::mpsc::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request, answer);
        let sent = self.frames.send(Frame::EcdhRequest {
            request,
            point: *point,
        });
        let outcome = match sent {
            Ok(()) => answered.recv_timeout(self.timeout),
            Err(_) => Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request);
        match outcome {
            Ok(Some(secret)) => Ok(secret),
            Ok(None) => Err(LinkError::Protocol("the backend refused the ECDH".into())),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(LinkError::Io(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no ECDH answer in time"),
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(LinkError::Io(
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the link is down"),
            )),
        }
    }
}

/// Dials, says hello, and starts the link's writer and reader tasks (on the runtime it
/// is called on).
async fn open_link(
    config: Arc<rustls::ClientConfig>,
    name: String,
    address: SocketAddr,
) -> Result<(mpsc::UnboundedSender<Frame>, Waiting), LinkError> {
    let connector = TlsConnector::from(config);
    let tcp = TcpStream::connect(address).await?;
    let tls = connector.connect(expected_name(Role::Backend), tcp).await?;
    let mut link = Framed::new(tls, LinkCodec::default());
    link.send(Frame::Hello(Hello::new(Role::Front, name)))
        .await?;
    match link.next().await {
        Some(Ok(Frame::Hello(hello))) => hello.check(Role::Backend)?,
        Some(Ok(other)) => {
            return Err(LinkError::Protocol(format!(
                "the backend opened with {} instead of hello",
                other.kind()
            )));
        }
        Some(Err(err)) => return Err(err),
        None => return Err(LinkError::Protocol("the backend closed the link".into())),
    }
    let (mut sink, mut stream) = link.split();
    let (frames, mut outgoing) = mpsc::unbounded_channel::<Frame>();
    let waiting: Waiting = Arc::default();
    tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
    });
    let answers = Arc::clone(&waiting);
    tokio::spawn(async move {
        while let Some(Ok(frame)) = stream.next().await {
            if let Frame::EcdhResponse {
                request,
                shared_secret,
            } = frame
            {
                let asker = answers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&request);
                if let Some(asker) = asker {
                    let _ = asker.send(shared_secret);
                }
            }
        }
        // The link is gone: every question still waiting fails now, not at its timeout.
        answers.lock().unwrap_or_else(|e| e.into_inner()).clear();
    });
    Ok((frames, waiting))
}

/// Accepts fronts on `listener` over mutual TLS and answers their ECDH requests with
/// `ecdh` (the node's own signer), until the listener fails. Each front's link runs on a
/// task of its own; a front that breaks the protocol loses its link, nothing else.
pub async fn serve_ecdh<F>(
    listener: TcpListener,
    identity: &LinkIdentity,
    name: String,
    ecdh: F,
) -> Result<(), LinkError>
where
    F: Fn(&PublicKey) -> Option<[u8; 32]> + Send + Sync + 'static,
{
    let acceptor = TlsAcceptor::from(identity.server_config()?);
    let ecdh = Arc::new(ecdh);
    loop {
        let (tcp, _) = listener.accept().await?;
        let (acceptor, ecdh, name) = (acceptor.clone(), Arc::clone(&ecdh), name.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut link = Framed::new(tls, LinkCodec::default());
            match link.next().await {
                Some(Ok(Frame::Hello(hello))) if hello.check(Role::Front).is_ok() => {}
                _ => return,
            }
            if link
                .send(Frame::Hello(Hello::new(Role::Backend, name)))
                .await
                .is_err()
            {
                return;
            }
            while let Some(Ok(frame)) = link.next().await {
                let answer = match frame {
                    Frame::EcdhRequest { request, point } => Frame::EcdhResponse {
                        request,
                        shared_secret: ecdh(&point),
                    },
                    Frame::LinkPing { nonce } => Frame::LinkPong { nonce },
                    _ => continue,
                };
                if link.send(answer).await.is_err() {
                    return;
                }
            }
        });
    }
}
