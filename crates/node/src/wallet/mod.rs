//! The node's on-chain wallet: BDK, with every byte of its state in the fenced store.
//!
//! # Keys
//! BIP84 (P2WPKH) descriptors, external `m/84'/coin'/0'/0/*` and internal
//! `m/84'/coin'/0'/1/*` (coin 0 on mainnet, 1 elsewhere), under the BIP32 master key made
//! from the whole 64-byte seed. The private keys live in this process's memory only; the
//! stored change set holds the public descriptors (safety rule 5: key material never
//! enters the store).
//!
//! # Persistence
//! The wallet's whole merged [`ChangeSet`] is one JSON value at
//! ([`PRIMARY_NAMESPACE`], [`SECONDARY_NAMESPACE`], [`CHANGESET_KEY`]), written through the
//! fenced [`LdkKvStore`] after every change (an address revealed, a transaction built or
//! recorded, a block connected or disconnected). A method that changes the wallet returns
//! only once that write succeeded; when it fails it returns [`WalletError::Store`] and hands
//! out nothing (no address, no transaction). What it changed in memory is written with the
//! next successful write, so nothing is lost if the node goes on, but the caller must treat
//! a store error as fatal: a fenced write means another instance leads now.
//!
//! # Funding transactions
//! A funding transaction is signed and recorded before LDK has the counterparty's
//! signature of the node's first commitment, and must not reach the chain before: its
//! coins would sit in a 2-of-2 output the node cannot spend alone. So it is *held* (its
//! txid under [`FUNDING_HOLDS_KEY`], written before the transaction is recorded) until LDK
//! broadcasts it ([`OnchainWallet::release_funding`], on `ChannelPending`), and
//! [`OnchainWallet::unconfirmed_sends`] leaves held transactions out. At start a hold whose
//! channel LDK does not know is a funding the node crashed in the middle of (LDK never
//! persists a channel before it is funded): the transaction is forgotten and its coins are
//! spendable again ([`OnchainWallet::settle_funding_holds`]).
//!
//! # Chain
//! Blocks come from LDK's block sync through [`Listen`], full blocks, in chain order. A new
//! wallet is anchored at its birthday (the tip when the node first started), so block sync
//! starts there. On a reorganization the blocks above the fork point are dropped and the
//! wallet's transactions that they confirmed go back to unconfirmed (as Bitcoin Core puts
//! them back in its mempool); the blocks of the new branch then confirm them again, or a
//! conflict confirmed there replaces them.
//!
//! # Growth
//! The change set keeps one checkpoint per connected block (about 80 bytes of JSON each)
//! and every transaction of the wallet, and it is rewritten whole on every change.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bdk_wallet::chain::{BlockId, ChainPosition, Merge, local_chain};
use bdk_wallet::coin_selection::InsufficientFunds;
use bdk_wallet::descriptor::{ExtendedDescriptor, IntoWalletDescriptor};
use bdk_wallet::error::CreateTxError;
use bdk_wallet::signer::SignersContainer;
use bdk_wallet::{ChangeSet, KeychainKind, LoadError, LocalOutput, SignOptions, Update, Wallet};
use bitcoin::address::NetworkUnchecked;
use bitcoin::bip32::Xpriv;
use bitcoin::block::Header;
use bitcoin::hashes::Hash as _;
use bitcoin::key::Secp256k1;
use bitcoin::{
    Address, Amount, Block, FeeRate, Network, OutPoint, Psbt, ScriptBuf, Transaction, Txid,
    WPubkeyHash,
};
use lightning::chain::transaction::TransactionData;
use lightning::chain::{BlockLocator, Listen};
use lightning::io;
use lightning::sign::{ChangeDestinationSource, ChangeDestinationSourceSync};
use lightning::util::persist::KVStoreSync;
use lightning::util::wallet_utils::{Utxo, WalletSourceSync};
use phalanx_secrets::Seed;
use phalanx_store::LdkKvStore;

mod chain;
mod send;

use self::send::confirmation_height;

/// The store namespace of the wallet's change set.
pub const PRIMARY_NAMESPACE: &str = "bdk_wallet";
/// The secondary namespace of the wallet's change set (none).
pub const SECONDARY_NAMESPACE: &str = "";
/// The key of the wallet's change set.
pub const CHANGESET_KEY: &str = "changeset";
/// The key of the txids of the funding transactions LDK has not broadcast yet (a JSON
/// list), in the wallet's namespaces.
pub const FUNDING_HOLDS_KEY: &str = "funding_holds";

