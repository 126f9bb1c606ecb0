//! The JSON-RPC methods, answering as Bitcoin Core does (names, parameters, result
//! fields, error codes and messages).

use std::str::FromStr;

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::{Address, Amount, BlockHash, FeeRate, Network, OutPoint, Transaction, Txid};
use serde_json::{Value, json};

use crate::chain::Chain;
use crate::json;
use crate::mempool::{self, AcceptMode};
use crate::validation::TxError;

mod mempool_methods;
mod params;

use self::mempool_methods::*;
pub use self::mempool_methods::{mempool_contents, mempool_info};
pub use self::params::Params;

/// Bitcoin Core's RPC error codes (src/rpc/protocol.h).
pub mod codes {
    /// Standard JSON-RPC 2.0: invalid request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// Standard JSON-RPC 2.0: method not found.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Standard JSON-RPC 2.0: parse error.
    pub const PARSE_ERROR: i32 = -32700;
    /// General application error.
    pub const MISC_ERROR: i32 = -1;
    /// Unexpected type was passed as parameter.
    pub const TYPE_ERROR: i32 = -3;
    /// Invalid address or key.
    pub const INVALID_ADDRESS_OR_KEY: i32 = -5;
    /// Not enough funds in wallet or account.
    pub const WALLET_INSUFFICIENT_FUNDS: i32 = -6;
    /// Invalid, missing or duplicate parameter.
    pub const INVALID_PARAMETER: i32 = -8;
    /// Error parsing or validating structure in raw format.
    pub const DESERIALIZATION_ERROR: i32 = -22;
    /// General error during transaction or block submission.
    pub const VERIFY_ERROR: i32 = -25;
    /// Transaction or block was rejected by network rules.
    pub const VERIFY_REJECTED: i32 = -26;
    /// Transaction already in chain.
    pub const VERIFY_ALREADY_IN_CHAIN: i32 = -27;
    /// Unspecified problem with wallet.
    pub const WALLET_ERROR: i32 = -4;
}

/// An RPC error: Bitcoin Core's code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    /// The code.
    pub code: i32,
    /// The message.
    pub message: String,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

type RpcResult = Result<Value, RpcError>;

/// What the server must do after answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterCall {
    /// Keep serving.
    Continue,
    /// `stop` was called: shut down after answering.
    Stop,
}

fn block_hash(text: &str, name: &str) -> Result<BlockHash, RpcError> {
    if text.len() != 64 {
        return Err(RpcError::new(
            codes::INVALID_PARAMETER,
            format!(
                "{name} must be of length 64 (not {}, for '{text}')",
                text.len()
            ),
        ));
    }
    BlockHash::from_str(text).map_err(|_| {
        RpcError::new(
            codes::INVALID_PARAMETER,
            format!("{name} must be hexadecimal string (not '{text}')"),
        )
    })
}

fn txid(text: &str, name: &str) -> Result<Txid, RpcError> {
    if text.len() != 64 {
        return Err(RpcError::new(
            codes::INVALID_PARAMETER,
            format!(
                "{name} must be of length 64 (not {}, for '{text}')",
                text.len()
            ),
        ));
    }
    Txid::from_str(text).map_err(|_| {
        RpcError::new(
            codes::INVALID_PARAMETER,
            format!("{name} must be hexadecimal string (not '{text}')"),
        )
    })
}

fn decode_tx(hex_text: &str) -> Result<Transaction, RpcError> {
    deserialize_hex::<Transaction>(hex_text).map_err(|_| {
        RpcError::new(
            codes::DESERIALIZATION_ERROR,
            "TX decode failed. Make sure the tx has at least one input.",
        )
    })
}

fn address(text: &str) -> Result<Address, RpcError> {
    Address::from_str(text)
        .ok()
        .and_then(|address| address.require_network(Network::Regtest).ok())
        .ok_or_else(|| RpcError::new(codes::INVALID_ADDRESS_OR_KEY, "Invalid address"))
}

fn block_not_found() -> RpcError {
    RpcError::new(codes::INVALID_ADDRESS_OR_KEY, "Block not found")
}

