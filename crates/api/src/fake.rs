//! An in-memory [`NodeControl`] for tests of the server, the client and `phalanx ctl`:
//! a test double of the node (not of a database), with a switchable state, an error to
//! fail the next call with, and a record of the calls it received.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::control::NodeControl;
use crate::error::{ApiError, ErrorCode};
use crate::types::{
    Balance, Channel, ChannelState, CloseChannelRequest, ConnectPeerRequest, CreateInvoiceRequest,
    Invoice, KeysendRequest, NewAddress, NodeInfo, OpenChannelRequest, OpenChannelResponse,
    PayInvoiceRequest, Payment, PaymentDirection, PaymentStatus, Peer, SendOnchainRequest,
    SendOnchainResponse, ServerState,
};

/// The fake's own node id.
pub const FAKE_NODE_ID: &str = "021111111111111111111111111111111111111111111111111111111111111111";

/// A peer address the fake cannot reach (`peer_unreachable`).
pub const UNREACHABLE_HOST: &str = "unreachable.invalid";

/// One call the fake received: the method's name and its arguments as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeCall {
    /// The [`NodeControl`] method.
    pub method: &'static str,
    /// Its arguments (`null` for none).
    pub args: serde_json::Value,
}

/// The fake node. Starts `SERVER_ACTIVE` with 1 000 000 sat confirmed on chain.
///
/// Behaviour: on-chain addresses are `bcrt1q…` (others are `invalid_address`); sends
/// beyond the confirmed balance are `insufficient_funds`; peers at
/// [`UNREACHABLE_HOST`] are `peer_unreachable`; opening needs a connected peer (or an
/// address); invoices are `lnbcrt…` strings (others are `invalid_invoice`); an invoice
/// containing `fail` fails with a reason; paying an already paid invoice is
/// `payment_failed`; unknown ids are `unknown_*`.
pub struct FakeNode {
    state: Mutex<ServerState>,
    inner: Mutex<Inner>,
}

struct Inner {
    info: NodeInfo,
    balance: Balance,
    peers: Vec<Peer>,
    channels: Vec<Channel>,
    payments: Vec<Payment>,
    next_error: Option<ApiError>,
    calls: Vec<FakeCall>,
    counter: u64,
}

impl Default for FakeNode {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeNode {
    /// A fake node, `SERVER_ACTIVE`.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(ServerState::ServerActive),
            inner: Mutex::new(Inner {
                info: NodeInfo {
                    node_id: FAKE_NODE_ID.to_owned(),
                    alias: "fake".to_owned(),
                    network: "regtest".to_owned(),
                    block_height: 101,
                    block_hash: "0f".repeat(32),
                    num_peers: 0,
                    num_channels: 0,
                    num_usable_channels: 0,
                    listen_addresses: vec!["127.0.0.1:9735".to_owned()],
                    epoch: 7,
                    version: "0.0.0-fake".to_owned(),
                },
                balance: Balance {
                    onchain_confirmed_sat: 1_000_000,
                    onchain_unconfirmed_sat: 0,
                    onchain_total_sat: 1_000_000,
                    lightning_outbound_msat: 0,
                    lightning_inbound_msat: 0,
                },
                peers: Vec::new(),
                channels: Vec::new(),
                payments: Vec::new(),
                next_error: None,
                calls: Vec::new(),
                counter: 0,
            }),
        }
    }

    /// Sets the state [`NodeControl::state`] reports.
    pub fn set_state(&self, state: ServerState) {
        *self.state.lock().unwrap() = state;
    }

    /// Fails the next call (any method but `state`) with `error`.
    pub fn fail_next(&self, error: ApiError) {
        self.inner.lock().unwrap().next_error = Some(error);
    }

    /// The calls received so far, oldest first.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// The last call received.
    pub fn last_call(&self) -> Option<FakeCall> {
        self.inner.lock().unwrap().calls.last().cloned()
    }

    fn begin(&self, method: &'static str, args: serde_json::Value) -> Result<Guard<'_>, ApiError> {
        let mut inner = self.inner.lock().unwrap();
        inner.calls.push(FakeCall { method, args });
        if let Some(error) = inner.next_error.take() {
            return Err(error);
        }
        Ok(Guard(inner))
    }
}

struct Guard<'a>(std::sync::MutexGuard<'a, Inner>);

