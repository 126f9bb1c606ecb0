//! Building, signing and recording the wallet's transactions: sends and channel
//! fundings (held until LDK broadcasts them), and forgetting them.

use super::*;

impl OnchainWallet {
    /// Builds and signs a transaction paying exactly `amount` to `script` at `fee_rate`,
    /// change back to the wallet; holds it (it is not rebroadcast until
    /// [released](Self::release_funding)), records it as unconfirmed (its inputs are not
    /// used again unless it is [forgotten](Self::forget_transaction)), persists, returns
    /// it. LDK broadcasts it once the channel's first commitment is signed.
    ///
    /// It spends confirmed coins and the wallet's own unconfirmed change, never an
    /// unconfirmed payment from someone else (its sender could still double-spend it).
    pub fn create_funding_transaction(
        &self,
        script: ScriptBuf,
        amount: Amount,
        fee_rate: FeeRate,
    ) -> Result<Transaction, WalletError> {
        self.build_and_record(Some((script, amount)), None, fee_rate, Hold::Funding)
    }

    /// LDK broadcast the funding transaction `txid` (its channel's first commitment is
    /// signed): from now on it is rebroadcast until it confirms. Idempotent.
    pub fn release_funding(&self, txid: Txid) -> Result<(), WalletError> {
        let mut inner = self.lock();
        if inner.funding_holds.remove(&txid) {
            self.noting(
                "releasing a funding transaction",
                self.persist_holds(&inner),
            )?;
            tracing::debug!(%txid, "funding transaction released for rebroadcast");
        }
        Ok(())
    }

    /// The funding transactions held (recorded, not broadcast by LDK yet).
    pub fn funding_holds(&self) -> Vec<Txid> {
        self.lock().funding_holds.iter().copied().collect()
    }

    /// At start, before anything is rebroadcast: releases the held fundings of channels
    /// LDK knows (`is_channel_funding`), which it broadcast or will, and forgets the others,
    /// whose channel was never funded (LDK does not persist such a channel): their coins
    /// are spendable again. Returns the txids forgotten.
    pub fn settle_funding_holds(
        &self,
        is_channel_funding: impl Fn(&Txid) -> bool,
    ) -> Result<Vec<Txid>, WalletError> {
        let held = self.funding_holds();
        let mut forgotten = Vec::new();
        for txid in held {
            if is_channel_funding(&txid) {
                self.release_funding(txid)?;
            } else {
                tracing::warn!(%txid, "a funding transaction was recorded for a channel that was never funded: forgetting it, its coins are spendable again");
                self.forget_transaction(txid)?;
                forgotten.push(txid);
            }
        }
        Ok(forgotten)
    }

    /// Builds and signs a payment to `address` (which must be of the wallet's network) of
    /// `amount`, or of everything the wallet can spend when `amount` is `None`; chooses
    /// coins and records the transaction like
    /// [`create_funding_transaction`](Self::create_funding_transaction). The caller
    /// broadcasts it.
    pub fn create_send(
        &self,
        address: &str,
        amount: Option<Amount>,
        fee_rate: FeeRate,
    ) -> Result<Transaction, WalletError> {
        let address = address
            .trim()
            .parse::<Address<NetworkUnchecked>>()
            .map_err(|err| WalletError::InvalidAddress(format!("{address:?}: {err}")))?
            .require_network(self.network)
            .map_err(|err| WalletError::InvalidAddress(format!("{address:?}: {err}")))?;
        let script = address.script_pubkey();
        match amount {
            Some(amount) => {
                self.build_and_record(Some((script, amount)), None, fee_rate, Hold::None)
            }
            None => self.build_and_record(None, Some(script), fee_rate, Hold::None),
        }
    }

