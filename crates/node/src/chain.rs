//! The chain source: bitcoind over JSON-RPC (and optionally REST for blocks), through
//! LDK's own `lightning-block-sync` clients. It estimates fees (`estimatesmartfee`),
//! broadcasts (`sendrawtransaction`, `submitpackage` for packages), and serves blocks to
//! the chain listeners.
//!
//! Broadcasting can be switched off for good ([`ChainClient::stop_broadcasting`]): a
//! fenced instance must never broadcast from in-memory state that may be newer than what
//! the store holds (safety rule 4). It is also tied to the leadership
//! ([`ChainClient::broadcast_only_while`]): past the lease's local deadline nothing is
//! sent, even before the node has noticed it lost the lease (a paused process that
//! wakes up runs whatever was due before its renewal task).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{BlockHash, Network, Transaction, Txid};
use lightning::chain::chaininterface::{
    BroadcasterInterface, ConfirmationTarget, FEERATE_FLOOR_SATS_PER_KW, FeeEstimator,
    TransactionType,
};
use lightning_block_sync::gossip::UtxoSource;
use lightning_block_sync::rest::RestClient;
use lightning_block_sync::rpc::{RpcClient, RpcClientError};
use lightning_block_sync::{BlockData, BlockHeaderData, BlockSource, BlockSourceResult};
use phalanx_store::{Epoch, FenceSource, LeaseStore};
use serde_json::{Value, json};

use crate::config::ChainConfig;

/// Why the chain source failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// bitcoind could not be reached or answered garbage at the HTTP level.
    #[error("cannot reach bitcoind at {url}: {message}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What happened.
        message: String,
    },
    /// The Esplora endpoint, the second broadcast source, cannot be used.
    #[error(transparent)]
    Esplora(#[from] crate::esplora::EsploraError),
    /// bitcoind refused the credentials.
    #[error(
        "bitcoind at {url} refused the RPC credentials (check chain.rpc_user and chain.rpc_password)"
    )]
    Unauthorized {
        /// The endpoint.
        url: String,
    },
    /// bitcoind runs another network.
    #[error("bitcoind at {url} runs chain {theirs:?}, but the node is configured for {ours}")]
    WrongNetwork {
        /// The endpoint.
        url: String,
        /// What bitcoind says.
        theirs: String,
        /// Our network.
        ours: Network,
    },
    /// An RPC call failed with an error object.
    #[error("bitcoind {method} failed: {code}: {message}")]
    Rpc {
        /// The method.
        method: &'static str,
        /// Core's error code.
        code: i64,
        /// Core's message.
        message: String,
    },
    /// An answer could not be understood.
    #[error("bitcoind {method} returned something unexpected: {message}")]
    Invalid {
        /// The method.
        method: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The store did not confirm that this instance still holds its lease: nothing was
    /// sent.
    #[error("not broadcasting: {0}")]
    LeaseNotConfirmed(String),
    /// Broadcasting is switched off (the instance is fenced, stopping, or past its
    /// lease): nothing was sent.
    #[error(
        "not broadcasting: this instance is not the active one (fenced, stopping or past its lease)"
    )]
    BroadcastStopped,
}

/// What a failed broadcast says about whether the transaction went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BroadcastOutcome {
    /// It was never accepted: bitcoind refused it, or nothing was sent.
    Refused,
    /// bitcoind has it already (confirmed): as good as sent.
    AlreadyConfirmed,
    /// The answer was lost (a timeout, a dropped connection, garbage): it may be in a
    /// mempool now, or later.
    Unknown,
}

/// bitcoind's `RPC_DESERIALIZATION_ERROR`, `RPC_VERIFY_ERROR`, `RPC_VERIFY_REJECTED` and
/// `RPC_VERIFY_ALREADY_IN_CHAIN`.
const RPC_DESERIALIZATION_ERROR: i64 = -22;
const RPC_VERIFY_ERROR: i64 = -25;
const RPC_VERIFY_REJECTED: i64 = -26;
const RPC_VERIFY_ALREADY_IN_CHAIN: i64 = -27;

