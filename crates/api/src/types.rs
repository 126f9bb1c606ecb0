//! What goes over the wire: JSON bodies, `snake_case` fields, amounts with their unit in
//! the name (`_sat`, `_msat`), identifiers as lowercase hex, times as Unix seconds.
//!
//! Request types have a `validate` step that the server runs before the node sees
//! them, so a [`NodeControl`](crate::NodeControl) implementation receives only
//! well-formed input (see each type's docs for what is checked).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// How long `pay` and `keysend` wait for a final outcome when the request sets
/// `wait` but no `timeout_secs`.
pub const DEFAULT_PAYMENT_TIMEOUT_SECS: u64 = 60;

/// The longest description a BOLT 11 invoice can carry, in bytes.
pub const MAX_INVOICE_DESCRIPTION_BYTES: usize = 639;

/// Where an instance stands, with LND's state names so existing probes understand it.
///
/// Phalanx uses three of them: `WAITING_TO_START` (a standby: another instance holds
/// the lease), `RPC_ACTIVE` (this instance won the lease and is loading the node) and
/// `SERVER_ACTIVE` (this instance runs the node and serves the API). The wallet states
/// (`NON_EXISTING`, `LOCKED`, `UNLOCKED`) exist for compatibility; Phalanx has no wallet
/// password.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerState {
    /// No wallet exists yet.
    NonExisting,
    /// The wallet is locked.
    Locked,
    /// The wallet is unlocked, the node not started yet.
    Unlocked,
    /// Starting: the lease is won, the node is loading.
    RpcActive,
    /// Running and serving: the only state in which authenticated routes answer.
    ServerActive,
    /// A standby: another instance holds the lease.
    WaitingToStart,
}

impl ServerState {
    /// Every state, in LND's order.
    pub const ALL: [ServerState; 6] = [
        Self::NonExisting,
        Self::Locked,
        Self::Unlocked,
        Self::RpcActive,
        Self::ServerActive,
        Self::WaitingToStart,
    ];

    /// The wire name (`"SERVER_ACTIVE"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NonExisting => "NON_EXISTING",
            Self::Locked => "LOCKED",
            Self::Unlocked => "UNLOCKED",
            Self::RpcActive => "RPC_ACTIVE",
            Self::ServerActive => "SERVER_ACTIVE",
            Self::WaitingToStart => "WAITING_TO_START",
        }
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /v1/state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateResponse {
    /// The instance's state.
    pub state: ServerState,
}

/// `GET /v1/info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's public key, 33 bytes hex.
    pub node_id: String,
    /// The alias announced to the network.
    pub alias: String,
    /// `bitcoin`, `testnet`, `testnet4`, `signet` or `regtest`.
    pub network: String,
    /// Height of the best block the node has processed.
    pub block_height: u32,
    /// Hash of that block, hex.
    pub block_hash: String,
    /// Connected peers.
    pub num_peers: u32,
    /// Channels in any state.
    pub num_channels: u32,
    /// Channels that can send or receive now.
    pub num_usable_channels: u32,
    /// Addresses the node accepts peer connections on (`host:port`).
    pub listen_addresses: Vec<String>,
    /// The fencing epoch this instance holds the lease at.
    pub epoch: u64,
    /// The Phalanx version.
    pub version: String,
}

/// `POST /v1/onchain/address`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAddress {
    /// A fresh address of the on-chain wallet.
    pub address: String,
}

/// `GET /v1/onchain/balance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// Confirmed on-chain funds.
    pub onchain_confirmed_sat: u64,
    /// Unconfirmed on-chain funds (incoming and change).
    pub onchain_unconfirmed_sat: u64,
    /// `onchain_confirmed_sat + onchain_unconfirmed_sat`.
    pub onchain_total_sat: u64,
    /// What the node's channels can send now.
    pub lightning_outbound_msat: u64,
    /// What the node's channels can receive now.
    pub lightning_inbound_msat: u64,
}

/// `POST /v1/onchain/send`.
///
/// Validation: `address` is not empty; exactly one of `amount_sat` (non-zero) and
/// `send_all`; `fee_rate_sat_per_vb`, if given, is non-zero. The address itself is the
/// node's to check (`invalid_address`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendOnchainRequest {
    /// Where to send.
    pub address: String,
    /// How much to send; absent with `send_all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_sat: Option<u64>,
    /// Send the whole confirmed balance, less the fee.
    #[serde(default)]
    pub send_all: bool,
    /// The fee rate; absent: the node's estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee_rate_sat_per_vb: Option<u64>,
}

