//! What every scenario starts from: a scratch directory, Alice's store on the backend
//! under test, the chain with coins to give, and Bob running in process; then Alice
//! funded and her channel to Bob opened over her API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::{Amount, OutPoint};
use phalanx_api::{ApiClient, ChannelState, OpenChannelRequest};
use phalanx_node::Node;

use crate::STEP_TIMEOUT;
use crate::api::health;
use crate::chain::TestChain;
use crate::invariants::bob_channel;
use crate::nodes::{self, wait_for};

/// What Alice's wallet receives before she opens the channel.
pub const ALICE_FUNDS_SAT: u64 = 2_000_000;
/// The channel's capacity; half of it is pushed to Bob so that both can pay.
pub const CHANNEL_SAT: u64 = 1_000_000;

/// Where Alice keeps her state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
    /// An etcd key prefix.
    Etcd,
}

impl Backend {
    /// A fresh store: a file in `dir`, a new database, or a new key prefix (one server of
    /// each kind per test process).
    pub fn store_url(self, dir: &Path) -> String {
        match self {
            Backend::Sqlite => format!("sqlite://{}", dir.join("alice.db").display()),
            Backend::Postgres => phalanx_testkit::postgres::shared()
                .fresh_database()
                .expect("a fresh PostgreSQL database"),
            Backend::Etcd => {
                phalanx_testkit::etcd::shared().url(&phalanx_testkit::unique_name("alice"))
            }
        }
    }
}

/// A scenario's scratch directory, Alice's store, the chain, and Bob.
pub struct World {
    /// The scratch directory.
    pub dir: PathBuf,
    /// Alice's store.
    pub store_url: String,
    /// The chain.
    pub chain: TestChain,
    /// Bob, in process, on SQLite.
    pub bob: Arc<Node>,
}

impl World {
    /// Sets up in a new scratch directory named after `scratch`; `store_url` makes
    /// Alice's store in that directory (or elsewhere).
    pub async fn set_up(scratch: &str, store_url: impl FnOnce(&Path) -> String) -> Self {
        let dir = phalanx_testkit::process::scratch_dir(scratch).expect("a scratch directory");
        let store_url = store_url(&dir);
        let chain = TestChain::start().await;
        chain
            .control()
            .ensure_funds(Amount::from_sat(ALICE_FUNDS_SAT + 100_000))
            .await
            .expect("the chain wallet gathers coins");
        let bob = nodes::start(&nodes::node_config(&chain, &dir, "bob", None)).await;
        Self {
            dir,
            store_url,
            chain,
            bob,
        }
    }

    /// Pays Alice's wallet from the chain's, over her API, and confirms it.
    pub async fn fund_alice(&self, alice: &ApiClient) {
        let address = alice
            .new_address()
            .await
            .expect("alice gives an address")
            .address;
        self.chain
            .control()
            .send_to(&address, Amount::from_sat(ALICE_FUNDS_SAT))
            .await
            .expect("the chain wallet pays alice");
        nodes::mine(&self.chain, &[&self.bob], 1).await;
        wait_for("alice's funds to confirm", STEP_TIMEOUT, || async {
            let balance = alice.balance().await.ok()?;
            (balance.onchain_confirmed_sat >= ALICE_FUNDS_SAT).then_some(())
        })
        .await;
    }
}

/// The channel of a scenario, and what was true of it once it was usable.
pub struct Channel {
    /// Its funding outpoint.
    pub funding: OutPoint,
    /// What Bob could send over it.
    pub bob_outbound_before: u64,
    /// How many transactions the chain had seen.
    pub chain_transactions: usize,
}

impl Channel {
    /// Alice opens a channel to Bob over her API, pushing half of it to him, and both
    /// sides can use it.
    pub async fn open(world: &World, alice: &ApiClient) -> Self {
        let address = world.bob.listen_addresses()[0].to_string();
        Self::open_to(world, alice, Some(address)).await
    }

    /// [`Channel::open`], Alice dialling Bob at `address` first, or using the
    /// connection Bob made to her when `None`.
    pub async fn open_to(world: &World, alice: &ApiClient, address: Option<String>) -> Self {
        let (chain, bob) = (&world.chain, &world.bob);
        alice
            .open_channel(&OpenChannelRequest {
                node_id: bob.node_id().to_string(),
                address,
                amount_sat: CHANNEL_SAT,
                push_msat: CHANNEL_SAT * 1000 / 2,
                public: false,
            })
            .await
            .expect("alice opens a channel to bob");
        let funding = wait_for("the funding transaction", STEP_TIMEOUT, || async {
            let channels = alice.list_channels().await.ok()?;
            let txid = channels.iter().find_map(|c| c.funding_txid.clone())?;
            txid.parse().ok()
        })
        .await;
        wait_for(
            "the funding transaction in the mempool",
            STEP_TIMEOUT,
            || async {
                chain
                    .control()
                    .in_mempool(&funding)
                    .await
                    .ok()?
                    .then_some(())
            },
        )
        .await;
        nodes::mine(chain, &[bob], 6).await;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let bob_ready = bob
                .list_channels()
                .iter()
                .any(|c| c.is_usable && c.counterparty.forwarding_info.is_some());
            let alice_ready = alice.list_channels().await.is_ok_and(|channels| {
                channels
                    .iter()
                    .any(|c| c.is_usable && c.state == ChannelState::Ready)
            });
            if bob_ready && alice_ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the channel is not usable on both sides after {STEP_TIMEOUT:?} \
                 (bob: {bob_ready}, alice: {alice_ready})\n{}",
                health(alice).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let funding = bob
            .list_channels()
            .iter()
            .find_map(|c| c.funding_txo)
            .expect("bob's channel has its funding outpoint")
            .into_bitcoin_outpoint();
        Self {
            funding,
            bob_outbound_before: bob_channel(bob, funding).expect("bob has the channel").1,
            chain_transactions: chain.transaction_count(),
        }
    }
}
