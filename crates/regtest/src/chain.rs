//! The chain: every block ever seen, the active chain with its UTXO set and undo data,
//! the mempool, the built-in wallet and the record of everything accepted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::{
    Amount, Block, BlockHash, FeeRate, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxMerkleNode, TxOut, Txid, Witness, Work, absolute, transaction,
};

use crate::history::History;
use crate::mempool::Mempool;
use crate::params::{self, BLOCK_VERSION, MAX_BLOCK_WEIGHT};
use crate::validation::{self, Coin, CoinOverlay};
use crate::wallet::Wallet;

/// Settings of a chain.
#[derive(Clone, Debug)]
pub struct ChainSettings {
    /// What `estimatesmartfee` answers (regtest Bitcoin Core has no estimate), and the fee
    /// rate of the built-in wallet's sends.
    pub fee_rate: FeeRate,
    /// The minimum relay fee rate (Core's `-minrelaytxfee`, default 1 sat/vB).
    pub min_relay_fee_rate: FeeRate,
    /// Start with this mock time (Unix seconds) instead of the wall clock.
    pub mock_time: Option<u64>,
}

impl Default for ChainSettings {
    fn default() -> Self {
        Self {
            fee_rate: FeeRate::from_sat_per_vb_u32(5),
            min_relay_fee_rate: FeeRate::from_sat_per_vb_u32(1),
            mock_time: None,
        }
    }
}

/// One block the chain knows, on the active chain or not.
#[derive(Clone, Debug)]
pub struct BlockEntry {
    /// The block.
    pub block: Arc<Block>,
    /// Its height.
    pub height: u32,
    /// Work of the chain up to and including it.
    pub chain_work: Work,
    /// Marked invalid (by `invalidateblock`, or because it or an ancestor failed).
    pub invalid: bool,
    /// Median time past of the last 11 blocks up to and including it.
    pub median_time_past: u32,
}

/// Why a block was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BlockError(pub String);

/// The whole state of the regtest chain.
pub struct Chain {
    pub(crate) settings: ChainSettings,
    pub(crate) blocks: HashMap<BlockHash, BlockEntry>,
    /// Block hashes of the active chain, by height.
    pub(crate) active: Vec<BlockHash>,
    pub(crate) utxos: HashMap<OutPoint, Coin>,
    /// The coins each active block spent, to put back when it is disconnected.
    undo: HashMap<BlockHash, Vec<(OutPoint, Coin)>>,
    /// The scripts of the outputs each block ever connected spent (kept after a
    /// disconnection), for its BIP158 filter.
    spent_scripts: HashMap<BlockHash, HashMap<OutPoint, ScriptBuf>>,
    /// BIP158 filter headers computed so far (they never change for a block).
    filter_headers: std::sync::Mutex<HashMap<BlockHash, bitcoin::bip158::FilterHeader>>,
    /// Confirmed transactions on the active chain: txid -> (block, index in block).
    pub(crate) tx_index: HashMap<Txid, (BlockHash, usize)>,
    pub(crate) mempool: Mempool,
    pub(crate) wallet: Wallet,
    pub(crate) history: History,
    pub(crate) mock_time: Option<u64>,
}

