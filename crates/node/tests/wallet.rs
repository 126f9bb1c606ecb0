//! The on-chain wallet on the regtest chain, fed blocks by LDK's block sync over the
//! node's chain client (as the node feeds it), persisted in a real (SQLite) fenced store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::bip32::{DerivationPath, Xpriv};
use bitcoin::hashes::Hash as _;
use bitcoin::key::Secp256k1;
use bitcoin::psbt::Psbt;
use bitcoin::{
    Address, Amount, CompressedPublicKey, FeeRate, KnownHrp, Network, OutPoint, ScriptBuf,
    Transaction, TxIn, TxOut, Txid, WScriptHash,
};
use lightning::chain::{BlockLocator, Listen};
use lightning::sign::{ChangeDestinationSource, ChangeDestinationSourceSync};
use lightning::util::persist::KVStoreSync;
use lightning::util::wallet_utils::WalletSourceSync;
use lightning_block_sync::SpvClient;
use lightning_block_sync::init::synchronize_listeners;
use lightning_block_sync::poll::ChainPoller;
use phalanx_cluster::{Campaigner, Leadership, LeaseTimings};
use phalanx_node::chain::ChainClient;
use phalanx_node::config::ChainConfig;
use phalanx_node::wallet::{
    CHANGESET_KEY, OnchainWallet, PRIMARY_NAMESPACE, SECONDARY_NAMESPACE, WalletBalance,
    WalletError,
};
use phalanx_regtest::{Regtest, RegtestConfig};
use phalanx_secrets::Seed;
use phalanx_store::testing::{Fault, Faults, FaultyStore};
use phalanx_store::{ClusterName, HolderId, LdkKvStore, StoreOptions};

const SEED: [u8; 64] = [7; 64];

fn seed() -> Seed {
    Seed::from_bytes(SEED)
}

fn fee_rate() -> FeeRate {
    FeeRate::from_sat_per_vb_u32(2)
}

/// A regtest chain whose built-in wallet has mature coins, the node's chain client on it,
/// and a fenced SQLite store led by this test (writes can be failed on command).
struct Env {
    regtest: Regtest,
    chain: Arc<ChainClient>,
    kv: LdkKvStore,
    faults: Arc<Faults>,
    _leadership: Leadership,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Self {
        let regtest = Regtest::start(RegtestConfig::default()).await.unwrap();
        regtest.mine(101, None);
        let config = ChainConfig {
            rpc_url: regtest.rpc_url(),
            rpc_user: regtest.rpc_user().into(),
            rpc_password: regtest.rpc_password().into(),
            rest_url: None,
            esplora_url: None,
            poll_interval: Duration::from_millis(100),
        };
        let chain =
            ChainClient::connect(&config, Network::Regtest, tokio::runtime::Handle::current())
                .await
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/node.db", dir.path().display());
        let backend = Arc::new(
            phalanx_store_sqlite::SqliteStore::open(
                &url,
                StoreOptions::new(ClusterName::new("wallet").unwrap()),
            )
            .await
            .unwrap(),
        );
        let store = Arc::new(FaultyStore::new(backend));
        let faults = store.faults();
        let leadership = Campaigner::new(
            store.clone(),
            HolderId::new("a").unwrap(),
            LeaseTimings::default(),
        )
        .unwrap()
        .campaign()
        .await
        .unwrap();
        let kv = LdkKvStore::new(store, leadership.fence(), tokio::runtime::Handle::current());
        Self {
            regtest,
            chain,
            kv,
            faults,
            _leadership: leadership,
            _dir: dir,
        }
    }

    fn tip(&self) -> BlockLocator {
        let chain = self.regtest.chain();
        BlockLocator::new(chain.tip(), chain.height())
    }

    /// Loads the wallet from the store, or creates it born at the current tip.
    fn wallet(&self) -> OnchainWallet {
        self.wallet_born_at(self.tip())
    }

    fn wallet_born_at(&self, birthday: BlockLocator) -> OnchainWallet {
        OnchainWallet::load_or_create(&seed(), Network::Regtest, self.kv.clone(), birthday).unwrap()
    }

