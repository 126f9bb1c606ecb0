//! Invoices and payments, inbound and outbound.

use super::*;

impl Node {
    /// Makes a BOLT11 invoice (zero-amount when `amount_msat` is `None`) and records it.
    pub async fn create_invoice(
        &self,
        amount_msat: Option<u64>,
        description: &str,
        expiry_secs: Option<u32>,
    ) -> Result<Bolt11Invoice, NodeError> {
        self.invoice(amount_msat, None, description, expiry_secs)
            .await
    }

    /// Makes a hold invoice for `payment_hash`: a payment to it is held (status
    /// `accepted`) until [`Self::settle_hold_invoice`] gives the preimage or
    /// [`Self::cancel_hold_invoice`] fails it back. Unsettled HTLCs are failed back by LDK
    /// before they expire.
    pub async fn create_hold_invoice(
        &self,
        amount_msat: Option<u64>,
        payment_hash: PaymentHash,
        description: &str,
        expiry_secs: Option<u32>,
    ) -> Result<Bolt11Invoice, NodeError> {
        if self
            .payments
            .get(Direction::Inbound, &payment_hash.to_string())
            .is_some()
        {
            return Err(NodeError::InvalidRequest(format!(
                "an invoice for {payment_hash} exists"
            )));
        }
        self.invoice(amount_msat, Some(payment_hash), description, expiry_secs)
            .await
    }

    /// Makes an invoice (a hold invoice when the hash is ours to give) and records it.
    pub(super) async fn invoice(
        &self,
        amount_msat: Option<u64>,
        hold: Option<PaymentHash>,
        description: &str,
        expiry_secs: Option<u32>,
    ) -> Result<Bolt11Invoice, NodeError> {
        self.check_running()?;
        if amount_msat == Some(0) {
            return Err(NodeError::InvalidRequest(
                "an invoice amount must be positive".into(),
            ));
        }
        let description = Description::new(description.to_owned())
            .map_err(|err| NodeError::InvalidRequest(format!("invoice description: {err}")))?;
        let params = Bolt11InvoiceParameters {
            amount_msats: amount_msat,
            description: Bolt11InvoiceDescription::Direct(description),
            invoice_expiry_delta_secs: expiry_secs,
            payment_hash: hold,
            ..Default::default()
        };
        let invoice = self
            .channel_manager
            .create_bolt11_invoice(params)
            .map_err(NodeError::Invoice)?;
        let hash = invoice.payment_hash().to_string();
        let mut record = PaymentRecord::pending(Direction::Inbound, hash.clone(), hash);
        record.amount_msat = amount_msat;
        record.invoice = Some(invoice.to_string());
        record.hold = hold.is_some();
        self.payments.put(record).await.map_err(persist_error)?;
        Ok(invoice)
    }

    /// Claims the held payment of a hold invoice with its preimage.
    pub fn settle_hold_invoice(&self, preimage: PaymentPreimage) -> Result<(), NodeError> {
        self.check_running()?;
        let hash: PaymentHash = preimage.into();
        let record = self.held_record(&hash)?;
        tracing::info!(payment_hash = %record.payment_hash, "settling hold invoice");
        self.channel_manager.claim_funds(preimage);
        Ok(())
    }

    /// Fails back the held payment of a hold invoice.
    pub async fn cancel_hold_invoice(&self, payment_hash: PaymentHash) -> Result<(), NodeError> {
        self.check_running()?;
        let record = self.held_record(&payment_hash)?;
        self.channel_manager.fail_htlc_backwards(&payment_hash);
        self.payments
            .update(
                Direction::Inbound,
                &record.payment_id,
                || record.clone(),
                |r| {
                    r.status = PaymentStatus::Failed;
                    r.failure_reason = Some("cancelled".into());
                },
            )
            .await
            .map_err(persist_error)?;
        Ok(())
    }

