//! Where the suite gets its stores: a [`StoreFactory`] per backend, as openraft's storage
//! suite gets its stores from a builder. A test asks for a fresh, empty store and more
//! handles on the same store; it never builds a URL itself. Each backend's stores live on
//! a real server shared by the tests of one process (a new database, a new key prefix, a
//! new file per test).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use phalanx_cluster::LeaseTimings;
use phalanx_store::{Store, StoreError, StoreOptions};
use phalanx_testkit::proxy::{Mode, TcpProxy};
use phalanx_testkit::{etcd, postgres, process, unique_name};

/// Where one store lives: enough to open more handles on it.
///
/// Most tests never look inside: they call [`StoreFactory::reopen`]. The few that hand
/// the store to another process read its [`url`](Self::url): the crash tests, whose
/// lease holder is a `phalanx-store-holder` child process they pause and kill.
#[derive(Clone, Debug)]
pub struct Place {
    url: String,
}

impl Place {
    /// The store at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }

    /// The store's URL, for the tests that must hand it to a child process. Other tests
    /// open handles with [`StoreFactory::reopen`].
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A backend under test.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// The backend's name, for messages.
    fn name(&self) -> &'static str;

    /// A new, empty store that no other test uses, and a handle on it with `options`
    /// (whose cluster names the cluster the handle works on). Panics if the backend's
    /// server cannot give one: the test cannot run.
    async fn fresh(&self, options: StoreOptions) -> (Place, Arc<dyn Store>);

    /// Another handle on the store at `place`: a second instance of the same node, or
    /// the same instance after a restart. Fails as opening the store fails.
    async fn reopen(
        &self,
        place: &Place,
        options: StoreOptions,
    ) -> Result<Arc<dyn Store>, StoreError> {
        phalanx_store_connect::connect(place.url(), options).await
    }

    /// The lease TTL lease tests request: the shortest the backend handles well.
    fn ttl(&self) -> Duration {
        Duration::from_millis(600)
    }

    /// Lease timings for driver tests, scaled from [`ttl`](Self::ttl).
    fn timings(&self) -> LeaseTimings {
        let ttl = self.ttl();
        LeaseTimings {
            ttl,
            renew_interval: ttl / 8,
            safety_margin: ttl / 4,
            retry_interval: ttl / 10,
        }
    }

    /// A fresh store reached through a [`Link`] the test can cut, for backends reached
    /// over the network; `None` for an embedded one.
    async fn severable(&self, options: StoreOptions) -> Option<Severable> {
        let _ = options;
        None
    }
}

/// A fresh store whose every connection to its server runs through a [`Link`].
pub struct Severable {
    /// Where the store lives, as seen through the link: handles opened here go through it.
    pub place: Place,
    /// A handle through the link.
    pub store: Arc<dyn Store>,
    /// The link.
    pub link: Link,
}

/// The network between a store's handles and its server: a [`TcpProxy`] in front of each
/// server address.
pub struct Link {
    proxies: Vec<TcpProxy>,
}

impl Link {
    /// Puts a proxy in front of each of `servers`; returns the link and `url` with every
    /// server address replaced by its proxy's.
    pub async fn in_front_of(url: &str, servers: &[SocketAddr]) -> (Self, String) {
        let mut proxies = Vec::with_capacity(servers.len());
        let mut through = url.to_owned();
        for server in servers {
            let proxy = TcpProxy::to(*server).await.expect("start a proxy");
            through = through.replace(&server.to_string(), &proxy.addr().to_string());
            proxies.push(proxy);
        }
        (Self { proxies }, through)
    }

    /// Switches every connection, open or new: [`Mode::Blackhole`] cuts the link as a
    /// partition does (nothing flows, nothing is closed).
    pub fn set_mode(&self, mode: Mode) {
        for proxy in &self.proxies {
            proxy.set_mode(mode);
        }
    }

    /// Takes the proxies away: nothing listens at their addresses any more, so a
    /// connection there is refused, as at a closed port.
    pub async fn remove(self) {
        let addrs: Vec<SocketAddr> = self.proxies.iter().map(TcpProxy::addr).collect();
        drop(self.proxies);
        for addr in addrs {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::net::TcpStream::connect(addr).await.is_ok() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{addr} still accepts after its proxy stopped"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Opens `url` for a factory, or panics: the test's fixture is broken.
async fn open_fresh(url: String, options: StoreOptions) -> (Place, Arc<dyn Store>) {
    let store = phalanx_store_connect::connect(&url, options)
        .await
        .unwrap_or_else(|err| panic!("open {url}: {}", err.report()));
    (Place::new(url), store)
}

/// A fresh store behind a link, or a panic.
async fn severable_at(url: String, servers: &[SocketAddr], options: StoreOptions) -> Severable {
    let (link, url) = Link::in_front_of(&url, servers).await;
    let (place, store) = open_fresh(url, options).await;
    Severable { place, store, link }
}

/// Sets up logging for a test.
pub fn init() {
    phalanx_testkit::init_tracing();
}

/// SQLite: a new database file in a scratch directory per test. Embedded, so not
/// [`severable`](StoreFactory::severable).
pub struct Sqlite;

#[async_trait]
impl StoreFactory for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn fresh(&self, options: StoreOptions) -> (Place, Arc<dyn Store>) {
        let dir = process::scratch_dir("sqlite").expect("scratch dir");
        open_fresh(format!("sqlite://{}/node.db", dir.display()), options).await
    }
}

/// PostgreSQL: a new database per test on the process's shared server.
pub struct Postgres;

impl Postgres {
    fn server_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], postgres::shared().port()))
    }

    fn fresh_url() -> String {
        postgres::shared()
            .fresh_database()
            .expect("create a test database")
    }
}

#[async_trait]
impl StoreFactory for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn fresh(&self, options: StoreOptions) -> (Place, Arc<dyn Store>) {
        open_fresh(Self::fresh_url(), options).await
    }

    async fn severable(&self, options: StoreOptions) -> Option<Severable> {
        Some(severable_at(Self::fresh_url(), &[Self::server_addr()], options).await)
    }
}

/// etcd: a new key prefix per test on the process's shared server.
pub struct Etcd;

impl Etcd {
    fn server_addrs() -> Vec<SocketAddr> {
        etcd::shared()
            .endpoints()
            .iter()
            .map(|endpoint| {
                let host = endpoint.rsplit("://").next().unwrap_or(endpoint);
                host.parse().expect("an etcd member's address")
            })
            .collect()
    }

    fn fresh_url() -> String {
        etcd::shared().url(&unique_name("t"))
    }
}

#[async_trait]
impl StoreFactory for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn fresh(&self, options: StoreOptions) -> (Place, Arc<dyn Store>) {
        open_fresh(Self::fresh_url(), options).await
    }

    fn ttl(&self) -> Duration {
        // etcd leases are whole seconds.
        Duration::from_secs(1)
    }

    async fn severable(&self, options: StoreOptions) -> Option<Severable> {
        Some(severable_at(Self::fresh_url(), &Self::server_addrs(), options).await)
    }
}