/// Core's mapping of a mempool refusal in `sendrawtransaction`.
fn broadcast_error(err: &TxError) -> RpcError {
    match err {
        TxError::MissingInputs => {
            RpcError::new(codes::VERIFY_ERROR, "bad-txns-inputs-missingorspent")
        }
        TxError::AlreadyInChain => RpcError::new(
            codes::VERIFY_ALREADY_IN_CHAIN,
            "Transaction outputs already in utxo set",
        ),
        TxError::Rejected { reason, .. } if reason == "max-fee-exceeded" => RpcError::new(
            codes::VERIFY_ERROR,
            "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
        ),
        other => RpcError::new(codes::VERIFY_REJECTED, other.message()),
    }
}

/// Default `maxfeerate` of `sendrawtransaction` and `testmempoolaccept`: 0.10 BTC/kvB.
const DEFAULT_MAX_FEE_RATE_SAT_PER_KVB: u64 = 10_000_000;

/// Runs one method. The chain is locked for the call.
pub fn call(
    chain: &mut Chain,
    method: &str,
    params: &Value,
) -> Result<(Value, AfterCall), RpcError> {
    let result = match method {
        "getblockchaininfo" => {
            Params::bind(method, params, &[], 0)?;
            Ok(blockchain_info(chain))
        }
        "getnetworkinfo" => getnetworkinfo(Params::bind(method, params, &[], 0)?),
        "getblockcount" => {
            Params::bind(method, params, &[], 0)?;
            Ok(json!(chain.height()))
        }
        "getbestblockhash" => {
            Params::bind(method, params, &[], 0)?;
            Ok(json!(chain.tip().to_string()))
        }
        "getblockhash" => getblockhash(chain, Params::bind(method, params, &["height"], 1)?),
        "getblockheader" => getblockheader(
            chain,
            Params::bind(method, params, &["blockhash", "verbose"], 1)?,
        ),
        "getblock" => getblock(
            chain,
            Params::bind(method, params, &["blockhash", "verbosity"], 1)?,
        ),
        "getblockfilter" => getblockfilter(
            chain,
            Params::bind(method, params, &["blockhash", "filtertype"], 1)?,
        ),
        "gettxout" => gettxout(
            chain,
            Params::bind(method, params, &["txid", "n", "include_mempool"], 2)?,
        ),
        "getrawtransaction" => getrawtransaction(
            chain,
            Params::bind(method, params, &["txid", "verbose", "blockhash"], 1)?,
        ),
        "decoderawtransaction" => {
            let p = Params::bind(method, params, &["hexstring", "iswitness"], 1)?;
            Ok(json::transaction(&decode_tx(p.required_str(0)?)?))
        }
        "sendrawtransaction" => sendrawtransaction(
            chain,
            Params::bind(
                method,
                params,
                &["hexstring", "maxfeerate", "maxburnamount"],
                1,
            )?,
        ),
        "testmempoolaccept" => testmempoolaccept(
            chain,
            Params::bind(method, params, &["rawtxs", "maxfeerate"], 1)?,
        ),
        "submitpackage" => submitpackage(
            chain,
            Params::bind(
                method,
                params,
                &["package", "maxfeerate", "maxburnamount"],
                1,
            )?,
        ),
        "getrawmempool" => {
            let p = Params::bind(method, params, &["verbose", "mempool_sequence"], 0)?;
            Ok(mempool_contents(chain, p.bool(0)?.unwrap_or(false)))
        }
        "getmempoolentry" => getmempoolentry(chain, Params::bind(method, params, &["txid"], 1)?),
        "getmempoolinfo" => {
            Params::bind(method, params, &[], 0)?;
            Ok(mempool_info(chain))
        }
        "estimatesmartfee" => estimatesmartfee(
            chain,
            Params::bind(method, params, &["conf_target", "estimate_mode"], 1)?,
        ),
        "generatetoaddress" => generatetoaddress(
            chain,
            Params::bind(method, params, &["nblocks", "address", "maxtries"], 2)?,
        ),
        "generateblock" => generateblock(
            chain,
            Params::bind(method, params, &["output", "transactions", "submit"], 2)?,
        ),
        "invalidateblock" => {
            let p = Params::bind(method, params, &["blockhash"], 1)?;
            let hash = block_hash(p.required_str(0)?, "blockhash")?;
            chain
                .invalidate_block(&hash)
                .map_err(|_| block_not_found())?;
            Ok(Value::Null)
        }
        "reconsiderblock" => {
            let p = Params::bind(method, params, &["blockhash"], 1)?;
            let hash = block_hash(p.required_str(0)?, "blockhash")?;
            chain
                .reconsider_block(&hash)
                .map_err(|_| block_not_found())?;
            Ok(Value::Null)
        }
        "getnewaddress" => {
            Params::bind(method, params, &["label", "address_type"], 0)?;
            Ok(json!(chain.wallet.new_address().to_string()))
        }
        "getbalance" => {
            Params::bind(
                method,
                params,
                &["dummy", "minconf", "include_watchonly", "avoid_reuse"],
                0,
            )?;
            Ok(json::btc(chain.wallet_balance()))
        }
        "sendtoaddress" => sendtoaddress(
            chain,
            Params::bind(
                method,
                params,
                &[
                    "address",
                    "amount",
                    "comment",
                    "comment_to",
                    "subtractfeefromamount",
                    "replaceable",
                    "conf_target",
                    "estimate_mode",
                    "avoid_reuse",
                    "fee_rate",
                    "verbose",
                ],
                2,
            )?,
        ),
        "setmocktime" => {
            let p = Params::bind(method, params, &["timestamp"], 1)?;
            let time = p.i64(0)?.unwrap_or(0);
            if time < 0 {
                return Err(RpcError::new(
                    codes::INVALID_PARAMETER,
                    "Mocktime cannot be negative: ".to_owned() + &time.to_string(),
                ));
            }
            chain.set_mock_time((time > 0).then_some(time as u64));
            Ok(Value::Null)
        }
        "stop" => {
            Params::bind(method, params, &["wait"], 0)?;
            return Ok((json!("Bitcoin Core stopping"), AfterCall::Stop));
        }
        _ => Err(RpcError::new(codes::METHOD_NOT_FOUND, "Method not found")),
    };
    result.map(|value| (value, AfterCall::Continue))
}