impl SendOnchainRequest {
    /// Checks the request (see the type's docs).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        self.address = self.address.trim().to_owned();
        if self.address.is_empty() {
            return Err(ApiError::invalid_request("`address` is empty"));
        }
        match (self.amount_sat, self.send_all) {
            (Some(_), true) => {
                return Err(ApiError::invalid_request(
                    "give either `amount_sat` or `send_all`, not both",
                ));
            }
            (None, false) => {
                return Err(ApiError::invalid_request(
                    "give `amount_sat` or set `send_all`",
                ));
            }
            (Some(0), false) => return Err(ApiError::invalid_request("`amount_sat` is zero")),
            _ => {}
        }
        if self.fee_rate_sat_per_vb == Some(0) {
            return Err(ApiError::invalid_request("`fee_rate_sat_per_vb` is zero"));
        }
        Ok(())
    }
}

/// `POST /v1/onchain/send`: the broadcast transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendOnchainResponse {
    /// Its id, hex.
    pub txid: String,
}

/// A connected peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its public key, 33 bytes hex.
    pub node_id: String,
    /// Its address (`host:port`), when known.
    pub address: Option<String>,
    /// Whether it connected to us.
    pub inbound: bool,
}

/// `GET /v1/peers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPeersResponse {
    /// The connected peers.
    pub peers: Vec<Peer>,
}

/// `POST /v1/peers`: connect to a peer.
///
/// On the wire either `{"node_id": "02…", "address": "host:port"}` or
/// `{"uri": "02…@host:port"}`; the node always receives both fields filled, the node id
/// checked (33 bytes hex, `02`/`03`, lowercased) and the address of the form
/// `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ConnectPeerWire")]
pub struct ConnectPeerRequest {
    /// The peer's public key.
    pub node_id: String,
    /// Where to reach it, `host:port`.
    pub address: String,
}

impl ConnectPeerRequest {
    /// A request from `node_id@host:port`.
    pub fn from_uri(uri: &str) -> Result<Self, ApiError> {
        let (node_id, address) = uri.trim().split_once('@').ok_or_else(|| {
            ApiError::invalid_request(format!("`{uri}` is not of the form node_id@host:port"))
        })?;
        let mut request = Self {
            node_id: node_id.to_owned(),
            address: address.to_owned(),
        };
        request.validate()?;
        Ok(request)
    }

    /// Checks the request (see the type's docs).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        self.node_id = crate::validate::node_id(&self.node_id)?;
        self.address = crate::validate::peer_address(&self.address)?;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectPeerWire {
    node_id: Option<String>,
    address: Option<String>,
    uri: Option<String>,
}

impl TryFrom<ConnectPeerWire> for ConnectPeerRequest {
    type Error = String;

    fn try_from(wire: ConnectPeerWire) -> Result<Self, String> {
        match wire {
            ConnectPeerWire {
                node_id: None,
                address: None,
                uri: Some(uri),
            } => Self::from_uri(&uri).map_err(|e| e.message),
            ConnectPeerWire {
                node_id: Some(node_id),
                address: Some(address),
                uri: None,
            } => Ok(Self { node_id, address }),
            _ => Err("give `node_id` and `address`, or `uri` (node_id@host:port)".to_owned()),
        }
    }
}

/// `POST /v1/channels`: open a channel.
///
/// Validation: the node id is checked and lowercased; `address`, if given, is of the
/// form `host:port` (the node connects to it first); `amount_sat` is non-zero and
/// `push_msat` is at most `amount_sat * 1000`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenChannelRequest {
    /// The counterparty.
    pub node_id: String,
    /// Where to reach it; if given, the node connects before opening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The channel's capacity, funded by us.
    pub amount_sat: u64,
    /// Given to the counterparty at opening.
    #[serde(default)]
    pub push_msat: u64,
    /// Announce the channel to the network.
    #[serde(default)]
    pub public: bool,
}

impl OpenChannelRequest {
    /// Checks the request (see the type's docs).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        self.node_id = crate::validate::node_id(&self.node_id)?;
        if let Some(address) = &self.address {
            self.address = Some(crate::validate::peer_address(address)?);
        }
        if self.amount_sat == 0 {
            return Err(ApiError::invalid_request("`amount_sat` is zero"));
        }
        if self.push_msat > self.amount_sat.saturating_mul(1000) {
            return Err(ApiError::invalid_request(
                "`push_msat` is more than the channel's capacity",
            ));
        }
        Ok(())
    }
}

