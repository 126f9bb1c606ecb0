//! Transaction and block rules: context-free checks, finality, BIP68 relative locks, and
//! script verification by Bitcoin Core's own interpreter (`bitcoinconsensus`).

use std::collections::{HashMap, HashSet};

use bitcoin::consensus::encode::serialize;
use bitcoin::{Amount, OutPoint, Sequence, Transaction, TxOut};

use crate::params::{LOCKTIME_THRESHOLD, MAX_BLOCK_WEIGHT, MAX_MONEY, SCRIPT_FLAGS};

/// An unspent output and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coin {
    /// The output.
    pub output: TxOut,
    /// The height of the block that created it; for a mempool parent, the next block's.
    pub height: u32,
    /// Whether a coinbase created it.
    pub is_coinbase: bool,
}

/// Why a transaction is refused, in Bitcoin Core's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxError {
    /// An input is missing or already spent (Core: `TxValidationResult::TX_MISSING_INPUTS`).
    MissingInputs,
    /// The transaction is already confirmed.
    AlreadyInChain,
    /// Refused with a reject reason (Core's `state.GetRejectReason()`), and details.
    Rejected {
        /// The reject reason, e.g. `non-BIP68-final`.
        reason: String,
        /// Extra detail Core appends after a comma, if any.
        details: Option<String>,
    },
    /// Refused only because its own fee rate is too low: a package may still carry it.
    FeeTooLow {
        /// The reject reason, e.g. `min relay fee not met`.
        reason: String,
        /// Extra detail, e.g. `0 < 110`.
        details: Option<String>,
    },
}

impl TxError {
    /// A rejection without details.
    pub fn rejected(reason: impl Into<String>) -> Self {
        TxError::Rejected {
            reason: reason.into(),
            details: None,
        }
    }

    /// A rejection with details.
    pub fn rejected_with(reason: impl Into<String>, details: impl Into<String>) -> Self {
        TxError::Rejected {
            reason: reason.into(),
            details: Some(details.into()),
        }
    }

    /// The reject reason as Core prints it in RPC errors (`reason, details`).
    pub fn message(&self) -> String {
        match self {
            TxError::MissingInputs => "bad-txns-inputs-missingorspent".to_owned(),
            TxError::AlreadyInChain => "Transaction outputs already in utxo set".to_owned(),
            TxError::Rejected { reason, details } | TxError::FeeTooLow { reason, details } => {
                match details {
                    Some(details) => format!("{reason}, {details}"),
                    None => reason.clone(),
                }
            }
        }
    }

    /// The reject reason alone (`reject-reason` of `testmempoolaccept`).
    pub fn reason(&self) -> String {
        match self {
            TxError::MissingInputs => "missing-inputs".to_owned(),
            TxError::AlreadyInChain => "txn-already-known".to_owned(),
            TxError::Rejected { reason, .. } | TxError::FeeTooLow { reason, .. } => reason.clone(),
        }
    }
}

/// Core's `CheckTransaction`: the rules that need no context.
pub fn check_transaction(tx: &Transaction) -> Result<(), TxError> {
    if tx.input.is_empty() {
        return Err(TxError::rejected("bad-txns-vin-empty"));
    }
    if tx.output.is_empty() {
        return Err(TxError::rejected("bad-txns-vout-empty"));
    }
    if tx.weight().to_wu() > MAX_BLOCK_WEIGHT {
        return Err(TxError::rejected("bad-txns-oversize"));
    }
    let mut total: u64 = 0;
    for output in &tx.output {
        let value = output.value.to_sat();
        if value > MAX_MONEY {
            return Err(TxError::rejected("bad-txns-vout-toolarge"));
        }
        total = total.saturating_add(value);
        if total > MAX_MONEY {
            return Err(TxError::rejected("bad-txns-txouttotal-toolarge"));
        }
    }
    let mut seen = HashSet::with_capacity(tx.input.len());
    for input in &tx.input {
        if !seen.insert(input.previous_output) {
            return Err(TxError::rejected("bad-txns-inputs-duplicate"));
        }
    }
    if tx.is_coinbase() {
        let len = tx.input[0].script_sig.len();
        if !(2..=100).contains(&len) {
            return Err(TxError::rejected("bad-cb-length"));
        }
    } else if tx.input.iter().any(|input| input.previous_output.is_null()) {
        return Err(TxError::rejected("bad-txns-prevout-null"));
    }
    Ok(())
}

/// Core's `IsFinalTx`: may `tx` be in a block at `height` whose locktime cutoff (the
/// median time past of its parent, BIP113) is `cutoff_time`?
pub fn is_final(tx: &Transaction, height: u32, cutoff_time: u32) -> bool {
    let lock_time = tx.lock_time.to_consensus_u32();
    if lock_time == 0 {
        return true;
    }
    let limit = if lock_time < LOCKTIME_THRESHOLD {
        height
    } else {
        cutoff_time
    };
    if lock_time < limit {
        return true;
    }
    tx.input.iter().all(|input| input.sequence == Sequence::MAX)
}

