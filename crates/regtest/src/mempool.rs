//! The mempool: acceptance with Bitcoin Core's checks and reject reasons, full
//! replace-by-fee, packages, and eviction of mined and conflicting transactions.

use std::collections::{HashMap, HashSet};

use bitcoin::{Amount, Block, FeeRate, OutPoint, Transaction, Txid, Wtxid};

use crate::chain::Chain;
use crate::validation::{self, Coin, TxError};

/// Bitcoin Core's default incremental relay fee rate (1 sat/vB), for RBF.
const INCREMENTAL_RELAY_SAT_PER_KVB: u64 = 1_000;
/// Most transactions one replacement may evict (BIP125 rule 5).
const MAX_REPLACEMENT_EVICTIONS: usize = 100;

/// One transaction in the mempool.
#[derive(Clone, Debug)]
pub struct MempoolEntry {
    /// The transaction.
    pub tx: Transaction,
    /// Its txid.
    pub txid: Txid,
    /// Its wtxid.
    pub wtxid: Wtxid,
    /// Its fee.
    pub fee: Amount,
    /// Its virtual size.
    pub vsize: u64,
    /// Its weight.
    pub weight: u64,
    /// When it entered, Unix seconds.
    pub time: u64,
    /// The tip height when it entered.
    pub height: u32,
    sequence: u64,
}

/// The transactions waiting for a block.
#[derive(Default)]
pub struct Mempool {
    entries: HashMap<Txid, MempoolEntry>,
    spenders: HashMap<OutPoint, Txid>,
    next_sequence: u64,
}

/// How a transaction is being submitted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AcceptMode {
    /// `sendrawtransaction`: refuse fee rates above `max_fee_rate` (if set).
    Broadcast {
        /// Core's `maxfeerate` parameter.
        max_fee_rate: Option<FeeRate>,
    },
    /// `testmempoolaccept`: check everything, change nothing.
    Test {
        /// Core's `maxfeerate` parameter.
        max_fee_rate: Option<FeeRate>,
    },
    /// Returning from a disconnected block: no fee-rate floor (Core's `bypass_limits`).
    Reorg,
    /// Part of a package whose fee rate is checked as a whole.
    Package,
}

/// A transaction the mempool took (or would take, in test mode).
#[derive(Clone, Debug)]
pub struct Accepted {
    /// Its txid.
    pub txid: Txid,
    /// Its wtxid.
    pub wtxid: Wtxid,
    /// Its virtual size.
    pub vsize: u64,
    /// Its fee.
    pub fee: Amount,
    /// The transactions it replaced.
    pub replaced: Vec<Txid>,
}