fn wall_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Chain {
    /// A chain holding only the regtest genesis block.
    pub fn new(settings: ChainSettings) -> Self {
        let genesis = params::genesis_block();
        let hash = genesis.block_hash();
        let entry = BlockEntry {
            height: 0,
            chain_work: genesis.header.work(),
            invalid: false,
            median_time_past: genesis.header.time,
            block: Arc::new(genesis),
        };
        let mut chain = Self {
            mock_time: settings.mock_time,
            settings,
            blocks: HashMap::from([(hash, entry)]),
            active: vec![hash],
            utxos: HashMap::new(),
            undo: HashMap::new(),
            spent_scripts: HashMap::new(),
            filter_headers: std::sync::Mutex::new(HashMap::new()),
            tx_index: HashMap::new(),
            mempool: Mempool::default(),
            wallet: Wallet::new(),
            history: History::default(),
        };
        chain.history.record_block(&chain.blocks[&hash]);
        chain
    }

    /// The settings.
    pub fn settings(&self) -> &ChainSettings {
        &self.settings
    }

    /// Sets the fee rate `estimatesmartfee` answers and the wallet pays.
    pub fn set_fee_rate(&mut self, fee_rate: FeeRate) {
        self.settings.fee_rate = fee_rate;
    }

    /// The current time: the mock time when set (Core's `setmocktime`), else the clock.
    pub fn now(&self) -> u64 {
        self.mock_time.unwrap_or_else(wall_clock)
    }

    /// Sets (`Some`) or clears (`None`) the mock time.
    pub fn set_mock_time(&mut self, time: Option<u64>) {
        self.mock_time = time;
    }

    /// Height of the active tip.
    pub fn height(&self) -> u32 {
        (self.active.len() - 1) as u32
    }

    /// Hash of the active tip.
    pub fn tip(&self) -> BlockHash {
        *self
            .active
            .last()
            .expect("the genesis block is always active")
    }

    /// The entry of the active tip.
    pub fn tip_entry(&self) -> &BlockEntry {
        &self.blocks[&self.tip()]
    }

    /// A block the chain knows (active or not).
    pub fn entry(&self, hash: &BlockHash) -> Option<&BlockEntry> {
        self.blocks.get(hash)
    }

    /// The active block at `height`.
    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.active.get(height as usize).copied()
    }

    /// True when `hash` is on the active chain.
    pub fn is_active(&self, hash: &BlockHash) -> bool {
        self.blocks
            .get(hash)
            .is_some_and(|entry| self.hash_at(entry.height) == Some(*hash))
    }

    /// Core's `confirmations` of a block: depth on the active chain, -1 when not on it.
    pub fn confirmations(&self, hash: &BlockHash) -> i64 {
        match self.blocks.get(hash) {
            Some(entry) if self.is_active(hash) => i64::from(self.height() - entry.height) + 1,
            _ => -1,
        }
    }

    /// The median time past of the active block at `height`.
    pub fn median_time_past_at(&self, height: u32) -> u32 {
        self.hash_at(height)
            .map(|hash| self.blocks[&hash].median_time_past)
            .unwrap_or(0)
    }

    /// MTP of the active block before `height` (Core's `GetAncestor(h - 1)->GetMedianTimePast()`).
    pub fn median_time_past_before(&self, height: u32) -> u32 {
        self.median_time_past_at(height.saturating_sub(1))
    }

    /// The unspent output at `outpoint` on the active chain (not counting the mempool).
    pub fn utxo(&self, outpoint: &OutPoint) -> Option<&Coin> {
        self.utxos.get(outpoint)
    }

    /// The record of everything the chain accepted.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The mempool.
    pub fn mempool(&self) -> &Mempool {
        &self.mempool
    }

    /// The built-in wallet.
    pub fn wallet(&self) -> &Wallet {
        &self.wallet
    }

    /// The median of the last 11 timestamps ending with `header` (its parent `entry_parent`).
    fn median_time_past_of(&self, header: &Header, parent: Option<&BlockHash>) -> u32 {
        let mut times = vec![header.time];
        let mut cursor = parent.copied();
        while times.len() < 11 {
            let Some(hash) = cursor else { break };
            let Some(entry) = self.blocks.get(&hash) else {
                break;
            };
            times.push(entry.block.header.time);
            cursor = (entry.height > 0).then_some(entry.block.header.prev_blockhash);
        }
        times.sort_unstable();
        times[times.len() / 2]
    }

    /// Builds, mines and connects a block on the active tip paying `payout`, holding `txs`
    /// (or, when `None`, the mempool's transactions that fit). Returns its hash.
    pub fn mine_block(
        &mut self,
        payout: &ScriptBuf,
        txs: Option<Vec<Transaction>>,
    ) -> Result<BlockHash, BlockError> {
        let height = self.height() + 1;
        let txs = match txs {
            Some(txs) => txs,
            None => self.mempool.block_template(MAX_BLOCK_WEIGHT - 4_000),
        };
        let fees = self.fees_of(&txs)?;
        let reserved = [0u8; 32];
        let mut coinbase = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig: coinbase_script(height),
                sequence: Sequence::MAX,
                witness: Witness::from_slice(&[reserved.to_vec()]),
            }],
            output: vec![TxOut {
                value: params::block_subsidy(height) + fees,
                script_pubkey: payout.clone(),
            }],
        };
        let mut block = Block {
            header: Header {
                version: Version::from_consensus(BLOCK_VERSION),
                prev_blockhash: self.tip(),
                merkle_root: TxMerkleNode::all_zeros(),
                time: 0,
                bits: params::pow_limit(),
                nonce: 0,
            },
            txdata: std::iter::once(coinbase.clone()).chain(txs).collect(),
        };
        // The witness commitment, as Bitcoin Core's miner always adds it.
        let witness_root = block.witness_root().expect("a block has a coinbase");
        let commitment = Block::compute_witness_commitment(&witness_root, &reserved);
        let mut commitment_script = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
        commitment_script.extend_from_slice(commitment.as_byte_array());
        coinbase.output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(commitment_script),
        });
        block.txdata[0] = coinbase;
        block.header.merkle_root = block.compute_merkle_root().expect("transactions");
        let tip_mtp = self.tip_entry().median_time_past;
        block.header.time = (self.now() as u32).max(tip_mtp + 1);
        let target = block.header.target();
        while block.header.validate_pow(target).is_err() {
            block.header.nonce = block.header.nonce.wrapping_add(1);
        }
        let hash = block.block_hash();
        self.submit_block(block)?;
        if self.tip() != hash {
            return Err(BlockError(format!(
                "mined block {hash} did not become the tip"
            )));
        }
        Ok(hash)
    }

    fn fees_of(&self, txs: &[Transaction]) -> Result<Amount, BlockError> {
        let mut view = CoinOverlay::new(|outpoint: &OutPoint| self.utxos.get(outpoint).cloned());
        let height = self.height() + 1;
        let mut fees = Amount::ZERO;
        for tx in txs {
            let coins = validation::gather_coins(tx, |o| view.coin(o)).map_err(|e| {
                BlockError(format!(
                    "bad-txns-inputs-missingorspent ({}): {}",
                    tx.compute_txid(),
                    e.message()
                ))
            })?;
            let fee = validation::check_inputs(tx, &coins, height)
                .map_err(|e| BlockError(e.message()))?;
            fees += fee;
            view.apply(tx, height);
        }
        Ok(fees)
    }

    /// Stores a block (Core's `submitblock`) and makes the most-work valid chain active.
    /// Fails if the block is invalid on its own or on top of its parent's state.
    pub fn submit_block(&mut self, block: Block) -> Result<(), BlockError> {
        let hash = block.block_hash();
        if self.blocks.contains_key(&hash) {
            return Err(BlockError("duplicate".into()));
        }
        let parent = self
            .blocks
            .get(&block.header.prev_blockhash)
            .ok_or_else(|| BlockError("prev-blk-not-found".into()))?;
        if parent.invalid {
            return Err(BlockError("bad-prevblk".into()));
        }
        check_block_context_free(&block)?;
        if block.header.time <= parent.median_time_past {
            return Err(BlockError("time-too-old".into()));
        }
        let height = parent.height + 1;
        let chain_work = parent.chain_work + block.header.work();
        let median_time_past =
            self.median_time_past_of(&block.header, Some(&block.header.prev_blockhash));
        self.blocks.insert(
            hash,
            BlockEntry {
                block: Arc::new(block),
                height,
                chain_work,
                invalid: false,
                median_time_past,
            },
        );
        self.activate_best_chain();
        if self.blocks[&hash].invalid {
            let reason = self.history.last_block_failure(&hash).unwrap_or_default();
            return Err(BlockError(reason));
        }
        Ok(())
    }

    /// Marks `hash` and its descendants invalid and activates the best remaining chain
    /// (Core's `invalidateblock`). Transactions of disconnected blocks go back to the
    /// mempool when they are still valid.
    pub fn invalidate_block(&mut self, hash: &BlockHash) -> Result<(), BlockError> {
        let entry = self
            .blocks
            .get(hash)
            .ok_or_else(|| BlockError("Block not found".into()))?;
        if entry.height == 0 {
            return Err(BlockError("cannot invalidate the genesis block".into()));
        }
        for descendant in self.descendants_of(hash) {
            self.blocks.get_mut(&descendant).expect("known").invalid = true;
        }
        self.blocks.get_mut(hash).expect("known").invalid = true;
        self.activate_best_chain();
        Ok(())
    }

    /// Clears the invalid mark of `hash`, its ancestors and descendants, and activates the
    /// best chain (Core's `reconsiderblock`).
    pub fn reconsider_block(&mut self, hash: &BlockHash) -> Result<(), BlockError> {
        if !self.blocks.contains_key(hash) {
            return Err(BlockError("Block not found".into()));
        }
        let mut cursor = Some(*hash);
        while let Some(current) = cursor {
            let entry = self.blocks.get_mut(&current).expect("known");
            entry.invalid = false;
            cursor = (entry.height > 0).then_some(entry.block.header.prev_blockhash);
        }
        for descendant in self.descendants_of(hash) {
            self.blocks.get_mut(&descendant).expect("known").invalid = false;
        }
        self.activate_best_chain();
        Ok(())
    }

    fn descendants_of(&self, hash: &BlockHash) -> Vec<BlockHash> {
        let mut children: HashMap<BlockHash, Vec<BlockHash>> = HashMap::new();
        for (child, entry) in &self.blocks {
            if entry.height > 0 {
                children
                    .entry(entry.block.header.prev_blockhash)
                    .or_default()
                    .push(*child);
            }
        }
        let mut out = Vec::new();
        let mut stack = vec![*hash];
        while let Some(current) = stack.pop() {
            for child in children.get(&current).into_iter().flatten() {
                out.push(*child);
                stack.push(*child);
            }
        }
        out
    }

    /// The valid block with the most work (ties: the current tip, then the first stored).
    fn best_candidate(&self) -> BlockHash {
        let tip = self.tip();
        let mut best = tip;
        let mut best_work = self.blocks[&tip].chain_work;
        for (hash, entry) in &self.blocks {
            if entry.invalid || entry.chain_work <= best_work {
                continue;
            }
            // Every ancestor must be valid too.
            let mut cursor = entry.block.header.prev_blockhash;
            let mut valid = true;
            for _ in 0..entry.height {
                let ancestor = &self.blocks[&cursor];
                if ancestor.invalid {
                    valid = false;
                    break;
                }
                if ancestor.height == 0 {
                    break;
                }
                cursor = ancestor.block.header.prev_blockhash;
            }
            if valid {
                best = *hash;
                best_work = entry.chain_work;
            }
        }
        best
    }

    /// Core's `ActivateBestChain`: reorganize onto the most-work valid chain, marking
    /// blocks that fail to connect invalid and trying again.
    pub(crate) fn activate_best_chain(&mut self) {
        // Transactions of disconnected blocks, tip first.
        let mut disconnected: Vec<Vec<Transaction>> = Vec::new();
        // The active tip may have been invalidated: step back to a valid block first.
        while self.blocks[&self.tip()].invalid {
            disconnected.push(self.disconnect_tip());
        }
        loop {
            let candidate = self.best_candidate();
            if candidate == self.tip() {
                break;
            }
            // Path from the fork point to the candidate.
            let mut path = Vec::new();
            let mut cursor = candidate;
            while !self.is_active(&cursor) {
                path.push(cursor);
                cursor = self.blocks[&cursor].block.header.prev_blockhash;
            }
            let fork = cursor;
            while self.tip() != fork {
                disconnected.push(self.disconnect_tip());
            }
            for hash in path.into_iter().rev() {
                if let Err(err) = self.connect_block(&hash) {
                    tracing::warn!(%hash, error = %err, "block failed to connect; marking it invalid");
                    self.history.record_block_failure(hash, err.0);
                    self.blocks.get_mut(&hash).expect("known").invalid = true;
                    for descendant in self.descendants_of(&hash) {
                        self.blocks.get_mut(&descendant).expect("known").invalid = true;
                    }
                    break;
                }
            }
        }
        if !disconnected.is_empty() {
            // Oldest block first, so parents return before their children.
            let txs = disconnected.into_iter().rev().flatten().collect();
            crate::mempool::readmit_after_reorg(self, txs);
        }
    }

    /// Validates the stored block `hash` on top of the active tip and connects it.
    fn connect_block(&mut self, hash: &BlockHash) -> Result<(), BlockError> {
        let entry = self.blocks[hash].clone();
        let block = &entry.block;
        let height = entry.height;
        if block.header.prev_blockhash != self.tip() {
            return Err(BlockError("bad-prevblk".into()));
        }
        let cutoff_time = self.tip_entry().median_time_past;
        let coinbase = &block.txdata[0];
        // BIP34: the height starts the coinbase script.
        let expected = coinbase_height_prefix(height);
        if !coinbase.input[0]
            .script_sig
            .as_bytes()
            .starts_with(expected.as_bytes())
        {
            return Err(BlockError("bad-cb-height".into()));
        }
        let mut view = CoinOverlay::new(|outpoint: &OutPoint| self.utxos.get(outpoint).cloned());
        let mut undo = Vec::new();
        let mut spent_scripts = HashMap::new();
        let mut fees = Amount::ZERO;
        for tx in &block.txdata {
            if !validation::is_final(tx, height, cutoff_time) {
                return Err(BlockError("bad-txns-nonfinal".into()));
            }
            if !tx.is_coinbase() {
                let coins = validation::gather_coins(tx, |o| view.coin(o))
                    .map_err(|_| BlockError("bad-txns-inputs-missingorspent".into()))?;
                let fee = validation::check_inputs(tx, &coins, height)
                    .map_err(|e| BlockError(e.message()))?;
                let heights: Vec<u32> = coins.iter().map(|c| c.height).collect();
                if !validation::sequence_locks_satisfied(tx, &heights, height, |h| {
                    self.median_time_past_before(h)
                }) {
                    return Err(BlockError("bad-txns-nonfinal".into()));
                }
                let spent: Vec<TxOut> = coins.iter().map(|c| c.output.clone()).collect();
                validation::verify_scripts(tx, &spent).map_err(|e| {
                    BlockError(format!("block-validation-failed ({})", e.message()))
                })?;
                fees += fee;
                for (input, coin) in tx.input.iter().zip(&coins) {
                    spent_scripts.insert(input.previous_output, coin.output.script_pubkey.clone());
                }
                // Undo data: only coins that existed before this block.
                for (input, coin) in tx.input.iter().zip(coins) {
                    if self.utxos.contains_key(&input.previous_output) {
                        undo.push((input.previous_output, coin));
                    }
                }
            }
            view.apply(tx, height);
        }
        let paid: Amount = coinbase.output.iter().map(|o| o.value).sum();
        if paid > params::block_subsidy(height) + fees {
            return Err(BlockError("bad-cb-amount".into()));
        }
        // Commit the view.
        let (created, spent) = view.into_parts();
        for outpoint in spent {
            self.utxos.remove(&outpoint);
        }
        for (outpoint, coin) in created {
            if !coin.output.script_pubkey.is_op_return() {
                self.utxos.insert(outpoint, coin);
            }
        }
        for (index, tx) in block.txdata.iter().enumerate() {
            self.tx_index.insert(tx.compute_txid(), (*hash, index));
        }
        self.undo.insert(*hash, undo);
        self.spent_scripts.insert(*hash, spent_scripts);
        self.active.push(*hash);
        self.mempool.remove_for_block(block);
        self.history.record_block(&entry);
        tracing::debug!(%hash, height, txs = block.txdata.len(), "connected block");
        Ok(())
    }

    /// Disconnects the active tip; returns its non-coinbase transactions.
    fn disconnect_tip(&mut self) -> Vec<Transaction> {
        let hash = self.active.pop().expect("never disconnects genesis");
        let block = Arc::clone(&self.blocks[&hash].block);
        for tx in block.txdata.iter().rev() {
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() {
                self.utxos.remove(&OutPoint::new(txid, vout as u32));
            }
            self.tx_index.remove(&txid);
        }
        for (outpoint, coin) in self.undo.remove(&hash).unwrap_or_default() {
            self.utxos.insert(outpoint, coin);
        }
        self.history.record_disconnect(hash);
        tracing::debug!(%hash, "disconnected block");
        block
            .txdata
            .iter()
            .filter(|tx| !tx.is_coinbase())
            .cloned()
            .collect()
    }

    /// Confirmed transaction `txid` and the block it is in (active chain only).
    pub fn confirmed_tx(&self, txid: &Txid) -> Option<(&Transaction, BlockHash)> {
        let (hash, index) = self.tx_index.get(txid)?;
        Some((&self.blocks[hash].block.txdata[*index], *hash))
    }

    /// The BIP158 basic filter of a block that was ever connected, and its filter header
    /// (chained from the genesis block's, like Core's block filter index).
    pub fn block_filter(
        &self,
        hash: &BlockHash,
    ) -> Option<(bitcoin::bip158::BlockFilter, bitcoin::bip158::FilterHeader)> {
        let filter_of = |hash: &BlockHash| -> Option<bitcoin::bip158::BlockFilter> {
            let entry = self.blocks.get(hash)?;
            let empty = HashMap::new();
            let scripts = if entry.height == 0 {
                &empty
            } else {
                self.spent_scripts.get(hash)?
            };
            bitcoin::bip158::BlockFilter::new_script_filter(&entry.block, |outpoint| {
                scripts
                    .get(outpoint)
                    .cloned()
                    .ok_or(bitcoin::bip158::Error::UtxoMissing(*outpoint))
            })
            .ok()
        };
        // Walk back to a block whose header is known (or genesis), then chain forward.
        let mut cache = self
            .filter_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut path = vec![*hash];
        let mut cursor = *hash;
        let mut header = bitcoin::bip158::FilterHeader::all_zeros();
        loop {
            let entry = self.blocks.get(&cursor)?;
            if entry.height == 0 {
                break;
            }
            cursor = entry.block.header.prev_blockhash;
            if let Some(known) = cache.get(&cursor) {
                header = *known;
                break;
            }
            path.push(cursor);
        }
        let mut filter = None;
        for hash in path.iter().rev() {
            let this = filter_of(hash)?;
            header = this.filter_header(&header);
            cache.insert(*hash, header);
            filter = Some(this);
        }
        filter.map(|filter| (filter, header))
    }
}

