//! Bitcoin Core's REST interface (`-rest`): unauthenticated, read-only, `/rest/...`.

use std::str::FromStr;

use bitcoin::consensus::encode::{Encodable, serialize, serialize_hex};
use bitcoin::{BlockHash, OutPoint, Txid, VarInt};
use serde_json::{Value, json};

use crate::chain::Chain;
use crate::json;

/// Most outpoints one `getutxos` request may ask about.
const MAX_GETUTXOS_OUTPOINTS: usize = 15;
/// The height Core reports for coins that exist only in the mempool.
const MEMPOOL_HEIGHT: u32 = 0x7fff_ffff;

/// A REST answer: status, content type, body.
pub struct RestResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

fn error(status: u16, message: impl Into<String>) -> RestResponse {
    RestResponse {
        status,
        content_type: "text/plain",
        body: format!("{}\r\n", message.into()).into_bytes(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Bin,
    Hex,
    Json,
}

/// Splits `name.ext` into the name and a known format (Core's `ParseDataFormat`).
fn parse_format(part: &str) -> Result<(&str, Format), RestResponse> {
    let not_found = || {
        error(
            404,
            "output format not found (available: .bin, .hex, .json)",
        )
    };
    let (name, ext) = part.rsplit_once('.').ok_or_else(not_found)?;
    let format = match ext {
        "bin" => Format::Bin,
        "hex" => Format::Hex,
        "json" => Format::Json,
        _ => return Err(not_found()),
    };
    Ok((name, format))
}

fn ok(format: Format, binary: Vec<u8>, json_value: impl FnOnce() -> Value) -> RestResponse {
    match format {
        Format::Bin => RestResponse {
            status: 200,
            content_type: "application/octet-stream",
            body: binary,
        },
        Format::Hex => RestResponse {
            status: 200,
            content_type: "text/plain",
            body: format!("{}\n", hex::encode(&binary)).into_bytes(),
        },
        Format::Json => json_response(json_value()),
    }
}

fn json_response(value: Value) -> RestResponse {
    RestResponse {
        status: 200,
        content_type: "application/json",
        body: format!("{value}\n").into_bytes(),
    }
}

fn parse_hash(text: &str) -> Result<BlockHash, RestResponse> {
    if text.len() != 64 {
        return Err(error(400, format!("Invalid hash: {text}")));
    }
    BlockHash::from_str(text).map_err(|_| error(400, format!("Invalid hash: {text}")))
}

/// Answers `GET /rest/<path>?<query>`.
pub fn handle(chain: &Chain, path: &str, query: Option<&str>) -> RestResponse {
    let result = if let Some(rest) = path.strip_prefix("block/notxdetails/") {
        block(chain, rest, false)
    } else if let Some(rest) = path.strip_prefix("block/") {
        block(chain, rest, true)
    } else if let Some(rest) = path.strip_prefix("headers/") {
        headers(chain, rest, query)
    } else if let Some(rest) = path.strip_prefix("blockhashbyheight/") {
        block_hash_by_height(chain, rest)
    } else if let Some(rest) = path.strip_prefix("getutxos") {
        get_utxos(chain, rest)
    } else if let Some(rest) = path.strip_prefix("tx/") {
        tx(chain, rest)
    } else if path == "chaininfo.json" || path.starts_with("chaininfo") {
        chain_info(chain, path)
    } else if let Some(rest) = path.strip_prefix("mempool/") {
        mempool(chain, rest)
    } else {
        Err(error(404, format!("Not found: /rest/{path}")))
    };
    result.unwrap_or_else(|response| response)
}

fn block(chain: &Chain, part: &str, tx_details: bool) -> Result<RestResponse, RestResponse> {
    let (hash, format) = parse_format(part)?;
    let hash = parse_hash(hash)?;
    let entry = chain
        .entry(&hash)
        .ok_or_else(|| error(404, format!("{hash} not found")))?;
    Ok(ok(format, serialize(&*entry.block), || {
        json::block(chain, entry, if tx_details { 2 } else { 1 })
    }))
}

fn headers(chain: &Chain, part: &str, query: Option<&str>) -> Result<RestResponse, RestResponse> {
    // Deprecated form: headers/<count>/<hash>.<ext>; current: headers/<hash>.<ext>?count=<n>.
    let (count_text, rest) = match part.split_once('/') {
        Some((count, rest)) => (Some(count.to_owned()), rest),
        None => (
            query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| pair.strip_prefix("count=").map(str::to_owned)),
            part,
        ),
    };
    let (hash, format) = parse_format(rest)?;
    let count_text = count_text.unwrap_or_else(|| "5".to_owned());
    let count: u32 = count_text
        .parse()
        .ok()
        .filter(|n| (1..=2000).contains(n))
        .ok_or_else(|| {
            error(
                400,
                format!(
                    "Header count is invalid or out of acceptable range (1-2000): {count_text}"
                ),
            )
        })?;
    let hash = parse_hash(hash)?;
    let mut entries = Vec::new();
    if let Some(entry) = chain.entry(&hash).filter(|_| chain.is_active(&hash)) {
        for height in entry.height..(entry.height + count).min(chain.height() + 1) {
            let at = chain.hash_at(height).expect("in range");
            entries.push(chain.entry(&at).expect("known"));
        }
    }
    // A block off the active chain (or unknown) gives an empty list, as in Core.
    let mut binary = Vec::with_capacity(entries.len() * 80);
    for entry in &entries {
        binary.extend(serialize(&entry.block.header));
    }
    Ok(ok(format, binary, || {
        Value::Array(
            entries
                .iter()
                .map(|entry| json::header(chain, entry))
                .collect(),
        )
    }))
}

fn block_hash_by_height(chain: &Chain, part: &str) -> Result<RestResponse, RestResponse> {
    let (height_text, format) = parse_format(part)?;
    let height: i64 = height_text
        .parse()
        .map_err(|_| error(400, format!("Invalid height: {height_text}")))?;
    if height < 0 {
        return Err(error(400, format!("Invalid height: {height_text}")));
    }
    let hash = u32::try_from(height)
        .ok()
        .and_then(|h| chain.hash_at(h))
        .ok_or_else(|| error(404, "Block height out of range"))?;
    Ok(match format {
        Format::Hex => RestResponse {
            status: 200,
            content_type: "text/plain",
            body: format!("{hash}\n").into_bytes(),
        },
        _ => ok(
            format,
            serialize(&hash),
            || json!({ "blockhash": hash.to_string() }),
        ),
    })
}

fn get_utxos(chain: &Chain, part: &str) -> Result<RestResponse, RestResponse> {
    // getutxos[/checkmempool]/<txid>-<n>[/<txid>-<n>...].<ext>
    let (path, format) = parse_format(part)?;
    let mut pieces: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let check_mempool = pieces.first() == Some(&"checkmempool");
    if check_mempool {
        pieces.remove(0);
    }
    if pieces.is_empty() {
        return Err(error(400, "Error: empty request"));
    }
    if pieces.len() > MAX_GETUTXOS_OUTPOINTS {
        return Err(error(
            400,
            format!(
                "Error: max outpoints exceeded (max: {MAX_GETUTXOS_OUTPOINTS}, tried: {})",
                pieces.len()
            ),
        ));
    }
    let mut outpoints = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let parsed = piece
            .split_once('-')
            .and_then(|(txid, n)| Some(OutPoint::new(Txid::from_str(txid).ok()?, n.parse().ok()?)));
        outpoints.push(parsed.ok_or_else(|| error(400, "Parse error"))?);
    }
    let mempool_spent = if check_mempool {
        chain.mempool().spent_outpoints()
    } else {
        Default::default()
    };
    let mut bits = Vec::with_capacity(outpoints.len());
    let mut found = Vec::new();
    for outpoint in &outpoints {
        let coin = if mempool_spent.contains(outpoint) {
            None
        } else if let Some(coin) = chain.utxo(outpoint) {
            Some((coin.height, coin.output.clone()))
        } else if check_mempool {
            chain
                .mempool()
                .get(&outpoint.txid)
                .and_then(|entry| entry.tx.output.get(outpoint.vout as usize))
                .map(|output| (MEMPOOL_HEIGHT, output.clone()))
        } else {
            None
        };
        bits.push(coin.is_some());
        found.extend(coin);
    }
    let mut bitmap = vec![0u8; bits.len().div_ceil(8)];
    for (i, bit) in bits.iter().enumerate() {
        if *bit {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    let mut binary = Vec::new();
    (chain.height() as i32)
        .consensus_encode(&mut binary)
        .expect("vec");
    chain.tip().consensus_encode(&mut binary).expect("vec");
    bitmap.consensus_encode(&mut binary).expect("vec");
    VarInt(found.len() as u64)
        .consensus_encode(&mut binary)
        .expect("vec");
    for (height, output) in &found {
        0u32.consensus_encode(&mut binary).expect("vec"); // nTxVerDummy
        height.consensus_encode(&mut binary).expect("vec");
        output.consensus_encode(&mut binary).expect("vec");
    }
    Ok(ok(format, binary, || {
        json!({
            "chainHeight": chain.height(),
            "chaintipHash": chain.tip().to_string(),
            "bitmap": bits.iter().map(|b| if *b { '1' } else { '0' }).collect::<String>(),
            "utxos": found.iter().map(|(height, output)| json!({
                "height": height,
                "value": json::btc(output.value),
                "scriptPubKey": json::script_pubkey(&output.script_pubkey),
            })).collect::<Vec<_>>(),
        })
    }))
}

fn tx(chain: &Chain, part: &str) -> Result<RestResponse, RestResponse> {
    let (txid_text, format) = parse_format(part)?;
    let txid =
        Txid::from_str(txid_text).map_err(|_| error(400, format!("Invalid hash: {txid_text}")))?;
    let (tx, block) = match chain.mempool().get(&txid) {
        Some(entry) => (entry.tx.clone(), None),
        None => match chain.confirmed_tx(&txid) {
            Some((tx, hash)) => (tx.clone(), Some(hash)),
            None => return Err(error(404, format!("{txid} not found"))),
        },
    };
    Ok(ok(format, serialize(&tx), || {
        let mut value = json::transaction(&tx);
        value["hex"] = json!(serialize_hex(&tx));
        if let Some(hash) = block {
            value["blockhash"] = json!(hash.to_string());
        }
        value
    }))
}

fn chain_info(chain: &Chain, path: &str) -> Result<RestResponse, RestResponse> {
    let (_, format) = parse_format(path)?;
    if format != Format::Json {
        return Err(error(404, "output format not found (available: .json)"));
    }
    Ok(json_response(crate::rpc::blockchain_info(chain)))
}

fn mempool(chain: &Chain, part: &str) -> Result<RestResponse, RestResponse> {
    let (name, format) = parse_format(part)?;
    if format != Format::Json {
        return Err(error(404, "output format not found (available: .json)"));
    }
    match name {
        "info" => Ok(json_response(crate::rpc::mempool_info(chain))),
        "contents" => Ok(json_response(crate::rpc::mempool_contents(chain, true))),
        _ => Err(error(
            400,
            "Invalid URI format. Expected /rest/mempool/<info|contents>.json",
        )),
    }
}