impl Guard<'_> {
    fn next_hex32(&mut self) -> String {
        self.0.counter += 1;
        format!("{:064x}", self.0.counter)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json(value: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

impl NodeControl for FakeNode {
    fn state(&self) -> ServerState {
        *self.state.lock().unwrap()
    }

    fn metrics(&self) -> String {
        format!(
            "# TYPE fake_state gauge\nfake_state{{state=\"{}\"}} 1\n# EOF\n",
            self.state().as_str()
        )
    }

    async fn info(&self) -> Result<NodeInfo, ApiError> {
        let g = self.begin("info", serde_json::Value::Null)?;
        let mut info = g.0.info.clone();
        info.num_peers = g.0.peers.len() as u32;
        info.num_channels = g.0.channels.len() as u32;
        info.num_usable_channels = g.0.channels.iter().filter(|c| c.is_usable).count() as u32;
        Ok(info)
    }

    async fn new_address(&self) -> Result<NewAddress, ApiError> {
        let mut g = self.begin("new_address", serde_json::Value::Null)?;
        g.0.counter += 1;
        Ok(NewAddress {
            address: format!("bcrt1qfake{:08}", g.0.counter),
        })
    }

    async fn balance(&self) -> Result<Balance, ApiError> {
        let g = self.begin("balance", serde_json::Value::Null)?;
        Ok(g.0.balance.clone())
    }

    async fn send_onchain(&self, req: SendOnchainRequest) -> Result<SendOnchainResponse, ApiError> {
        let mut g = self.begin("send_onchain", json(&req))?;
        if !req.address.starts_with("bcrt1") {
            return Err(ApiError::new(
                ErrorCode::InvalidAddress,
                format!("`{}` is not a regtest address", req.address),
            ));
        }
        let confirmed = g.0.balance.onchain_confirmed_sat;
        let amount = if req.send_all {
            confirmed
        } else {
            req.amount_sat.unwrap_or(0)
        };
        if amount > confirmed || amount == 0 {
            return Err(ApiError::new(
                ErrorCode::InsufficientFunds,
                format!("{amount} sat asked, {confirmed} sat confirmed"),
            ));
        }
        g.0.balance.onchain_confirmed_sat -= amount;
        g.0.balance.onchain_total_sat -= amount;
        Ok(SendOnchainResponse {
            txid: g.next_hex32(),
        })
    }

    async fn list_peers(&self) -> Result<Vec<Peer>, ApiError> {
        let g = self.begin("list_peers", serde_json::Value::Null)?;
        Ok(g.0.peers.clone())
    }

    async fn connect_peer(&self, req: ConnectPeerRequest) -> Result<Peer, ApiError> {
        let mut g = self.begin("connect_peer", json(&req))?;
        connect(&mut g, &req.node_id, &req.address)
    }

    async fn disconnect_peer(&self, node_id: String) -> Result<(), ApiError> {
        let mut g = self.begin("disconnect_peer", json(&node_id))?;
        let before = g.0.peers.len();
        g.0.peers.retain(|p| p.node_id != node_id);
        if g.0.peers.len() == before {
            return Err(ApiError::new(
                ErrorCode::UnknownPeer,
                format!("not connected to {node_id}"),
            ));
        }
        Ok(())
    }

    async fn open_channel(&self, req: OpenChannelRequest) -> Result<OpenChannelResponse, ApiError> {
        let mut g = self.begin("open_channel", json(&req))?;
        if let Some(address) = &req.address {
            connect(&mut g, &req.node_id, address)?;
        }
        if !g.0.peers.iter().any(|p| p.node_id == req.node_id) {
            return Err(ApiError::new(
                ErrorCode::UnknownPeer,
                format!("not connected to {}: give its address", req.node_id),
            ));
        }
        if req.amount_sat > g.0.balance.onchain_confirmed_sat {
            return Err(ApiError::new(
                ErrorCode::InsufficientFunds,
                "not enough confirmed funds",
            ));
        }
        let channel_id = g.next_hex32();
        let user_channel_id = g.0.counter.to_string();
        g.0.channels.push(Channel {
            channel_id: channel_id.clone(),
            user_channel_id: user_channel_id.clone(),
            counterparty_node_id: req.node_id,
            funding_txid: None,
            funding_output_index: None,
            short_channel_id: None,
            capacity_sat: req.amount_sat,
            outbound_msat: req.amount_sat * 1000 - req.push_msat,
            inbound_msat: req.push_msat,
            state: ChannelState::PendingOpen,
            is_usable: false,
            is_public: req.public,
            confirmations: None,
            confirmations_required: Some(6),
        });
        Ok(OpenChannelResponse {
            channel_id,
            user_channel_id,
        })
    }

    async fn list_channels(&self) -> Result<Vec<Channel>, ApiError> {
        let g = self.begin("list_channels", serde_json::Value::Null)?;
        Ok(g.0.channels.clone())
    }

    async fn close_channel(
        &self,
        channel_id: String,
        req: CloseChannelRequest,
    ) -> Result<(), ApiError> {
        let mut g = self.begin(
            "close_channel",
            serde_json::json!({"channel_id": channel_id, "req": req}),
        )?;
        match g.0.channels.iter_mut().find(|c| c.channel_id == channel_id) {
            Some(channel) => {
                channel.state = ChannelState::Closing;
                channel.is_usable = false;
                Ok(())
            }
            None => Err(ApiError::new(
                ErrorCode::UnknownChannel,
                format!("no channel {channel_id}"),
            )),
        }
    }

    async fn create_invoice(&self, req: CreateInvoiceRequest) -> Result<Invoice, ApiError> {
        let mut g = self.begin("create_invoice", json(&req))?;
        let payment_hash = g.next_hex32();
        let created_at = now();
        g.0.payments.push(Payment {
            payment_id: payment_hash.clone(),
            payment_hash: payment_hash.clone(),
            preimage: None,
            direction: PaymentDirection::Inbound,
            status: PaymentStatus::Pending,
            amount_msat: req.amount_msat,
            fee_msat: None,
            failure_reason: None,
            created_at,
            updated_at: created_at,
        });
        Ok(Invoice {
            invoice: format!(
                "lnbcrt{}fake{payment_hash}",
                req.amount_msat.unwrap_or_default()
            ),
            payment_hash,
            expires_at: created_at + u64::from(req.expiry_secs.unwrap_or(3600)),
        })
    }

    async fn pay_invoice(&self, req: PayInvoiceRequest) -> Result<Payment, ApiError> {
        let mut g = self.begin("pay_invoice", json(&req))?;
        if !req.invoice.starts_with("lnbcrt") {
            return Err(ApiError::new(
                ErrorCode::InvalidInvoice,
                "not a regtest BOLT 11 invoice",
            ));
        }
        let payment_hash = match req.invoice.rsplit_once("fake") {
            Some((_, hash)) if hash.len() == 64 => hash.to_owned(),
            _ => g.next_hex32(),
        };
        let paid = g.0.payments.iter().any(|p| {
            p.payment_hash == payment_hash
                && p.direction == PaymentDirection::Outbound
                && p.status != PaymentStatus::Failed
        });
        if paid {
            return Err(ApiError::new(
                ErrorCode::PaymentFailed,
                "this invoice is already paid or being paid",
            ));
        }
        let fails = req.invoice.contains("fail");
        Ok(outbound(
            &mut g,
            payment_hash,
            req.amount_msat.or(Some(1000)),
            req.wait,
            fails,
        ))
    }

    async fn keysend(&self, req: KeysendRequest) -> Result<Payment, ApiError> {
        let mut g = self.begin("keysend", json(&req))?;
        let payment_hash = g.next_hex32();
        Ok(outbound(
            &mut g,
            payment_hash,
            Some(req.amount_msat),
            req.wait,
            false,
        ))
    }

    async fn list_payments(&self) -> Result<Vec<Payment>, ApiError> {
        let g = self.begin("list_payments", serde_json::Value::Null)?;
        Ok(g.0.payments.iter().rev().cloned().collect())
    }

    async fn get_payment(&self, payment_hash: String) -> Result<Payment, ApiError> {
        let g = self.begin("get_payment", json(&payment_hash))?;
        g.0.payments
            .iter()
            .rev()
            .find(|p| p.payment_hash == payment_hash)
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownPayment,
                    format!("no payment with hash {payment_hash}"),
                )
            })
    }
}

