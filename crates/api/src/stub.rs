//! A scripted [`NodeControl`] for tests of the server, the client and `phalanx ctl`: it
//! answers each call with the reply the test queued for that method, records the call,
//! and refuses everything with `not_active` when its state is not `SERVER_ACTIVE` (as the
//! real node does). It has no behaviour of its own: what a node does is the node's, and
//! the [`crate::contract`] suite checks both against one contract.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::control::NodeControl;
use crate::error::ApiError;
use crate::types::{
    BackupCreated, Balance, Channel, CloseChannelRequest, ConnectPeerRequest, CreateBackupRequest,
    CreateInvoiceRequest, CreateOfferRequest, Invoice, KeysendRequest, NewAddress, NodeInfo, Offer,
    OpenChannelRequest, OpenChannelResponse, PayInvoiceRequest, PayOfferRequest, Payment, Peer,
    SendOnchainRequest, SendOnchainResponse, ServerState,
};

/// A [`NodeControl`] method (but `state` and `metrics`, which always answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// [`NodeControl::info`].
    Info,
    /// [`NodeControl::new_address`].
    NewAddress,
    /// [`NodeControl::balance`].
    Balance,
    /// [`NodeControl::send_onchain`].
    SendOnchain,
    /// [`NodeControl::list_peers`].
    ListPeers,
    /// [`NodeControl::connect_peer`].
    ConnectPeer,
    /// [`NodeControl::disconnect_peer`].
    DisconnectPeer,
    /// [`NodeControl::open_channel`].
    OpenChannel,
    /// [`NodeControl::list_channels`].
    ListChannels,
    /// [`NodeControl::close_channel`].
    CloseChannel,
    /// [`NodeControl::create_invoice`].
    CreateInvoice,
    /// [`NodeControl::pay_invoice`].
    PayInvoice,
    /// [`NodeControl::create_offer`].
    CreateOffer,
    /// [`NodeControl::pay_offer`].
    PayOffer,
    /// [`NodeControl::keysend`].
    Keysend,
    /// [`NodeControl::list_payments`].
    ListPayments,
    /// [`NodeControl::get_payment`].
    GetPayment,
    /// [`NodeControl::get_payment_by_id`].
    GetPaymentById,
    /// [`NodeControl::create_backup`].
    CreateBackup,
}

/// One call the stub received: the method and its arguments as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct StubCall {
    /// The method.
    pub method: Method,
    /// Its arguments (`null` for none).
    pub args: serde_json::Value,
}

/// The scripted node. Starts `SERVER_ACTIVE` with nothing scripted: a call whose method
/// has no reply queued answers `internal`, naming the method.
pub struct StubNode {
    state: Mutex<ServerState>,
    replies: Mutex<HashMap<Method, VecDeque<Result<serde_json::Value, ApiError>>>>,
    next_error: Mutex<Option<ApiError>>,
    calls: Mutex<Vec<StubCall>>,
}

impl Default for StubNode {
    fn default() -> Self {
        Self::new()
    }
}

impl StubNode {
    /// A stub, `SERVER_ACTIVE`, nothing scripted.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(ServerState::ServerActive),
            replies: Mutex::new(HashMap::new()),
            next_error: Mutex::new(None),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Sets the state [`NodeControl::state`] reports; any other state than
    /// `SERVER_ACTIVE` makes every call `not_active`.
    pub fn set_state(&self, state: ServerState) {
        *lock(&self.state) = state;
    }

    /// Queues `reply` for the next call of `method` (replies are used in order).
    pub fn reply<T: Serialize>(&self, method: Method, reply: Result<T, ApiError>) {
        let reply = reply.map(|value| serde_json::to_value(value).expect("a reply is JSON"));
        self.reply_json(method, reply);
    }

    /// Queues a reply already in JSON.
    pub fn reply_json(&self, method: Method, reply: Result<serde_json::Value, ApiError>) {
        lock(&self.replies)
            .entry(method)
            .or_default()
            .push_back(reply);
    }

    /// Fails the next call, whatever its method, with `error`.
    pub fn fail_next(&self, error: ApiError) {
        *lock(&self.next_error) = Some(error);
    }

    /// The calls received so far, oldest first.
    pub fn calls(&self) -> Vec<StubCall> {
        lock(&self.calls).clone()
    }

    /// How many scripted replies no call has taken yet.
    pub fn unanswered(&self) -> usize {
        lock(&self.replies).values().map(VecDeque::len).sum()
    }

