//! Bitcoin Core's JSON encodings of blocks, headers, transactions, scripts and mempool
//! entries, field for field, so that clients which deserialize them strictly work.

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Address, Amount, Block, BlockHash, Network, Script, Transaction};
use serde_json::{Map, Value, json};

use crate::chain::{BlockEntry, Chain};
use crate::mempool::MempoolEntry;
use crate::params;

/// An amount in BTC as Core prints it: a JSON number with (at most) 8 decimals.
pub fn btc(amount: Amount) -> Value {
    // Through the decimal text, so the number carries no binary-float noise.
    let text = format!("{:.8}", amount.to_sat() as f64 / 100_000_000.0);
    serde_json::from_str(&text).expect("a decimal is valid JSON")
}

/// A fee rate in BTC/kvB from satoshis per 1000 vbytes.
pub fn btc_per_kvb(sat_per_kvb: u64) -> Value {
    btc(Amount::from_sat(sat_per_kvb))
}

/// Core's script type names (`scriptPubKey.type`).
pub fn script_type(script: &Script) -> &'static str {
    if script.is_p2pk() {
        "pubkey"
    } else if script.is_p2pkh() {
        "pubkeyhash"
    } else if script.is_p2sh() {
        "scripthash"
    } else if script.is_multisig() {
        "multisig"
    } else if script.is_op_return() {
        "nulldata"
    } else if script.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if script.is_p2wsh() {
        "witness_v0_scripthash"
    } else if script.is_p2tr() {
        "witness_v1_taproot"
    } else if script.as_bytes() == [0x51, 0x02, 0x4e, 0x73] {
        "anchor"
    } else if script.is_witness_program() {
        "witness_unknown"
    } else {
        "nonstandard"
    }
}

const DESCRIPTOR_INPUT_CHARSET: &str = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ ";
const DESCRIPTOR_CHECKSUM_CHARSET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn descriptor_polymod(c: u64, value: u64) -> u64 {
    let c0 = c >> 35;
    let mut c = ((c & 0x7_ffff_ffff) << 5) ^ value;
    for (bit, generator) in [
        0xf5_dee5_1989u64,
        0xa9_fdca_3312,
        0x1b_ab10_e32d,
        0x37_06b1_677a,
        0x64_4d62_6ffd,
    ]
    .iter()
    .enumerate()
    {
        if c0 & (1 << bit) != 0 {
            c ^= generator;
        }
    }
    c
}

/// `descriptor#checksum` (BIP380), as Core prints descriptors.
pub fn with_descriptor_checksum(descriptor: &str) -> String {
    let mut c = 1u64;
    let mut class = 0u64;
    let mut class_count = 0;
    for ch in descriptor.chars() {
        let Some(position) = DESCRIPTOR_INPUT_CHARSET.find(ch) else {
            return descriptor.to_owned();
        };
        let position = position as u64;
        c = descriptor_polymod(c, position & 31);
        class = class * 3 + (position >> 5);
        class_count += 1;
        if class_count == 3 {
            c = descriptor_polymod(c, class);
            class = 0;
            class_count = 0;
        }
    }
    if class_count > 0 {
        c = descriptor_polymod(c, class);
    }
    for _ in 0..8 {
        c = descriptor_polymod(c, 0);
    }
    c ^= 1;
    let checksum: String = (0..8)
        .map(|j| DESCRIPTOR_CHECKSUM_CHARSET[((c >> (5 * (7 - j))) & 31) as usize] as char)
        .collect();
    format!("{descriptor}#{checksum}")
}

/// Core's `scriptPubKey` object: `asm`, `desc`, `hex`, `address` (when there is one),
/// `type`.
pub fn script_pubkey(script: &Script) -> Value {
    let mut object = Map::new();
    object.insert("asm".into(), json!(script.to_asm_string()));
    let address = Address::from_script(script, Network::Regtest).ok();
    let descriptor = match &address {
        Some(address) => format!("addr({address})"),
        None => format!("raw({})", hex::encode(script.as_bytes())),
    };
    object.insert("desc".into(), json!(with_descriptor_checksum(&descriptor)));
    object.insert("hex".into(), json!(hex::encode(script.as_bytes())));
    if let Some(address) = address {
        object.insert("address".into(), json!(address.to_string()));
    }
    object.insert("type".into(), json!(script_type(script)));
    Value::Object(object)
}