/// `POST /v1/channels`: the channel being opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenChannelResponse {
    /// The temporary channel id (32 bytes hex); the channel's id changes once the
    /// funding transaction exists (see `GET /v1/channels`).
    pub channel_id: String,
    /// Our id for the channel, stable for its lifetime: a `u128` in decimal.
    pub user_channel_id: String,
}

/// Where a channel stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelState {
    /// Negotiating with the counterparty; no funding transaction yet.
    PendingOpen,
    /// The funding transaction is waiting for its confirmations.
    AwaitingConfirmation,
    /// Open.
    Ready,
    /// A close is under way.
    Closing,
}

/// A channel, as `GET /v1/channels` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// The channel id, 32 bytes hex.
    pub channel_id: String,
    /// Our stable id for it, a `u128` in decimal.
    pub user_channel_id: String,
    /// The counterparty's public key.
    pub counterparty_node_id: String,
    /// The funding transaction, once known.
    pub funding_txid: Option<String>,
    /// The funding output's index in it.
    pub funding_output_index: Option<u32>,
    /// The short channel id (`block x tx x output`), once confirmed.
    pub short_channel_id: Option<String>,
    /// The channel's capacity.
    pub capacity_sat: u64,
    /// What we can send over it now.
    pub outbound_msat: u64,
    /// What we can receive over it now.
    pub inbound_msat: u64,
    /// Where it stands.
    pub state: ChannelState,
    /// Whether it can carry payments now.
    pub is_usable: bool,
    /// Whether it is announced.
    pub is_public: bool,
    /// Confirmations of the funding transaction.
    pub confirmations: Option<u32>,
    /// Confirmations needed before it is ready.
    pub confirmations_required: Option<u32>,
}

/// `GET /v1/channels`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListChannelsResponse {
    /// The node's channels.
    pub channels: Vec<Channel>,
}

/// `POST /v1/channels/{channel_id}/close`. An empty body means a cooperative close.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseChannelRequest {
    /// Broadcast our latest commitment transaction instead of negotiating a close.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/backups`: write a snapshot backup of the node's store, taken by the
/// running node itself, into a directory on the node's host.
///
/// Validation: `to` is an absolute path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBackupRequest {
    /// The new backup's directory on the node's host (must not exist, or be empty).
    pub to: String,
}

impl CreateBackupRequest {
    /// Checks the request (see the type's docs).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        if !std::path::Path::new(&self.to).is_absolute() {
            return Err(ApiError::invalid_request(format!(
                "to: {:?} is not an absolute path",
                self.to
            )));
        }
        Ok(())
    }
}

/// The answer of `POST /v1/backups`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCreated {
    /// The backup's directory.
    pub dir: String,
    /// The node.
    pub node_id: String,
    /// The epoch the node runs at.
    pub epoch: u64,
    /// Keys in the backup.
    pub keys: u64,
    /// Bytes of values in it.
    pub bytes: u64,
    /// How long the snapshot of the store took.
    pub snapshot_ms: u64,
    /// When it was taken (unix seconds).
    pub created_at_unix: u64,
}

/// An empty JSON object: the answer of routes that only acknowledge
/// (`DELETE /v1/peers/{node_id}`, `POST /v1/channels/{channel_id}/close`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `POST /v1/invoices`.
///
/// Validation: `amount_msat`, if given, is non-zero (absent: any amount);
/// `description` is at most [`MAX_INVOICE_DESCRIPTION_BYTES`]; `expiry_secs`, if given,
/// is non-zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInvoiceRequest {
    /// The amount to be paid; absent: the payer chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_msat: Option<u64>,
    /// What the payment is for.
    #[serde(default)]
    pub description: String,
    /// How long the invoice can be paid; absent: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_secs: Option<u32>,
}

impl CreateInvoiceRequest {
    /// Checks the request (see the type's docs).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        if self.amount_msat == Some(0) {
            return Err(ApiError::invalid_request(
                "`amount_msat` is zero (leave it out for an any-amount invoice)",
            ));
        }
        if self.description.len() > MAX_INVOICE_DESCRIPTION_BYTES {
            return Err(ApiError::invalid_request(format!(
                "`description` is {} bytes, more than the {MAX_INVOICE_DESCRIPTION_BYTES} an invoice can carry",
                self.description.len()
            )));
        }
        if self.expiry_secs == Some(0) {
            return Err(ApiError::invalid_request("`expiry_secs` is zero"));
        }
        Ok(())
    }
}

/// `POST /v1/invoices`: the new invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// The BOLT 11 invoice.
    pub invoice: String,
    /// Its payment hash, 32 bytes hex.
    pub payment_hash: String,
    /// When it expires, Unix seconds.
    pub expires_at: u64,
}

