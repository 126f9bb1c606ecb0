//! The node behind the REST API: [`NodeService`] implements [`phalanx_api::NodeControl`]
//! over a [`Node`], translating LDK's types into the API's plain DTOs and [`NodeError`]
//! into the API's error codes.
//!
//! The service exists before the node does: an instance binds its API first and
//! answers the unauthenticated probe `GET /v1/state` while it campaigns for the lease,
//! then serves once [`NodeService::set_node`] hands it the started node.
//!
//! | situation | [`ServerState`] | authenticated calls |
//! |-----------|-----------------|---------------------|
//! | no node yet: a standby campaigning for the lease | `WAITING_TO_START` | `503 not_active` |
//! | the lease is won and the node is loading ([`NodeService::set_loading`]) | `RPC_ACTIVE` | `503 not_active` |
//! | the node is set and running | `SERVER_ACTIVE` | served |
//! | shutdown begun ([`NodeService::set_stopping`]), or the node stopped on its own (fail-stop, lost lease) | `WAITING_TO_START` | `503 not_active` |
//!
//! A stopped node never serves again in this process (its owner exits and is restarted
//! as a standby), so after a stop the state is the standby's, `WAITING_TO_START`, not
//! `NON_EXISTING` (which tells LND-style probes that no wallet exists). `RPC_ACTIVE`
//! means what it means to LND: the API is up and the node's subsystems are not yet.
//!
//! Calls that change state (`send_onchain`, `connect_peer`, `open_channel`,
//! `create_invoice`, `pay_invoice`, `keysend`) run the node's method in a task of their
//! own, so a request dropped half-way (client gone, server shutting down) never cuts a
//! change in the middle: it is made or refused as a whole.

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, FeeRate};
use lightning::ln::channel_state::{ChannelDetails, ChannelShutdownState};
use lightning::ln::channelmanager::PaymentId;
use lightning::ln::types::ChannelId;
use lightning::types::payment::PaymentHash;
use lightning::util::errors::APIError;
use phalanx_api::{
    ApiError, Balance, Channel, ChannelState, CloseChannelRequest, ConnectPeerRequest,
    CreateInvoiceRequest, CreateOfferRequest, DEFAULT_PAYMENT_TIMEOUT_SECS, ErrorCode, Invoice,
    KeysendRequest, NewAddress, NodeControl, NodeInfo, Offer, OpenChannelRequest,
    OpenChannelResponse, PayInvoiceRequest, PayOfferRequest, Payment, PaymentDirection, Peer,
    SendOnchainRequest, SendOnchainResponse, ServerState,
};
use phalanx_store::ErrorKind;

use crate::chain::ChainError;
use crate::metrics::Metrics;
use crate::node::{Node, NodeError};
use crate::payments::{Direction, PaymentRecord, PaymentStatus};
use crate::peers::PeerError;
use crate::wallet::WalletError;

/// The longest a `pay` or `keysend` request waits for the outcome, whatever its
/// `timeout_secs` asks; past it the payment is returned `pending`.
pub const MAX_PAYMENT_WAIT_SECS: u64 = 3_600;

/// The API's view of this instance's node: see the [module docs](self) for its states.
#[derive(Default)]
pub struct NodeService {
    node: OnceLock<Arc<Node>>,
    loading: AtomicBool,
    stopping: AtomicBool,
    metrics: Arc<Metrics>,
}

impl NodeService {
    /// A service without a node: `WAITING_TO_START` until [`Self::set_node`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands over the started node: the service is `SERVER_ACTIVE` from now until the
    /// node stops or [`Self::set_stopping`]. Gives the node back if one was set before.
    pub fn set_node(&self, node: Arc<Node>) -> Result<(), Arc<Node>> {
        self.node.set(node)?;
        tracing::info!("API serving: SERVER_ACTIVE");
        Ok(())
    }

