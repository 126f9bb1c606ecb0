//! The on-chain wallet's operations.

use super::*;

impl Node {
    /// A new receive address of the on-chain wallet.
    pub fn new_address(&self) -> Result<bitcoin::Address, NodeError> {
        self.check_running()?;
        Ok(self.wallet.new_address()?)
    }

    /// The on-chain balance.
    pub fn onchain_balance(&self) -> WalletBalance {
        self.wallet.balance()
    }

    /// Sends on chain: `amount`, or everything when `None`. Returns the txid once the
    /// chain source accepted the transaction.
    pub async fn send_onchain(
        &self,
        address: &str,
        amount: Option<Amount>,
        fee_rate: Option<FeeRate>,
    ) -> Result<Txid, NodeError> {
        self.check_running()?;
        let fee_rate = match fee_rate {
            Some(rate) => rate,
            None => {
                use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
                let sat_per_kwu = self
                    .chain
                    .get_est_sat_per_1000_weight(ConfirmationTarget::OutputSpendingFee);
                FeeRate::from_sat_per_kwu(u64::from(sat_per_kwu))
            }
        };
        let tx = self.wallet.create_send(address, amount, fee_rate)?;
        let txid = tx.compute_txid();
        if let Err(err) = self.chain.broadcast(vec![tx]).await {
            match err.broadcast_outcome() {
                BroadcastOutcome::Refused => {
                    // Never accepted: its inputs are ours to spend again.
                    let _ = self.wallet.forget_transaction(txid);
                    return Err(err.into());
                }
                BroadcastOutcome::AlreadyConfirmed => {}
                BroadcastOutcome::Unknown => {
                    // It may be in a mempool: forgetting it would let a retried
                    // withdrawal pay again from other coins. The rebroadcaster sends it.
                    tracing::warn!(%txid, %address, error = %err, "on-chain send: outcome unknown; keeping the transaction");
                    return Err(NodeError::SendOutcomeUnknown {
                        txid,
                        reason: err.to_string(),
                    });
                }
            }
        }
        tracing::info!(%txid, %address, ?amount, "sent on chain");
        Ok(txid)
    }
}