/// `getblockchaininfo` (also REST `chaininfo.json`).
pub fn blockchain_info(chain: &Chain) -> Value {
    let tip = chain.tip_entry();
    json!({
        "chain": "regtest",
        "blocks": chain.height(),
        "headers": chain.height(),
        "bestblockhash": chain.tip().to_string(),
        "bits": format!("{:08x}", tip.block.header.bits.to_consensus()),
        "target": format!("{:064x}", tip.block.header.target()),
        "difficulty": crate::params::difficulty(&tip.block.header),
        "time": tip.block.header.time,
        "mediantime": tip.median_time_past,
        "verificationprogress": 1,
        "initialblockdownload": false,
        "chainwork": hex::encode(tip.chain_work.to_be_bytes()),
        "size_on_disk": 0,
        "pruned": false,
        "warnings": [],
    })
}

fn getnetworkinfo(_: Params) -> RpcResult {
    Ok(json!({
        "version": 280000,
        "subversion": "/Satoshi:28.0.0(phalanx-regtest)/",
        "protocolversion": 70016,
        "localservices": "0000000000000c09",
        "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"],
        "localrelay": true,
        "timeoffset": 0,
        "networkactive": true,
        "connections": 0,
        "connections_in": 0,
        "connections_out": 0,
        "networks": [],
        "relayfee": 0.00001,
        "incrementalfee": 0.00001,
        "localaddresses": [],
        "warnings": [],
    }))
}

fn getblockhash(chain: &Chain, p: Params) -> RpcResult {
    let height = p.i64(0)?.ok_or_else(|| p.wrong_type(0, "number"))?;
    if height < 0 || height > i64::from(chain.height()) {
        return Err(RpcError::new(
            codes::INVALID_PARAMETER,
            "Block height out of range",
        ));
    }
    Ok(json!(
        chain.hash_at(height as u32).expect("in range").to_string()
    ))
}