    fn build_and_record(
        &self,
        recipient: Option<(ScriptBuf, Amount)>,
        drain_to: Option<ScriptBuf>,
        fee_rate: FeeRate,
        hold: Hold,
    ) -> Result<Transaction, WalletError> {
        if fee_rate > FeeRate::from_sat_per_vb_u32(MAX_FEE_RATE_SAT_PER_VB) {
            return Err(WalletError::Build(format!(
                "fee rate {} sat/vB is above the limit of {MAX_FEE_RATE_SAT_PER_VB} sat/vB",
                fee_rate.to_sat_per_vb_ceil()
            )));
        }
        let mut inner = self.lock();
        let requested = recipient.as_ref().map(|(_, amount)| *amount);
        // Unconfirmed payments from others can still be double-spent by their sender.
        let untrusted: Vec<OutPoint> = inner
            .wallet
            .list_unspent()
            .filter(|output| {
                output.keychain == KeychainKind::External && output.chain_position.is_unconfirmed()
            })
            .map(|output| output.outpoint)
            .collect();
        let mut builder = inner.wallet.build_tx();
        builder.fee_rate(fee_rate).unspendable(untrusted);
        if let Some((script, amount)) = recipient {
            builder.add_recipient(script, amount);
        }
        if let Some(script) = drain_to {
            builder.drain_wallet().drain_to(script);
        }
        let psbt = builder
            .finish()
            .map_err(|err| build_error(err, requested))?;
        let tx = self.sign_own(&inner.wallet, psbt)?;
        if hold == Hold::Funding {
            // Before the transaction is recorded: a crash in between leaves a hold of a
            // transaction the wallet never had, which the start-up settling drops.
            inner.funding_holds.insert(tx.compute_txid());
            if let Err(err) = self.persist_holds(&inner) {
                inner.funding_holds.remove(&tx.compute_txid());
                return self.noting("holding a funding transaction", Err(err));
            }
        }
        let seen = inner.tick();
        inner.wallet.apply_unconfirmed_txs([(tx.clone(), seen)]);
        self.noting("recording a new transaction", self.persist(&mut inner))?;
        tracing::info!(txid = %tx.compute_txid(), "built and recorded a wallet transaction");
        Ok(tx)
    }

    /// Signs every input of a transaction built by the wallet.
    fn sign_own(&self, wallet: &Wallet, mut psbt: Psbt) -> Result<Transaction, WalletError> {
        let finalized = wallet
            .sign_with_signers(&mut psbt, &self.signers(), SignOptions::default())
            .map_err(|err| WalletError::Sign(err.to_string()))?;
        if !finalized {
            return Err(WalletError::Sign(
                "not every input of the transaction could be signed".into(),
            ));
        }
        // The fee rate was checked against MAX_FEE_RATE_SAT_PER_VB before building.
        Ok(psbt.extract_tx_unchecked_fee_rate())
    }

    pub(super) fn signers(&self) -> [&SignersContainer; 2] {
        [&self.keys.signers[0], &self.keys.signers[1]]
    }

    /// Forgets a transaction the wallet recorded but that will never be broadcast (a
    /// funding transaction LDK discarded): its inputs become spendable again. A confirmed
    /// or unknown transaction is left alone.
    pub fn forget_transaction(&self, txid: Txid) -> Result<(), WalletError> {
        let mut inner = self.lock();
        let evicted = inner.tick();
        inner.wallet.apply_evicted_txs([(txid, evicted)]);
        self.noting("forgetting a transaction", self.persist(&mut inner))?;
        // After the eviction is stored: a crash in between leaves a hold of a transaction
        // that is gone, which the start-up settling drops.
        if inner.funding_holds.remove(&txid) {
            self.noting("dropping a funding hold", self.persist_holds(&inner))?;
        }
        tracing::info!(%txid, "forgot an unconfirmed wallet transaction");
        Ok(())
    }

    /// Records a transaction seen in the mempool or broadcast by us; ignored when it
    /// neither pays nor spends the wallet.
    pub fn record_unconfirmed(&self, tx: &Transaction) -> Result<(), WalletError> {
        let mut inner = self.lock();
        let seen = inner.tick();
        inner.wallet.apply_unconfirmed_txs([(tx.clone(), seen)]);
        self.noting("recording a transaction", self.persist(&mut inner))
    }
}

/// Whether a new transaction waits for LDK before it may be broadcast.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    None,
    Funding,
}

pub(super) fn confirmation_height(output: &LocalOutput) -> Option<u32> {
    match &output.chain_position {
        ChainPosition::Confirmed { anchor, .. } => Some(anchor.block_id.height),
        ChainPosition::Unconfirmed { .. } => None,
    }
}

fn build_error(err: CreateTxError, requested: Option<Amount>) -> WalletError {
    match err {
        CreateTxError::CoinSelection(InsufficientFunds { needed, available }) => {
            WalletError::InsufficientFunds {
                needed_sat: needed.to_sat(),
                available_sat: available.to_sat(),
            }
        }
        CreateTxError::NoUtxosSelected => WalletError::InsufficientFunds {
            needed_sat: requested.unwrap_or(Amount::ZERO).to_sat(),
            available_sat: 0,
        },
        CreateTxError::OutputBelowDustLimit(_) => {
            WalletError::Build("the amount is below the dust limit".into())
        }
        other => WalletError::Build(other.to_string()),
    }
}