    pub(super) fn held_record(
        &self,
        payment_hash: &PaymentHash,
    ) -> Result<PaymentRecord, NodeError> {
        let hash = payment_hash.to_string();
        let record = self
            .payments
            .get(Direction::Inbound, &hash)
            .filter(|r| r.hold)
            .ok_or_else(|| NodeError::UnknownPayment(hash.clone()))?;
        if record.status != PaymentStatus::Accepted {
            return Err(NodeError::InvalidRequest(format!(
                "hold invoice {hash} is {:?}, not accepted",
                record.status
            )));
        }
        Ok(record)
    }

    /// Pays a BOLT11 invoice (`amount_msat` for a zero-amount invoice). Returns the
    /// payment id once the payment is recorded and handed to LDK; see [`Self::wait_payment`].
    pub async fn pay_invoice(
        &self,
        invoice: &str,
        amount_msat: Option<u64>,
    ) -> Result<PaymentId, NodeError> {
        self.check_running()?;
        let invoice = Bolt11Invoice::from_str(invoice.trim())
            .map_err(|err| NodeError::InvalidInvoice(err.to_string()))?;
        if invoice.network() != self.network {
            return Err(NodeError::InvalidInvoice(format!(
                "the invoice is for {}, this node runs on {}",
                invoice.network(),
                self.network
            )));
        }
        if invoice.is_expired() {
            return Err(NodeError::InvalidInvoice("the invoice has expired".into()));
        }
        if invoice.recover_payee_pub_key() == self.node_id() {
            return Err(NodeError::InvalidInvoice("the invoice is ours".into()));
        }
        let amount = match (invoice.amount_milli_satoshis(), amount_msat) {
            (Some(_), Some(_)) => {
                return Err(NodeError::InvalidRequest(
                    "the invoice has an amount; do not give another".into(),
                ));
            }
            (None, None) => {
                return Err(NodeError::InvalidRequest(
                    "the invoice has no amount; give amount_msat".into(),
                ));
            }
            (Some(amount), None) | (None, Some(amount)) => amount,
        };
        if amount == 0 {
            return Err(NodeError::InvalidRequest(
                "the amount must be positive".into(),
            ));
        }
        let payment_hash = PaymentHash(invoice.payment_hash().0);
        // One payment per invoice: the id is the hash, so paying twice is refused by LDK too.
        let payment_id = PaymentId(payment_hash.0);
        let id = hex::encode(payment_id.0);
        // Concurrent calls for one invoice take turns: the later one finds the record.
        let _turn = self.payment_locks.lock(payment_id.0).await;
        if let Some(existing) = self.payments.get(Direction::Outbound, &id) {
            match existing.status {
                PaymentStatus::Succeeded => {
                    return Err(NodeError::PaymentFailed(
                        "this invoice was already paid".into(),
                    ));
                }
                PaymentStatus::Pending | PaymentStatus::Accepted => return Ok(payment_id),
                PaymentStatus::Failed => {}
            }
        }
        let mut record =
            PaymentRecord::pending(Direction::Outbound, id.clone(), payment_hash.to_string());
        record.amount_msat = Some(amount);
        record.invoice = Some(invoice.to_string());
        self.payments.put(record).await.map_err(persist_error)?;
        let params = OptionalBolt11PaymentParams {
            retry_strategy: Retry::Timeout(PAYMENT_RETRY_TIMEOUT),
            ..Default::default()
        };
        let amount_arg = if invoice.amount_milli_satoshis().is_some() {
            None
        } else {
            Some(amount)
        };
        if let Err(err) = self
            .channel_manager
            .pay_for_bolt11_invoice(&invoice, payment_id, amount_arg, params)
        {
            return Err(self.refused_payment(&id, format!("{err:?}")).await);
        }
        Ok(payment_id)
    }