fn getblockheader(chain: &Chain, p: Params) -> RpcResult {
    let hash = block_hash(p.required_str(0)?, "blockhash")?;
    let verbose = p.bool(1)?.unwrap_or(true);
    let entry = chain
        .entry(&hash)
        .ok_or_else(|| RpcError::new(codes::INVALID_ADDRESS_OR_KEY, "Block not found"))?;
    if verbose {
        Ok(json::header(chain, entry))
    } else {
        Ok(json::to_hex(&entry.block.header))
    }
}

fn getblock(chain: &Chain, p: Params) -> RpcResult {
    let hash = block_hash(p.required_str(0)?, "blockhash")?;
    // Core takes a number, and still a boolean for compatibility.
    let verbosity = match p.get(1) {
        None => 1,
        Some(Value::Bool(verbose)) => u8::from(*verbose),
        Some(value) => value
            .as_u64()
            .map(|v| v.min(3) as u8)
            .ok_or_else(|| p.wrong_type(1, "number"))?,
    };
    let entry = chain.entry(&hash).ok_or_else(block_not_found)?;
    if verbosity == 0 {
        Ok(json!(serialize_hex(&*entry.block)))
    } else {
        Ok(json::block(chain, entry, verbosity))
    }
}

fn getblockfilter(chain: &Chain, p: Params) -> RpcResult {
    let hash = block_hash(p.required_str(0)?, "blockhash")?;
    if let Some(kind) = p.str(1)?
        && kind != "basic"
    {
        return Err(RpcError::new(
            codes::INVALID_ADDRESS_OR_KEY,
            "Unknown filtertype",
        ));
    }
    let (filter, header) = chain.block_filter(&hash).ok_or_else(block_not_found)?;
    Ok(json!({ "filter": hex::encode(filter.content), "header": header.to_string() }))
}

fn gettxout(chain: &Chain, p: Params) -> RpcResult {
    let txid = txid(p.required_str(0)?, "txid")?;
    let vout = p.u64(1)?.ok_or_else(|| p.wrong_type(1, "number"))? as u32;
    let include_mempool = p.bool(2)?.unwrap_or(true);
    let outpoint = OutPoint::new(txid, vout);
    let (output, height, coinbase) =
        if include_mempool && chain.mempool().spender(&outpoint).is_some() {
            return Ok(Value::Null);
        } else if let Some(coin) = chain.utxo(&outpoint) {
            (coin.output.clone(), Some(coin.height), coin.is_coinbase)
        } else if let Some(entry) = include_mempool
            .then(|| chain.mempool().get(&txid))
            .flatten()
        {
            match entry.tx.output.get(vout as usize) {
                Some(output) => (output.clone(), None, false),
                None => return Ok(Value::Null),
            }
        } else {
            return Ok(Value::Null);
        };
    Ok(json!({
        "bestblock": chain.tip().to_string(),
        "confirmations": height.map_or(0, |h| chain.height() - h + 1),
        "value": json::btc(output.value),
        "scriptPubKey": json::script_pubkey(&output.script_pubkey),
        "coinbase": coinbase,
    }))
}

fn getrawtransaction(chain: &Chain, p: Params) -> RpcResult {
    let txid = txid(p.required_str(0)?, "txid")?;
    let verbosity = match p.get(1) {
        None => 0,
        Some(Value::Bool(verbose)) => u8::from(*verbose),
        Some(value) => value
            .as_u64()
            .map(|v| v.min(2) as u8)
            .ok_or_else(|| p.wrong_type(1, "number"))?,
    };
    let in_block = match p.str(2)? {
        Some(text) => {
            let hash = block_hash(text, "parameter 3")?;
            let entry = chain.entry(&hash).ok_or_else(|| {
                RpcError::new(codes::INVALID_ADDRESS_OR_KEY, "Block hash not found")
            })?;
            let tx = entry.block.txdata.iter().find(|tx| tx.compute_txid() == txid).ok_or_else(|| {
                RpcError::new(codes::INVALID_ADDRESS_OR_KEY, "No such transaction found in the provided block. Use gettransaction for wallet transactions.")
            })?;
            Some((tx.clone(), hash))
        }
        None => None,
    };
    let (tx, block) = match in_block {
        Some((tx, hash)) => (tx, Some(hash)),
        None => match chain.mempool().get(&txid) {
            Some(entry) => (entry.tx.clone(), None),
            None => match chain.confirmed_tx(&txid) {
                Some((tx, hash)) => (tx.clone(), Some(hash)),
                None => {
                    return Err(RpcError::new(
                        codes::INVALID_ADDRESS_OR_KEY,
                        "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
                    ));
                }
            },
        },
    };
    if verbosity == 0 {
        return Ok(json!(serialize_hex(&tx)));
    }
    let mut object = json::transaction(&tx);
    let map = object.as_object_mut().expect("an object");
    map.insert("hex".into(), json!(serialize_hex(&tx)));
    if let Some(hash) = block {
        let entry = chain.entry(&hash).expect("known block");
        map.insert("blockhash".into(), json!(hash.to_string()));
        let confirmations = chain.confirmations(&hash);
        map.insert("confirmations".into(), json!(confirmations.max(0)));
        map.insert("time".into(), json!(entry.block.header.time));
        map.insert("blocktime".into(), json!(entry.block.header.time));
    }
    Ok(object)
}