/// `POST /v1/payments`: pay a BOLT 11 invoice.
///
/// Validation: `invoice` is not empty (whitespace and a `lightning:` prefix are
/// removed; parsing it is the node's job: `invalid_invoice`); `amount_msat`, if given,
/// is non-zero; `timeout_secs`, if given, is non-zero.
///
/// With `wait` (the default) the node answers once the payment succeeded or failed, or
/// after `timeout_secs` (default [`DEFAULT_PAYMENT_TIMEOUT_SECS`]) with the payment
/// still `pending`; without, as soon as the payment is under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayInvoiceRequest {
    /// The invoice.
    pub invoice: String,
    /// The amount, for an invoice without one (must be absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_msat: Option<u64>,
    /// Wait for the outcome.
    #[serde(default = "yes")]
    pub wait: bool,
    /// How long to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl PayInvoiceRequest {
    /// Checks the request (see the type's docs).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        self.invoice = strip_lightning_prefix(&self.invoice).to_owned();
        if self.invoice.is_empty() {
            return Err(ApiError::invalid_request("`invoice` is empty"));
        }
        check_amount_and_timeout(self.amount_msat, self.timeout_secs)
    }
}

/// `POST /v1/offers`: a BOLT 12 offer, which payers may pay many times.
///
/// Validation: `amount_msat`, if given, is non-zero (absent: any amount); `description`
/// is at most [`MAX_INVOICE_DESCRIPTION_BYTES`] (the same bound as an invoice's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOfferRequest {
    /// The amount of each payment; absent: the payer chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_msat: Option<u64>,
    /// What the payments are for.
    #[serde(default)]
    pub description: String,
}

impl CreateOfferRequest {
    /// Checks the request (see the type's docs).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        if self.amount_msat == Some(0) {
            return Err(ApiError::invalid_request(
                "`amount_msat` is zero (leave it out for an any-amount offer)",
            ));
        }
        if self.description.len() > MAX_INVOICE_DESCRIPTION_BYTES {
            return Err(ApiError::invalid_request(format!(
                "`description` is {} bytes, more than the {MAX_INVOICE_DESCRIPTION_BYTES} allowed",
                self.description.len()
            )));
        }
        Ok(())
    }
}

/// `POST /v1/offers`: the new offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The BOLT 12 offer (`lno1...`).
    pub offer: String,
}

/// `POST /v1/payments/offer`: pay a BOLT 12 offer (the node asks the offer's node for an
/// invoice by onion message, then pays it).
///
/// Validation: `offer` is not empty (whitespace and a `lightning:` prefix are removed;
/// parsing it is the node's job: `invalid_offer`); `amount_msat`, if given, is non-zero;
/// `timeout_secs`, if given, is non-zero. `wait` as in [`PayInvoiceRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayOfferRequest {
    /// The offer.
    pub offer: String,
    /// The amount, for an offer without one (must be absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_msat: Option<u64>,
    /// Wait for the outcome.
    #[serde(default = "yes")]
    pub wait: bool,
    /// How long to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl PayOfferRequest {
    /// Checks the request (see the type's docs).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        self.offer = strip_lightning_prefix(&self.offer).to_owned();
        if self.offer.is_empty() {
            return Err(ApiError::invalid_request("`offer` is empty"));
        }
        check_amount_and_timeout(self.amount_msat, self.timeout_secs)
    }
}

/// A payment's optional amount and wait: neither may be zero.
fn check_amount_and_timeout(
    amount_msat: Option<u64>,
    timeout_secs: Option<u64>,
) -> Result<(), ApiError> {
    if amount_msat == Some(0) {
        return Err(ApiError::invalid_request("`amount_msat` is zero"));
    }
    if timeout_secs == Some(0) {
        return Err(ApiError::invalid_request("`timeout_secs` is zero"));
    }
    Ok(())
}

/// `text` without surrounding whitespace and a `lightning:` URI prefix.
fn strip_lightning_prefix(text: &str) -> &str {
    let text = text.trim();
    text.strip_prefix("lightning:")
        .or_else(|| text.strip_prefix("LIGHTNING:"))
        .unwrap_or(text)
}