    /// Marks the lease as won and the node as loading: `RPC_ACTIVE` until
    /// [`Self::set_node`] (or [`Self::set_stopping`]).
    pub fn set_loading(&self) {
        self.loading.store(true, Ordering::SeqCst);
        tracing::info!("API serving: RPC_ACTIVE (the lease is won; the node is loading)");
    }

    /// The instance's metrics: give them to the [`crate::NodeBuilder`].
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Marks the instance as shutting down: from now on it does not serve
    /// (`WAITING_TO_START`), while the node finishes its last writes.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The node, once set.
    pub fn node(&self) -> Option<&Arc<Node>> {
        self.node.get()
    }

    /// The running node, or `not_active` with the state.
    fn active(&self) -> Result<&Arc<Node>, ApiError> {
        match self.node.get() {
            Some(node) if self.state() == ServerState::ServerActive => Ok(node),
            _ => Err(ApiError::not_active(self.state())),
        }
    }

    /// Maps a node error to the API's, logging the unexpected ones.
    fn error(&self, err: NodeError) -> ApiError {
        let code = error_code(&err);
        match code {
            ErrorCode::Internal => tracing::error!(error = %err, "API call failed"),
            ErrorCode::StoreUnavailable | ErrorCode::ChainUnavailable | ErrorCode::NotActive => {
                tracing::warn!(error = %err, %code, "API call failed")
            }
            _ => tracing::debug!(error = %err, %code, "API call refused"),
        }
        let mut api = ApiError::new(code, err.to_string());
        if code == ErrorCode::NotActive {
            // Fenced before the node noticed: it is no longer active whatever it says yet.
            api.state = Some(match self.state() {
                ServerState::ServerActive => ServerState::WaitingToStart,
                state => state,
            });
        }
        api
    }

    /// Waits for the outcome of the outbound payment `id` if asked to, and describes it.
    async fn outcome(
        &self,
        node: &Node,
        id: PaymentId,
        wait: bool,
        timeout_secs: Option<u64>,
    ) -> Result<Payment, ApiError> {
        let record = if wait {
            let secs = timeout_secs
                .unwrap_or(DEFAULT_PAYMENT_TIMEOUT_SECS)
                .min(MAX_PAYMENT_WAIT_SECS);
            node.wait_payment(id, Duration::from_secs(secs))
                .await
                .map_err(|err| self.error(err))?
        } else {
            node.outbound_payment(id).ok_or_else(|| {
                ApiError::internal(format!(
                    "payment {} was started but has no record",
                    hex::encode(id.0)
                ))
            })?
        };
        Ok(payment(record))
    }
}

/// Runs `future` in a task of its own, so that dropping the caller does not cut it off.
async fn detached<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(future).await.map_err(|err| {
        tracing::error!(error = %err, "an API operation panicked");
        ApiError::internal("the operation failed unexpectedly; see the node's log")
    })
}

/// 32 bytes of hex (the API checked the form already; this is the conversion).
fn parse_hex32(text: &str, what: &str) -> Result<[u8; 32], ApiError> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| ApiError::invalid_request(format!("{what} {text:?} is not 32 bytes of hex")))
}

fn parse_node_id(text: &str) -> Result<PublicKey, ApiError> {
    PublicKey::from_str(text)
        .map_err(|err| ApiError::invalid_request(format!("node id {text}: {err}")))
}