    /// The last call received.
    pub fn last_call(&self) -> Option<StubCall> {
        lock(&self.calls).last().cloned()
    }

    /// Records the call and answers it with its scripted reply.
    fn answer<T: DeserializeOwned>(
        &self,
        method: Method,
        args: impl Serialize,
    ) -> Result<T, ApiError> {
        let args = serde_json::to_value(args).unwrap_or(serde_json::Value::Null);
        lock(&self.calls).push(StubCall { method, args });
        let state = *lock(&self.state);
        if state != ServerState::ServerActive {
            return Err(ApiError::not_active(state));
        }
        if let Some(error) = lock(&self.next_error).take() {
            return Err(error);
        }
        let reply = lock(&self.replies)
            .get_mut(&method)
            .and_then(VecDeque::pop_front)
            .ok_or_else(|| ApiError::internal(format!("stub: nothing scripted for {method:?}")))?;
        let value = reply?;
        serde_json::from_value(value.clone()).map_err(|err| {
            ApiError::internal(format!(
                "stub: the reply {value} scripted for {method:?}: {err}"
            ))
        })
    }
}

impl NodeControl for StubNode {
    fn state(&self) -> ServerState {
        *lock(&self.state)
    }

    fn metrics(&self) -> String {
        format!(
            "# TYPE stub_state gauge\nstub_state{{state=\"{}\"}} 1\n# EOF\n",
            self.state().as_str()
        )
    }

    async fn info(&self) -> Result<NodeInfo, ApiError> {
        self.answer(Method::Info, ())
    }

    async fn new_address(&self) -> Result<NewAddress, ApiError> {
        self.answer(Method::NewAddress, ())
    }

    async fn balance(&self) -> Result<Balance, ApiError> {
        self.answer(Method::Balance, ())
    }

    async fn send_onchain(&self, req: SendOnchainRequest) -> Result<SendOnchainResponse, ApiError> {
        self.answer(Method::SendOnchain, req)
    }

    async fn list_peers(&self) -> Result<Vec<Peer>, ApiError> {
        self.answer(Method::ListPeers, ())
    }

    async fn connect_peer(&self, req: ConnectPeerRequest) -> Result<Peer, ApiError> {
        self.answer(Method::ConnectPeer, req)
    }

    async fn disconnect_peer(&self, node_id: String) -> Result<(), ApiError> {
        self.answer(Method::DisconnectPeer, node_id)
    }

    async fn open_channel(&self, req: OpenChannelRequest) -> Result<OpenChannelResponse, ApiError> {
        self.answer(Method::OpenChannel, req)
    }

    async fn list_channels(&self) -> Result<Vec<Channel>, ApiError> {
        self.answer(Method::ListChannels, ())
    }

    async fn close_channel(
        &self,
        channel_id: String,
        req: CloseChannelRequest,
    ) -> Result<(), ApiError> {
        self.answer(
            Method::CloseChannel,
            serde_json::json!({"channel_id": channel_id, "req": req}),
        )
    }

    async fn create_invoice(&self, req: CreateInvoiceRequest) -> Result<Invoice, ApiError> {
        self.answer(Method::CreateInvoice, req)
    }

    async fn pay_invoice(&self, req: PayInvoiceRequest) -> Result<Payment, ApiError> {
        self.answer(Method::PayInvoice, req)
    }

    async fn create_offer(&self, req: CreateOfferRequest) -> Result<Offer, ApiError> {
        self.answer(Method::CreateOffer, req)
    }

    async fn pay_offer(&self, req: PayOfferRequest) -> Result<Payment, ApiError> {
        self.answer(Method::PayOffer, req)
    }

    async fn keysend(&self, req: KeysendRequest) -> Result<Payment, ApiError> {
        self.answer(Method::Keysend, req)
    }

    async fn create_backup(&self, req: CreateBackupRequest) -> Result<BackupCreated, ApiError> {
        self.answer(Method::CreateBackup, req)
    }

    async fn list_payments(&self) -> Result<Vec<Payment>, ApiError> {
        self.answer(Method::ListPayments, ())
    }

    async fn get_payment(&self, payment_hash: String) -> Result<Payment, ApiError> {
        self.answer(Method::GetPayment, payment_hash)
    }

    async fn get_payment_by_id(&self, payment_id: String) -> Result<Payment, ApiError> {
        self.answer(Method::GetPaymentById, payment_id)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
