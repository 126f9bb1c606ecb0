//! What the node does with each LDK event.
//!
//! An event whose handling needs a store write that fails is handed back to LDK
//! ([`ReplayEvent`]) and the node is stopped: LDK persists unhandled events with the
//! ChannelManager, so the instance that runs next handles it again.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bitcoin::FeeRate;
use lightning::chain::chaininterface::{ConfirmationTarget, FeeEstimator};
use lightning::events::{Event, FundingInfo, PaymentPurpose, ReplayEvent};
use lightning::io;

use crate::payments::{Direction, PaymentRecord, PaymentStatus, PaymentStore};
use crate::peers;
use crate::persist::FailStop;
use crate::types::{BumpHandler, Chain, ChannelManager, LinkServer, OutputSweeper, PeerManager};
use crate::wallet::{OnchainWallet, WalletError};

/// The node's event handler.
pub struct EventHandler {
    pub(crate) channel_manager: Arc<ChannelManager>,
    pub(crate) peer_manager: Arc<PeerManager>,
    /// Peers on fronts: a connection LDK asks for is made through one when any is linked.
    pub(crate) link_server: Arc<LinkServer>,
    pub(crate) wallet: Arc<OnchainWallet>,
    pub(crate) chain: Chain,
    pub(crate) sweeper: Arc<OutputSweeper>,
    pub(crate) bump_handler: Arc<BumpHandler>,
    pub(crate) payments: Arc<PaymentStore>,
    pub(crate) fail_stop: FailStop,
    /// Forwarding fees earned since start (msat).
    pub(crate) forwarded_fees_msat: AtomicU64,
    /// Payments forwarded since start.
    pub(crate) forwarded_payments: AtomicU64,
}

