//! A TCP proxy the test controls: a load balancer in front of a cluster's instances, or
//! a network link between an instance and its store that the test can cut.
//!
//! Each accepted connection goes to the address the `route` function picks at that
//! moment (`None`: the connection is closed at once, as a load balancer with no healthy
//! backend does). [`TcpProxy::set_mode`] switches every connection, open or new, between
//! forwarding, a black hole (nothing flows, nothing is closed: a partition as the two
//! ends see it, noticed only by their timeouts), and closing.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Picks where a new connection goes.
pub type Route =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<SocketAddr>> + Send>> + Send + Sync>;

/// What the proxy does with the bytes of every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow both ways.
    Forward,
    /// Nothing flows and nothing is closed; new connections are accepted and left hanging.
    Blackhole,
    /// Every connection is closed, and new ones are closed as soon as accepted.
    Close,
}

/// A running proxy; it stops (and drops its connections) when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept: JoinHandle<()>,
    /// Each open connection's own hold: while set, its bytes wait (as in a black hole)
    /// whatever the proxy's mode.
    holds: Holds,
}

type Holds = Arc<std::sync::Mutex<Vec<std::sync::Weak<watch::Sender<bool>>>>>;

/// Connections held by [`TcpProxy::hold_open_connections`]; their bytes flow again on
/// [`HeldConnections::release`] (or when this is dropped).
pub struct HeldConnections {
    held: Vec<Arc<watch::Sender<bool>>>,
}

impl HeldConnections {
    /// How many connections are held.
    pub fn count(&self) -> usize {
        self.held.len()
    }

    /// Lets the held bytes through, in the order they were sent.
    pub fn release(self) {}
}

impl Drop for HeldConnections {
    fn drop(&mut self) {
        for hold in &self.held {
            hold.send_replace(false);
        }
    }
}

impl TcpProxy {
    /// Listens on a free loopback port and sends every connection to `target`.
    pub async fn to(target: SocketAddr) -> std::io::Result<Self> {
        Self::start(Arc::new(move || Box::pin(async move { Some(target) }))).await
    }

    /// Listens on a free loopback port and routes each new connection with `route`.
    pub async fn start(route: Route) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let mode = watch::channel(Mode::Forward).0;
        let holds = Holds::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            route,
            mode.clone(),
            Arc::clone(&holds),
        ));
        Ok(Self {
            addr,
            mode,
            accept,
            holds,
        })
    }

    /// Holds the bytes of every connection open now (new ones flow as usual): a link
    /// that delays one request past its client's timeout while the client's retry, on
    /// a new connection, goes through.
    pub fn hold_open_connections(&self) -> HeldConnections {
        let mut holds = self.holds.lock().unwrap();
        holds.retain(|hold| hold.strong_count() > 0);
        let held: Vec<Arc<watch::Sender<bool>>> =
            holds.iter().filter_map(std::sync::Weak::upgrade).collect();
        for hold in &held {
            hold.send_replace(true);
        }
        HeldConnections { held }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches every connection, open or new, to `mode`.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Connections watch the mode; closing the channel ends them.
        self.mode.send_replace(Mode::Close);
    }
}

async fn accept_loop(listener: TcpListener, route: Route, mode: watch::Sender<Mode>, holds: Holds) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let route = Arc::clone(&route);
        let mode = mode.subscribe();
        let hold = Arc::new(watch::channel(false).0);
        holds.lock().unwrap().push(Arc::downgrade(&hold));
        tokio::spawn(async move {
            if *mode.borrow() == Mode::Close {
                return;
            }
            let Some(target) = route().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            relay(client, server, mode, hold.subscribe()).await;
        });
    }
}

/// Copies bytes both ways while the mode is `Forward`, holds still in `Blackhole`, and
/// returns (closing both sockets) in `Close` or when either side closes.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    mode: watch::Receiver<Mode>,
    hold: watch::Receiver<bool>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, mode.clone(), hold.clone()) => {}
        _ = pump(server_read, client_write, mode.clone(), hold) => {}
        _ = closed(mode) => {}
    }
}

/// Waits until bytes may flow: the proxy forwards and this connection is not held.
async fn flowing(mode: &mut watch::Receiver<Mode>, hold: &mut watch::Receiver<bool>) -> bool {
    loop {
        if mode.wait_for(|m| *m == Mode::Forward).await.is_err() {
            return false;
        }
        // A dropped hold (the proxy is gone) ends the connection with the mode.
        let _ = hold.wait_for(|held| !*held).await;
        if *mode.borrow() == Mode::Forward {
            return true;
        }
    }
}

async fn closed(mut mode: watch::Receiver<Mode>) {
    let _ = mode.wait_for(|m| *m == Mode::Close).await;
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    mut hold: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // Hold still while the link is cut: bytes wait in the kernel's buffers.
        if !flowing(&mut mode, &mut hold).await {
            return;
        }
        let mut stop_mode = mode.clone();
        let mut stop_hold = hold.clone();
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = stop_mode.wait_for(|m| *m != Mode::Forward) => continue,
            _ = stop_hold.wait_for(|held| *held) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes already read are delivered once the link forwards again.
        if !flowing(&mut mode, &mut hold).await {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut answer = vec![0u8; message.len()];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn forwards_holds_still_then_closes() {
        let proxy = TcpProxy::to(echo_server().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"one").await.unwrap(), b"one");

        proxy.set_mode(Mode::Blackhole);
        let held =
            tokio::time::timeout(Duration::from_millis(300), round_trip(&mut stream, b"two")).await;
        assert!(held.is_err(), "bytes crossed a black hole");
        // What was sent during the cut arrives once the link is back.
        proxy.set_mode(Mode::Forward);
        let mut answer = [0u8; 3];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"two");

        proxy.set_mode(Mode::Close);
        let mut rest = Vec::new();
        // End of stream or a reset, within the timeout; no bytes either way.
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the proxy closes the connection");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn holds_the_open_connections_while_new_ones_flow() {
        let proxy = TcpProxy::to(echo_server().await).await.unwrap();
        let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut old, b"one").await.unwrap(), b"one");
        let held = proxy.hold_open_connections();
        assert_eq!(held.count(), 1);
        let late =
            tokio::time::timeout(Duration::from_millis(300), round_trip(&mut old, b"late")).await;
        assert!(late.is_err(), "a held connection's bytes crossed");
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut new, b"new").await.unwrap(), b"new");
        held.release();
        let mut answer = [0u8; 4];
        old.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"late");
    }

    #[tokio::test]
    async fn routes_each_connection_when_it_arrives() {
        let target = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let chosen = Arc::clone(&target);
        let proxy = TcpProxy::start(Arc::new(move || {
            let choice = *chosen.lock().unwrap();
            Box::pin(async move { choice })
        }))
        .await
        .unwrap();
        // No backend: the connection is closed at once.
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(stream.read_to_end(&mut rest).await.unwrap_or(0), 0);

        *target.lock().unwrap() = Some(echo_server().await);
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"up").await.unwrap(), b"up");
    }
}