fn generatetoaddress(chain: &mut Chain, p: Params) -> RpcResult {
    let count = p.u64(0)?.ok_or_else(|| p.wrong_type(0, "number"))?;
    let payout = address(p.required_str(1)?)
        .map_err(|_| RpcError::new(codes::INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))?
        .script_pubkey();
    let mut hashes = Vec::new();
    for _ in 0..count {
        let hash = chain
            .mine_block(&payout, None)
            .map_err(|e| RpcError::new(codes::MISC_ERROR, format!("generate failed: {e}")))?;
        hashes.push(json!(hash.to_string()));
    }
    Ok(Value::Array(hashes))
}

fn generateblock(chain: &mut Chain, p: Params) -> RpcResult {
    let output = p.required_str(0)?;
    let payout = address(output)
        .map_err(|_| {
            RpcError::new(
                codes::INVALID_ADDRESS_OR_KEY,
                "Error: Invalid address or descriptor".to_string(),
            )
        })?
        .script_pubkey();
    let mut txs = Vec::new();
    for item in p.array(1)? {
        let text = item
            .as_str()
            .ok_or_else(|| RpcError::new(codes::TYPE_ERROR, "Expected type string"))?;
        if text.len() == 64
            && let Ok(id) = Txid::from_str(text)
        {
            let entry = chain.mempool().get(&id).ok_or_else(|| {
                RpcError::new(
                    codes::INVALID_ADDRESS_OR_KEY,
                    format!("Transaction {text} not in mempool."),
                )
            })?;
            txs.push(entry.tx.clone());
            continue;
        }
        let tx = deserialize_hex::<Transaction>(text).map_err(|_| {
            RpcError::new(
                codes::DESERIALIZATION_ERROR,
                format!(
                    "Transaction decode failed for {text}. Make sure the tx has at least one input."
                ),
            )
        })?;
        txs.push(tx);
    }
    if p.bool(2)? == Some(false) {
        return Err(RpcError::new(
            codes::MISC_ERROR,
            "submit=false is not supported by this regtest chain",
        ));
    }
    let hash = chain.mine_block(&payout, Some(txs)).map_err(|e| {
        RpcError::new(
            codes::VERIFY_ERROR,
            format!("TestBlockValidity failed: {e}"),
        )
    })?;
    Ok(json!({ "hash": hash.to_string() }))
}

fn sendtoaddress(chain: &mut Chain, p: Params) -> RpcResult {
    let destination = address(p.required_str(0)?)?.script_pubkey();
    let amount = p.amount(1)?.ok_or_else(|| p.wrong_type(1, "number"))?;
    if amount == Amount::ZERO {
        return Err(RpcError::new(codes::TYPE_ERROR, "Invalid amount for send"));
    }
    match chain.send_to(&destination, amount) {
        Ok(txid) => Ok(json!(txid.to_string())),
        Err(crate::SendError::InsufficientFunds) => Err(RpcError::new(
            codes::WALLET_INSUFFICIENT_FUNDS,
            "Insufficient funds",
        )),
        Err(crate::SendError::InvalidAmount) => Err(RpcError::new(
            codes::WALLET_ERROR,
            "Transaction amount too small",
        )),
        Err(crate::SendError::Rejected(err)) => Err(broadcast_error(&err)),
    }
}