/// Highest fee rate a transaction of this wallet may pay, in sat/vB: a guard against a fee
/// estimate or a caller gone wrong burning the wallet's coins.
pub const MAX_FEE_RATE_SAT_PER_VB: u32 = 1_000;

/// Confirmations a coinbase output needs before it can be spent.
const COINBASE_MATURITY: u32 = 100;

/// Why a wallet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// Reading or writing the wallet's change set in the store failed. Fatal: the node
    /// must stop (a fenced write means another instance leads now) and never retry the
    /// operation blindly.
    #[error("the wallet's store failed: {0}")]
    Store(#[source] io::Error),
    /// The spendable coins do not cover the amount and the fee.
    #[error("insufficient funds: {needed_sat} sat needed, {available_sat} sat available")]
    InsufficientFunds {
        /// What the transaction needs, fee included.
        needed_sat: u64,
        /// What the wallet could spend.
        available_sat: u64,
    },
    /// The address cannot be parsed, or belongs to another network.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// The transaction cannot be built (dust amount, fee rate out of range ...).
    #[error("cannot build the transaction: {0}")]
    Build(String),
    /// The transaction cannot be signed.
    #[error("cannot sign the transaction: {0}")]
    Sign(String),
    /// The stored change set cannot be decoded.
    #[error("the stored wallet cannot be decoded: {0}")]
    Corrupt(String),
    /// The stored wallet was made from another seed or for another network.
    #[error("the stored wallet does not belong to this seed and network: {0}")]
    Mismatch(String),
    /// A block does not connect to the wallet's chain (or the birthday does not).
    #[error("the block does not connect to the wallet's chain: {0}")]
    Chain(String),
    /// The wallet's keys or descriptors could not be derived from the seed.
    #[error("cannot derive the wallet's keys: {0}")]
    Keys(String),
}

/// The wallet's balance, in satoshis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalletBalance {
    /// Confirmed and spendable.
    pub confirmed_sat: u64,
    /// Unconfirmed: our own change (trusted) and payments received (untrusted).
    pub unconfirmed_sat: u64,
    /// Coinbase outputs not yet mature.
    pub immature_sat: u64,
    /// All of the above.
    pub total_sat: u64,
}

/// One unspent output of the wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletUtxo {
    /// The output.
    pub outpoint: OutPoint,
    /// Its value.
    pub value: Amount,
    /// The height of the block that confirmed it, `None` while unconfirmed.
    pub confirmation_height: Option<u32>,
    /// Whether it pays our internal (change) keychain.
    pub is_change: bool,
}

/// The wallet's descriptors and the signers holding their private keys (memory only).
struct Keys {
    external: ExtendedDescriptor,
    internal: ExtendedDescriptor,
    signers: [SignersContainer; 2],
}

impl Keys {
    fn derive(seed: &Seed, network: Network) -> Result<Self, WalletError> {
        let secp = Secp256k1::new();
        let master = Xpriv::new_master(network, seed.as_bytes())
            .map_err(|err| WalletError::Keys(err.to_string()))?;
        let coin = if network == Network::Bitcoin { 0 } else { 1 };
        let branch = |index: u32| {
            // The text holds the private key; it is dropped at the end of this closure.
            let text = format!("wpkh({master}/84'/{coin}'/0'/{index}/*)");
            let (public, keymap) = text
                .as_str()
                .into_wallet_descriptor(&secp, network.into())
                .map_err(|err| WalletError::Keys(err.to_string()))?;
            let signers = SignersContainer::build(keymap, &public, &secp);
            Ok::<_, WalletError>((public, signers))
        };
        let (external, external_signers) = branch(0)?;
        let (internal, internal_signers) = branch(1)?;
        Ok(Self {
            external,
            internal,
            signers: [external_signers, internal_signers],
        })
    }
}

/// The BDK wallet and what has been handed to the store.
struct Inner {
    wallet: Wallet,
    /// Every change of the wallet, merged: what the store holds once `dirty` is false.
    merged: ChangeSet,
    /// Whether `merged` holds changes whose write did not succeed yet.
    dirty: bool,
    /// The last timestamp given to BDK for a mempool event: strictly increasing, so that
    /// "seen" and "evicted" events of one transaction keep their order within a second.
    clock: u64,
    /// Funding transactions recorded but not broadcast by LDK yet: never rebroadcast.
    funding_holds: BTreeSet<Txid>,
}