impl Mempool {
    /// Whether `txid` is in the mempool.
    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }

    /// The entry of `txid`.
    pub fn get(&self, txid: &Txid) -> Option<&MempoolEntry> {
        self.entries.get(txid)
    }

    /// Number of transactions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of the virtual sizes.
    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|e| e.vsize).sum()
    }

    /// Sum of the fees.
    pub fn total_fee(&self) -> Amount {
        self.entries.values().map(|e| e.fee).sum()
    }

    /// The mempool transaction spending `outpoint`, if any.
    pub fn spender(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.spenders.get(outpoint).copied()
    }

    /// Every outpoint a mempool transaction spends.
    pub fn spent_outpoints(&self) -> HashSet<OutPoint> {
        self.spenders.keys().copied().collect()
    }

    /// The mempool parents of `txid`.
    pub fn parents(&self, txid: &Txid) -> Vec<Txid> {
        let Some(entry) = self.entries.get(txid) else {
            return Vec::new();
        };
        let mut parents: Vec<Txid> = entry
            .tx
            .input
            .iter()
            .map(|input| input.previous_output.txid)
            .filter(|parent| self.entries.contains_key(parent))
            .collect();
        parents.sort();
        parents.dedup();
        parents
    }

    /// The mempool children of `txid`.
    pub fn children(&self, txid: &Txid) -> Vec<Txid> {
        let Some(entry) = self.entries.get(txid) else {
            return Vec::new();
        };
        let mut children: Vec<Txid> = (0..entry.tx.output.len() as u32)
            .filter_map(|vout| self.spenders.get(&OutPoint::new(*txid, vout)).copied())
            .collect();
        children.sort();
        children.dedup();
        children
    }

    /// All in-mempool ancestors of `txid` (not itself).
    pub fn ancestors(&self, txid: &Txid) -> Vec<Txid> {
        self.walk(txid, |t| self.parents(t))
    }

    /// All in-mempool descendants of `txid` (not itself).
    pub fn descendants(&self, txid: &Txid) -> Vec<Txid> {
        self.walk(txid, |t| self.children(t))
    }

    fn walk(&self, start: &Txid, next: impl Fn(&Txid) -> Vec<Txid>) -> Vec<Txid> {
        let mut seen = HashSet::new();
        let mut stack = next(start);
        let mut out = Vec::new();
        while let Some(txid) = stack.pop() {
            if seen.insert(txid) {
                out.push(txid);
                stack.extend(next(&txid));
            }
        }
        out
    }

    /// Every entry, parents before children, then in arrival order.
    pub fn sorted_entries(&self) -> Vec<&MempoolEntry> {
        let mut order: Vec<&MempoolEntry> = self.entries.values().collect();
        order.sort_by_key(|e| e.sequence);
        let mut placed = HashSet::new();
        let mut out = Vec::with_capacity(order.len());
        while out.len() < order.len() {
            let before = out.len();
            for entry in &order {
                if placed.contains(&entry.txid) {
                    continue;
                }
                if self.parents(&entry.txid).iter().all(|p| placed.contains(p)) {
                    placed.insert(entry.txid);
                    out.push(*entry);
                }
            }
            if out.len() == before {
                break; // cannot happen: the mempool has no cycles
            }
        }
        out
    }

    /// Transactions for the next block: parents first, until `max_weight`.
    pub fn block_template(&self, max_weight: u64) -> Vec<Transaction> {
        let mut weight = 0;
        let mut included = HashSet::new();
        let mut txs = Vec::new();
        for entry in self.sorted_entries() {
            let parents_in = self
                .parents(&entry.txid)
                .iter()
                .all(|p| included.contains(p));
            if !parents_in || weight + entry.weight > max_weight {
                continue;
            }
            weight += entry.weight;
            included.insert(entry.txid);
            txs.push(entry.tx.clone());
        }
        txs
    }

    fn insert(&mut self, mut entry: MempoolEntry) {
        entry.sequence = self.next_sequence;
        self.next_sequence += 1;
        for input in &entry.tx.input {
            self.spenders.insert(input.previous_output, entry.txid);
        }
        self.entries.insert(entry.txid, entry);
    }

    fn remove(&mut self, txid: &Txid) -> Option<MempoolEntry> {
        let entry = self.entries.remove(txid)?;
        for input in &entry.tx.input {
            if self.spenders.get(&input.previous_output) == Some(txid) {
                self.spenders.remove(&input.previous_output);
            }
        }
        Some(entry)
    }

    /// Removes `txid` and everything that depends on it; returns what was removed.
    fn remove_with_descendants(&mut self, txid: &Txid) -> Vec<Txid> {
        let mut removed = self.descendants(txid);
        removed.push(*txid);
        for id in &removed {
            self.remove(id);
        }
        removed
    }

    /// Drops the transactions `block` confirmed, and those conflicting with them (with
    /// their descendants).
    pub fn remove_for_block(&mut self, block: &Block) {
        for tx in &block.txdata {
            self.remove(&tx.compute_txid());
        }
        for tx in block.txdata.iter().filter(|tx| !tx.is_coinbase()) {
            for input in &tx.input {
                if let Some(conflict) = self.spender(&input.previous_output) {
                    self.remove_with_descendants(&conflict);
                }
            }
        }
    }

    /// Empties the mempool, returning its entries parents first.
    pub(crate) fn take_all(&mut self) -> Vec<MempoolEntry> {
        let order: Vec<Txid> = self.sorted_entries().iter().map(|e| e.txid).collect();
        let mut out = Vec::with_capacity(order.len());
        for txid in order {
            if let Some(entry) = self.remove(&txid) {
                out.push(entry);
            }
        }
        out
    }
}

fn fee_for(rate: FeeRate, vsize: u64) -> Amount {
    Amount::from_sat((rate.to_sat_per_kwu() * 4 * vsize).div_ceil(1000))
}

fn sat_per_kvb(fee: Amount, vsize: u64) -> u64 {
    fee.to_sat() * 1000 / vsize.max(1)
}

/// Bitcoin Core's format of a fee rate in reject messages (`0.00001000 BTC/kvB`).
pub fn format_fee_rate(sat_per_kvb: u64) -> String {
    format!("{:.8} BTC/kvB", sat_per_kvb as f64 / 100_000_000.0)
}