impl ChainError {
    /// What this error from [`ChainClient::broadcast`] says about the transaction.
    pub fn broadcast_outcome(&self) -> BroadcastOutcome {
        match self {
            ChainError::BroadcastStopped
            | ChainError::LeaseNotConfirmed(_)
            | ChainError::Unauthorized { .. }
            | ChainError::WrongNetwork { .. } => BroadcastOutcome::Refused,
            ChainError::Rpc { code, .. } if *code == RPC_VERIFY_ALREADY_IN_CHAIN => {
                BroadcastOutcome::AlreadyConfirmed
            }
            ChainError::Rpc { code, .. }
                if [
                    RPC_DESERIALIZATION_ERROR,
                    RPC_VERIFY_ERROR,
                    RPC_VERIFY_REJECTED,
                ]
                .contains(code) =>
            {
                BroadcastOutcome::Refused
            }
            // Esplora's answers are only logged: an Esplora error here is not the
            // broadcast's, so it says nothing of the transaction.
            ChainError::Rpc { .. }
            | ChainError::Unreachable { .. }
            | ChainError::Invalid { .. }
            | ChainError::Esplora(_) => BroadcastOutcome::Unknown,
        }
    }
}

/// Longest wait for one RPC call (the HTTP client's own limit is minutes).
pub const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The fee-rate estimate for each of LDK's confirmation targets, in sat per 1000 weight.
#[derive(Clone, Debug)]
struct FeeTable(HashMap<ConfirmationTarget, u32>);

/// Which `estimatesmartfee` query answers each confirmation target (blocks, mode).
fn estimate_query(target: ConfirmationTarget) -> (u16, &'static str) {
    match target {
        ConfirmationTarget::MaximumFeeEstimate => (1, "CONSERVATIVE"),
        ConfirmationTarget::UrgentOnChainSweep => (6, "CONSERVATIVE"),
        ConfirmationTarget::MinAllowedAnchorChannelRemoteFee => (1008, "ECONOMICAL"),
        ConfirmationTarget::MinAllowedNonAnchorChannelRemoteFee => (144, "ECONOMICAL"),
        ConfirmationTarget::AnchorChannelFee => (1008, "ECONOMICAL"),
        ConfirmationTarget::NonAnchorChannelFee => (12, "ECONOMICAL"),
        ConfirmationTarget::ChannelCloseMinimum => (144, "ECONOMICAL"),
        ConfirmationTarget::OutputSpendingFee => (12, "ECONOMICAL"),
    }
}

const ALL_TARGETS: [ConfirmationTarget; 8] = [
    ConfirmationTarget::MaximumFeeEstimate,
    ConfirmationTarget::UrgentOnChainSweep,
    ConfirmationTarget::MinAllowedAnchorChannelRemoteFee,
    ConfirmationTarget::MinAllowedNonAnchorChannelRemoteFee,
    ConfirmationTarget::AnchorChannelFee,
    ConfirmationTarget::NonAnchorChannelFee,
    ConfirmationTarget::ChannelCloseMinimum,
    ConfirmationTarget::OutputSpendingFee,
];

/// The store and epoch a broadcast must be confirmed with.
struct LeaseCheck {
    store: Arc<dyn LeaseStore>,
    epoch: Epoch,
    runtime: tokio::runtime::Handle,
}

/// How blocks are fetched.
enum Blocks {
    Rpc,
    Rest(RestClient),
}

/// bitcoind as the node's chain source, fee estimator and broadcaster.
pub struct ChainClient {
    url: String,
    rpc: RpcClient,
    blocks: Blocks,
    network: Network,
    fees: RwLock<FeeTable>,
    broadcasting: AtomicBool,
    /// The leadership broadcasts depend on, once won.
    lease: std::sync::OnceLock<Arc<dyn FenceSource>>,
    /// The store that confirms that leadership before each broadcast.
    lease_check: std::sync::OnceLock<LeaseCheck>,
    /// A second broadcast source, if configured.
    esplora: Option<crate::esplora::Esplora>,
    runtime: tokio::runtime::Handle,
    /// Itself, so the synchronous broadcaster can hand a task an owned handle.
    me: std::sync::Weak<ChainClient>,
}

