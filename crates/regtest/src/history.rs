//! The record of everything the chain ever accepted, for tests to assert on (for
//! example, that no revoked commitment transaction was ever broadcast).

use std::collections::HashMap;

use bitcoin::{BlockHash, Transaction, Txid};

use crate::chain::BlockEntry;

/// How the chain first saw a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeenVia {
    /// Accepted to the mempool (broadcast).
    Mempool,
    /// In a block, without passing through the mempool first.
    Block(BlockHash),
}

/// A transaction the chain accepted at least once.
#[derive(Clone, Debug)]
pub struct SeenTx {
    /// The transaction.
    pub tx: Transaction,
    /// Its txid.
    pub txid: Txid,
    /// When it was first seen (Unix seconds, chain clock).
    pub first_seen: u64,
    /// How.
    pub via: SeenVia,
}

/// Something that happened to the active chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainEvent {
    /// A block became part of the active chain.
    Connected {
        /// The block.
        hash: BlockHash,
        /// Its height.
        height: u32,
    },
    /// A block left the active chain.
    Disconnected {
        /// The block.
        hash: BlockHash,
    },
}

/// Everything accepted, in order.
#[derive(Default)]
pub struct History {
    txs: Vec<SeenTx>,
    by_txid: HashMap<Txid, usize>,
    events: Vec<ChainEvent>,
    failures: HashMap<BlockHash, String>,
}

impl History {
    /// Every distinct transaction ever accepted (mempool or block), in order of first sight.
    pub fn transactions(&self) -> &[SeenTx] {
        &self.txs
    }

    /// The first sighting of `txid`, if the chain ever accepted it.
    pub fn get(&self, txid: &Txid) -> Option<&SeenTx> {
        self.by_txid.get(txid).map(|&index| &self.txs[index])
    }

    /// Whether the chain ever accepted `txid`.
    pub fn contains(&self, txid: &Txid) -> bool {
        self.by_txid.contains_key(txid)
    }

    /// Connections and disconnections of the active chain, in order.
    pub fn events(&self) -> &[ChainEvent] {
        &self.events
    }

    pub(crate) fn record_tx(&mut self, tx: &Transaction, block: Option<BlockHash>, now: u64) {
        let txid = tx.compute_txid();
        if self.by_txid.contains_key(&txid) {
            return;
        }
        self.by_txid.insert(txid, self.txs.len());
        self.txs.push(SeenTx {
            tx: tx.clone(),
            txid,
            first_seen: now,
            via: block.map_or(SeenVia::Mempool, SeenVia::Block),
        });
    }

    pub(crate) fn record_block(&mut self, entry: &BlockEntry) {
        let hash = entry.block.block_hash();
        for tx in &entry.block.txdata {
            self.record_tx(tx, Some(hash), u64::from(entry.block.header.time));
        }
        self.events.push(ChainEvent::Connected {
            hash,
            height: entry.height,
        });
    }

    pub(crate) fn record_disconnect(&mut self, hash: BlockHash) {
        self.events.push(ChainEvent::Disconnected { hash });
    }

    pub(crate) fn record_block_failure(&mut self, hash: BlockHash, reason: String) {
        self.failures.insert(hash, reason);
    }

    pub(crate) fn last_block_failure(&self, hash: &BlockHash) -> Option<String> {
        self.failures.get(hash).cloned()
    }
}
