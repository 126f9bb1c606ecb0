//! Driving a regtest chain over RPC: mining and paying from its wallet. Works the same
//! against a real Bitcoin Core on regtest and against `phalanx regtest`.

use std::sync::Arc;

use bitcoin::{Amount, Network};
use phalanx_node::chain::{ChainClient, ChainError};
use phalanx_node::config::ChainConfig;
use serde_json::{Value, json};

use crate::DevnetError;

/// Core's "no wallet is loaded" and "wallet already exists" codes.
const RPC_WALLET_NOT_FOUND: i64 = -18;
const RPC_WALLET_ERROR: i64 = -4;
const RPC_WALLET_ALREADY_LOADED: i64 = -35;
const WALLET_NAME: &str = "phalanx-devnet";

/// A regtest chain driven over RPC.
pub struct ChainControl {
    client: Arc<ChainClient>,
    config: ChainConfig,
    mining_address: String,
}

impl ChainControl {
    /// Connects (checking the chain is regtest) and makes sure a wallet is loaded.
    pub async fn connect(config: ChainConfig) -> Result<Self, DevnetError> {
        let client =
            ChainClient::connect(&config, Network::Regtest, tokio::runtime::Handle::current())
                .await?;
        let mining_address = match client.call("getnewaddress", &[]).await {
            Ok(address) => address,
            Err(ChainError::Rpc {
                code: RPC_WALLET_NOT_FOUND,
                ..
            }) => {
                // A fresh bitcoind: make (or load) a wallet to mine to and pay from.
                match client.call("createwallet", &[json!(WALLET_NAME)]).await {
                    Ok(_) => {}
                    Err(ChainError::Rpc {
                        code: RPC_WALLET_ERROR | RPC_WALLET_ALREADY_LOADED,
                        ..
                    }) => match client.call("loadwallet", &[json!(WALLET_NAME)]).await {
                        Ok(_)
                        | Err(ChainError::Rpc {
                            code: RPC_WALLET_ALREADY_LOADED,
                            ..
                        }) => {}
                        Err(err) => return Err(err.into()),
                    },
                    Err(err) => return Err(err.into()),
                }
                client.call("getnewaddress", &[]).await?
            }
            Err(err) => return Err(err.into()),
        };
        let mining_address = mining_address
            .as_str()
            .ok_or_else(|| DevnetError::Chain(format!("getnewaddress returned {mining_address}")))?
            .to_owned();
        Ok(Self {
            client,
            config,
            mining_address,
        })
    }

    /// The RPC configuration, for nodes to follow the same chain.
    pub fn config(&self) -> &ChainConfig {
        &self.config
    }

    /// The chain's height.
    pub async fn height(&self) -> Result<u32, DevnetError> {
        let count = self.client.call("getblockcount", &[]).await?;
        count
            .as_u64()
            .map(|h| h as u32)
            .ok_or_else(|| DevnetError::Chain(format!("getblockcount returned {count}")))
    }

    /// Mines `count` blocks to the chain's wallet.
    pub async fn mine(&self, count: u32) -> Result<(), DevnetError> {
        self.client
            .call(
                "generatetoaddress",
                &[json!(count), json!(self.mining_address)],
            )
            .await?;
        Ok(())
    }

    /// The chain wallet's spendable balance.
    pub async fn balance(&self) -> Result<Amount, DevnetError> {
        let balance = self.client.call("getbalance", &[]).await?;
        btc_amount(&balance)
            .ok_or_else(|| DevnetError::Chain(format!("getbalance returned {balance}")))
    }

    /// Makes sure the chain wallet can pay `amount`, mining (coinbases mature after 100
    /// blocks) until it can.
    pub async fn ensure_funds(&self, amount: Amount) -> Result<(), DevnetError> {
        for _ in 0..10 {
            if self.balance().await? >= amount {
                return Ok(());
            }
            self.mine(101).await?;
        }
        Err(DevnetError::Chain(format!(
            "the chain wallet cannot gather {amount} even after mining"
        )))
    }

    /// Whether `outpoint` is unspent, in the chain and its mempool (`gettxout`).
    pub async fn is_unspent(&self, outpoint: &bitcoin::OutPoint) -> Result<bool, DevnetError> {
        let answer = self
            .client
            .call(
                "gettxout",
                &[
                    json!(outpoint.txid.to_string()),
                    json!(outpoint.vout),
                    json!(true),
                ],
            )
            .await?;
        Ok(!answer.is_null())
    }

    /// Whether `txid` is in the chain's mempool.
    pub async fn in_mempool(&self, txid: &bitcoin::Txid) -> Result<bool, DevnetError> {
        let mempool = self.client.call("getrawmempool", &[]).await?;
        let txid = txid.to_string();
        Ok(mempool
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(txid.as_str()))))
    }

    /// Pays `amount` to `address` from the chain wallet.
    pub async fn send_to(&self, address: &str, amount: Amount) -> Result<String, DevnetError> {
        let txid = self
            .client
            .call("sendtoaddress", &[json!(address), json!(amount.to_btc())])
            .await?;
        Ok(txid.as_str().unwrap_or_default().to_owned())
    }
}

fn btc_amount(value: &Value) -> Option<Amount> {
    value.as_f64().and_then(|btc| Amount::from_btc(btc).ok())
}