impl ChainClient {
    /// Connects to bitcoind, checks it runs `network`, and loads fee estimates.
    pub async fn connect(
        config: &ChainConfig,
        network: Network,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, ChainError> {
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", config.rpc_user, config.rpc_password));
        let esplora = config
            .esplora_url
            .as_deref()
            .map(crate::esplora::Esplora::new)
            .transpose()?;
        let client = Arc::new_cyclic(|me| Self {
            esplora,
            me: me.clone(),
            url: config.rpc_url.clone(),
            rpc: RpcClient::new(&credentials, config.rpc_url.clone()),
            blocks: match &config.rest_url {
                Some(url) => Blocks::Rest(RestClient::new(url.clone())),
                None => Blocks::Rpc,
            },
            network,
            fees: RwLock::new(FeeTable(HashMap::new())),
            broadcasting: AtomicBool::new(true),
            lease: std::sync::OnceLock::new(),
            lease_check: std::sync::OnceLock::new(),
            runtime,
        });
        let info = client.call("getblockchaininfo", &[]).await?;
        let theirs = info["chain"].as_str().unwrap_or_default().to_owned();
        let expected = match network {
            Network::Bitcoin => "main",
            Network::Testnet => "test",
            Network::Testnet4 => "testnet4",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        };
        if theirs != expected {
            return Err(ChainError::WrongNetwork {
                url: client.url.clone(),
                theirs,
                ours: network,
            });
        }
        client.refresh_fee_estimates().await?;
        Ok(client)
    }

    /// The RPC endpoint, for logs.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The network bitcoind runs.
    pub fn network(&self) -> Network {
        self.network
    }

    /// One JSON-RPC call, bounded by [`RPC_TIMEOUT`].
    pub async fn call(&self, method: &'static str, params: &[Value]) -> Result<Value, ChainError> {
        match tokio::time::timeout(RPC_TIMEOUT, self.rpc.call_method::<Value>(method, params)).await
        {
            Ok(result) => result.map_err(|err| self.map_error(method, err)),
            Err(_) => Err(ChainError::Unreachable {
                url: self.url.clone(),
                message: format!("no answer to {method} within {RPC_TIMEOUT:?}"),
            }),
        }
    }

    fn map_error(&self, method: &'static str, err: RpcClientError) -> ChainError {
        match err {
            RpcClientError::Rpc(rpc) => ChainError::Rpc {
                method,
                code: rpc.code,
                message: rpc.message,
            },
            RpcClientError::InvalidData(message) => ChainError::Invalid { method, message },
            RpcClientError::Http(http) => {
                let message = http.to_string();
                if message.contains("401") {
                    ChainError::Unauthorized {
                        url: self.url.clone(),
                    }
                } else {
                    ChainError::Unreachable {
                        url: self.url.clone(),
                        message,
                    }
                }
            }
        }
    }

    /// Refreshes the fee estimate of every confirmation target.
    pub async fn refresh_fee_estimates(&self) -> Result<(), ChainError> {
        let mut table = HashMap::new();
        for target in ALL_TARGETS {
            let (blocks, mode) = estimate_query(target);
            let answer = self
                .call("estimatesmartfee", &[json!(blocks), json!(mode)])
                .await?;
            // BTC per 1000 vbytes; regtest bitcoind without history has no estimate.
            let sat_per_kw = answer["feerate"]
                .as_f64()
                .map(|btc_per_kvb| (btc_per_kvb * 100_000_000.0 / 4.0).round() as u32)
                .unwrap_or(FEERATE_FLOOR_SATS_PER_KW);
            table.insert(target, sat_per_kw.max(FEERATE_FLOOR_SATS_PER_KW));
        }
        *self.fees.write().unwrap_or_else(|e| e.into_inner()) = FeeTable(table);
        Ok(())
    }

    /// Never broadcast again (the instance is fenced or stopping).
    pub fn stop_broadcasting(&self) {
        if self.broadcasting.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                "broadcasting stopped: this instance will not send transactions any more"
            );
        }
    }

    /// Broadcasts only while `lease` gives a token (its holder has not lost it and its
    /// local deadline has not passed). Set once, before anything is broadcast.
    pub fn broadcast_only_while(&self, lease: Arc<dyn FenceSource>) {
        if self.lease.set(lease).is_err() {
            tracing::warn!("the broadcaster was already tied to a leadership");
        }
    }

    /// Before each broadcast, confirms with one round trip to `store` (run on
    /// `store_runtime`) that the lease is still `epoch`'s. The local deadline alone cannot
    /// tell: the monotonic clock does not advance while a VM is paused, so a thawed
    /// ex-leader believes its lease runs while a standby has long taken over. Set once.
    pub fn confirm_lease_with(
        &self,
        store: Arc<dyn LeaseStore>,
        epoch: Epoch,
        store_runtime: tokio::runtime::Handle,
    ) {
        let check = LeaseCheck {
            store,
            epoch,
            runtime: store_runtime,
        };
        if self.lease_check.set(check).is_err() {
            tracing::warn!("the broadcaster already confirms a lease");
        }
    }

    /// Confirms the lease (see [`Self::confirm_lease_with`]); a lease another epoch
    /// holds switches broadcasting off for good.
    async fn confirm_lease(&self) -> Result<(), ChainError> {
        let Some(check) = self.lease_check.get() else {
            return Ok(());
        };
        let store = Arc::clone(&check.store);
        let read = check
            .runtime
            .spawn(async move { store.current_lease().await });
        let answer = match tokio::time::timeout(RPC_TIMEOUT, read).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(join)) => {
                return Err(ChainError::LeaseNotConfirmed(format!(
                    "the lease check failed: {join}"
                )));
            }
            Err(_) => {
                return Err(ChainError::LeaseNotConfirmed(format!(
                    "the store did not answer within {RPC_TIMEOUT:?}"
                )));
            }
        };
        match answer {
            Ok(Some(info))
                if info.epoch == check.epoch
                    && info.expires_in != Some(std::time::Duration::ZERO) =>
            {
                Ok(())
            }
            Ok(other) => {
                self.stop_broadcasting();
                let now = match other {
                    Some(info) => format!("{} holds epoch {}", info.holder, info.epoch),
                    None => "nobody holds it".to_owned(),
                };
                Err(ChainError::LeaseNotConfirmed(format!(
                    "the lease of epoch {} is gone ({now})",
                    check.epoch
                )))
            }
            Err(err) => Err(ChainError::LeaseNotConfirmed(format!(
                "the store could not confirm the lease: {}",
                err.report()
            ))),
        }
    }

    /// Whether broadcasting is still allowed.
    pub fn is_broadcasting(&self) -> bool {
        self.broadcasting.load(Ordering::SeqCst)
            && self
                .lease
                .get()
                .is_none_or(|lease| lease.current_token().is_ok())
    }

    /// Broadcasts one transaction, or a package (child last) with `submitpackage`.
    /// Switched off ([`Self::is_broadcasting`]), it sends nothing and says so.
    pub async fn broadcast(&self, txs: Vec<Transaction>) -> Result<Vec<Txid>, ChainError> {
        if !self.is_broadcasting() {
            return Err(ChainError::BroadcastStopped);
        }
        self.confirm_lease().await?;
        let txs = topological(txs);
        // Each sink checks the deadline again: the round trips before it take time.
        if !self.is_broadcasting() {
            return Err(ChainError::BroadcastStopped);
        }
        let through_bitcoind = self.broadcast_to_bitcoind(&txs).await;
        let Some(esplora) = &self.esplora else {
            return through_bitcoind;
        };
        if !self.is_broadcasting() {
            return through_bitcoind;
        }
        // Parents first, so each child finds its inputs.
        let mut esplora_accepted_all = true;
        for tx in &txs {
            let txid = tx.compute_txid();
            match esplora.broadcast(tx).await {
                Ok(_) => tracing::debug!(%txid, url = esplora.url(), "broadcast to esplora"),
                Err(err) => {
                    esplora_accepted_all = false;
                    tracing::warn!(%txid, url = esplora.url(), error = %err, "esplora refused the transaction");
                }
            }
        }
        match through_bitcoind {
            Err(err) if esplora_accepted_all => {
                tracing::warn!(error = %err, "bitcoind refused a broadcast that esplora accepted");
                Ok(txs.iter().map(Transaction::compute_txid).collect())
            }
            other => other,
        }
    }

    async fn broadcast_to_bitcoind(&self, txs: &[Transaction]) -> Result<Vec<Txid>, ChainError> {
        if txs.len() == 1 {
            let answer = self
                .call("sendrawtransaction", &[json!(serialize_hex(&txs[0]))])
                .await?;
            let txid = answer
                .as_str()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| ChainError::Invalid {
                    method: "sendrawtransaction",
                    message: answer.to_string(),
                })?;
            return Ok(vec![txid]);
        }
        let hexes: Vec<Value> = txs.iter().map(|tx| json!(serialize_hex(tx))).collect();
        let answer = self.call("submitpackage", &[Value::Array(hexes)]).await?;
        if answer["package_msg"] != "success" {
            return Err(ChainError::Invalid {
                method: "submitpackage",
                message: answer.to_string(),
            });
        }
        Ok(txs.iter().map(Transaction::compute_txid).collect())
    }
}