/// Core's decoded transaction (`decoderawtransaction` / `getrawtransaction` verbose).
pub fn transaction(tx: &Transaction) -> Value {
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|input| {
            let mut object = Map::new();
            if tx.is_coinbase() {
                object.insert(
                    "coinbase".into(),
                    json!(hex::encode(input.script_sig.as_bytes())),
                );
            } else {
                object.insert("txid".into(), json!(input.previous_output.txid.to_string()));
                object.insert("vout".into(), json!(input.previous_output.vout));
                object.insert(
                    "scriptSig".into(),
                    json!({
                        "asm": input.script_sig.to_asm_string(),
                        "hex": hex::encode(input.script_sig.as_bytes()),
                    }),
                );
            }
            if !input.witness.is_empty() {
                object.insert(
                    "txinwitness".into(),
                    json!(input.witness.iter().map(hex::encode).collect::<Vec<_>>()),
                );
            }
            object.insert("sequence".into(), json!(input.sequence.to_consensus_u32()));
            Value::Object(object)
        })
        .collect();
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, output)| {
            json!({
                "value": btc(output.value),
                "n": n,
                "scriptPubKey": script_pubkey(&output.script_pubkey),
            })
        })
        .collect();
    json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": tx.vsize(),
        "weight": tx.weight().to_wu(),
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": vout,
    })
}

fn hex32(bytes: [u8; 32]) -> String {
    hex::encode(bytes)
}

/// Core's verbose block header (`getblockheader` with verbose=true).
pub fn header(chain: &Chain, entry: &BlockEntry) -> Value {
    let header = &entry.block.header;
    let hash = header.block_hash();
    let mut object = Map::new();
    object.insert("hash".into(), json!(hash.to_string()));
    object.insert("confirmations".into(), json!(chain.confirmations(&hash)));
    object.insert("height".into(), json!(entry.height));
    object.insert("version".into(), json!(header.version.to_consensus()));
    object.insert(
        "versionHex".into(),
        json!(format!("{:08x}", header.version.to_consensus())),
    );
    object.insert("merkleroot".into(), json!(header.merkle_root.to_string()));
    object.insert("time".into(), json!(header.time));
    object.insert("mediantime".into(), json!(entry.median_time_past));
    object.insert("nonce".into(), json!(header.nonce));
    object.insert(
        "bits".into(),
        json!(format!("{:08x}", header.bits.to_consensus())),
    );
    object.insert("difficulty".into(), json!(params::difficulty(header)));
    object.insert(
        "chainwork".into(),
        json!(hex32(entry.chain_work.to_be_bytes())),
    );
    object.insert("nTx".into(), json!(entry.block.txdata.len()));
    if entry.height > 0 {
        object.insert(
            "previousblockhash".into(),
            json!(header.prev_blockhash.to_string()),
        );
    }
    if let Some(next) = next_active(chain, entry) {
        object.insert("nextblockhash".into(), json!(next.to_string()));
    }
    Value::Object(object)
}

fn next_active(chain: &Chain, entry: &BlockEntry) -> Option<BlockHash> {
    let hash = entry.block.block_hash();
    if !chain.is_active(&hash) {
        return None;
    }
    chain.hash_at(entry.height + 1)
}