/// Resolves `host:port` to one socket address.
async fn resolve(address: &str) -> Result<SocketAddr, ApiError> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let unreachable = |reason: String| {
        ApiError::new(
            ErrorCode::PeerUnreachable,
            format!("cannot resolve {address}: {reason}"),
        )
    };
    tokio::net::lookup_host(address)
        .await
        .map_err(|err| unreachable(err.to_string()))?
        .next()
        .ok_or_else(|| unreachable("no address".into()))
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The API error code for a node error.
///
/// | node error | code |
/// |------------|------|
/// | `Stopped`; a store or wallet-store error of kind fenced (the lease is lost) | `not_active` |
/// | `Store`, `Persist`, `Wallet(Store)`, `Peer(Store)` otherwise | `store_unavailable` |
/// | `Chain`, `SendOutcomeUnknown` | `chain_unavailable` |
/// | `InvalidInvoice` | `invalid_invoice` |
/// | `Wallet(InvalidAddress)` | `invalid_address` |
/// | `InsufficientFunds`, `Wallet(InsufficientFunds)` | `insufficient_funds` |
/// | `InvalidOffer` | `invalid_offer` |
/// | `InvalidRequest`, `Offer` (no peer with a channel to reach the node through), `Wallet(Build)`, `Lightning` refusals of the request (LDK's `APIMisuseError`, `FeeRateTooHigh`, `ChannelUnavailable`, `IncompatibleShutdownScript`) | `invalid_request` |
/// | `Lightning(MonitorUpdateInProgress)` | `store_unavailable` |
/// | `PeerNotConnected` | `unknown_peer` |
/// | `Peer(Unreachable)` | `peer_unreachable` |
/// | `UnknownChannel` | `unknown_channel` |
/// | `UnknownPayment` | `unknown_payment` |
/// | `PaymentFailed` | `payment_failed` |
/// | anything else (other wallet errors, `Invoice`, `Backup`, LDK's `InvalidRoute`) | `internal` |
pub fn error_code(err: &NodeError) -> ErrorCode {
    match err {
        NodeError::Stopped(_) => ErrorCode::NotActive,
        NodeError::Store(err) if err.is_fenced() => ErrorCode::NotActive,
        NodeError::Store(_) => ErrorCode::StoreUnavailable,
        NodeError::Persist(err)
        | NodeError::Wallet(WalletError::Store(err))
        | NodeError::Peer(PeerError::Store { source: err, .. }) => io_code(err),
        NodeError::Chain(ChainError::BroadcastStopped | ChainError::LeaseNotConfirmed(_)) => {
            ErrorCode::NotActive
        }
        NodeError::Chain(_) | NodeError::SendOutcomeUnknown { .. } => ErrorCode::ChainUnavailable,
        NodeError::InvalidInvoice(_) => ErrorCode::InvalidInvoice,
        NodeError::Wallet(WalletError::InvalidAddress(_)) => ErrorCode::InvalidAddress,
        NodeError::InsufficientFunds(_)
        | NodeError::Wallet(WalletError::InsufficientFunds { .. }) => ErrorCode::InsufficientFunds,
        NodeError::InvalidOffer(_) => ErrorCode::InvalidOffer,
        NodeError::InvalidRequest(_)
        | NodeError::Offer(_)
        | NodeError::Wallet(WalletError::Build(_)) => ErrorCode::InvalidRequest,
        NodeError::Lightning { err, .. } => lightning_error_code(err),
        NodeError::PeerNotConnected(_) => ErrorCode::UnknownPeer,
        NodeError::Peer(PeerError::Unreachable { .. }) => ErrorCode::PeerUnreachable,
        NodeError::UnknownChannel(_) => ErrorCode::UnknownChannel,
        NodeError::UnknownPayment(_) => ErrorCode::UnknownPayment,
        NodeError::PaymentFailed(_) => ErrorCode::PaymentFailed,
        NodeError::Wallet(_) | NodeError::Invoice(_) | NodeError::Backup(_) => ErrorCode::Internal,
    }
}

/// A store error that reached us as an I/O error (the store maps fenced to
/// `PermissionDenied`).
fn io_code(err: &lightning::io::Error) -> ErrorCode {
    if err.kind() == lightning::io::ErrorKind::PermissionDenied {
        ErrorCode::NotActive
    } else {
        ErrorCode::StoreUnavailable
    }
}