/// Core's `AcceptToMemoryPool`: validates `tx` against the chain and the mempool, and
/// (unless testing) adds it, replacing what it conflicts with when the RBF rules allow.
pub fn accept(chain: &mut Chain, tx: Transaction, mode: AcceptMode) -> Result<Accepted, TxError> {
    accept_at(chain, tx, mode, None)
}

/// [`accept`], keeping an earlier entry time (for transactions re-added after a reorg).
pub(crate) fn accept_at(
    chain: &mut Chain,
    tx: Transaction,
    mode: AcceptMode,
    time: Option<u64>,
) -> Result<Accepted, TxError> {
    validation::check_transaction(&tx)?;
    if tx.is_coinbase() {
        return Err(TxError::rejected("coinbase"));
    }
    let txid = tx.compute_txid();
    let wtxid = tx.compute_wtxid();
    if let Some(existing) = chain.mempool.get(&txid) {
        return Err(if existing.wtxid == wtxid {
            TxError::rejected("txn-already-in-mempool")
        } else {
            TxError::rejected("txn-same-nonwitness-data-in-mempool")
        });
    }
    if chain.tx_index.contains_key(&txid)
        || (0..tx.output.len() as u32)
            .any(|vout| chain.utxos.contains_key(&OutPoint::new(txid, vout)))
    {
        return Err(TxError::AlreadyInChain);
    }
    let next_height = chain.height() + 1;
    if !validation::is_final(&tx, next_height, chain.tip_entry().median_time_past) {
        return Err(TxError::rejected("non-final"));
    }

    // Conflicts: mempool transactions spending the same outputs, and all that hangs on them.
    let mut direct_conflicts: Vec<Txid> = tx
        .input
        .iter()
        .filter_map(|input| chain.mempool.spender(&input.previous_output))
        .collect();
    direct_conflicts.sort();
    direct_conflicts.dedup();
    let mut all_conflicts: HashSet<Txid> = direct_conflicts.iter().copied().collect();
    for conflict in &direct_conflicts {
        all_conflicts.extend(chain.mempool.descendants(conflict));
    }

    let coins = validation::gather_coins(&tx, |outpoint| {
        if let Some(coin) = chain.utxos.get(outpoint) {
            return Some(coin.clone());
        }
        let parent = chain.mempool.get(&outpoint.txid)?;
        if all_conflicts.contains(&parent.txid) {
            return None;
        }
        parent
            .tx
            .output
            .get(outpoint.vout as usize)
            .map(|output| Coin {
                output: output.clone(),
                height: next_height,
                is_coinbase: false,
            })
    })
    .map_err(|err| {
        // Spending what a replaced transaction creates is its own error in Core.
        let spends_conflict = tx
            .input
            .iter()
            .any(|input| all_conflicts.contains(&input.previous_output.txid));
        if spends_conflict {
            TxError::rejected("bad-txns-spends-conflicting-tx")
        } else {
            err
        }
    })?;
    let fee = validation::check_inputs(&tx, &coins, next_height)?;
    let heights: Vec<u32> = coins.iter().map(|c| c.height).collect();
    if !validation::sequence_locks_satisfied(&tx, &heights, next_height, |h| {
        chain.median_time_past_before(h)
    }) {
        return Err(TxError::rejected("non-BIP68-final"));
    }

    let vsize = tx.vsize() as u64;
    let fee_rate_kvb = sat_per_kvb(fee, vsize);
    let min_relay = chain.settings.min_relay_fee_rate;
    if !matches!(mode, AcceptMode::Reorg | AcceptMode::Package) && fee < fee_for(min_relay, vsize) {
        return Err(TxError::FeeTooLow {
            reason: "min relay fee not met".into(),
            details: Some(format!(
                "{} < {}",
                fee.to_sat(),
                fee_for(min_relay, vsize).to_sat()
            )),
        });
    }
    if let AcceptMode::Broadcast {
        max_fee_rate: Some(max),
    }
    | AcceptMode::Test {
        max_fee_rate: Some(max),
    } = mode
        && fee > fee_for(max, vsize)
    {
        return Err(TxError::rejected("max-fee-exceeded"));
    }

    if !direct_conflicts.is_empty() {
        check_replacement(chain, &tx, fee, vsize, &direct_conflicts, &all_conflicts)?;
    }

    let spent: Vec<_> = coins.iter().map(|c| c.output.clone()).collect();
    validation::verify_scripts(&tx, &spent)?;

    let accepted = Accepted {
        txid,
        wtxid,
        vsize,
        fee,
        replaced: all_conflicts.iter().copied().collect(),
    };
    if matches!(mode, AcceptMode::Test { .. }) {
        return Ok(accepted);
    }
    for conflict in &direct_conflicts {
        chain.mempool.remove_with_descendants(conflict);
    }
    let now = time.unwrap_or_else(|| chain.now());
    chain.history.record_tx(&tx, None, now);
    chain.mempool.insert(MempoolEntry {
        weight: tx.weight().to_wu(),
        tx,
        txid,
        wtxid,
        fee,
        vsize,
        time: now,
        height: chain.height(),
        sequence: 0,
    });
    tracing::debug!(%txid, fee = fee.to_sat(), vsize, fee_rate_kvb, replaced = accepted.replaced.len(), "accepted to the mempool");
    Ok(accepted)
}