    /// Makes a BOLT12 offer (any amount when `amount_msat` is `None`). Offers are not
    /// recorded: LDK recognizes its own from their metadata, and each payment to one is
    /// recorded by its hash when it arrives. Payers reach the node through blinded paths
    /// over its channels' peers, so the node needs at least one peer with a channel.
    pub fn create_offer(
        &self,
        amount_msat: Option<u64>,
        description: &str,
    ) -> Result<Offer, NodeError> {
        self.check_running()?;
        if amount_msat == Some(0) {
            return Err(NodeError::InvalidRequest(
                "an offer amount must be positive".into(),
            ));
        }
        let mut builder = self
            .channel_manager
            .create_offer_builder()
            .map_err(|err| NodeError::Offer(format!("{err:?}")))?
            .description(description.to_owned());
        if let Some(amount) = amount_msat {
            builder = builder.amount_msats(amount);
        }
        builder
            .build()
            .map_err(|err| NodeError::Offer(format!("{err:?}")))
    }

    /// Pays a BOLT12 offer (`amount_msat` for an offer of any amount): asks the offer's
    /// node for an invoice by onion message, and pays the invoice that comes back. Returns
    /// the payment id once the payment is recorded and handed to LDK; see
    /// [`Self::wait_payment`]. Each call is a new payment (an offer may be paid many
    /// times).
    pub async fn pay_offer(
        &self,
        offer: &str,
        amount_msat: Option<u64>,
    ) -> Result<PaymentId, NodeError> {
        self.check_running()?;
        let offer = Offer::from_str(offer.trim())
            .map_err(|err| NodeError::InvalidOffer(format!("{err:?}")))?;
        if !offer.supports_chain(ChainHash::using_genesis_block(self.network)) {
            return Err(NodeError::InvalidOffer(format!(
                "the offer is not for {}, this node's chain",
                self.network
            )));
        }
        if offer.is_expired() {
            return Err(NodeError::InvalidOffer("the offer has expired".into()));
        }
        // Only an offer without blinded paths names its issuer; ours have paths, and
        // paying one of them fails as a payment to ourselves.
        if offer.issuer_signing_pubkey() == Some(self.node_id()) {
            return Err(NodeError::InvalidOffer("the offer is ours".into()));
        }
        let amount = match (offer.amount(), amount_msat) {
            (Some(OfferAmount::Currency { .. }), _) => {
                return Err(NodeError::InvalidOffer(
                    "the offer's amount is in a currency; only bitcoin offers are paid".into(),
                ));
            }
            (Some(OfferAmount::Bitcoin { .. }), Some(_)) => {
                return Err(NodeError::InvalidRequest(
                    "the offer has an amount; do not give another".into(),
                ));
            }
            (None, None) => {
                return Err(NodeError::InvalidRequest(
                    "the offer has no amount; give amount_msat".into(),
                ));
            }
            (Some(OfferAmount::Bitcoin { amount_msats }), None) => amount_msats,
            (None, Some(amount)) => amount,
        };
        if amount == 0 {
            return Err(NodeError::InvalidRequest(
                "the amount must be positive".into(),
            ));
        }
        let payment_id = PaymentId(self.keys.get_secure_random_bytes());
        let id = hex::encode(payment_id.0);
        // The hash comes with the invoice; the record learns it when the payment ends.
        let mut record = PaymentRecord::pending(Direction::Outbound, id.clone(), String::new());
        record.amount_msat = Some(amount);
        record.offer = Some(offer.to_string());
        self.payments.put(record).await.map_err(persist_error)?;
        let params = OptionalOfferPaymentParams {
            retry_strategy: Retry::Timeout(PAYMENT_RETRY_TIMEOUT),
            ..Default::default()
        };
        let amount_arg = offer.amount().is_none().then_some(amount);
        if let Err(err) = self
            .channel_manager
            .pay_for_offer(&offer, amount_arg, payment_id, params)
        {
            return Err(self.refused_payment(&id, format!("{err:?}")).await);
        }
        Ok(payment_id)
    }