/// Core's `getblock` with verbosity 1 (txids) or 2 (decoded transactions).
pub fn block(chain: &Chain, entry: &BlockEntry, verbosity: u8) -> Value {
    let block: &Block = &entry.block;
    let mut object = match header(chain, entry) {
        Value::Object(object) => object,
        _ => unreachable!("header() builds an object"),
    };
    let stripped = bitcoin::consensus::encode::serialize(&strip_witness(block)).len();
    object.insert("strippedsize".into(), json!(stripped));
    object.insert("size".into(), json!(block.total_size()));
    object.insert("weight".into(), json!(block.weight().to_wu()));
    let txs: Vec<Value> = if verbosity >= 2 {
        block.txdata.iter().map(transaction).collect()
    } else {
        block
            .txdata
            .iter()
            .map(|tx| json!(tx.compute_txid().to_string()))
            .collect()
    };
    object.insert("tx".into(), Value::Array(txs));
    // Core lists the fields in this order; keep "tx" after the size fields.
    let ordered = [
        "hash",
        "confirmations",
        "height",
        "version",
        "versionHex",
        "merkleroot",
        "time",
        "mediantime",
        "nonce",
        "bits",
        "difficulty",
        "chainwork",
        "nTx",
        "previousblockhash",
        "nextblockhash",
        "strippedsize",
        "size",
        "weight",
        "tx",
    ];
    let mut out = Map::new();
    for key in ordered {
        if let Some(value) = object.remove(key) {
            out.insert(key.into(), value);
        }
    }
    Value::Object(out)
}

fn strip_witness(block: &Block) -> Block {
    let mut stripped = block.clone();
    for tx in &mut stripped.txdata {
        for input in &mut tx.input {
            input.witness.clear();
        }
    }
    stripped
}

/// A hex dump of anything consensus-encodable.
pub fn to_hex<T: bitcoin::consensus::Encodable>(value: &T) -> Value {
    json!(serialize_hex(value))
}

/// Core's mempool entry (`getmempoolentry`, verbose `getrawmempool`).
pub fn mempool_entry(chain: &Chain, entry: &MempoolEntry) -> Value {
    let mempool = chain.mempool();
    let ancestors = mempool.ancestors(&entry.txid);
    let descendants = mempool.descendants(&entry.txid);
    let sum = |ids: &[bitcoin::Txid]| -> (u64, Amount) {
        ids.iter()
            .filter_map(|id| mempool.get(id))
            .fold((0, Amount::ZERO), |(size, fee), e| {
                (size + e.vsize, fee + e.fee)
            })
    };
    let (ancestor_size, ancestor_fee) = sum(&ancestors);
    let (descendant_size, descendant_fee) = sum(&descendants);
    let parents: Vec<String> = mempool
        .parents(&entry.txid)
        .iter()
        .map(|t| t.to_string())
        .collect();
    let children: Vec<String> = mempool
        .children(&entry.txid)
        .iter()
        .map(|t| t.to_string())
        .collect();
    json!({
        "vsize": entry.vsize,
        "weight": entry.weight,
        "time": entry.time,
        "height": entry.height,
        "descendantcount": descendants.len() + 1,
        "descendantsize": descendant_size + entry.vsize,
        "ancestorcount": ancestors.len() + 1,
        "ancestorsize": ancestor_size + entry.vsize,
        "wtxid": entry.wtxid.to_string(),
        "fees": {
            "base": btc(entry.fee),
            "modified": btc(entry.fee),
            "ancestor": btc(entry.fee + ancestor_fee),
            "descendant": btc(entry.fee + descendant_fee),
        },
        "depends": parents,
        "spentby": children,
        "bip125-replaceable": true,
        "unbroadcast": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_print_like_core() {
        assert_eq!(btc(Amount::from_sat(1410)).to_string(), "0.0000141");
        assert_eq!(btc(Amount::from_btc(50.0).unwrap()).to_string(), "50.0");
        assert_eq!(
            btc(Amount::from_sat(2_099_999_997_690_000)).to_string(),
            "20999999.9769"
        );
    }

    #[test]
    fn descriptor_checksums_match_core() {
        // From Bitcoin Core's descriptor tests (BIP380 examples).
        assert_eq!(
            with_descriptor_checksum("raw(deadbeef)"),
            "raw(deadbeef)#89f8spxm"
        );
        assert_eq!(
            with_descriptor_checksum("addr(mkmZxiEcEd8ZqjQWVZuC6so5dFMKEFpN2j)"),
            "addr(mkmZxiEcEd8ZqjQWVZuC6so5dFMKEFpN2j)#02wpgw69"
        );
    }
}
