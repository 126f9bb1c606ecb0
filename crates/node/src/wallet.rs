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

    /// Builds and signs a transaction paying exactly `amount` to `script` at `fee_rate`,
    /// change back to the wallet; holds it (it is not rebroadcast until
    /// [released](Self::release_funding)), records it as unconfirmed (its inputs are not
    /// used again unless it is [forgotten](Self::forget_transaction)), persists, returns
    /// it. LDK broadcasts it once the channel's first commitment is signed.
    ///
    /// It spends confirmed coins and the wallet's own unconfirmed change, never an
    /// unconfirmed payment from someone else (its sender could still double-spend it).
    pub fn create_funding_transaction(
        &self,
        script: ScriptBuf,
        amount: Amount,
        fee_rate: FeeRate,
    ) -> Result<Transaction, WalletError> {
        self.build_and_record(Some((script, amount)), None, fee_rate, Hold::Funding)
    }

    /// LDK broadcast the funding transaction `txid` (its channel's first commitment is
    /// signed): from now on it is rebroadcast until it confirms. Idempotent.
    pub fn release_funding(&self, txid: Txid) -> Result<(), WalletError> {
        let mut inner = self.lock();
        if inner.funding_holds.remove(&txid) {
            self.noting(
                "releasing a funding transaction",
                self.persist_holds(&inner),
            )?;
            tracing::debug!(%txid, "funding transaction released for rebroadcast");
        }
        Ok(())
    }

    /// The funding transactions held (recorded, not broadcast by LDK yet).
    pub fn funding_holds(&self) -> Vec<Txid> {
        self.lock().funding_holds.iter().copied().collect()
    }

    /// At start, before anything is rebroadcast: releases the held fundings of channels
    /// LDK knows (`is_channel_funding`), which it broadcast or will, and forgets the others,
    /// whose channel was never funded (LDK does not persist such a channel): their coins
    /// are spendable again. Returns the txids forgotten.
    pub fn settle_funding_holds(
        &self,
        is_channel_funding: impl Fn(&Txid) -> bool,
    ) -> Result<Vec<Txid>, WalletError> {
        let held = self.funding_holds();
        let mut forgotten = Vec::new();
        for txid in held {
            if is_channel_funding(&txid) {
                self.release_funding(txid)?;
            } else {
                tracing::warn!(%txid, "a funding transaction was recorded for a channel that was never funded: forgetting it, its coins are spendable again");
                self.forget_transaction(txid)?;
                forgotten.push(txid);
            }
        }
        Ok(forgotten)
    }

    /// Builds and signs a payment to `address` (which must be of the wallet's network) of
    /// `amount`, or of everything the wallet can spend when `amount` is `None`; chooses
    /// coins and records the transaction like
    /// [`create_funding_transaction`](Self::create_funding_transaction). The caller
    /// broadcasts it.
    pub fn create_send(
        &self,
        address: &str,
        amount: Option<Amount>,
        fee_rate: FeeRate,
    ) -> Result<Transaction, WalletError> {
        let address = address
            .trim()
            .parse::<Address<NetworkUnchecked>>()
            .map_err(|err| WalletError::InvalidAddress(format!("{address:?}: {err}")))?
            .require_network(self.network)
            .map_err(|err| WalletError::InvalidAddress(format!("{address:?}: {err}")))?;
        let script = address.script_pubkey();
        match amount {
            Some(amount) => {
                self.build_and_record(Some((script, amount)), None, fee_rate, Hold::None)
            }
            None => self.build_and_record(None, Some(script), fee_rate, Hold::None),
        }
    }

    fn build_and_record(
        &self,
        recipient: Option<(ScriptBuf, Amount)>,
        drain_to: Option<ScriptBuf>,
        fee_rate: FeeRate,
        hold: Hold,
    ) -> Result<Transaction, WalletError> {
        if fee_rate > FeeRate::from_sat_per_vb_u32(MAX_FEE_RATE_SAT_PER_VB) {
            return Err(WalletError::Build(format!(
                "fee rate {} sat/vB is above the limit of {MAX_FEE_RATE_SAT_PER_VB} sat/vB",
                fee_rate.to_sat_per_vb_ceil()
            )));
        }
        let mut inner = self.lock();
        let requested = recipient.as_ref().map(|(_, amount)| *amount);
        // Unconfirmed payments from others can still be double-spent by their sender.
        let untrusted: Vec<OutPoint> = inner
            .wallet
            .list_unspent()
            .filter(|output| {
                output.keychain == KeychainKind::External && output.chain_position.is_unconfirmed()
            })
            .map(|output| output.outpoint)
            .collect();
        let mut builder = inner.wallet.build_tx();
        builder.fee_rate(fee_rate).unspendable(untrusted);
        if let Some((script, amount)) = recipient {
            builder.add_recipient(script, amount);
        }
        if let Some(script) = drain_to {
            builder.drain_wallet().drain_to(script);
        }
        let psbt = builder
            .finish()
            .map_err(|err| build_error(err, requested))?;
        let tx = self.sign_own(&inner.wallet, psbt)?;
        if hold == Hold::Funding {
            // Before the transaction is recorded: a crash in between leaves a hold of a
            // transaction the wallet never had, which the start-up settling drops.
            inner.funding_holds.insert(tx.compute_txid());
            if let Err(err) = self.persist_holds(&inner) {
                inner.funding_holds.remove(&tx.compute_txid());
                return self.noting("holding a funding transaction", Err(err));
            }
        }
        let seen = inner.tick();
        inner.wallet.apply_unconfirmed_txs([(tx.clone(), seen)]);
        self.noting("recording a new transaction", self.persist(&mut inner))?;
        tracing::info!(txid = %tx.compute_txid(), "built and recorded a wallet transaction");
        Ok(tx)
    }

    /// Signs every input of a transaction built by the wallet.
    fn sign_own(&self, wallet: &Wallet, mut psbt: Psbt) -> Result<Transaction, WalletError> {
        let finalized = wallet
            .sign_with_signers(&mut psbt, &self.signers(), SignOptions::default())
            .map_err(|err| WalletError::Sign(err.to_string()))?;
        if !finalized {
            return Err(WalletError::Sign(
                "not every input of the transaction could be signed".into(),
            ));
        }
        // The fee rate was checked against MAX_FEE_RATE_SAT_PER_VB before building.
        Ok(psbt.extract_tx_unchecked_fee_rate())
    }

    fn signers(&self) -> [&SignersContainer; 2] {
        [&self.keys.signers[0], &self.keys.signers[1]]
    }

    /// Forgets a transaction the wallet recorded but that will never be broadcast (a
    /// funding transaction LDK discarded): its inputs become spendable again. A confirmed
    /// or unknown transaction is left alone.
    pub fn forget_transaction(&self, txid: Txid) -> Result<(), WalletError> {
        let mut inner = self.lock();
        let evicted = inner.tick();
        inner.wallet.apply_evicted_txs([(txid, evicted)]);
        self.noting("forgetting a transaction", self.persist(&mut inner))?;
        // After the eviction is stored: a crash in between leaves a hold of a transaction
        // that is gone, which the start-up settling drops.
        if inner.funding_holds.remove(&txid) {
            self.noting("dropping a funding hold", self.persist_holds(&inner))?;
        }
        tracing::info!(%txid, "forgot an unconfirmed wallet transaction");
        Ok(())
    }

    /// Records a transaction seen in the mempool or broadcast by us; ignored when it
    /// neither pays nor spends the wallet.
    pub fn record_unconfirmed(&self, tx: &Transaction) -> Result<(), WalletError> {
        let mut inner = self.lock();
        let seen = inner.tick();
        inner.wallet.apply_unconfirmed_txs([(tx.clone(), seen)]);
        self.noting("recording a transaction", self.persist(&mut inner))
    }

    /// Applies a block on top of the wallet's chain, persists.
    fn connect_block(&self, block: &Block, height: u32) -> Result<(), WalletError> {
        let Some(parent_height) = height.checked_sub(1) else {
            return Ok(());
        };
        let parent = BlockId {
            height: parent_height,
            hash: block.header.prev_blockhash,
        };
        let mut inner = self.lock();
        let tip = inner.wallet.latest_checkpoint();
        if tip.block_id() != parent && tip.height() >= parent_height {
            if tip.height() == height && tip.hash() == block.block_hash() {
                return Ok(());
            }
            // A block that does not extend the tip without a disconnection first: the
            // wallet's blocks from `height` on are stale.
            tracing::warn!(height, block = %block.block_hash(), tip = %tip.hash(), tip_height = tip.height(), "on-chain wallet: block does not extend the wallet's tip; rolling back to its parent");
            self.disconnect_to(&mut inner, parent)?;
        }
        inner
            .wallet
            .apply_block_connected_to(block, height, parent)
            .map_err(|err| {
                WalletError::Chain(format!(
                    "block {} at height {height}: {err}",
                    block.block_hash()
                ))
            })?;
        self.persist(&mut inner)
    }

    /// Drops the blocks above `fork` and makes `fork` the tip; persists. The wallet's
    /// transactions that the dropped blocks confirmed become unconfirmed (BDK keeps a
    /// transaction whose anchors all left the chain as unconfirmed, unless a transaction
    /// of the chain conflicts with it).
    fn disconnect_to(&self, inner: &mut Inner, fork: BlockId) -> Result<(), WalletError> {
        let mut removal = local_chain::ChangeSet::default();
        let mut has_fork = false;
        for checkpoint in inner.wallet.checkpoints() {
            if checkpoint.height() > fork.height {
                removal.blocks.insert(checkpoint.height(), None);
            } else {
                has_fork = checkpoint.block_id() == fork;
                break;
            }
        }
        if has_fork && removal.blocks.is_empty() {
            return Ok(());
        }
        if !has_fork {
            removal.blocks.insert(fork.height, Some(fork.hash));
        }
        inner.absorb_staged();
        let removal = ChangeSet {
            local_chain: removal,
            ..Default::default()
        };
        let mut rolled_back = inner.merged.clone();
        rolled_back.merge(removal.clone());
        // BDK's wallet cannot drop blocks from its chain: it is rebuilt from the change set
        // without them (reorganizations are rare, and a rebuild costs one load).
        inner.wallet = Self::load(&self.keys, self.network, rolled_back)?;
        inner.absorb_staged();
        inner.merged.merge(removal);
        inner.dirty = true;
        tracing::info!(height = fork.height, block = %fork.hash, "on-chain wallet: rolled back to the fork point");
        self.persist(inner)
    }

    fn disconnect(&self, fork: BlockId) -> Result<(), WalletError> {
        let mut inner = self.lock();
        self.disconnect_to(&mut inner, fork)
    }
}