impl Inner {
    fn new(wallet: Wallet, merged: ChangeSet, funding_holds: BTreeSet<Txid>) -> Self {
        let graph = &merged.tx_graph;
        let clock = graph
            .last_seen
            .values()
            .chain(graph.first_seen.values())
            .chain(graph.last_evicted.values())
            .copied()
            .max()
            .unwrap_or(0);
        let mut inner = Self {
            wallet,
            merged,
            dirty: false,
            clock,
            funding_holds,
        };
        inner.absorb_staged();
        inner
    }

    /// Moves the wallet's staged changes into `merged`.
    fn absorb_staged(&mut self) {
        if let Some(staged) = self.wallet.take_staged() {
            self.merged.merge(staged);
            self.dirty = true;
        }
    }

    /// A timestamp for a mempool event: now, or later than the previous one.
    fn tick(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        self.clock = now.max(self.clock + 1);
        self.clock
    }
}

/// The node's on-chain wallet.
///
/// All methods take `&self` and serialize on one lock; the store write of a change is
/// made under that lock, so writes reach the store in the order of the changes.
pub struct OnchainWallet {
    inner: Mutex<Inner>,
    keys: Keys,
    store: LdkKvStore,
    network: Network,
    /// The first failure the wallet could not report to a caller (from [`Listen`] and the
    /// LDK traits), or the first store failure.
    failure: Mutex<Option<String>>,
    /// Thrown on that failure (see [`OnchainWallet::stop_on_failure`]).
    stop: std::sync::OnceLock<crate::persist::FailStop>,
}

impl OnchainWallet {
    /// Loads the wallet from the store, or creates it.
    ///
    /// A new wallet is anchored at `birthday` (the chain tip when the node first starts):
    /// block sync starts there, not at genesis, so coins paid to the wallet's addresses
    /// before the birthday are not seen. Its change set is written at once. An existing
    /// wallet ignores `birthday`; it must have been made from the same seed and network,
    /// or [`WalletError::Mismatch`] is returned.
    pub fn load_or_create(
        seed: &Seed,
        network: Network,
        store: LdkKvStore,
        birthday: BlockLocator,
    ) -> Result<Self, WalletError> {
        let keys = Keys::derive(seed, network)?;
        let stored = match KVStoreSync::read(
            &store,
            PRIMARY_NAMESPACE,
            SECONDARY_NAMESPACE,
            CHANGESET_KEY,
        ) {
            Ok(bytes) => Some(
                serde_json::from_slice::<ChangeSet>(&bytes)
                    .map_err(|err| WalletError::Corrupt(err.to_string()))?,
            ),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(WalletError::Store(err)),
        };
        let funding_holds = match KVStoreSync::read(
            &store,
            PRIMARY_NAMESPACE,
            SECONDARY_NAMESPACE,
            FUNDING_HOLDS_KEY,
        ) {
            Ok(bytes) => serde_json::from_slice::<BTreeSet<Txid>>(&bytes)
                .map_err(|err| WalletError::Corrupt(format!("the funding holds: {err}")))?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(err) => return Err(WalletError::Store(err)),
        };
        let wallet = match stored {
            Some(changeset) => {
                let wallet = Self::load(&keys, network, changeset.clone())?;
                let this = Self::assemble(wallet, changeset, funding_holds, keys, store, network);
                let tip = this.best_block();
                tracing::info!(%network, height = tip.height, block = %tip.block_hash, "on-chain wallet loaded");
                this
            }
            None => {
                let wallet = Self::create(&keys, network, &birthday)?;
                let this = Self::assemble(
                    wallet,
                    ChangeSet::default(),
                    funding_holds,
                    keys,
                    store,
                    network,
                );
                this.persist(&mut this.lock())?;
                tracing::info!(%network, height = birthday.height, block = %birthday.block_hash, "on-chain wallet created");
                this
            }
        };
        Ok(wallet)
    }