    /// Sends `amount_msat` to `node_id` without an invoice (keysend).
    pub async fn keysend(
        &self,
        node_id: PublicKey,
        amount_msat: u64,
    ) -> Result<PaymentId, NodeError> {
        self.check_running()?;
        if amount_msat == 0 {
            return Err(NodeError::InvalidRequest(
                "the amount must be positive".into(),
            ));
        }
        if node_id == self.node_id() {
            return Err(NodeError::InvalidRequest("cannot pay ourselves".into()));
        }
        let preimage = PaymentPreimage(self.keys.get_secure_random_bytes());
        let payment_hash: PaymentHash = preimage.into();
        let payment_id = PaymentId(self.keys.get_secure_random_bytes());
        let id = hex::encode(payment_id.0);
        let mut record =
            PaymentRecord::pending(Direction::Outbound, id.clone(), payment_hash.to_string());
        record.amount_msat = Some(amount_msat);
        self.payments.put(record).await.map_err(persist_error)?;
        let route_params = RouteParameters::from_payment_params_and_value(
            PaymentParameters::for_keysend(node_id, KEYSEND_FINAL_CLTV_DELTA, false),
            amount_msat,
        );
        if let Err(err) = self.channel_manager.send_spontaneous_payment(
            Some(preimage),
            RecipientOnionFields::spontaneous_empty(amount_msat),
            payment_id,
            route_params,
            Retry::Timeout(PAYMENT_RETRY_TIMEOUT),
        ) {
            return Err(self.refused_payment(&id, format!("{err:?}")).await);
        }
        Ok(payment_id)
    }

    /// Waits until the outbound payment `id` succeeds or fails, or `timeout` passes.
    pub async fn wait_payment(
        &self,
        id: PaymentId,
        timeout: Duration,
    ) -> Result<PaymentRecord, NodeError> {
        let id = hex::encode(id.0);
        self.payments
            .wait_final(Direction::Outbound, &id, timeout)
            .await
            .ok_or(NodeError::UnknownPayment(id))
    }

    /// Waits until the inbound payment `payment_hash` is received (or failed), or
    /// `timeout` passes; returns its record then.
    pub async fn wait_inbound(
        &self,
        payment_hash: PaymentHash,
        timeout: Duration,
    ) -> Option<PaymentRecord> {
        self.payments
            .wait_final(Direction::Inbound, &payment_hash.to_string(), timeout)
            .await
    }

    /// Every payment, oldest first.
    pub fn list_payments(&self) -> Vec<PaymentRecord> {
        self.payments.list()
    }

    /// The payments with this hash (inbound and outbound).
    pub fn payments_by_hash(&self, payment_hash: PaymentHash) -> Vec<PaymentRecord> {
        self.payments.by_hash(&payment_hash.to_string())
    }

    /// The payment `id` (hex) of `direction`.
    pub fn payment_by_id(&self, direction: Direction, id: &str) -> Option<PaymentRecord> {
        self.payments.get(direction, id)
    }

    /// The outbound payment `id`.
    pub fn outbound_payment(&self, id: PaymentId) -> Option<PaymentRecord> {
        self.payments.get(Direction::Outbound, &hex::encode(id.0))
    }

    /// The inbound payment (invoice or keysend) of `payment_hash`.
    pub fn inbound_payment(&self, payment_hash: PaymentHash) -> Option<PaymentRecord> {
        self.payments
            .get(Direction::Inbound, &payment_hash.to_string())
    }
}

impl Node {
    /// Records that LDK refused to start outbound payment `id`, and says why.
    pub(super) async fn refused_payment(&self, id: &str, why: String) -> NodeError {
        let recorded = self
            .payments
            .update(
                Direction::Outbound,
                id,
                || unreachable_record(id),
                |r| {
                    r.status = PaymentStatus::Failed;
                    r.failure_reason = Some(why.clone());
                },
            )
            .await;
        match recorded {
            Ok(_) => NodeError::PaymentFailed(why),
            Err(err) => persist_error(err),
        }
    }
}

pub(super) fn unreachable_record(id: &str) -> PaymentRecord {
    // The record was written just before; this only runs if it vanished.
    PaymentRecord::pending(Direction::Outbound, id.to_owned(), String::new())
}