    /// Brings the wallet to the chain's tip the way the node does at start-up.
    async fn sync(&self, wallet: &OnchainWallet) {
        synchronize_listeners(
            &*self.chain,
            Network::Regtest,
            vec![(wallet.best_block(), wallet)],
        )
        .await
        .unwrap();
        assert_eq!(wallet.best_block().block_hash, self.regtest.chain().tip());
        assert_eq!(wallet.failed(), None);
    }

    /// The chain's built-in wallet pays `sat` to `script` (into the mempool).
    fn pay(&self, script: &ScriptBuf, sat: u64) -> Txid {
        self.regtest
            .chain()
            .send_to(script, Amount::from_sat(sat))
            .unwrap()
    }

    /// Mines one block without any transaction.
    fn mine_empty(&self) {
        let mut chain = self.regtest.chain();
        let payout = chain.wallet().default_address().script_pubkey();
        chain.mine_block(&payout, Some(Vec::new())).unwrap();
    }

    fn stored(&self) -> Vec<u8> {
        KVStoreSync::read(
            &self.kv,
            PRIMARY_NAMESPACE,
            SECONDARY_NAMESPACE,
            CHANGESET_KEY,
        )
        .unwrap()
    }

    /// A fresh address of the chain's built-in wallet.
    fn outside_address(&self) -> Address {
        self.regtest.chain().wallet().default_address()
    }
}

/// Funds a new wallet with one output per amount, confirmed.
async fn funded_wallet(env: &Env, amounts: &[u64]) -> OnchainWallet {
    let wallet = env.wallet();
    for sat in amounts {
        let address = wallet.new_address().unwrap();
        env.pay(&address.script_pubkey(), *sat);
    }
    env.regtest.mine(1, None);
    env.sync(&wallet).await;
    assert_eq!(wallet.balance().confirmed_sat, amounts.iter().sum::<u64>());
    wallet
}

fn channel_script(tag: &[u8]) -> ScriptBuf {
    ScriptBuf::new_p2wsh(&WScriptHash::hash(tag))
}

fn input_set(tx: &Transaction) -> HashSet<OutPoint> {
    tx.input.iter().map(|input| input.previous_output).collect()
}

