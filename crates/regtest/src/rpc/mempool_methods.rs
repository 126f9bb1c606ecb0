//! The mempool's methods: sending, testing and submitting transactions and packages,
//! the mempool's contents, and fee estimates.

use super::*;

pub(super) fn max_fee_rate(p: &Params, index: usize) -> Result<Option<FeeRate>, RpcError> {
    match p.fee_rate(index)? {
        // 0 means no limit.
        Some(rate) if rate == FeeRate::ZERO => Ok(None),
        Some(rate) => Ok(Some(rate)),
        None => Ok(Some(FeeRate::from_sat_per_kwu(
            DEFAULT_MAX_FEE_RATE_SAT_PER_KVB / 4,
        ))),
    }
}

pub(super) fn sendrawtransaction(chain: &mut Chain, p: Params) -> RpcResult {
    let tx = decode_tx(p.required_str(0)?)?;
    let max = max_fee_rate(&p, 1)?;
    let txid = tx.compute_txid();
    // Already in the mempool (same witness): Core answers with the txid.
    if chain
        .mempool()
        .get(&txid)
        .is_some_and(|e| e.wtxid == tx.compute_wtxid())
    {
        return Ok(json!(txid.to_string()));
    }
    match mempool::accept(chain, tx, AcceptMode::Broadcast { max_fee_rate: max }) {
        Ok(accepted) => Ok(json!(accepted.txid.to_string())),
        Err(err) => Err(broadcast_error(&err)),
    }
}

pub(super) fn fees_object(fee: Amount, vsize: u64, wtxids: &[String]) -> Value {
    json!({
        "base": json::btc(fee),
        "effective-feerate": json::btc_per_kvb(fee.to_sat() * 1000 / vsize.max(1)),
        "effective-includes": wtxids,
    })
}

pub(super) fn testmempoolaccept(chain: &mut Chain, p: Params) -> RpcResult {
    let raw = p.array(0)?;
    if raw.is_empty() || raw.len() > 25 {
        return Err(RpcError::new(
            codes::INVALID_PARAMETER,
            "Array must contain between 1 and 25 transactions.",
        ));
    }
    let max = max_fee_rate(&p, 1)?;
    let txs = raw
        .iter()
        .map(|value| {
            value
                .as_str()
                .ok_or_else(|| RpcError::new(codes::TYPE_ERROR, "Expected type string"))
                .and_then(decode_tx)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::new();
    for tx in txs {
        let txid = tx.compute_txid();
        let wtxid = tx.compute_wtxid();
        let outcome = mempool::accept(chain, tx, AcceptMode::Test { max_fee_rate: max });
        results.push(match outcome {
            Ok(accepted) => json!({
                "txid": txid.to_string(),
                "wtxid": wtxid.to_string(),
                "allowed": true,
                "vsize": accepted.vsize,
                "fees": fees_object(accepted.fee, accepted.vsize, &[wtxid.to_string()]),
            }),
            // Core 28 gives the reason only ("reject-details" came in 29).
            Err(err) => json!({
                "txid": txid.to_string(),
                "wtxid": wtxid.to_string(),
                "allowed": false,
                "reject-reason": err.reason(),
            }),
        });
    }
    Ok(Value::Array(results))
}

pub(super) fn submitpackage(chain: &mut Chain, p: Params) -> RpcResult {
    let raw = p.array(0)?;
    let txs = raw
        .iter()
        .map(|value| {
            value
                .as_str()
                .ok_or_else(|| RpcError::new(codes::TYPE_ERROR, "Expected type string"))
                .and_then(decode_tx)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let results = mempool::accept_package(chain, txs)
        .map_err(|msg| RpcError::new(codes::INVALID_PARAMETER, msg))?;
    let mut tx_results = serde_json::Map::new();
    let mut replaced = Vec::new();
    let mut all_ok = true;
    for result in &results {
        let object = match &result.result {
            Ok(accepted) => {
                replaced.extend(accepted.replaced.iter().map(|t| t.to_string()));
                json!({
                    "txid": result.txid.to_string(),
                    "vsize": accepted.vsize,
                    "fees": fees_object(accepted.fee, accepted.vsize, &[result.wtxid.to_string()]),
                })
            }
            Err(err) => {
                all_ok = false;
                json!({ "txid": result.txid.to_string(), "error": err.message() })
            }
        };
        tx_results.insert(result.wtxid.to_string(), object);
    }
    Ok(json!({
        "package_msg": if all_ok { "success" } else { "transaction failed" },
        "tx-results": tx_results,
        "replaced-transactions": replaced,
    }))
}

/// `getrawmempool` (also REST `mempool/contents.json`, verbose).
pub fn mempool_contents(chain: &Chain, verbose: bool) -> Value {
    let entries = chain.mempool().sorted_entries();
    if verbose {
        let map: serde_json::Map<String, Value> = entries
            .iter()
            .map(|entry| (entry.txid.to_string(), json::mempool_entry(chain, entry)))
            .collect();
        Value::Object(map)
    } else {
        json!(
            entries
                .iter()
                .map(|e| e.txid.to_string())
                .collect::<Vec<_>>()
        )
    }
}

pub(super) fn getmempoolentry(chain: &Chain, p: Params) -> RpcResult {
    let txid = txid(p.required_str(0)?, "txid")?;
    let entry = chain.mempool().get(&txid).ok_or_else(|| {
        RpcError::new(codes::INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
    })?;
    Ok(json::mempool_entry(chain, entry))
}

/// `getmempoolinfo` (also REST `mempool/info.json`).
pub fn mempool_info(chain: &Chain) -> Value {
    let min_relay = chain.settings().min_relay_fee_rate.to_sat_per_kwu() * 4;
    json!({
        "loaded": true,
        "size": chain.mempool().len(),
        "bytes": chain.mempool().bytes(),
        "usage": chain.mempool().bytes() * 4,
        "total_fee": json::btc(chain.mempool().total_fee()),
        "maxmempool": 300_000_000,
        "mempoolminfee": json::btc_per_kvb(min_relay),
        "minrelaytxfee": json::btc_per_kvb(min_relay),
        "incrementalrelayfee": json::btc_per_kvb(1000),
        "unbroadcastcount": 0,
        "fullrbf": true,
    })
}

pub(super) fn estimatesmartfee(chain: &Chain, p: Params) -> RpcResult {
    let target = p.u64(0)?.ok_or_else(|| p.wrong_type(0, "number"))?;
    if !(1..=1008).contains(&target) {
        return Err(RpcError::new(
            codes::INVALID_PARAMETER,
            "Invalid conf_target, must be between 1 and 1008",
        ));
    }
    if let Some(mode) = p.str(1)?
        && !["unset", "economical", "conservative"].contains(&mode.to_ascii_lowercase().as_str())
    {
        return Err(RpcError::new(
            codes::INVALID_PARAMETER,
            "Invalid estimate_mode parameter, must be one of: \"unset\", \"economical\", \"conservative\"",
        ));
    }
    let per_kvb = chain.settings().fee_rate.to_sat_per_kwu() * 4;
    Ok(json!({ "feerate": json::btc_per_kvb(per_kvb), "blocks": target.max(2) }))
}