/// `POST /v1/payments/keysend`: a spontaneous payment.
///
/// Validation: the node id is checked and lowercased; `amount_msat` and
/// `timeout_secs` (if given) are non-zero. `wait` as in [`PayInvoiceRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysendRequest {
    /// The payee.
    pub node_id: String,
    /// The amount.
    pub amount_msat: u64,
    /// Wait for the outcome.
    #[serde(default = "yes")]
    pub wait: bool,
    /// How long to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl KeysendRequest {
    /// Checks the request (see the type's docs).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        self.node_id = crate::validate::node_id(&self.node_id)?;
        if self.amount_msat == 0 {
            return Err(ApiError::invalid_request("`amount_msat` is zero"));
        }
        if self.timeout_secs == Some(0) {
            return Err(ApiError::invalid_request("`timeout_secs` is zero"));
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

/// Which way a payment goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentDirection {
    /// Paid to us.
    Inbound,
    /// Paid by us.
    Outbound,
}

/// Where a payment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Under way (outbound) or not paid yet (inbound).
    Pending,
    /// Done: the preimage is known.
    Succeeded,
    /// Given up; see `failure_reason`.
    Failed,
}

/// A payment, inbound or outbound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The node's id for the payment, 32 bytes hex.
    pub payment_id: String,
    /// The payment hash, 32 bytes hex.
    pub payment_hash: String,
    /// The preimage, once known.
    pub preimage: Option<String>,
    /// Which way it goes.
    pub direction: PaymentDirection,
    /// Where it stands.
    pub status: PaymentStatus,
    /// The amount paid (outbound) or received (inbound), without fees; absent for an
    /// any-amount invoice not paid yet.
    pub amount_msat: Option<u64>,
    /// Routing fees paid (outbound, once known).
    pub fee_msat: Option<u64>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// When the node first recorded it, Unix seconds.
    pub created_at: u64,
    /// When it last changed, Unix seconds.
    pub updated_at: u64,
}

/// `GET /v1/payments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPaymentsResponse {
    /// The node's payments.
    pub payments: Vec<Payment>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_states_use_lnd_names() {
        for state in ServerState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<ServerState>(&json).unwrap(), state);
        }
    }

    #[test]
    fn send_onchain_needs_exactly_one_amount() {
        let req = |json: &str| {
            let mut req: SendOnchainRequest = serde_json::from_str(json).unwrap();
            req.validate()
        };
        assert!(req(r#"{"address":"a","amount_sat":5}"#).is_ok());
        assert!(req(r#"{"address":"a","send_all":true}"#).is_ok());
        assert!(req(r#"{"address":"a"}"#).is_err());
        assert!(req(r#"{"address":"a","amount_sat":5,"send_all":true}"#).is_err());
        assert!(req(r#"{"address":"a","amount_sat":0}"#).is_err());
        assert!(req(r#"{"address":" ","amount_sat":5}"#).is_err());
    }

    #[test]
    fn connect_peer_accepts_a_uri_or_two_fields() {
        let id = format!("02{}", "AB".repeat(32));
        let uri: ConnectPeerRequest =
            serde_json::from_str(&format!(r#"{{"uri":"{id}@127.0.0.1:9735"}}"#)).unwrap();
        assert_eq!(uri.node_id, id.to_lowercase());
        assert_eq!(uri.address, "127.0.0.1:9735");
        let fields: ConnectPeerRequest = serde_json::from_str(&format!(
            r#"{{"node_id":"{id}","address":"127.0.0.1:9735"}}"#
        ))
        .unwrap();
        assert_eq!(fields.address, "127.0.0.1:9735");
        assert!(serde_json::from_str::<ConnectPeerRequest>(r#"{"uri":"nope"}"#).is_err());
        assert!(
            serde_json::from_str::<ConnectPeerRequest>(&format!(r#"{{"node_id":"{id}"}}"#))
                .is_err()
        );
        // Serialized, it is the two-field form, which reads back.
        let json = serde_json::to_string(&uri).unwrap();
        assert_eq!(
            serde_json::from_str::<ConnectPeerRequest>(&json).unwrap(),
            uri
        );
    }

    #[test]
    fn pay_defaults_to_waiting_and_strips_the_uri_scheme() {
        let mut req: PayInvoiceRequest =
            serde_json::from_str(r#"{"invoice":" lightning:lnbcrt1x "}"#).unwrap();
        assert!(req.wait);
        req.validate().unwrap();
        assert_eq!(req.invoice, "lnbcrt1x");
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        assert!(serde_json::from_str::<CloseChannelRequest>(r#"{"forse":true}"#).is_err());
        assert!(
            serde_json::from_str::<OpenChannelRequest>(
                r#"{"node_id":"x","amount_sats":1,"amount_sat":1}"#
            )
            .is_err()
        );
    }
}
