//! Blocks connected to and disconnected from the wallet, and the wallet as LDK's
//! coin source for anchor bumps and its change destination.

use super::*;

impl OnchainWallet {
    /// Applies a block on top of the wallet's chain, persists.
    fn connect_block(&self, block: &Block, height: u32) -> Result<(), WalletError> {
        let Some(parent_height) = height.checked_sub(1) else {
            return Ok(());
        };
        let parent = BlockId {
            height: parent_height,
            hash: block.header.prev_blockhash,
        };
        let mut inner = self.lock();
        let tip = inner.wallet.latest_checkpoint();
        if tip.block_id() != parent && tip.height() >= parent_height {
            if tip.height() == height && tip.hash() == block.block_hash() {
                return Ok(());
            }
            // A block that does not extend the tip without a disconnection first: the
            // wallet's blocks from `height` on are stale.
            tracing::warn!(height, block = %block.block_hash(), tip = %tip.hash(), tip_height = tip.height(), "on-chain wallet: block does not extend the wallet's tip; rolling back to its parent");
            self.disconnect_to(&mut inner, parent)?;
        }
        inner
            .wallet
            .apply_block_connected_to(block, height, parent)
            .map_err(|err| {
                WalletError::Chain(format!(
                    "block {} at height {height}: {err}",
                    block.block_hash()
                ))
            })?;
        self.persist(&mut inner)
    }

    /// Drops the blocks above `fork` and makes `fork` the tip; persists. The wallet's
    /// transactions that the dropped blocks confirmed become unconfirmed (BDK keeps a
    /// transaction whose anchors all left the chain as unconfirmed, unless a transaction
    /// of the chain conflicts with it).
    fn disconnect_to(&self, inner: &mut Inner, fork: BlockId) -> Result<(), WalletError> {
        let mut removal = local_chain::ChangeSet::default();
        let mut has_fork = false;
        for checkpoint in inner.wallet.checkpoints() {
            if checkpoint.height() > fork.height {
                removal.blocks.insert(checkpoint.height(), None);
            } else {
                has_fork = checkpoint.block_id() == fork;
                break;
            }
        }
        if has_fork && removal.blocks.is_empty() {
            return Ok(());
        }
        if !has_fork {
            removal.blocks.insert(fork.height, Some(fork.hash));
        }
        inner.absorb_staged();
        let removal = ChangeSet {
            local_chain: removal,
            ..Default::default()
        };
        let mut rolled_back = inner.merged.clone();
        rolled_back.merge(removal.clone());
        // BDK's wallet cannot drop blocks from its chain: it is rebuilt from the change set
        // without them (reorganizations are rare, and a rebuild costs one load).
        inner.wallet = Self::load(&self.keys, self.network, rolled_back)?;
        inner.absorb_staged();
        inner.merged.merge(removal);
        inner.dirty = true;
        tracing::info!(height = fork.height, block = %fork.hash, "on-chain wallet: rolled back to the fork point");
        self.persist(inner)
    }

    fn disconnect(&self, fork: BlockId) -> Result<(), WalletError> {
        let mut inner = self.lock();
        self.disconnect_to(&mut inner, fork)
    }
}

/// Blocks from LDK's block sync. Errors cannot be returned here: they are logged and
/// remembered ([`OnchainWallet::failed`]), never panicked on.
impl Listen for OnchainWallet {
    fn filtered_block_connected(&self, header: &Header, txdata: &TransactionData, height: u32) {
        let block = Block {
            header: *header,
            txdata: txdata.iter().map(|(_, tx)| (*tx).clone()).collect(),
        };
        if let Err(err) = self.connect_block(&block, height) {
            self.note_failure(&format!("connecting block {height}"), &err);
        }
    }

    fn blocks_disconnected(&self, fork_point_block: BlockLocator) {
        let fork = BlockId {
            height: fork_point_block.height,
            hash: fork_point_block.block_hash,
        };
        if let Err(err) = self.disconnect(fork) {
            self.note_failure(
                &format!("disconnecting blocks down to {}", fork_point_block.height),
                &err,
            );
        }
    }
}

/// The wallet's coins for LDK's anchor and HTLC fee bumping.
impl WalletSourceSync for OnchainWallet {
    fn list_confirmed_utxos(&self) -> Result<Vec<Utxo>, ()> {
        let inner = self.lock();
        let tip_height = inner.wallet.latest_checkpoint().height();
        let utxos = inner
            .wallet
            .list_unspent()
            .filter_map(|output| {
                let height = confirmation_height(&output)?;
                let is_coinbase = inner
                    .wallet
                    .tx_graph()
                    .get_tx(output.outpoint.txid)
                    .is_some_and(|tx| tx.is_coinbase());
                if is_coinbase && tip_height + 1 - height < COINBASE_MATURITY {
                    return None;
                }
                let script = &output.txout.script_pubkey;
                if !script.is_p2wpkh() {
                    return None;
                }
                let hash = WPubkeyHash::from_slice(&script.as_bytes()[2..]).ok()?;
                Some(Utxo::new_v0_p2wpkh(
                    output.outpoint,
                    output.txout.value,
                    &hash,
                ))
            })
            .collect();
        Ok(utxos)
    }

    fn get_prevtx(&self, outpoint: OutPoint) -> Result<Transaction, ()> {
        self.lock()
            .wallet
            .tx_graph()
            .get_tx(outpoint.txid)
            .map(|tx| tx.as_ref().clone())
            .ok_or(())
    }

    fn get_change_script(&self) -> Result<ScriptBuf, ()> {
        self.new_change_script().map_err(|_| ())
    }

    /// Signs the inputs that spend the wallet's coins and leaves the others (LDK's anchor
    /// and HTLC inputs, which LDK signs afterwards) as they are.
    fn sign_psbt(&self, mut psbt: Psbt) -> Result<Transaction, ()> {
        let inner = self.lock();
        let options = SignOptions {
            // LDK's PSBTs carry only the witness UTXO; every input is SegWit.
            trust_witness_utxo: true,
            try_finalize: true,
            ..Default::default()
        };
        if let Err(err) = inner
            .wallet
            .sign_with_signers(&mut psbt, &self.signers(), options)
        {
            tracing::error!(error = %err, "on-chain wallet: signing LDK's transaction failed");
            return Err(());
        }
        for (index, input) in psbt.inputs.iter().enumerate() {
            let ours = input
                .witness_utxo
                .as_ref()
                .is_some_and(|utxo| inner.wallet.is_mine(utxo.script_pubkey.clone()));
            if ours && input.final_script_witness.is_none() {
                tracing::error!(index, txid = %psbt.unsigned_tx.compute_txid(), "on-chain wallet: an input of ours was left unsigned");
                return Err(());
            }
        }
        Ok(psbt.extract_tx_unchecked_fee_rate())
    }
}

/// Where the output sweeper sends what it claims.
impl ChangeDestinationSourceSync for OnchainWallet {
    fn get_change_destination_script(&self) -> Result<ScriptBuf, ()> {
        self.new_change_script().map_err(|_| ())
    }
}

/// Where the output sweeper sends what it claims (the same script as the synchronous
/// trait, decided when called, as LDK's own wrapper of a synchronous source does).
impl ChangeDestinationSource for OnchainWallet {
    fn get_change_destination_script<'a>(
        &'a self,
    ) -> impl std::future::Future<Output = Result<ScriptBuf, ()>> + Send + 'a {
        std::future::ready(self.new_change_script().map_err(|_| ()))
    }
}