/// The code of LDK's answer: a refusal of the request itself is the caller's to fix
/// (`invalid_request`); a monitor update still being written is the store's; the rest
/// is ours. No wildcard: a new LDK variant must be placed here.
fn lightning_error_code(err: &APIError) -> ErrorCode {
    match err {
        APIError::APIMisuseError { .. }
        | APIError::FeeRateTooHigh { .. }
        | APIError::ChannelUnavailable { .. }
        | APIError::IncompatibleShutdownScript { .. } => ErrorCode::InvalidRequest,
        APIError::MonitorUpdateInProgress => ErrorCode::StoreUnavailable,
        APIError::InvalidRoute { .. } => ErrorCode::Internal,
    }
}

// Keeps the store's error kinds in view: a new kind must be placed in `error_code`.
const _: fn(ErrorKind) = |kind| match kind {
    ErrorKind::NotFound | ErrorKind::Fenced | ErrorKind::Transient | ErrorKind::Permanent => {}
};
// Same for the chain's errors: all of them are `chain_unavailable`, but a broadcaster
// switched off (`not_active`).
const _: fn(&ChainError) = |err| match err {
    ChainError::Unreachable { .. }
    | ChainError::Unauthorized { .. }
    | ChainError::WrongNetwork { .. }
    | ChainError::Rpc { .. }
    | ChainError::Invalid { .. }
    | ChainError::Esplora(_)
    | ChainError::BroadcastStopped
    | ChainError::LeaseNotConfirmed(_) => {}
};

/// The facts of a channel that decide its [`ChannelState`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelFacts {
    /// Both sides exchanged `channel_ready`.
    pub is_channel_ready: bool,
    /// The funding transaction is known.
    pub funded: bool,
    /// A cooperative close has begun (anything but `NotShuttingDown`).
    pub shutting_down: bool,
}

impl ChannelFacts {
    /// The facts of an LDK channel.
    pub fn of(details: &ChannelDetails) -> Self {
        Self {
            is_channel_ready: details.is_channel_ready,
            funded: details.funding_txo.is_some(),
            shutting_down: details
                .channel_shutdown_state
                .is_some_and(|s| s != ChannelShutdownState::NotShuttingDown),
        }
    }
}

/// Where a channel stands:
///
/// | facts | state |
/// |-------|-------|
/// | a close has begun (LDK's shutdown state is past `NotShuttingDown`) | `closing` |
/// | `channel_ready` exchanged | `ready` (the channel's `is_usable` says whether it can pay now: false while the peer is disconnected) |
/// | no funding transaction yet | `pending_open` |
/// | funded, not ready (waiting for confirmations, or for the peer's `channel_ready`) | `awaiting_confirmation` |
///
/// A force-closed channel leaves LDK's list at once (its funds are then claimed on
/// chain and show in the on-chain balance).
pub fn channel_state(facts: ChannelFacts) -> ChannelState {
    if facts.shutting_down {
        ChannelState::Closing
    } else if facts.is_channel_ready {
        ChannelState::Ready
    } else if !facts.funded {
        ChannelState::PendingOpen
    } else {
        ChannelState::AwaitingConfirmation
    }
}

/// A short channel id as `block x tx x output`.
pub fn format_scid(scid: u64) -> String {
    format!(
        "{}x{}x{}",
        scid >> 40,
        (scid >> 16) & 0xff_ffff,
        scid & 0xffff
    )
}

/// The API's view of an LDK channel.
pub fn channel(details: &ChannelDetails) -> Channel {
    Channel {
        channel_id: hex::encode(details.channel_id.0),
        user_channel_id: details.user_channel_id.to_string(),
        counterparty_node_id: details.counterparty.node_id.to_string(),
        funding_txid: details.funding_txo.map(|o| o.txid.to_string()),
        funding_output_index: details.funding_txo.map(|o| u32::from(o.index)),
        short_channel_id: details.short_channel_id.map(format_scid),
        capacity_sat: details.channel_value_satoshis,
        outbound_msat: details.outbound_capacity_msat,
        inbound_msat: details.inbound_capacity_msat,
        state: channel_state(ChannelFacts::of(details)),
        is_usable: details.is_usable,
        is_public: details.is_announced,
        confirmations: details.confirmations,
        confirmations_required: details.confirmations_required,
    }
}