/// Whether a new transaction waits for LDK before it may be broadcast.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    None,
    Funding,
}

fn confirmation_height(output: &LocalOutput) -> Option<u32> {
    match &output.chain_position {
        ChainPosition::Confirmed { anchor, .. } => Some(anchor.block_id.height),
        ChainPosition::Unconfirmed { .. } => None,
    }
}

fn build_error(err: CreateTxError, requested: Option<Amount>) -> WalletError {
    match err {
        CreateTxError::CoinSelection(InsufficientFunds { needed, available }) => {
            WalletError::InsufficientFunds {
                needed_sat: needed.to_sat(),
                available_sat: available.to_sat(),
            }
        }
        CreateTxError::NoUtxosSelected => WalletError::InsufficientFunds {
            needed_sat: requested.unwrap_or(Amount::ZERO).to_sat(),
            available_sat: 0,
        },
        CreateTxError::OutputBelowDustLimit(_) => {
            WalletError::Build("the amount is below the dust limit".into())
        }
        other => WalletError::Build(other.to_string()),
    }
}

/// Blocks from LDK's block sync. Errors cannot be returned here: they are logged and
/// remembered ([`OnchainWallet::failed`]), never panicked on.
impl Listen for OnchainWallet {
    fn filtered_block_connected(&self, header: &Header, txdata: &TransactionData, height: u32) {
        let block = Block {
            header: *header,
            txdata: txdata.iter().map(|(_, tx)| (*tx).clone()).collect(),
        };
        if let Err(err) = self.connect_block(&block, height) {
            self.note_failure(&format!("connecting block {height}"), &err);
        }
    }