fn sorted_utxos(wallet: &OnchainWallet) -> Vec<(OutPoint, Amount, Option<u32>)> {
    let mut utxos: Vec<_> = wallet
        .list_utxos()
        .into_iter()
        .map(|utxo| (utxo.outpoint, utxo.value, utxo.confirmation_height))
        .collect();
    utxos.sort();
    utxos
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_confirms_and_survives_a_reload() {
    let env = Env::start().await;
    let wallet = env.wallet();
    assert_eq!(wallet.best_block().block_hash, env.tip().block_hash);

    // The first address is BIP84's m/84'/1'/0'/0/0 of the seed's master key.
    let first = wallet.new_address().unwrap();
    let secp = Secp256k1::new();
    let path: DerivationPath = "m/84'/1'/0'/0/0".parse().unwrap();
    let key = Xpriv::new_master(Network::Regtest, &SEED)
        .unwrap()
        .derive_priv(&secp, &path)
        .unwrap();
    let expected = Address::p2wpkh(
        &CompressedPublicKey::from_private_key(&secp, &key.to_priv()).unwrap(),
        KnownHrp::Regtest,
    );
    assert_eq!(first, expected);
    let second = wallet.new_address().unwrap();
    assert_ne!(first, second);

    let paid = env.pay(&first.script_pubkey(), 1_000_000);
    env.pay(&second.script_pubkey(), 2_000_000);
    // Seen in the mempool (the node records what it learns of unconfirmed payments).
    let unconfirmed = env.regtest.chain().mempool().get(&paid).unwrap().tx.clone();
    wallet.record_unconfirmed(&unconfirmed).unwrap();
    assert_eq!(wallet.balance().unconfirmed_sat, 1_000_000);
    // Not spendable before it confirms: its sender could still double-spend it.
    let err = wallet
        .create_funding_transaction(
            channel_script(b"early"),
            Amount::from_sat(100_000),
            fee_rate(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            WalletError::InsufficientFunds {
                available_sat: 0,
                ..
            }
        ),
        "{err}"
    );

    env.regtest.mine(1, None);
    let height = env.regtest.chain().height();
    env.sync(&wallet).await;
    assert_eq!(
        wallet.balance(),
        WalletBalance {
            confirmed_sat: 3_000_000,
            unconfirmed_sat: 0,
            immature_sat: 0,
            total_sat: 3_000_000,
        }
    );
    let utxos = sorted_utxos(&wallet);
    assert_eq!(utxos.len(), 2);
    assert!(
        utxos
            .iter()
            .all(|(_, _, confirmed)| *confirmed == Some(height))
    );
    let tip = wallet.best_block();
    assert_eq!((tip.block_hash, tip.height), (env.tip().block_hash, height));
    // The locator carries the blocks below the tip since the birthday.
    assert_eq!(
        tip.previous_blocks[0],
        env.regtest.chain().hash_at(height - 1)
    );

    // Reloaded from the store (another birthday is ignored): same coins, same tip, and
    // the revealed addresses are not handed out again.
    drop(wallet);
    let genesis = BlockLocator::from_network(Network::Regtest);
    let reloaded = env.wallet_born_at(genesis);
    assert_eq!(reloaded.balance().confirmed_sat, 3_000_000);
    assert_eq!(sorted_utxos(&reloaded), utxos);
    assert_eq!(reloaded.best_block().block_hash, tip.block_hash);
    let third = reloaded.new_address().unwrap();
    assert!(third != first && third != second);

    // And it goes on from where it was.
    env.pay(&third.script_pubkey(), 500_000);
    env.regtest.mine(2, None);
    env.sync(&reloaded).await;
    assert_eq!(reloaded.balance().confirmed_sat, 3_500_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funding_transactions_pay_exactly_and_never_share_inputs() {
    let env = Env::start().await;
    let wallet = funded_wallet(&env, &[1_000_000, 1_000_000]).await;
    let prevouts: std::collections::HashMap<OutPoint, Amount> = wallet
        .list_utxos()
        .into_iter()
        .map(|utxo| (utxo.outpoint, utxo.value))
        .collect();

    let amount = Amount::from_sat(600_000);
    let first = wallet
        .create_funding_transaction(channel_script(b"one"), amount, fee_rate())
        .unwrap();
    let paying: Vec<_> = first
        .output
        .iter()
        .filter(|output| output.script_pubkey == channel_script(b"one"))
        .collect();
    assert_eq!(paying.len(), 1);
    assert_eq!(paying[0].value, amount);
    // The fee is what the fee rate asks for, give or take a signature byte.
    let spent: Amount = first
        .input
        .iter()
        .map(|input| prevouts[&input.previous_output])
        .sum();
    let fee = spent - first.output.iter().map(|output| output.value).sum();
    let asked = fee_rate().fee_wu(first.weight()).unwrap();
    assert!(
        fee >= asked && fee <= asked + Amount::from_sat(10),
        "fee {fee} where {asked} was asked"
    );
    assert_eq!(
        wallet.balance().total_sat,
        2_000_000 - 600_000 - fee.to_sat()
    );
    assert_eq!(
        env.chain.broadcast(vec![first.clone()]).await.unwrap(),
        vec![first.compute_txid()]
    );

    // The next one does not touch the first one's inputs (it may spend its change).
    let second = wallet
        .create_funding_transaction(channel_script(b"two"), amount, fee_rate())
        .unwrap();
    assert!(input_set(&first).is_disjoint(&input_set(&second)));
    assert!(
        second
            .output
            .iter()
            .any(|output| output.script_pubkey == channel_script(b"two") && output.value == amount)
    );
    env.chain.broadcast(vec![second.clone()]).await.unwrap();

    env.regtest.mine(1, None);
    env.sync(&wallet).await;
    for tx in [&first, &second] {
        assert!(
            env.regtest
                .chain()
                .confirmed_tx(&tx.compute_txid())
                .is_some()
        );
    }
    let balance = wallet.balance();
    assert_eq!(balance.unconfirmed_sat, 0);
    assert!(balance.confirmed_sat < 800_000 && balance.confirmed_sat > 790_000);
    let reloaded = {
        drop(wallet);
        env.wallet()
    };
    assert_eq!(reloaded.balance(), balance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_check_the_address_and_the_funds() {
    let env = Env::start().await;
    let wallet = funded_wallet(&env, &[300_000, 200_000]).await;
    let outside = env.outside_address().to_string();

    let mainnet = Address::p2wsh(&ScriptBuf::new(), KnownHrp::Mainnet).to_string();
    for bad in [mainnet.as_str(), "not-an-address", ""] {
        let err = wallet
            .create_send(bad, Some(Amount::from_sat(10_000)), fee_rate())
            .unwrap_err();
        assert!(
            matches!(err, WalletError::InvalidAddress(_)),
            "{bad}: {err}"
        );
    }

    // More than the wallet holds: refused, and nothing changes, in memory or in the store.
    let stored = env.stored();
    let utxos = sorted_utxos(&wallet);
    let err = wallet
        .create_send(&outside, Some(Amount::from_sat(500_001)), fee_rate())
        .unwrap_err();
    match err {
        WalletError::InsufficientFunds {
            needed_sat,
            available_sat,
        } => {
            assert!(needed_sat > 500_001, "{needed_sat}");
            assert_eq!(available_sat, 500_000);
        }
        other => panic!("expected InsufficientFunds, got {other}"),
    }
    let err = wallet
        .create_send(&outside, Some(Amount::from_sat(100)), fee_rate())
        .unwrap_err();
    assert!(matches!(err, WalletError::Build(_)), "{err}");
    let err = wallet
        .create_send(
            &outside,
            Some(Amount::from_sat(10_000)),
            FeeRate::from_sat_per_vb_u32(5_000),
        )
        .unwrap_err();
    assert!(matches!(err, WalletError::Build(_)), "{err}");
    assert_eq!(wallet.balance().confirmed_sat, 500_000);
    assert_eq!(sorted_utxos(&wallet), utxos);
    assert_eq!(env.stored(), stored);

    // Everything, to one output.
    let drain = wallet.create_send(&outside, None, fee_rate()).unwrap();
    assert_eq!(drain.output.len(), 1);
    assert_eq!(drain.input.len(), 2);
    assert_eq!(
        drain.output[0].script_pubkey,
        env.outside_address().script_pubkey()
    );
    assert!(drain.output[0].value.to_sat() > 499_000);
    assert_eq!(wallet.balance().total_sat, 0);
    env.chain.broadcast(vec![drain.clone()]).await.unwrap();
    env.regtest.mine(1, None);
    env.sync(&wallet).await;
    assert_eq!(wallet.balance(), WalletBalance::default());
    assert!(wallet.list_utxos().is_empty());
    let err = wallet.create_send(&outside, None, fee_rate()).unwrap_err();
    assert!(
        matches!(err, WalletError::InsufficientFunds { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_moves_a_receive_back_to_unconfirmed() {
    let env = Env::start().await;
    let wallet = env.wallet();
    let (cache, tip) = synchronize_listeners(
        &*env.chain,
        Network::Regtest,
        vec![(wallet.best_block(), &wallet)],
    )
    .await
    .unwrap();
    let mut follower = SpvClient::new(
        tip,
        ChainPoller::new(&*env.chain, Network::Regtest),
        cache,
        &wallet,
    );

    let address = wallet.new_address().unwrap();
    let paid = env.pay(&address.script_pubkey(), 1_000_000);
    let confirming = env.regtest.mine(1, None)[0];
    let confirmed_at = env.regtest.chain().height();
    env.regtest.mine(1, None);
    follower.poll_best_tip().await.unwrap();
    assert_eq!(wallet.balance().confirmed_sat, 1_000_000);
    assert_eq!(
        wallet.list_utxos()[0].confirmation_height,
        Some(confirmed_at)
    );

    // The block that confirmed the payment goes away; a longer branch without the
    // payment replaces it (the payment waits in the mempool).
    env.regtest.chain().invalidate_block(&confirming).unwrap();
    assert!(env.regtest.chain().mempool().contains(&paid));
    for _ in 0..3 {
        env.mine_empty();
    }
    // LDK's block sync first disconnects down to the fork point: the wallet stands there,
    // the payment unconfirmed, and so does what the store holds.
    let fork_height = confirmed_at - 1;
    let fork = env.regtest.chain().hash_at(fork_height).unwrap();
    Listen::blocks_disconnected(&wallet, BlockLocator::new(fork, fork_height));
    assert_eq!(wallet.best_block().block_hash, fork);
    assert_eq!(wallet.balance().unconfirmed_sat, 1_000_000);
    let reloaded = env.wallet();
    assert_eq!(
        (
            reloaded.best_block().block_hash,
            reloaded.best_block().height
        ),
        (fork, fork_height)
    );
    assert_eq!(reloaded.balance().unconfirmed_sat, 1_000_000);
    drop(reloaded);
    // Then connects the new branch (the client disconnects to the same fork point again).
    follower.poll_best_tip().await.unwrap();
    assert_eq!(wallet.failed(), None);
    assert_eq!(wallet.best_block().block_hash, env.regtest.chain().tip());
    assert_eq!(
        wallet.balance(),
        WalletBalance {
            confirmed_sat: 0,
            unconfirmed_sat: 1_000_000,
            immature_sat: 0,
            total_sat: 1_000_000,
        }
    );
    assert_eq!(wallet.list_utxos()[0].confirmation_height, None);

    // What the store holds is the new branch.
    let reloaded = env.wallet();
    assert_eq!(reloaded.best_block().block_hash, env.regtest.chain().tip());
    assert_eq!(reloaded.balance().unconfirmed_sat, 1_000_000);
    drop(reloaded);

    // Mined again on the new branch.
    env.regtest.mine(1, None);
    follower.poll_best_tip().await.unwrap();
    let height = env.regtest.chain().height();
    assert_eq!(wallet.balance().confirmed_sat, 1_000_000);
    assert_eq!(wallet.list_utxos()[0].confirmation_height, Some(height));
    assert_eq!(wallet.failed(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_while_stopped_is_followed_at_start() {
    let env = Env::start().await;
    let wallet = env.wallet();
    let address = wallet.new_address().unwrap();
    env.pay(&address.script_pubkey(), 700_000);
    let confirming = env.regtest.mine(1, None)[0];
    env.sync(&wallet).await;
    assert_eq!(wallet.balance().confirmed_sat, 700_000);
    drop(wallet);

    env.regtest.chain().invalidate_block(&confirming).unwrap();
    env.mine_empty();
    env.mine_empty();
    let wallet = env.wallet();
    assert_eq!(wallet.best_block().block_hash, confirming);
    env.sync(&wallet).await;
    assert_eq!(wallet.balance().confirmed_sat, 0);
    assert_eq!(wallet.balance().unconfirmed_sat, 700_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_of_the_birthday_block_is_followed() {
    let env = Env::start().await;
    let birthday = env.tip();
    let wallet = env.wallet_born_at(birthday);
    let address = wallet.new_address().unwrap();
    // The wallet knows no block below its birthday; the birthday block goes away.
    env.regtest
        .chain()
        .invalidate_block(&birthday.block_hash)
        .unwrap();
    env.pay(&address.script_pubkey(), 300_000);
    env.regtest.mine(3, None);
    env.sync(&wallet).await;
    assert_eq!(wallet.balance().confirmed_sat, 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_transaction_frees_its_inputs() {
    let env = Env::start().await;
    let wallet = funded_wallet(&env, &[400_000]).await;
    let before = sorted_utxos(&wallet);
    let balance = wallet.balance();

    let funding = wallet
        .create_funding_transaction(channel_script(b"x"), Amount::from_sat(100_000), fee_rate())
        .unwrap();
    assert!(
        wallet
            .list_utxos()
            .iter()
            .all(|utxo| utxo.outpoint != before[0].0)
    );
    assert_eq!(wallet.balance().confirmed_sat, 0);
    // Spending the same coin again is not possible while the transaction stands.
    let err = wallet
        .create_funding_transaction(channel_script(b"y"), Amount::from_sat(350_000), fee_rate())
        .unwrap_err();
    assert!(
        matches!(err, WalletError::InsufficientFunds { .. }),
        "{err}"
    );

    wallet.forget_transaction(funding.compute_txid()).unwrap();
    assert_eq!(sorted_utxos(&wallet), before);
    assert_eq!(wallet.balance(), balance);

    // Persisted: a reloaded wallet has the coin back too, and can spend it.
    drop(wallet);
    let wallet = env.wallet();
    assert_eq!(sorted_utxos(&wallet), before);
    let again = wallet
        .create_funding_transaction(channel_script(b"y"), Amount::from_sat(350_000), fee_rate())
        .unwrap();
    assert_eq!(input_set(&again), input_set(&funding));
    env.chain.broadcast(vec![again]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_never_holds_private_keys() {
    let env = Env::start().await;
    let wallet = funded_wallet(&env, &[100_000]).await;
    wallet.new_change_script().unwrap();
    wallet
        .create_send(
            &env.outside_address().to_string(),
            Some(Amount::from_sat(20_000)),
            fee_rate(),
        )
        .unwrap();

    let stored = String::from_utf8(env.stored()).unwrap();
    // The public descriptors are there, the private keys are not.
    assert!(stored.contains("tpub"), "{stored}");
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(Network::Regtest, &SEED).unwrap();
    let account = master
        .derive_priv(&secp, &"m/84'/1'/0'".parse::<DerivationPath>().unwrap())
        .unwrap();
    for secret in ["prv".to_owned(), master.to_string(), account.to_string()] {
        assert!(
            !stored.contains(&secret),
            "the stored wallet holds {secret}"
        );
    }
    let first_key = master
        .derive_priv(&secp, &"m/84'/1'/0'/0/0".parse::<DerivationPath>().unwrap())
        .unwrap()
        .to_priv();
    assert!(!stored.contains(&first_key.to_wif()));
    assert!(!stored.contains(&hex(&first_key.inner.secret_bytes())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_of_another_seed_or_network_or_garbage_is_refused() {
    let env = Env::start().await;
    let address = env.wallet().new_address().unwrap();
    let load = |seed: [u8; 64], network: Network| {
        OnchainWallet::load_or_create(&Seed::from_bytes(seed), network, env.kv.clone(), env.tip())
    };
    let err = load([8; 64], Network::Regtest).err().unwrap();
    assert!(matches!(err, WalletError::Mismatch(_)), "{err}");
    let err = load(SEED, Network::Signet).err().unwrap();
    assert!(matches!(err, WalletError::Mismatch(_)), "{err}");
    // Refusing changed nothing.
    let wallet = load(SEED, Network::Regtest).unwrap();
    assert_ne!(wallet.new_address().unwrap(), address);
    drop(wallet);

    KVStoreSync::write(
        &env.kv,
        PRIMARY_NAMESPACE,
        SECONDARY_NAMESPACE,
        CHANGESET_KEY,
        b"{\"not\": \"a change set\"".to_vec(),
    )
    .unwrap();
    let err = load(SEED, Network::Regtest).err().unwrap();
    assert!(matches!(err, WalletError::Corrupt(_)), "{err}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_stops_the_wallet_handing_out_anything() {
    let env = Env::start().await;
    let wallet = funded_wallet(&env, &[250_000]).await;
    let stored = env.stored();

    env.faults.set_write(Fault::Fenced);
    // Blocks still arrive: applied in memory, the failure remembered, no panic.
    env.regtest.mine(1, None);
    synchronize_listeners(
        &*env.chain,
        Network::Regtest,
        vec![(wallet.best_block(), &wallet)],
    )
    .await
    .unwrap();
    assert_eq!(wallet.best_block().block_hash, env.regtest.chain().tip());
    let failure = wallet.failed().unwrap();
    assert!(failure.contains("connecting block"), "{failure}");
    assert!(failure.contains("fenced"), "{failure}");

    // No address, no transaction, no change script comes out of it.
    match wallet.new_address() {
        Err(WalletError::Store(err)) => {
            assert_eq!(err.kind(), lightning::io::ErrorKind::PermissionDenied)
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    let err = wallet
        .create_funding_transaction(channel_script(b"z"), Amount::from_sat(50_000), fee_rate())
        .unwrap_err();
    assert!(matches!(err, WalletError::Store(_)), "{err}");
    assert!(WalletSourceSync::get_change_script(&wallet).is_err());
    assert!(ChangeDestinationSourceSync::get_change_destination_script(&wallet).is_err());
    assert_eq!(env.stored(), stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_its_own_inputs_of_ldk_bump_transactions() {
    let env = Env::start().await;
    let wallet = funded_wallet(&env, &[150_000, 90_000]).await;
    // A coinbase paid to the wallet is confirmed but not mature: not offered to LDK.
    let mined_to = wallet.new_address().unwrap();
    env.regtest.mine(1, Some(&mined_to));
    env.sync(&wallet).await;
    assert!(wallet.balance().immature_sat > 0);

    let utxos = WalletSourceSync::list_confirmed_utxos(&wallet).unwrap();
    assert_eq!(utxos.len(), 2);
    let ours = utxos
        .iter()
        .find(|utxo| utxo.output.value == Amount::from_sat(150_000))
        .unwrap()
        .clone();
    assert!(ours.output.script_pubkey.is_p2wpkh());
    // An empty script_sig (4 WU) and a P2WPKH witness: item count, a 72-byte signature and
    // a 33-byte key, each with its length.
    assert_eq!(ours.satisfaction_weight, 4 + 1 + 1 + 72 + 1 + 33);
    let prevtx = WalletSourceSync::get_prevtx(&wallet, ours.outpoint).unwrap();
    assert_eq!(prevtx.compute_txid(), ours.outpoint.txid);

    // As LDK builds an anchor spend: its own input first (here a coin of the chain's
    // wallet stands in for the anchor), ours after, witness UTXOs only.
    let (foreign_outpoint, foreign_output) = env.regtest.chain().wallet_coins()[0].clone();
    let change = WalletSourceSync::get_change_script(&wallet).unwrap();
    let unsigned = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: [foreign_outpoint, ours.outpoint]
            .into_iter()
            .map(|previous_output| TxIn {
                previous_output,
                sequence: bitcoin::Sequence::ENABLE_RBF_NO_LOCKTIME,
                ..Default::default()
            })
            .collect(),
        output: vec![TxOut {
            value: foreign_output.value + ours.output.value - Amount::from_sat(2_000),
            script_pubkey: change.clone(),
        }],
    };
    let mut psbt = Psbt::from_unsigned_tx(unsigned).unwrap();
    psbt.inputs[0].witness_utxo = Some(foreign_output.clone());
    psbt.inputs[1].witness_utxo = Some(ours.output.clone());

    let mut signed = WalletSourceSync::sign_psbt(&wallet, psbt).unwrap();
    assert!(signed.input[0].witness.is_empty());
    assert_eq!(signed.input[1].witness.len(), 2);
    // LDK signs its own input afterwards.
    env.regtest
        .chain()
        .wallet()
        .sign(&mut signed, &[foreign_output]);
    assert_eq!(signed.input[1].witness.len(), 2);
    env.chain.broadcast(vec![signed.clone()]).await.unwrap();
    env.regtest.mine(1, None);
    env.sync(&wallet).await;
    // The change script is the wallet's: it now holds both inputs' value.
    assert!(
        wallet
            .list_utxos()
            .iter()
            .any(|utxo| utxo.is_change && utxo.outpoint.txid == signed.compute_txid())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_destinations_are_fresh_persisted_wallet_scripts() {
    let env = Env::start().await;
    let wallet = env.wallet();
    let first = ChangeDestinationSourceSync::get_change_destination_script(&wallet).unwrap();
    let second = ChangeDestinationSource::get_change_destination_script(&wallet)
        .await
        .unwrap();
    assert_ne!(first, second);
    drop(wallet);
    let wallet = env.wallet();
    let third = WalletSourceSync::get_change_script(&wallet).unwrap();
    assert!(third != first && third != second);

    env.pay(&first, 40_000);
    env.pay(&third, 60_000);
    env.regtest.mine(1, None);
    env.sync(&wallet).await;
    let utxos = wallet.list_utxos();
    assert_eq!(utxos.len(), 2);
    assert!(utxos.iter().all(|utxo| utxo.is_change));
    assert_eq!(wallet.balance().confirmed_sat, 100_000);
}

/// A funding transaction is recorded before the channel's first commitment is signed: it
/// must never be rebroadcast until LDK releases it, across a reload too; and at start one
/// whose channel was never funded is forgotten, its coins spendable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_funding_is_held_until_released_and_dropped_when_its_channel_never_came() {
    let env = Env::start().await;
    let wallet = funded_wallet(&env, &[300_000, 300_000]).await;
    // The abandoned funding comes last: the others never spend its change.
    let send = wallet
        .create_send(
            &env.outside_address().to_string(),
            Some(Amount::from_sat(50_000)),
            fee_rate(),
        )
        .unwrap();
    let released = wallet
        .create_funding_transaction(channel_script(b"a"), Amount::from_sat(100_000), fee_rate())
        .unwrap();
    let abandoned = wallet
        .create_funding_transaction(channel_script(b"b"), Amount::from_sat(100_000), fee_rate())
        .unwrap();
    let rebroadcast = |wallet: &OnchainWallet| -> HashSet<Txid> {
        wallet
            .unconfirmed_sends()
            .iter()
            .map(|tx| tx.compute_txid())
            .collect()
    };
    // A send is rebroadcast at once; neither funding is.
    assert_eq!(rebroadcast(&wallet), HashSet::from([send.compute_txid()]));

    // Held across a reload (a crash before the peer signed).
    drop(wallet);
    let wallet = env.wallet();
    assert_eq!(rebroadcast(&wallet), HashSet::from([send.compute_txid()]));
    let mut held = wallet.funding_holds();
    held.sort();
    let mut expected = vec![released.compute_txid(), abandoned.compute_txid()];
    expected.sort();
    assert_eq!(held, expected);

    // LDK knows the channel of the first only: it is released, the other forgotten.
    let forgotten = wallet
        .settle_funding_holds(|txid| *txid == released.compute_txid())
        .unwrap();
    assert_eq!(forgotten, [abandoned.compute_txid()]);
    assert!(wallet.funding_holds().is_empty());
    assert_eq!(
        rebroadcast(&wallet),
        HashSet::from([send.compute_txid(), released.compute_txid()])
    );
    // The abandoned funding's coins are back, not those the others spent.
    let spent_by_others: HashSet<OutPoint> = input_set(&released)
        .union(&input_set(&send))
        .copied()
        .collect();
    let free: HashSet<OutPoint> = sorted_utxos(&wallet).iter().map(|u| u.0).collect();
    assert!(
        input_set(&abandoned).is_subset(&free),
        "its coins are spendable again"
    );
    assert!(free.is_disjoint(&spent_by_others));

    // And all of it persisted.
    drop(wallet);
    let wallet = env.wallet();
    assert!(wallet.funding_holds().is_empty());
    assert_eq!(
        rebroadcast(&wallet),
        HashSet::from([send.compute_txid(), released.compute_txid()])
    );
}