/// The API's view of a payment record (a held payment of a hold invoice is `pending`).
pub fn payment(record: PaymentRecord) -> Payment {
    Payment {
        payment_id: record.payment_id,
        payment_hash: record.payment_hash,
        preimage: record.preimage,
        direction: match record.direction {
            Direction::Inbound => PaymentDirection::Inbound,
            Direction::Outbound => PaymentDirection::Outbound,
        },
        status: match record.status {
            PaymentStatus::Pending | PaymentStatus::Accepted => phalanx_api::PaymentStatus::Pending,
            PaymentStatus::Succeeded => phalanx_api::PaymentStatus::Succeeded,
            PaymentStatus::Failed => phalanx_api::PaymentStatus::Failed,
        },
        amount_msat: record.amount_msat,
        fee_msat: record.fee_msat,
        failure_reason: record.failure_reason,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

impl NodeControl for NodeService {
    fn metrics(&self) -> String {
        // The node's own metrics, however it was built: they hold its store transactions.
        let metrics = self.node.get().map_or(&self.metrics, |node| node.metrics());
        let running = self.node.get().filter(|node| node.stop_reason().is_none());
        metrics.render(self.state(), running.map(|node| node.gauges()).as_ref())
    }

    fn state(&self) -> ServerState {
        match self.node.get() {
            Some(node) if !self.stopping.load(Ordering::SeqCst) && node.holds_leadership() => {
                ServerState::ServerActive
            }
            None if self.loading.load(Ordering::SeqCst)
                && !self.stopping.load(Ordering::SeqCst) =>
            {
                ServerState::RpcActive
            }
            _ => ServerState::WaitingToStart,
        }
    }

    async fn info(&self) -> Result<NodeInfo, ApiError> {
        let node = self.active()?;
        let channels = node.list_channels();
        let best = node.best_block();
        Ok(NodeInfo {
            node_id: node.node_id().to_string(),
            alias: node.alias().to_owned(),
            network: node.network().to_string(),
            block_height: best.height,
            block_hash: best.block_hash.to_string(),
            num_peers: count(node.list_peers().len()),
            num_channels: count(channels.len()),
            num_usable_channels: count(channels.iter().filter(|c| c.is_usable).count()),
            listen_addresses: node
                .listen_addresses()
                .iter()
                .map(ToString::to_string)
                .collect(),
            epoch: node.epoch().0,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }

    async fn new_address(&self) -> Result<NewAddress, ApiError> {
        let node = self.active()?;
        let address = node.new_address().map_err(|err| self.error(err))?;
        Ok(NewAddress {
            address: address.to_string(),
        })
    }

    async fn balance(&self) -> Result<Balance, ApiError> {
        let node = self.active()?;
        let onchain = node.onchain_balance();
        let channels = node.list_channels();
        Ok(Balance {
            onchain_confirmed_sat: onchain.confirmed_sat,
            onchain_unconfirmed_sat: onchain.unconfirmed_sat,
            onchain_total_sat: onchain
                .confirmed_sat
                .saturating_add(onchain.unconfirmed_sat),
            lightning_outbound_msat: channels.iter().map(|c| c.outbound_capacity_msat).sum(),
            lightning_inbound_msat: channels.iter().map(|c| c.inbound_capacity_msat).sum(),
        })
    }

    async fn send_onchain(&self, req: SendOnchainRequest) -> Result<SendOnchainResponse, ApiError> {
        let node = Arc::clone(self.active()?);
        let amount = if req.send_all {
            None
        } else {
            req.amount_sat.map(Amount::from_sat)
        };
        let fee_rate = req
            .fee_rate_sat_per_vb
            .map(|rate| {
                FeeRate::from_sat_per_vb(rate).ok_or_else(|| {
                    ApiError::invalid_request(format!("fee rate {rate} sat/vB is too large"))
                })
            })
            .transpose()?;
        let txid = detached(async move { node.send_onchain(&req.address, amount, fee_rate).await })
            .await?
            .map_err(|err| self.error(err))?;
        Ok(SendOnchainResponse {
            txid: txid.to_string(),
        })
    }

    async fn list_peers(&self) -> Result<Vec<Peer>, ApiError> {
        let node = self.active()?;
        Ok(node
            .list_peers()
            .into_iter()
            .map(|peer| Peer {
                node_id: peer.node_id.to_string(),
                address: peer.address,
                inbound: peer.inbound,
            })
            .collect())
    }

    async fn connect_peer(&self, req: ConnectPeerRequest) -> Result<Peer, ApiError> {
        let node = Arc::clone(self.active()?);
        let node_id = parse_node_id(&req.node_id)?;
        let address = resolve(&req.address).await?;
        let task_node = Arc::clone(&node);
        detached(async move { task_node.connect_peer(node_id, address).await })
            .await?
            .map_err(|err| self.error(err))?;
        let connected = node
            .list_peers()
            .into_iter()
            .find(|peer| peer.node_id == node_id);
        Ok(match connected {
            Some(peer) => Peer {
                node_id: req.node_id,
                address: peer.address.or(Some(req.address)),
                inbound: peer.inbound,
            },
            None => Peer {
                node_id: req.node_id,
                address: Some(req.address),
                inbound: false,
            },
        })
    }

    async fn disconnect_peer(&self, node_id: String) -> Result<(), ApiError> {
        let node = self.active()?;
        let node_id = parse_node_id(&node_id)?;
        node.disconnect_peer(node_id).map_err(|err| self.error(err))
    }

    async fn open_channel(&self, req: OpenChannelRequest) -> Result<OpenChannelResponse, ApiError> {
        let node = Arc::clone(self.active()?);
        let node_id = parse_node_id(&req.node_id)?;
        let address = match &req.address {
            Some(address) => Some(resolve(address).await?),
            None => None,
        };
        let opened = detached(async move {
            node.open_channel(node_id, address, req.amount_sat, req.push_msat, req.public)
                .await
        })
        .await?
        .map_err(|err| self.error(err))?;
        Ok(OpenChannelResponse {
            channel_id: hex::encode(opened.temporary_channel_id.0),
            user_channel_id: opened.user_channel_id.to_string(),
        })
    }

    async fn list_channels(&self) -> Result<Vec<Channel>, ApiError> {
        let node = self.active()?;
        Ok(node.list_channels().iter().map(channel).collect())
    }

    async fn close_channel(
        &self,
        channel_id: String,
        req: CloseChannelRequest,
    ) -> Result<(), ApiError> {
        let node = Arc::clone(self.active()?);
        let channel_id = ChannelId(parse_hex32(&channel_id, "channel id")?);
        detached(async move { node.close_channel(&channel_id, req.force).await })
            .await?
            .map_err(|err| self.error(err))
    }

    async fn create_invoice(&self, req: CreateInvoiceRequest) -> Result<Invoice, ApiError> {
        let node = Arc::clone(self.active()?);
        let invoice = detached(async move {
            node.create_invoice(req.amount_msat, &req.description, req.expiry_secs)
                .await
        })
        .await?
        .map_err(|err| self.error(err))?;
        Ok(Invoice {
            payment_hash: invoice.payment_hash().to_string(),
            expires_at: invoice.expires_at().map_or(u64::MAX, |at| at.as_secs()),
            invoice: invoice.to_string(),
        })
    }

    async fn pay_invoice(&self, req: PayInvoiceRequest) -> Result<Payment, ApiError> {
        let node = Arc::clone(self.active()?);
        let task_node = Arc::clone(&node);
        let invoice = req.invoice;
        let amount_msat = req.amount_msat;
        let id = detached(async move { task_node.pay_invoice(&invoice, amount_msat).await })
            .await?
            .map_err(|err| self.error(err))?;
        self.outcome(&node, id, req.wait, req.timeout_secs).await
    }

    async fn create_offer(&self, req: CreateOfferRequest) -> Result<Offer, ApiError> {
        let node = Arc::clone(self.active()?);
        let offer = node
            .create_offer(req.amount_msat, &req.description)
            .map_err(|err| self.error(err))?;
        Ok(Offer {
            offer: offer.to_string(),
        })
    }

    async fn pay_offer(&self, req: PayOfferRequest) -> Result<Payment, ApiError> {
        let node = Arc::clone(self.active()?);
        let task_node = Arc::clone(&node);
        let offer = req.offer;
        let amount_msat = req.amount_msat;
        let id = detached(async move { task_node.pay_offer(&offer, amount_msat).await })
            .await?
            .map_err(|err| self.error(err))?;
        self.outcome(&node, id, req.wait, req.timeout_secs).await
    }

    async fn keysend(&self, req: KeysendRequest) -> Result<Payment, ApiError> {
        let node = Arc::clone(self.active()?);
        let node_id = parse_node_id(&req.node_id)?;
        let task_node = Arc::clone(&node);
        let amount_msat = req.amount_msat;
        let id = detached(async move { task_node.keysend(node_id, amount_msat).await })
            .await?
            .map_err(|err| self.error(err))?;
        self.outcome(&node, id, req.wait, req.timeout_secs).await
    }

    async fn list_payments(&self) -> Result<Vec<Payment>, ApiError> {
        let node = self.active()?;
        let mut records = node.list_payments();
        // The node lists oldest first; the API newest first.
        records.reverse();
        Ok(records.into_iter().map(payment).collect())
    }

    async fn get_payment(&self, payment_hash: String) -> Result<Payment, ApiError> {
        let node = self.active()?;
        // At most one inbound record per hash, and the node pays an invoice once: when
        // both exist (a payment to ourselves is refused, so only by a peer reusing a
        // hash), the latest change wins.
        let hash = PaymentHash(parse_hex32(&payment_hash, "payment hash")?);
        node.payments_by_hash(hash)
            .into_iter()
            .max_by_key(|r| (r.updated_at, r.direction == Direction::Outbound))
            .map(payment)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownPayment,
                    format!("no payment with hash {payment_hash}"),
                )
            })
    }

    async fn get_payment_by_id(&self, payment_id: String) -> Result<Payment, ApiError> {
        let node = self.active()?;
        // Outbound ids are the node's own random ones and inbound ids are hashes: an
        // id names at most one of each only if a peer reused our id as a hash, which is
        // not worth a rule; the outbound one is the one its caller made.
        let id = hex::encode(parse_hex32(&payment_id, "payment id")?);
        [Direction::Outbound, Direction::Inbound]
            .into_iter()
            .find_map(|direction| node.payment_by_id(direction, &id))
            .map(payment)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownPayment,
                    format!("no payment with id {payment_id}"),
                )
            })
    }

    async fn create_backup(
        &self,
        req: phalanx_api::CreateBackupRequest,
    ) -> Result<phalanx_api::BackupCreated, ApiError> {
        let node = Arc::clone(self.active()?);
        let task_node = Arc::clone(&node);
        let dir = std::path::PathBuf::from(&req.to);
        // Detached: a client that goes away leaves a whole backup or none.
        let created = detached(async move { task_node.create_backup(&dir).await })
            .await?
            .map_err(|err| self.error(err))?;
        Ok(phalanx_api::BackupCreated {
            dir: req.to,
            node_id: node.node_id().to_string(),
            epoch: created.epoch,
            keys: created.keys as u64,
            bytes: created.bytes as u64,
            snapshot_ms: created.snapshot_ms,
            created_at_unix: created.created_at_unix,
        })
    }
}

#[cfg(test)]
mod tests;
