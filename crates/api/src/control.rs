//! The contract between the API and the node.

use std::future::Future;

use crate::error::ApiError;
use crate::types::{
    BackupCreated, Balance, Channel, CloseChannelRequest, ConnectPeerRequest, CreateBackupRequest,
    CreateInvoiceRequest, CreateOfferRequest, Invoice, KeysendRequest, NewAddress, NodeInfo, Offer,
    OpenChannelRequest, OpenChannelResponse, PayInvoiceRequest, PayOfferRequest, Payment, Peer,
    SendOnchainRequest, SendOnchainResponse, ServerState,
};

/// What the API asks of the node. The node implements it; the API crate knows nothing
/// of LDK.
///
/// # Contract
/// - [`state`](Self::state) never fails and never blocks (read an atomic or a watch
///   channel): it answers the unauthenticated probe `GET /v1/state`, and the server
///   calls it before every other route. Only in [`ServerState::ServerActive`] does the
///   server call the other methods; a standby never serves. The node must still refuse
///   (`not_active`) a call that races with losing the lease: the check before the call
///   is advisory, the fencing of the state store is what protects the funds.
/// - Inputs are validated before the call (each request type's `validate` says what is
///   checked): node ids are 66 lowercase hex characters starting `02`/`03`, channel ids
///   and payment hashes 64 lowercase hex characters, peer addresses `host:port`,
///   amounts that must be positive are. What only the node can judge (an address's
///   network, an invoice's or offer's signature, whether the key is on the curve) it
///   reports with the matching code (`invalid_address`, `invalid_invoice`,
///   `invalid_offer`, `invalid_request`).
/// - Errors carry the codes of [`ErrorCode`](crate::ErrorCode), each with one meaning:
///   `unknown_*` for an id the node does not know, `store_unavailable` /
///   `chain_unavailable` when a dependency is down (the client may retry),
///   `internal` for anything unexpected (log the details, keep secrets out of the
///   message).
/// - A method that changes state ([`send_onchain`](Self::send_onchain),
///   [`open_channel`](Self::open_channel), [`pay_invoice`](Self::pay_invoice),
///   [`pay_offer`](Self::pay_offer), [`keysend`](Self::keysend),
///   [`close_channel`](Self::close_channel)) returns `Ok`
///   only once the change is durable in the state store, so that the instance taking
///   over after a failover knows of it. Its future may be dropped (client gone,
///   server shutting down): that must never leave a half-made change, only a change
///   made or not made.
/// - Payments: with `wait`, [`pay_invoice`](Self::pay_invoice),
///   [`pay_offer`](Self::pay_offer) and [`keysend`](Self::keysend) return once the payment succeeded or failed, or after
///   `timeout_secs` (default [`DEFAULT_PAYMENT_TIMEOUT_SECS`](crate::DEFAULT_PAYMENT_TIMEOUT_SECS))
///   with the payment `pending`; without `wait`, once the payment is under way. A
///   payment that was sent and failed is `Ok` with status `failed` and a
///   `failure_reason`; `payment_failed` is for a payment refused before anything was
///   sent (already paid, no route). Paying an invoice whose payment is in flight is not
///   an error: it answers that payment (same id), so a client's retry never pays twice
///   and never sees a failure that did not happen. The cases of
///   [`crate::contract`] (feature `test-utils`) pin this contract down and run against
///   every implementation.
pub trait NodeControl: Send + Sync + 'static {
    /// Where this instance stands. Never fails, never blocks.
    fn state(&self) -> ServerState;

    /// `GET /metrics`: the instance's metrics in Prometheus' text format. Served on
    /// every instance, standbys included. Never fails, never blocks for long.
    fn metrics(&self) -> String;

    /// `GET /v1/info`.
    fn info(&self) -> impl Future<Output = Result<NodeInfo, ApiError>> + Send;

    /// `POST /v1/onchain/address`: a fresh address, revealed durably (never handed out
    /// twice, even across a failover).
    fn new_address(&self) -> impl Future<Output = Result<NewAddress, ApiError>> + Send;

    /// `GET /v1/onchain/balance`.
    fn balance(&self) -> impl Future<Output = Result<Balance, ApiError>> + Send;

    /// `POST /v1/onchain/send`: build, sign and broadcast. Exactly one of
    /// `amount_sat` and `send_all` is set.
    fn send_onchain(
        &self,
        req: SendOnchainRequest,
    ) -> impl Future<Output = Result<SendOnchainResponse, ApiError>> + Send;

    /// `GET /v1/peers`.
    fn list_peers(&self) -> impl Future<Output = Result<Vec<Peer>, ApiError>> + Send;

    /// `POST /v1/peers`: connect (and keep reconnecting to) a peer; `peer_unreachable`
    /// if it cannot be reached. Connecting to a connected peer is `Ok`.
    fn connect_peer(
        &self,
        req: ConnectPeerRequest,
    ) -> impl Future<Output = Result<Peer, ApiError>> + Send;

    /// `DELETE /v1/peers/{node_id}`: disconnect; `unknown_peer` if not connected. A peer
    /// with channels is reconnected later by the node.
    fn disconnect_peer(&self, node_id: String)
    -> impl Future<Output = Result<(), ApiError>> + Send;

    /// `POST /v1/channels`: connect first if `address` is given, then start opening.
    /// Returns once the counterparty has been asked (the channel is `pending_open`).
    fn open_channel(
        &self,
        req: OpenChannelRequest,
    ) -> impl Future<Output = Result<OpenChannelResponse, ApiError>> + Send;

    /// `GET /v1/channels`.
    fn list_channels(&self) -> impl Future<Output = Result<Vec<Channel>, ApiError>> + Send;

    /// `POST /v1/channels/{channel_id}/close`: start a cooperative close, or with
    /// `force` broadcast the latest commitment; `unknown_channel` if no such channel.
    fn close_channel(
        &self,
        channel_id: String,
        req: CloseChannelRequest,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// `POST /v1/invoices`.
    fn create_invoice(
        &self,
        req: CreateInvoiceRequest,
    ) -> impl Future<Output = Result<Invoice, ApiError>> + Send;

    /// `POST /v1/payments`: pay a BOLT 11 invoice.
    fn pay_invoice(
        &self,
        req: PayInvoiceRequest,
    ) -> impl Future<Output = Result<Payment, ApiError>> + Send;

    /// `POST /v1/offers`: a BOLT 12 offer.
    fn create_offer(
        &self,
        req: CreateOfferRequest,
    ) -> impl Future<Output = Result<Offer, ApiError>> + Send;

    /// `POST /v1/payments/offer`: pay a BOLT 12 offer.
    fn pay_offer(
        &self,
        req: PayOfferRequest,
    ) -> impl Future<Output = Result<Payment, ApiError>> + Send;

    /// `POST /v1/payments/keysend`: a spontaneous payment.
    fn keysend(
        &self,
        req: KeysendRequest,
    ) -> impl Future<Output = Result<Payment, ApiError>> + Send;

    /// `GET /v1/payments`: every payment, inbound and outbound, newest first.
    fn list_payments(&self) -> impl Future<Output = Result<Vec<Payment>, ApiError>> + Send;

    /// `GET /v1/payments/{payment_hash}`; `unknown_payment` if the node has none with
    /// that hash.
    fn get_payment(
        &self,
        payment_hash: String,
    ) -> impl Future<Output = Result<Payment, ApiError>> + Send;

    /// `GET /v1/payments/id/{payment_id}`: the payment with this id, as the payment calls
    /// return it (an outbound payment's own id; an inbound payment's is its hash). The
    /// way to follow a payment whose hash is not known yet, such as one to an offer still
    /// waiting for its invoice. `unknown_payment` if the node has none with that id.
    fn get_payment_by_id(
        &self,
        payment_id: String,
    ) -> impl Future<Output = Result<Payment, ApiError>> + Send;

    /// `POST /v1/backups`: a snapshot backup of the store, taken by the node itself
    /// while it runs, sealed with its backup key, written to `req.to` on its host.
    /// `invalid_request` if the directory is not empty.
    fn create_backup(
        &self,
        req: CreateBackupRequest,
    ) -> impl Future<Output = Result<BackupCreated, ApiError>> + Send;
}