    fn assemble(
        wallet: Wallet,
        merged: ChangeSet,
        funding_holds: BTreeSet<Txid>,
        keys: Keys,
        store: LdkKvStore,
        network: Network,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner::new(wallet, merged, funding_holds)),
            keys,
            store,
            network,
            failure: Mutex::new(None),
            stop: std::sync::OnceLock::new(),
        }
    }

    fn load(keys: &Keys, network: Network, changeset: ChangeSet) -> Result<Wallet, WalletError> {
        Wallet::load()
            .descriptor(KeychainKind::External, Some(keys.external.clone()))
            .descriptor(KeychainKind::Internal, Some(keys.internal.clone()))
            .check_network(network)
            .load_wallet_no_persist(changeset)
            .map_err(|err| match err {
                LoadError::Mismatch(mismatch) => WalletError::Mismatch(mismatch.to_string()),
                other => WalletError::Corrupt(other.to_string()),
            })?
            .ok_or_else(|| WalletError::Corrupt("the stored change set is empty".into()))
    }

    fn create(
        keys: &Keys,
        network: Network,
        birthday: &BlockLocator,
    ) -> Result<Wallet, WalletError> {
        let mut wallet = Wallet::create(keys.external.clone(), keys.internal.clone())
            .network(network)
            .create_wallet_no_persist()
            .map_err(|err| WalletError::Keys(err.to_string()))?;
        let genesis = wallet.latest_checkpoint();
        if birthday.height == 0 {
            if birthday.block_hash != genesis.hash() {
                return Err(WalletError::Chain(format!(
                    "the birthday {} at height 0 is not the genesis block of {network}",
                    birthday.block_hash
                )));
            }
            return Ok(wallet);
        }
        // The birthday and the blocks just below it, so that a shallow reorganization of
        // the birthday itself still finds its fork point in the wallet.
        let mut tip = genesis;
        for (depth, hash) in birthday.previous_blocks.iter().enumerate().rev() {
            let Some(hash) = hash else { continue };
            let Some(height) = birthday.height.checked_sub(depth as u32 + 1) else {
                continue;
            };
            if height > 0 {
                tip = tip.insert(BlockId {
                    height,
                    hash: *hash,
                });
            }
        }
        tip = tip.insert(BlockId {
            height: birthday.height,
            hash: birthday.block_hash,
        });
        wallet
            .apply_update(Update {
                chain: Some(tip),
                ..Default::default()
            })
            .map_err(|err| WalletError::Chain(err.to_string()))?;
        Ok(wallet)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|err| err.into_inner())
    }

    /// The network the wallet is on.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The wallet's latest block, with the hashes of the blocks below it that the wallet
    /// knows (for block sync to find the fork point of a reorganization).
    pub fn best_block(&self) -> BlockLocator {
        let inner = self.lock();
        let tip = inner.wallet.latest_checkpoint();
        let mut locator = BlockLocator::new(tip.hash(), tip.height());
        let below = tip.iter().skip(1);
        for (depth, (slot, checkpoint)) in locator.previous_blocks.iter_mut().zip(below).enumerate()
        {
            if checkpoint.height() + depth as u32 + 1 != tip.height() {
                break;
            }
            *slot = Some(checkpoint.hash());
        }
        locator
    }

    /// The first failure the wallet could not return to a caller (a block it could not
    /// apply or persist, a store write that failed under one of LDK's traits), or the first
    /// store failure of any call. `Some` means the node must stop.
    pub fn failed(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|err| err.into_inner())
            .clone()
    }

    /// Stops the node through `fail_stop` on the wallet's first failure (at once if it
    /// has failed already): a wallet that can no longer apply blocks or persist is a
    /// half-dead node, and it must not keep the lease.
    pub fn stop_on_failure(&self, fail_stop: crate::persist::FailStop) {
        let fail_stop = self.stop.get_or_init(|| fail_stop);
        if let Some(failure) = self.failed() {
            fail_stop.trigger(format!("on-chain wallet: {failure}"));
        }
    }

    fn note_failure(&self, what: &str, err: &WalletError) {
        tracing::error!(error = %err, "on-chain wallet: {what} failed");
        let first = {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if failure.is_none() {
                *failure = Some(format!("{what}: {err}"));
            }
            failure.clone()
        };
        if let (Some(fail_stop), Some(first)) = (self.stop.get(), first) {
            fail_stop.trigger(format!("on-chain wallet: {first}"));
        }
    }

    /// Writes the merged change set if it holds anything not yet written.
    fn persist(&self, inner: &mut Inner) -> Result<(), WalletError> {
        inner.absorb_staged();
        if !inner.dirty {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&inner.merged)
            .map_err(|err| WalletError::Corrupt(format!("cannot encode the change set: {err}")))?;
        match KVStoreSync::write(
            &self.store,
            PRIMARY_NAMESPACE,
            SECONDARY_NAMESPACE,
            CHANGESET_KEY,
            bytes,
        ) {
            Ok(()) => {
                inner.dirty = false;
                Ok(())
            }
            Err(err) => Err(WalletError::Store(err)),
        }
    }

    /// Writes the funding holds.
    fn persist_holds(&self, inner: &Inner) -> Result<(), WalletError> {
        let bytes = serde_json::to_vec(&inner.funding_holds)
            .map_err(|err| WalletError::Corrupt(format!("cannot encode the holds: {err}")))?;
        KVStoreSync::write(
            &self.store,
            PRIMARY_NAMESPACE,
            SECONDARY_NAMESPACE,
            FUNDING_HOLDS_KEY,
            bytes,
        )
        .map_err(WalletError::Store)
    }

    /// Remembers a store failure of a call (the caller gets the error too).
    fn noting<T>(&self, what: &str, result: Result<T, WalletError>) -> Result<T, WalletError> {
        if let Err(err @ WalletError::Store(_)) = &result {
            self.note_failure(what, err);
        }
        result
    }

    /// Reveals the next external address and returns it once that is persisted.
    pub fn new_address(&self) -> Result<Address, WalletError> {
        let mut inner = self.lock();
        let info = inner.wallet.reveal_next_address(KeychainKind::External);
        self.noting("revealing an address", self.persist(&mut inner))?;
        tracing::debug!(index = info.index, "revealed a receive address");
        Ok(info.address)
    }

    /// Reveals the next internal (change) script and returns it once that is persisted.
    pub fn new_change_script(&self) -> Result<ScriptBuf, WalletError> {
        let mut inner = self.lock();
        let info = inner.wallet.reveal_next_address(KeychainKind::Internal);
        self.noting("revealing a change script", self.persist(&mut inner))?;
        Ok(info.address.script_pubkey())
    }

    /// The balance.
    pub fn balance(&self) -> WalletBalance {
        let balance = self.lock().wallet.balance();
        WalletBalance {
            confirmed_sat: balance.confirmed.to_sat(),
            unconfirmed_sat: (balance.trusted_pending + balance.untrusted_pending).to_sat(),
            immature_sat: balance.immature.to_sat(),
            total_sat: balance.total().to_sat(),
        }
    }

    /// Whether `script` is one of the wallet's (revealed) scripts.
    pub fn is_mine(&self, script: &bitcoin::Script) -> bool {
        self.lock().wallet.is_mine(script.to_owned())
    }

    /// The wallet's own unconfirmed transactions (those spending its coins: sends,
    /// channel fundings LDK broadcast), parents before children: what it must keep
    /// broadcasting until they confirm. Transactions that conflict with a confirmed one
    /// are not listed, nor are [held](Self::release_funding) fundings.
    pub fn unconfirmed_sends(&self) -> Vec<Transaction> {
        let inner = self.lock();
        let mut sends: Vec<(u64, Transaction)> = inner
            .wallet
            .transactions()
            .filter(|tx| tx.chain_position.is_unconfirmed())
            .filter(|tx| !inner.funding_holds.contains(&tx.tx_node.txid))
            .filter(|tx| inner.wallet.sent_and_received(&tx.tx_node.tx).0 > Amount::ZERO)
            .map(|tx| {
                let first_seen = tx.tx_node.first_seen.unwrap_or(0);
                (first_seen, (*tx.tx_node.tx).clone())
            })
            .collect();
        // First seen first, which puts a parent before the child spending its change.
        sends.sort_by_key(|(first_seen, _)| *first_seen);
        sends.into_iter().map(|(_, tx)| tx).collect()
    }

    /// The unspent outputs, unconfirmed ones included (but not those spent by a
    /// transaction the wallet recorded).
    pub fn list_utxos(&self) -> Vec<WalletUtxo> {
        self.lock()
            .wallet
            .list_unspent()
            .map(|output| WalletUtxo {
                outpoint: output.outpoint,
                value: output.txout.value,
                confirmation_height: confirmation_height(&output),
                is_change: output.keychain == KeychainKind::Internal,
            })
            .collect()
    }
}