    fn blocks_disconnected(&self, fork_point_block: BlockLocator) {
        let fork = BlockId {
            height: fork_point_block.height,
            hash: fork_point_block.block_hash,
        };
        if let Err(err) = self.disconnect(fork) {
            self.note_failure(
                &format!("disconnecting blocks down to {}", fork_point_block.height),
                &err,
            );
        }
    }
}

/// The wallet's coins for LDK's anchor and HTLC fee bumping.
impl WalletSourceSync for OnchainWallet {
    fn list_confirmed_utxos(&self) -> Result<Vec<Utxo>, ()> {
        let inner = self.lock();
        let tip_height = inner.wallet.latest_checkpoint().height();
        let utxos = inner
            .wallet
            .list_unspent()
            .filter_map(|output| {
                let height = confirmation_height(&output)?;
                let is_coinbase = inner
                    .wallet
                    .tx_graph()
                    .get_tx(output.outpoint.txid)
                    .is_some_and(|tx| tx.is_coinbase());
                if is_coinbase && tip_height + 1 - height < COINBASE_MATURITY {
                    return None;
                }
                let script = &output.txout.script_pubkey;
                if !script.is_p2wpkh() {
                    return None;
                }
                let hash = WPubkeyHash::from_slice(&script.as_bytes()[2..]).ok()?;
                Some(Utxo::new_v0_p2wpkh(
                    output.outpoint,
                    output.txout.value,
                    &hash,
                ))
            })
            .collect();
        Ok(utxos)
    }