/// The BIP34 height push Bitcoin Core's miner starts a coinbase script with.
fn coinbase_height_prefix(height: u32) -> ScriptBuf {
    Builder::new().push_int(i64::from(height)).into_script()
}

/// The coinbase script: BIP34 height, then padding so it is at least two bytes (Core's
/// miner appends `OP_0`), then an extra nonce so coinbases at equal heights on different
/// branches differ.
fn coinbase_script(height: u32) -> ScriptBuf {
    static EXTRA_NONCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nonce = EXTRA_NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut extra = PushBytesBuf::new();
    extra
        .extend_from_slice(&nonce.to_le_bytes())
        .expect("4 bytes");
    Builder::new()
        .push_int(i64::from(height))
        .push_opcode(bitcoin::opcodes::OP_0)
        .push_slice(extra)
        .into_script()
}

/// Checks that need no chain state: proof of work, merkle root, coinbase position,
/// witness commitment, weight, each transaction's own rules.
fn check_block_context_free(block: &Block) -> Result<(), BlockError> {
    if block.header.bits != params::pow_limit() {
        return Err(BlockError("bad-diffbits".into()));
    }
    if block.header.validate_pow(block.header.target()).is_err() {
        return Err(BlockError("high-hash".into()));
    }
    if block.txdata.is_empty() || !block.txdata[0].is_coinbase() {
        return Err(BlockError("bad-cb-missing".into()));
    }
    if block.txdata.iter().skip(1).any(|tx| tx.is_coinbase()) {
        return Err(BlockError("bad-cb-multiple".into()));
    }
    if !block.check_merkle_root() {
        return Err(BlockError("bad-txnmrklroot".into()));
    }
    if !block.check_witness_commitment() {
        return Err(BlockError("bad-witness-merkle-match".into()));
    }
    if block.weight().to_wu() > MAX_BLOCK_WEIGHT {
        return Err(BlockError("bad-blk-weight".into()));
    }
    let mut seen = HashSet::new();
    for tx in &block.txdata {
        validation::check_transaction(tx).map_err(|e| BlockError(e.message()))?;
        if !seen.insert(tx.compute_txid()) {
            return Err(BlockError("bad-txns-duplicate".into()));
        }
    }
    Ok(())
}
