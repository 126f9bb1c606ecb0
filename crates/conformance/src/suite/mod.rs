//! The tests every backend must pass, by area: the key-value contract ([`kv`]), LDK's
//! store on top of it ([`ldk`]), the lease ([`lease`]), bounded time with the network cut
//! ([`hang`]), and crashes of a holder process ([`crash`]). Each test takes an [`Env`]:
//! the backend's [`StoreFactory`] and the path of the holder binary for the crash tests.
//! Every test is re-exported here, so [`conformance_tests!`](crate::conformance_tests)
//! names it `suite::<test>`.

pub mod crash;
pub mod hang;
pub mod kv;
pub mod ldk;
pub mod lease;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use phalanx_cluster::Campaigner;
use phalanx_store::{
    FencingToken, HeldLease, HolderId, LdkKvStore, LeaseExpiry, Namespace, Store, StoreKey,
};

pub use self::crash::*;
pub use self::hang::*;
pub use self::kv::*;
pub use self::ldk::*;
pub use self::lease::*;
use crate::factory::{Place, StoreFactory};
use crate::{store_options, try_win};

/// What a suite test gets.
pub struct Env<'a> {
    /// The backend.
    pub factory: &'a dyn StoreFactory,
    /// The `phalanx-store-holder` binary.
    pub holder_binary: &'a Path,
}

impl Env<'_> {
    /// A fresh store, and a handle on it for cluster `c` with the test timeouts.
    pub async fn fresh(&self) -> (Place, Arc<dyn Store>) {
        self.factory.fresh(store_options("c")).await
    }

    /// Another handle on the store at `place`, for cluster `c`.
    pub async fn reopen(&self, place: &Place) -> Arc<dyn Store> {
        self.reopen_as(place, "c").await
    }

    /// Another handle on the store at `place`, for `cluster`.
    pub async fn reopen_as(&self, place: &Place, cluster: &str) -> Arc<dyn Store> {
        self.factory
            .reopen(place, store_options(cluster))
            .await
            .unwrap_or_else(|err| panic!("reopen {place:?}: {}", err.report()))
    }
}

/// True when the backend's lease is a lock its holder keeps until its process ends or
/// lets go (SQLite), rather than a lease that expires a TTL after its last renewal.
fn holds_until_exit(store: &dyn Store) -> bool {
    store.lease_expiry() == LeaseExpiry::ProcessLock
}

fn key(primary: &str, secondary: &str, key: &str) -> StoreKey {
    StoreKey::new(primary, secondary, key).unwrap()
}

fn ns(primary: &str, secondary: &str) -> Namespace {
    Namespace::new(primary, secondary).unwrap()
}

async fn sorted_list(store: &dyn Store, namespace: &Namespace) -> Vec<String> {
    let mut keys = store.list(namespace).await.unwrap();
    keys.sort();
    keys
}

/// A fresh store and a lease on it.
async fn leader(env: &Env<'_>) -> (Place, Arc<dyn Store>, FencingToken, Box<dyn HeldLease>) {
    let (place, store) = env.fresh().await;
    let lease = try_win(store.as_ref(), "a", Duration::from_secs(30))
        .await
        .expect("the first campaigner on a fresh store wins");
    let token = lease.token();
    (place, store, token, lease)
}

/// A fresh store, a leadership on it, and LDK's store bound to that leadership.
async fn ldk_over_a_leadership(
    env: &Env<'_>,
) -> (
    Place,
    Arc<dyn Store>,
    phalanx_cluster::Leadership,
    LdkKvStore,
) {
    let (place, store) = env.fresh().await;
    let campaigner = Campaigner::new(
        store.clone(),
        HolderId::new("a").unwrap(),
        env.factory.timings(),
    )
    .unwrap();
    let leadership = campaigner.campaign().await.unwrap();
    let kv = LdkKvStore::new(
        store.clone(),
        leadership.fence(),
        tokio::runtime::Handle::current(),
    );
    (place, store, leadership, kv)
}