/// Parents before children (LDK hands packages in no particular order).
fn topological(mut txs: Vec<Transaction>) -> Vec<Transaction> {
    let mut ordered = Vec::with_capacity(txs.len());
    while !txs.is_empty() {
        let ids: Vec<Txid> = txs.iter().map(Transaction::compute_txid).collect();
        let ready = txs
            .iter()
            .position(|tx| {
                tx.input
                    .iter()
                    .all(|input| !ids.contains(&input.previous_output.txid))
            })
            .unwrap_or(0);
        ordered.push(txs.remove(ready));
    }
    ordered
}

impl FeeEstimator for ChainClient {
    fn get_est_sat_per_1000_weight(&self, target: ConfirmationTarget) -> u32 {
        self.fees
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(&target)
            .copied()
            .unwrap_or(FEERATE_FLOOR_SATS_PER_KW)
    }
}

impl BroadcasterInterface for ChainClient {
    fn broadcast_transactions(&self, txs: &[(&Transaction, TransactionType)]) {
        if !self.is_broadcasting() {
            for (tx, kind) in txs {
                tracing::warn!(txid = %tx.compute_txid(), ?kind, "not broadcasting: broadcasting is stopped");
            }
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let owned: Vec<Transaction> = txs.iter().map(|(tx, _)| (*tx).clone()).collect();
        let kinds: Vec<String> = txs.iter().map(|(_, kind)| format!("{kind:?}")).collect();
        // LDK rebroadcasts what does not confirm, so a failure here is only logged.
        self.runtime.spawn(async move {
            let txids: Vec<Txid> = owned.iter().map(Transaction::compute_txid).collect();
            match me.broadcast(owned).await {
                Ok(_) => tracing::info!(?txids, ?kinds, "broadcast"),
                Err(err) => {
                    tracing::warn!(?txids, ?kinds, error = %err, "broadcast failed; LDK will retry")
                }
            }
        });
    }
}

/// Blocks, over RPC or REST as configured.
impl BlockSource for ChainClient {
    async fn get_header<'a>(
        &'a self,
        header_hash: &'a BlockHash,
        height_hint: Option<u32>,
    ) -> BlockSourceResult<BlockHeaderData> {
        match &self.blocks {
            Blocks::Rpc => self.rpc.get_header(header_hash, height_hint).await,
            Blocks::Rest(rest) => rest.get_header(header_hash, height_hint).await,
        }
    }

