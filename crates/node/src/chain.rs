//! The chain source: bitcoind over JSON-RPC (and optionally REST for blocks), through
//! LDK's own `lightning-block-sync` clients. It estimates fees (`estimatesmartfee`),
//! broadcasts (`sendrawtransaction`, `submitpackage` for packages), and serves blocks to
//! the chain listeners. What allows a broadcast (the fence) is in [`crate::broadcast`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use bitcoin::{BlockHash, Network};
use lightning::chain::chaininterface::{
    ConfirmationTarget, FEERATE_FLOOR_SATS_PER_KW, FeeEstimator,
};
use lightning_block_sync::gossip::UtxoSource;
use lightning_block_sync::rest::RestClient;
use lightning_block_sync::rpc::{RpcClient, RpcClientError};
use lightning_block_sync::{BlockData, BlockHeaderData, BlockSource, BlockSourceResult};
use serde_json::{Value, json};

use crate::broadcast::BroadcastGate;
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

/// How blocks are fetched.
enum Blocks {
    Rpc,
    Rest(RestClient),
}

/// bitcoind's blocks and outputs, over RPC or REST as configured. Its HTTP connections
/// belong to the tokio runtime that made them, so work on a runtime of its own takes a
/// reader of its own ([`ChainClient::new_reader`]).
pub struct ChainReader {
    rpc: RpcClient,
    blocks: Blocks,
}

impl ChainReader {
    fn new(credentials: &str, rpc_url: &str, rest_url: Option<&str>) -> Self {
        Self {
            rpc: RpcClient::new(credentials, rpc_url.to_owned()),
            blocks: match rest_url {
                Some(url) => Blocks::Rest(RestClient::new(url.to_owned())),
                None => Blocks::Rpc,
            },
        }
    }
}

/// bitcoind as the node's chain source, fee estimator and broadcaster.
pub struct ChainClient {
    url: String,
    /// The RPC credentials as HTTP sends them (base64) and the REST endpoint, to make
    /// more readers; never logged.
    credentials: String,
    rest_url: Option<String>,
    reader: ChainReader,
    network: Network,
    fees: RwLock<FeeTable>,
    /// What allows a broadcast (see [`crate::broadcast`]).
    pub(crate) gate: BroadcastGate,
    /// A second broadcast source, if configured.
    pub(crate) esplora: Option<crate::esplora::Esplora>,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Itself, so the synchronous broadcaster can hand a task an owned handle.
    pub(crate) me: std::sync::Weak<ChainClient>,
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
            reader: ChainReader::new(&credentials, &config.rpc_url, config.rest_url.as_deref()),
            credentials,
            rest_url: config.rest_url.clone(),
            network,
            fees: RwLock::new(FeeTable(HashMap::new())),
            gate: BroadcastGate::default(),
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

    /// Another reader of the same bitcoind, for a runtime other than the node's: its
    /// connections are made by the runtime that first uses it.
    pub fn new_reader(&self) -> ChainReader {
        ChainReader::new(&self.credentials, &self.url, self.rest_url.as_deref())
    }

    /// The network bitcoind runs.
    pub fn network(&self) -> Network {
        self.network
    }

    /// One JSON-RPC call, bounded by [`RPC_TIMEOUT`].
    pub async fn call(&self, method: &'static str, params: &[Value]) -> Result<Value, ChainError> {
        match tokio::time::timeout(
            RPC_TIMEOUT,
            self.reader.rpc.call_method::<Value>(method, params),
        )
        .await
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

/// Blocks, over RPC or REST as configured.
impl BlockSource for ChainReader {
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

impl UtxoSource for ChainReader {
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

/// The node's own reader's blocks, for LDK's chain sync.
impl BlockSource for ChainClient {
    async fn get_header<'a>(
        &'a self,
        header_hash: &'a BlockHash,
        height_hint: Option<u32>,
    ) -> BlockSourceResult<BlockHeaderData> {
        self.reader.get_header(header_hash, height_hint).await
    }

    async fn get_block<'a>(&'a self, header_hash: &'a BlockHash) -> BlockSourceResult<BlockData> {
        self.reader.get_block(header_hash).await
    }

    async fn get_best_block(&self) -> BlockSourceResult<(BlockHash, Option<u32>)> {
        self.reader.get_best_block().await
    }
}

impl UtxoSource for ChainClient {
    async fn get_block_hash_by_height(&self, block_height: u32) -> BlockSourceResult<BlockHash> {
        self.reader.get_block_hash_by_height(block_height).await
    }

    async fn is_output_unspent(&self, outpoint: bitcoin::OutPoint) -> BlockSourceResult<bool> {
        self.reader.is_output_unspent(outpoint).await
    }
}