    fn get_prevtx(&self, outpoint: OutPoint) -> Result<Transaction, ()> {
        self.lock()
            .wallet
            .tx_graph()
            .get_tx(outpoint.txid)
            .map(|tx| tx.as_ref().clone())
            .ok_or(())
    }

    fn get_change_script(&self) -> Result<ScriptBuf, ()> {
        self.new_change_script().map_err(|_| ())
    }

    /// Signs the inputs that spend the wallet's coins and leaves the others (LDK's anchor
    /// and HTLC inputs, which LDK signs afterwards) as they are.
    fn sign_psbt(&self, mut psbt: Psbt) -> Result<Transaction, ()> {
        let inner = self.lock();
        let options = SignOptions {
            // LDK's PSBTs carry only the witness UTXO; every input is SegWit.
            trust_witness_utxo: true,
            try_finalize: true,
            ..Default::default()
        };
        if let Err(err) = inner
            .wallet
            .sign_with_signers(&mut psbt, &self.signers(), options)
        {
            tracing::error!(error = %err, "on-chain wallet: signing LDK's transaction failed");
            return Err(());
        }
        for (index, input) in psbt.inputs.iter().enumerate() {
            let ours = input
                .witness_utxo
                .as_ref()
                .is_some_and(|utxo| inner.wallet.is_mine(utxo.script_pubkey.clone()));
            if ours && input.final_script_witness.is_none() {
                tracing::error!(index, txid = %psbt.unsigned_tx.compute_txid(), "on-chain wallet: an input of ours was left unsigned");
                return Err(());
            }
        }
        Ok(psbt.extract_tx_unchecked_fee_rate())
    }
}

/// Where the output sweeper sends what it claims.
impl ChangeDestinationSourceSync for OnchainWallet {
    fn get_change_destination_script(&self) -> Result<ScriptBuf, ()> {
        self.new_change_script().map_err(|_| ())
    }
}

/// Where the output sweeper sends what it claims (the same script as the synchronous
/// trait, decided when called, as LDK's own wrapper of a synchronous source does).
impl ChangeDestinationSource for OnchainWallet {
    fn get_change_destination_script<'a>(
        &'a self,
    ) -> impl std::future::Future<Output = Result<ScriptBuf, ()>> + Send + 'a {
        std::future::ready(self.new_change_script().map_err(|_| ()))
    }
}