impl EventHandler {
    /// Handles one event.
    pub async fn handle(self: Arc<Self>, event: Event) -> Result<(), ReplayEvent> {
        if self.fail_stop.reason().is_some() {
            // A stopping node does nothing more; the event stays with LDK.
            return Err(ReplayEvent());
        }
        match event {
            Event::FundingGenerationReady {
                temporary_channel_id,
                counterparty_node_id,
                channel_value_satoshis,
                output_script,
                ..
            } => {
                let sat_per_kwu = self
                    .chain
                    .get_est_sat_per_1000_weight(ConfirmationTarget::NonAnchorChannelFee);
                let fee_rate = FeeRate::from_sat_per_kwu(u64::from(sat_per_kwu));
                let amount = bitcoin::Amount::from_sat(channel_value_satoshis);
                match self
                    .wallet
                    .create_funding_transaction(output_script, amount, fee_rate)
                {
                    Ok(tx) => {
                        let txid = tx.compute_txid();
                        if let Err(err) = self.channel_manager.funding_transaction_generated(
                            temporary_channel_id,
                            counterparty_node_id,
                            tx,
                        ) {
                            tracing::warn!(channel = %temporary_channel_id, peer = %counterparty_node_id, error = ?err, "LDK refused the funding transaction");
                            self.forget(txid);
                        } else {
                            tracing::info!(channel = %temporary_channel_id, peer = %counterparty_node_id, %txid, "funding transaction made");
                        }
                    }
                    Err(WalletError::Store(err)) => {
                        return Err(self.store_failed("recording the funding transaction", err));
                    }
                    Err(err) => {
                        tracing::warn!(channel = %temporary_channel_id, peer = %counterparty_node_id, error = %err, "cannot fund the channel; abandoning it");
                        // The channel has no funding yet: closing it broadcasts nothing.
                        let _ = self.channel_manager.force_close_broadcasting_latest_txn(
                            &temporary_channel_id,
                            &counterparty_node_id,
                            format!("cannot fund the channel: {err}"),
                        );
                    }
                }
            }
            Event::OpenChannelRequest {
                temporary_channel_id,
                counterparty_node_id,
                funding_satoshis,
                ..
            } => {
                let user_channel_id: u128 = rand::random();
                match self.channel_manager.accept_inbound_channel(
                    &temporary_channel_id,
                    &counterparty_node_id,
                    user_channel_id,
                    None,
                ) {
                    Ok(()) => {
                        tracing::info!(channel = %temporary_channel_id, peer = %counterparty_node_id, funding_satoshis, "accepted inbound channel")
                    }
                    Err(err) => {
                        tracing::warn!(channel = %temporary_channel_id, peer = %counterparty_node_id, error = ?err, "cannot accept inbound channel")
                    }
                }
            }
            Event::PaymentClaimable {
                payment_hash,
                amount_msat,
                purpose,
                ..
            } => {
                let hash = payment_hash.to_string();
                let hold = self
                    .payments
                    .get(Direction::Inbound, &hash)
                    .filter(|r| r.hold);
                match (purpose.preimage(), hold) {
                    (Some(preimage), _) => {
                        tracing::info!(%payment_hash, amount_msat, "claiming payment");
                        self.channel_manager.claim_funds(preimage);
                    }
                    (None, Some(_)) => {
                        // A hold invoice: keep the HTLCs until the operator settles or cancels.
                        self.record(
                            Direction::Inbound,
                            &hash,
                            &hash,
                            "recording an accepted hold payment",
                            |record| {
                                record.status = PaymentStatus::Accepted;
                                record.amount_msat = Some(amount_msat);
                            },
                        )
                        .await?;
                        tracing::info!(%payment_hash, amount_msat, "hold invoice payment accepted; waiting for settle or cancel");
                    }
                    (None, None) => {
                        tracing::warn!(%payment_hash, "payment to an unknown hash; failing it back");
                        self.channel_manager.fail_htlc_backwards(&payment_hash);
                    }
                }
            }
            Event::PaymentClaimed {
                payment_hash,
                amount_msat,
                purpose,
                ..
            } => {
                let hash = payment_hash.to_string();
                let preimage = purpose.preimage().map(|p| p.to_string());
                let keysend = matches!(purpose, PaymentPurpose::SpontaneousPayment(_));
                self.record(
                    Direction::Inbound,
                    &hash,
                    &hash,
                    "recording a received payment",
                    |record| {
                        record.status = PaymentStatus::Succeeded;
                        record.amount_msat = Some(amount_msat);
                        record.preimage = preimage.clone();
                    },
                )
                .await?;
                tracing::info!(%payment_hash, amount_msat, keysend, "payment received");
            }
            Event::PaymentSent {
                payment_id,
                payment_preimage,
                payment_hash,
                amount_msat,
                fee_paid_msat,
                ..
            } => {
                let id = payment_id
                    .map(|id| hex::encode(id.0))
                    .unwrap_or_else(|| payment_hash.to_string());
                let hash = payment_hash.to_string();
                self.record(
                    Direction::Outbound,
                    &id,
                    &hash,
                    "recording a sent payment",
                    |record| {
                        // A payment to an offer learns its hash from the invoice.
                        record.payment_hash = hash.clone();
                        record.status = PaymentStatus::Succeeded;
                        record.preimage = Some(payment_preimage.to_string());
                        record.fee_msat = fee_paid_msat;
                        if amount_msat.is_some() {
                            record.amount_msat = amount_msat;
                        }
                        record.failure_reason = None;
                    },
                )
                .await?;
                tracing::info!(%payment_hash, ?amount_msat, ?fee_paid_msat, "payment sent");
            }
            Event::PaymentFailed {
                payment_id,
                payment_hash,
                reason,
            } => {
                let id = hex::encode(payment_id.0);
                let hash = payment_hash.map(|h| h.to_string()).unwrap_or_default();
                let why = reason
                    .map(|r| format!("{r:?}"))
                    .unwrap_or_else(|| "unknown".into());
                self.record(
                    Direction::Outbound,
                    &id,
                    &hash,
                    "recording a failed payment",
                    |record| {
                        if !hash.is_empty() {
                            record.payment_hash = hash.clone();
                        }
                        record.status = PaymentStatus::Failed;
                        record.failure_reason = Some(why.clone());
                    },
                )
                .await?;
                tracing::warn!(payment_hash = %hash, reason = %why, "payment failed");
            }
            Event::PaymentForwarded {
                total_fee_earned_msat,
                outbound_amount_forwarded_msat,
                ..
            } => {
                let fee = total_fee_earned_msat.unwrap_or(0);
                self.forwarded_fees_msat.fetch_add(fee, Ordering::Relaxed);
                self.forwarded_payments.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    fee_msat = fee,
                    amount_msat = outbound_amount_forwarded_msat,
                    "payment forwarded"
                );
            }
            Event::SpendableOutputs {
                outputs,
                channel_id,
                counterparty_node_id,
            } => {
                if self
                    .sweeper
                    // Static outputs pay the wallet already (see `SweepSpender`).
                    .track_spendable_outputs(outputs, channel_id, counterparty_node_id, true, None)
                    .await
                    .is_err()
                {
                    return Err(self.store_failed(
                        "recording outputs to sweep",
                        io::Error::new(
                            io::ErrorKind::Other,
                            "the output sweeper could not persist",
                        ),
                    ));
                }
            }
            Event::BumpTransaction(bump) => self.bump_handler.handle_event(&bump),
            Event::DiscardFunding {
                channel_id,
                funding_info,
            } => match funding_info {
                FundingInfo::Tx { transaction } => {
                    let txid = transaction.compute_txid();
                    tracing::info!(channel = %channel_id, %txid, "funding transaction discarded");
                    self.forget(txid);
                }
                FundingInfo::OutPoint { outpoint } => {
                    tracing::info!(channel = %channel_id, txid = %outpoint.txid, "funding transaction discarded");
                    self.forget(outpoint.txid);
                }
                // Splice contributions: the node does not splice.
                FundingInfo::Contribution { .. } => {
                    tracing::info!(channel = %channel_id, "splice contribution discarded");
                }
            },
            Event::ChannelPending {
                channel_id,
                counterparty_node_id,
                funding_txo,
                ..
            } => {
                tracing::info!(channel = %channel_id, peer = %counterparty_node_id, %funding_txo, "channel pending");
                // LDK broadcast our funding now (an inbound channel's is not the wallet's,
                // and releasing it does nothing): the wallet may rebroadcast it.
                if let Err(err) = self.wallet.release_funding(funding_txo.txid) {
                    if let WalletError::Store(err) = err {
                        return Err(self.store_failed("releasing a funding transaction", err));
                    }
                    tracing::warn!(channel = %channel_id, error = %err, "cannot release the funding transaction");
                }
            }
            Event::ChannelReady {
                channel_id,
                counterparty_node_id,
                ..
            } => {
                tracing::info!(channel = %channel_id, peer = %counterparty_node_id, "channel ready");
            }
            Event::ChannelClosed {
                channel_id,
                reason,
                counterparty_node_id,
                ..
            } => {
                tracing::info!(channel = %channel_id, peer = ?counterparty_node_id, %reason, "channel closed");
            }
            Event::ConnectionNeeded { node_id, addresses } => {
                let address = addresses
                    .iter()
                    .find_map(|a| a.to_socket_addrs().ok().and_then(|mut it| it.next()));
                // The onion messenger wants a peer to pass a message to: through a front
                // when fronts are linked (the session comes back as any other), as the
                // node dials every peer.
                if let Some(address) = address
                    && !self
                        .link_server
                        .connect_through_front(node_id, &address.to_string())
                {
                    let peer_manager = Arc::clone(&self.peer_manager);
                    tokio::spawn(async move {
                        if let Err(err) = peers::connect(&peer_manager, node_id, address).await {
                            tracing::debug!(peer = %node_id, error = %err, "connection LDK asked for failed");
                        }
                    });
                }
            }
            Event::HTLCHandlingFailed {
                prev_channel_ids,
                failure_type,
                failure_reason,
            } => {
                tracing::debug!(
                    ?prev_channel_ids,
                    ?failure_type,
                    ?failure_reason,
                    "HTLC handling failed"
                );
            }
            other => tracing::debug!(event = ?other, "event not acted on"),
        }
        Ok(())
    }

    /// Applies `change` to a payment's record (a new pending one when there is none) and
    /// writes it; a failed write stops the node and hands the event back to LDK.
    async fn record(
        &self,
        direction: Direction,
        id: &str,
        payment_hash: &str,
        what: &str,
        change: impl FnOnce(&mut PaymentRecord),
    ) -> Result<(), ReplayEvent> {
        let create = || PaymentRecord::pending(direction, id.to_owned(), payment_hash.to_owned());
        match self.payments.update(direction, id, create, change).await {
            Ok(_) => Ok(()),
            Err(err) => Err(self.store_failed(what, err)),
        }
    }

    fn forget(&self, txid: bitcoin::Txid) {
        if let Err(err) = self.wallet.forget_transaction(txid) {
            if let WalletError::Store(err) = err {
                self.store_failed(
                    "releasing the inputs of a discarded funding transaction",
                    err,
                );
            } else {
                tracing::warn!(%txid, error = %err, "cannot release the inputs of a discarded transaction");
            }
        }
    }

    fn store_failed(&self, what: &str, err: io::Error) -> ReplayEvent {
        self.fail_stop.trigger(format!("{what}: {err}"));
        ReplayEvent()
    }
}