/// Core's `CalculateSequenceLocks` + `EvaluateSequenceLocks` (BIP68): may `tx` be in a
/// block at `height`, given each input's coin height and the median time past of the
/// block before a given height (`mtp_before(h)` = MTP of block `h - 1`)?
pub fn sequence_locks_satisfied(
    tx: &Transaction,
    coin_heights: &[u32],
    height: u32,
    mtp_before: impl Fn(u32) -> u32,
) -> bool {
    if tx.version.0 < 2 {
        return true;
    }
    const MASK: u32 = 0x0000_ffff;
    let mut min_height: i64 = -1;
    let mut min_time: i64 = -1;
    for (input, coin_height) in tx.input.iter().zip(coin_heights) {
        let sequence = input.sequence;
        if !sequence.is_relative_lock_time() {
            continue;
        }
        let value = i64::from(sequence.to_consensus_u32() & MASK);
        if sequence.is_time_locked() {
            // MTP of the block before the coin's block ("GetAncestor(max(coinHeight - 1, 0))").
            let coin_time = i64::from(mtp_before(*coin_height));
            min_time = min_time.max(coin_time + (value << 9) - 1);
        } else {
            min_height = min_height.max(i64::from(*coin_height) + value - 1);
        }
    }
    min_height < i64::from(height) && min_time < i64::from(mtp_before(height))
}

/// Verifies every input's script with Bitcoin Core's interpreter and the regtest flags.
/// `spent` holds the outputs the inputs spend, in input order.
pub fn verify_scripts(tx: &Transaction, spent: &[TxOut]) -> Result<(), TxError> {
    let bytes = serialize(tx);
    let utxos: Vec<bitcoinconsensus::Utxo> = spent
        .iter()
        .map(|output| bitcoinconsensus::Utxo {
            script_pubkey: output.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: output.script_pubkey.len() as u32,
            value: output.value.to_sat() as i64,
        })
        .collect();
    for (index, output) in spent.iter().enumerate() {
        if let Err(err) = bitcoinconsensus::verify_with_flags(
            output.script_pubkey.as_bytes(),
            output.value.to_sat(),
            &bytes,
            Some(&utxos),
            index,
            SCRIPT_FLAGS,
        ) {
            // libbitcoinconsensus says only that the script failed (not Core's ScriptError),
            // unless the call itself was malformed.
            let detail = match err {
                bitcoinconsensus::Error::ERR_SCRIPT => {
                    format!("input {index}: script verification failed")
                }
                other => format!("input {index}: {other}"),
            };
            return Err(TxError::rejected(format!(
                "mandatory-script-verify-flag-failed ({detail})"
            )));
        }
    }
    Ok(())
}

/// The inputs' coins of `tx`, from `lookup`; `MissingInputs` if any is absent.
pub fn gather_coins(
    tx: &Transaction,
    lookup: impl Fn(&OutPoint) -> Option<Coin>,
) -> Result<Vec<Coin>, TxError> {
    tx.input
        .iter()
        .map(|input| lookup(&input.previous_output).ok_or(TxError::MissingInputs))
        .collect()
}

/// The checks on inputs that both the mempool and blocks apply (Core's
/// `Consensus::CheckTxInputs`): maturity and amounts. Returns the fee.
pub fn check_inputs(
    tx: &Transaction,
    coins: &[Coin],
    spend_height: u32,
) -> Result<Amount, TxError> {
    let mut total_in: u64 = 0;
    for coin in coins {
        if coin.is_coinbase
            && spend_height.saturating_sub(coin.height) < crate::params::COINBASE_MATURITY
        {
            return Err(TxError::rejected_with(
                "bad-txns-premature-spend-of-coinbase",
                format!(
                    "tried to spend coinbase at depth {}",
                    spend_height.saturating_sub(coin.height)
                ),
            ));
        }
        total_in = total_in.saturating_add(coin.output.value.to_sat());
        if total_in > MAX_MONEY {
            return Err(TxError::rejected("bad-txns-inputvalues-outofrange"));
        }
    }
    let total_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
    if total_in < total_out {
        return Err(TxError::rejected_with(
            "bad-txns-in-belowout",
            format!(
                "value in ({}) < value out ({})",
                Amount::from_sat(total_in).to_btc(),
                Amount::from_sat(total_out).to_btc()
            ),
        ));
    }
    Ok(Amount::from_sat(total_in - total_out))
}

/// A view of coins for validating a sequence of transactions (a block, or a package):
/// the base lookup plus the outputs the earlier ones created, minus what they spent.
pub struct CoinOverlay<F: Fn(&OutPoint) -> Option<Coin>> {
    base: F,
    created: HashMap<OutPoint, Coin>,
    spent: HashSet<OutPoint>,
}

impl<F: Fn(&OutPoint) -> Option<Coin>> CoinOverlay<F> {
    /// An overlay over `base`.
    pub fn new(base: F) -> Self {
        Self {
            base,
            created: HashMap::new(),
            spent: HashSet::new(),
        }
    }

    /// The coin at `outpoint`, if unspent in the view.
    pub fn coin(&self, outpoint: &OutPoint) -> Option<Coin> {
        if self.spent.contains(outpoint) {
            return None;
        }
        self.created
            .get(outpoint)
            .cloned()
            .or_else(|| (self.base)(outpoint))
    }

    /// Applies `tx`: spends its inputs, creates its outputs at `height`.
    pub fn apply(&mut self, tx: &Transaction, height: u32) {
        if !tx.is_coinbase() {
            for input in &tx.input {
                if self.created.remove(&input.previous_output).is_none() {
                    self.spent.insert(input.previous_output);
                }
            }
        }
        let txid = tx.compute_txid();
        for (vout, output) in tx.output.iter().enumerate() {
            self.created.insert(
                OutPoint::new(txid, vout as u32),
                Coin {
                    output: output.clone(),
                    height,
                    is_coinbase: tx.is_coinbase(),
                },
            );
        }
    }

    /// The net effect: coins created (and not spent again), and base coins spent.
    pub fn into_parts(self) -> (HashMap<OutPoint, Coin>, HashSet<OutPoint>) {
        (self.created, self.spent)
    }
}