    async fn get_block<'a>(&'a self, header_hash: &'a BlockHash) -> BlockSourceResult<BlockData> {
        match &self.blocks {
            Blocks::Rpc => self.rpc.get_block(header_hash).await,
            Blocks::Rest(rest) => rest.get_block(header_hash).await,
        }
    }

    async fn get_best_block(&self) -> BlockSourceResult<(BlockHash, Option<u32>)> {
        match &self.blocks {
            Blocks::Rpc => self.rpc.get_best_block().await,
            Blocks::Rest(rest) => rest.get_best_block().await,
        }
    }
}

impl UtxoSource for ChainClient {
    async fn get_block_hash_by_height(&self, block_height: u32) -> BlockSourceResult<BlockHash> {
        match &self.blocks {
            Blocks::Rpc => self.rpc.get_block_hash_by_height(block_height).await,
            Blocks::Rest(rest) => rest.get_block_hash_by_height(block_height).await,
        }
    }

    async fn is_output_unspent(&self, outpoint: bitcoin::OutPoint) -> BlockSourceResult<bool> {
        match &self.blocks {
            Blocks::Rpc => self.rpc.is_output_unspent(outpoint).await,
            Blocks::Rest(rest) => rest.is_output_unspent(outpoint).await,
        }
    }
}