/// BIP125 as Bitcoin Core applies it under full RBF (rules 2 to 5).
fn check_replacement(
    chain: &Chain,
    tx: &Transaction,
    fee: Amount,
    vsize: u64,
    direct: &[Txid],
    all: &HashSet<Txid>,
) -> Result<(), TxError> {
    let txid = tx.compute_txid();
    if all.len() > MAX_REPLACEMENT_EVICTIONS {
        return Err(TxError::rejected_with(
            "too many potential replacements",
            format!(
                "rejecting replacement {txid}; too many potential replacements ({} > {MAX_REPLACEMENT_EVICTIONS})",
                all.len()
            ),
        ));
    }
    // Rule 6 (Core's PaysMoreThanConflicts): a higher fee rate than each direct conflict.
    let new_rate = sat_per_kvb(fee, vsize);
    for conflict in direct {
        let entry = chain
            .mempool
            .get(conflict)
            .expect("conflicts are in the mempool");
        let old_rate = sat_per_kvb(entry.fee, entry.vsize);
        if new_rate <= old_rate {
            return Err(TxError::rejected_with(
                "insufficient fee",
                format!(
                    "rejecting replacement {txid}; new feerate {} <= old feerate {}",
                    format_fee_rate(new_rate),
                    format_fee_rate(old_rate)
                ),
            ));
        }
    }
    // Rule 2: no new unconfirmed inputs.
    let conflict_parents: HashSet<Txid> = direct
        .iter()
        .flat_map(|c| {
            chain
                .mempool
                .get(c)
                .expect("in mempool")
                .tx
                .input
                .iter()
                .map(|i| i.previous_output.txid)
        })
        .collect();
    for input in &tx.input {
        let parent = input.previous_output.txid;
        if chain.mempool.contains(&parent) && !conflict_parents.contains(&parent) {
            return Err(TxError::rejected_with(
                "replacement-adds-unconfirmed",
                format!(
                    "replacement {txid} adds unconfirmed input, idx {}",
                    tx.input
                        .iter()
                        .position(|i| i.previous_output.txid == parent)
                        .unwrap_or(0)
                ),
            ));
        }
    }
    // Rules 3 and 4: pay for everything evicted, plus the relay of the replacement.
    let evicted_fees: Amount = all
        .iter()
        .map(|id| chain.mempool.get(id).expect("in mempool").fee)
        .sum();
    if fee < evicted_fees {
        return Err(TxError::rejected_with(
            "insufficient fee",
            format!(
                "rejecting replacement {txid}, less fees than conflicting txs; {} < {}",
                fee.to_btc(),
                evicted_fees.to_btc()
            ),
        ));
    }
    let additional = fee - evicted_fees;
    let relay = Amount::from_sat((INCREMENTAL_RELAY_SAT_PER_KVB * vsize).div_ceil(1000));
    if additional < relay {
        return Err(TxError::rejected_with(
            "insufficient fee",
            format!(
                "rejecting replacement {txid}, not enough additional fees to relay; {} < {}",
                additional.to_btc(),
                relay.to_btc()
            ),
        ));
    }
    Ok(())
}

/// The outcome of one transaction of a package.
#[derive(Clone, Debug)]
pub struct PackageTxResult {
    /// The transaction.
    pub txid: Txid,
    /// Its wtxid.
    pub wtxid: Wtxid,
    /// Accepted (with size and fee), or why not.
    pub result: Result<Accepted, TxError>,
}