fn connect(g: &mut Guard<'_>, node_id: &str, address: &str) -> Result<Peer, ApiError> {
    if address.starts_with(UNREACHABLE_HOST) {
        return Err(ApiError::new(
            ErrorCode::PeerUnreachable,
            format!("cannot connect to {node_id}@{address}: connection refused"),
        ));
    }
    if let Some(peer) = g.0.peers.iter().find(|p| p.node_id == node_id) {
        return Ok(peer.clone());
    }
    let peer = Peer {
        node_id: node_id.to_owned(),
        address: Some(address.to_owned()),
        inbound: false,
    };
    g.0.peers.push(peer.clone());
    Ok(peer)
}

fn outbound(
    g: &mut Guard<'_>,
    payment_hash: String,
    amount_msat: Option<u64>,
    wait: bool,
    fails: bool,
) -> Payment {
    let created_at = now();
    let (status, preimage, failure_reason) = match (wait, fails) {
        (false, _) => (PaymentStatus::Pending, None, None),
        (true, false) => (PaymentStatus::Succeeded, Some("ee".repeat(32)), None),
        (true, true) => (
            PaymentStatus::Failed,
            None,
            Some("no route to the payee".to_owned()),
        ),
    };
    let payment = Payment {
        payment_id: payment_hash.clone(),
        payment_hash,
        preimage,
        direction: PaymentDirection::Outbound,
        status,
        amount_msat,
        fee_msat: (status == PaymentStatus::Succeeded).then_some(1),
        failure_reason,
        created_at,
        updated_at: created_at,
    };
    g.0.payments.push(payment.clone());
    payment
}