/// Core's `submitpackage` (child with parents): each transaction is tried on its own;
/// those refused only for their own low fee rate are accepted together if the package's
/// fee rate clears the minimum relay fee rate.
pub fn accept_package(
    chain: &mut Chain,
    txs: Vec<Transaction>,
) -> Result<Vec<PackageTxResult>, String> {
    if txs.is_empty() || txs.len() > 25 {
        return Err("package must be 1 to 25 transactions".into());
    }
    // Sorted: every parent before its child.
    let ids: Vec<Txid> = txs.iter().map(|t| t.compute_txid()).collect();
    for (index, tx) in txs.iter().enumerate() {
        for input in &tx.input {
            if let Some(parent) = ids.iter().position(|id| *id == input.previous_output.txid)
                && parent > index
            {
                return Err("package-not-sorted".into());
            }
        }
    }
    let mut results: Vec<PackageTxResult> = Vec::with_capacity(txs.len());
    let mut deferred = Vec::new();
    for tx in &txs {
        let txid = tx.compute_txid();
        let wtxid = tx.compute_wtxid();
        if chain.mempool.get(&txid).is_some_and(|e| e.wtxid == wtxid) {
            let entry = chain.mempool.get(&txid).expect("checked");
            results.push(PackageTxResult {
                txid,
                wtxid,
                result: Ok(Accepted {
                    txid,
                    wtxid,
                    vsize: entry.vsize,
                    fee: entry.fee,
                    replaced: Vec::new(),
                }),
            });
            continue;
        }
        let outcome = accept(
            chain,
            tx.clone(),
            AcceptMode::Broadcast { max_fee_rate: None },
        );
        if let Err(TxError::FeeTooLow { .. } | TxError::MissingInputs) = &outcome {
            // Maybe carried by the rest of the package (CPFP), or spends a deferred parent.
            deferred.push(results.len());
        }
        results.push(PackageTxResult {
            txid,
            wtxid,
            result: outcome,
        });
    }
    if deferred.is_empty() {
        return Ok(results);
    }
    // Evaluate the deferred transactions together, as a package.
    let package: Vec<Transaction> = deferred.iter().map(|&i| txs[i].clone()).collect();
    let mut trial = Vec::new();
    let mut total_fee = Amount::ZERO;
    let mut total_vsize = 0;
    for tx in &package {
        match accept(chain, tx.clone(), AcceptMode::Package) {
            Ok(accepted) => {
                total_fee += accepted.fee;
                total_vsize += accepted.vsize;
                trial.push(accepted);
            }
            Err(err) => {
                // Undo what this attempt added, and report.
                for accepted in &trial {
                    chain.mempool.remove(&accepted.txid);
                }
                let index = deferred[trial.len()];
                results[index].result = Err(err);
                return Ok(results);
            }
        }
    }
    let min = fee_for(chain.settings.min_relay_fee_rate, total_vsize);
    if total_fee < min {
        for accepted in &trial {
            chain.mempool.remove(&accepted.txid);
        }
        for &index in &deferred {
            results[index].result = Err(TxError::FeeTooLow {
                reason: "package-fee-too-low".into(),
                details: Some(format!("{} < {}", total_fee.to_sat(), min.to_sat())),
            });
        }
        return Ok(results);
    }
    for (accepted, &index) in trial.into_iter().zip(&deferred) {
        results[index].result = Ok(accepted);
    }
    Ok(results)
}

/// Re-admits, after a reorganization, the transactions of disconnected blocks (oldest
/// block first) and then the previous mempool, dropping those no longer valid.
pub(crate) fn readmit_after_reorg(chain: &mut Chain, disconnected: Vec<Transaction>) {
    let previous = chain.mempool.take_all();
    for tx in disconnected {
        let txid = tx.compute_txid();
        if chain.tx_index.contains_key(&txid) {
            continue;
        }
        if let Err(err) = accept_at(chain, tx, AcceptMode::Reorg, None) {
            tracing::debug!(%txid, reason = %err.message(), "a disconnected transaction did not return to the mempool");
        }
    }
    for entry in previous {
        let txid = entry.txid;
        if chain.mempool.contains(&txid) || chain.tx_index.contains_key(&txid) {
            continue;
        }
        if let Err(err) = accept_at(chain, entry.tx, AcceptMode::Reorg, Some(entry.time)) {
            tracing::debug!(%txid, reason = %err.message(), "dropped from the mempool by the reorganization");
        }
    }
}
