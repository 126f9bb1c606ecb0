//! The [`NodeControl`] contract as a suite of cases, run against every implementation:
//! the scripted [`crate::stub::StubNode`] (which shows the server and the client carry
//! each prescribed answer) and the real node service (which shows the node gives it).
//!
//! Each case talks to the implementation over HTTP through [`ContractDriver::client`].
//! Before each call it tells the driver the answer the contract prescribes
//! ([`ContractDriver::expect`]): the stub's driver scripts it, the real node's ignores it.
//! A case then checks the answer it got. Where an answer depends on the world (an
//! invoice of a counterparty, a payment held in flight), the driver provides it.
//!
//! The cases, and what they pin down:
//!
//! | case | contract |
//! |---|---|
//! | [`unknown_ids_are_unknown`] | `unknown_payment`, `unknown_channel`, `unknown_peer` for ids the node has never seen |
//! | [`addresses_are_fresh_and_checked`] | two addresses differ; another network's address is `invalid_address`; more than the balance is `insufficient_funds` |
//! | [`a_channel_ldk_refuses_is_invalid_request`] | a channel under LDK's minimum is the caller's mistake (`invalid_request`), not `internal` |
//! | [`an_invoice_is_recorded_pending`] | a new invoice is an inbound payment, pending, with its amount |
//! | [`own_invoices_and_self_payments_are_refused`] | paying one's own invoice is `invalid_invoice`; keysend to oneself is `invalid_request` |
//! | [`an_invoice_is_paid_once`] | a payment with `wait` succeeds with a preimage; paying the invoice again is `payment_failed` |
//! | [`paying_an_invoice_in_flight_again_is_the_same_payment`] | a retry while the first call's payment is in flight answers that payment (same id, never `failed`): no second payment, no failure |

use std::future::Future;

use serde_json::{Value, json};

use crate::client::{ApiClient, ClientError};
use crate::error::{ApiError, ErrorCode};
use crate::stub::Method;
use crate::types::{
    CloseChannelRequest, CreateInvoiceRequest, KeysendRequest, OpenChannelRequest,
    PayInvoiceRequest, PaymentDirection, PaymentStatus, SendOnchainRequest,
};

/// An invoice of the counterparty's, and its payment hash.
#[derive(Clone, Debug)]
pub struct PeerInvoice {
    /// The BOLT 11 invoice.
    pub invoice: String,
    /// Its payment hash, hex.
    pub payment_hash: String,
}

/// What a case needs of the implementation under test and of its world.
pub trait ContractDriver {
    /// A client (with the token) of the API served in front of the implementation.
    fn client(&self) -> &ApiClient;

    /// The answer the contract prescribes to the next call of `method`: the stub's driver
    /// queues it, the real node's ignores it.
    fn expect(&self, method: Method, answer: Result<Value, ApiError>);

    /// The node id of a counterparty with a usable channel to the node.
    fn peer_id(&self) -> String;

    /// An on-chain address of another network than the node's.
    fn foreign_address(&self) -> String;

    /// A fresh invoice of the counterparty's for `amount_msat`, payable by the node.
    fn peer_invoice(&self, amount_msat: u64) -> impl Future<Output = PeerInvoice>;

    /// A fresh invoice of the counterparty's whose payment it holds (in flight) until
    /// [`Self::release`].
    fn held_invoice(&self, amount_msat: u64) -> impl Future<Output = PeerInvoice>;

    /// Lets the counterparty claim the held payment of `invoice`.
    fn release(&self, invoice: &PeerInvoice) -> impl Future<Output = ()>;
}

/// Runs every case against `driver`.
pub async fn run_all(driver: &impl ContractDriver) {
    unknown_ids_are_unknown(driver).await;
    addresses_are_fresh_and_checked(driver).await;
    a_channel_ldk_refuses_is_invalid_request(driver).await;
    an_invoice_is_recorded_pending(driver).await;
    own_invoices_and_self_payments_are_refused(driver).await;
    an_invoice_is_paid_once(driver).await;
    paying_an_invoice_in_flight_again_is_the_same_payment(driver).await;
}

/// The API error's code, or a failure naming what was expected.
fn code(result: Result<impl std::fmt::Debug, ClientError>, what: &str) -> ErrorCode {
    match result {
        Err(ClientError::Api { error, .. }) => error.code,
        other => panic!("{what}: expected an API error, got {other:?}"),
    }
}

fn refusal(code: ErrorCode) -> Result<Value, ApiError> {
    Err(ApiError::new(code, "prescribed by the contract"))
}

/// 32 bytes of hex no node has seen.
const UNSEEN: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// See the [module docs](self).
pub async fn unknown_ids_are_unknown(d: &impl ContractDriver) {
    let c = d.client();
    d.expect(Method::GetPayment, refusal(ErrorCode::UnknownPayment));
    assert_eq!(
        code(c.get_payment(UNSEEN).await, "get_payment"),
        ErrorCode::UnknownPayment
    );
    d.expect(Method::CloseChannel, refusal(ErrorCode::UnknownChannel));
    let close = c
        .close_channel(UNSEEN, &CloseChannelRequest { force: false })
        .await;
    assert_eq!(code(close, "close_channel"), ErrorCode::UnknownChannel);
    // 2G: a valid key no node of the tests has.
    let stranger = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5";
    d.expect(Method::DisconnectPeer, refusal(ErrorCode::UnknownPeer));
    assert_eq!(
        code(c.disconnect_peer(stranger).await, "disconnect_peer"),
        ErrorCode::UnknownPeer
    );
}

/// See the [module docs](self).
pub async fn addresses_are_fresh_and_checked(d: &impl ContractDriver) {
    let c = d.client();
    d.expect(
        Method::NewAddress,
        Ok(json!({"address": "bcrt1qcontract0first"})),
    );
    let first = c.new_address().await.expect("an address").address;
    d.expect(
        Method::NewAddress,
        Ok(json!({"address": "bcrt1qcontract0second"})),
    );
    let second = c.new_address().await.expect("an address").address;
    assert_ne!(first, second, "an address is never handed out twice");

    d.expect(Method::SendOnchain, refusal(ErrorCode::InvalidAddress));
    let foreign = c
        .send_onchain(&SendOnchainRequest {
            address: d.foreign_address(),
            amount_sat: Some(10_000),
            send_all: false,
            fee_rate_sat_per_vb: None,
        })
        .await;
    assert_eq!(code(foreign, "send_onchain"), ErrorCode::InvalidAddress);
    d.expect(Method::SendOnchain, refusal(ErrorCode::InsufficientFunds));
    let too_much = c
        .send_onchain(&SendOnchainRequest {
            address: first,
            amount_sat: Some(1_000_000_000_000),
            send_all: false,
            fee_rate_sat_per_vb: None,
        })
        .await;
    assert_eq!(code(too_much, "send_onchain"), ErrorCode::InsufficientFunds);
}

/// See the [module docs](self).
pub async fn a_channel_ldk_refuses_is_invalid_request(d: &impl ContractDriver) {
    d.expect(Method::OpenChannel, refusal(ErrorCode::InvalidRequest));
    let open = d
        .client()
        .open_channel(&OpenChannelRequest {
            node_id: d.peer_id(),
            address: None,
            amount_sat: 500,
            push_msat: 0,
            public: false,
        })
        .await;
    assert_eq!(code(open, "open_channel"), ErrorCode::InvalidRequest);
}

/// A payment as the contract prescribes it, for the stub.
fn prescribed_payment(
    payment_hash: &str,
    direction: PaymentDirection,
    status: PaymentStatus,
    amount_msat: u64,
) -> Value {
    let preimage = (status == PaymentStatus::Succeeded).then(|| "00".repeat(32));
    json!({
        "payment_id": payment_hash,
        "payment_hash": payment_hash,
        "preimage": preimage,
        "direction": direction,
        "status": status,
        "amount_msat": amount_msat,
        "fee_msat": null,
        "failure_reason": null,
        "created_at": 1,
        "updated_at": 1,
    })
}

/// See the [module docs](self).
pub async fn an_invoice_is_recorded_pending(d: &impl ContractDriver) {
    let c = d.client();
    d.expect(
        Method::CreateInvoice,
        Ok(json!({"invoice": "lnbcrt50n1contract", "payment_hash": UNSEEN, "expires_at": 1})),
    );
    let invoice = c
        .create_invoice(&CreateInvoiceRequest {
            amount_msat: Some(5_000),
            description: "contract".into(),
            expiry_secs: None,
        })
        .await
        .expect("an invoice");
    d.expect(
        Method::GetPayment,
        Ok(prescribed_payment(
            &invoice.payment_hash,
            PaymentDirection::Inbound,
            PaymentStatus::Pending,
            5_000,
        )),
    );
    let payment = c
        .get_payment(&invoice.payment_hash)
        .await
        .expect("the invoice is recorded");
    assert_eq!(payment.payment_hash, invoice.payment_hash);
    assert_eq!(payment.direction, PaymentDirection::Inbound);
    assert_eq!(payment.status, PaymentStatus::Pending);
    assert_eq!(payment.amount_msat, Some(5_000));
}

/// See the [module docs](self).
pub async fn own_invoices_and_self_payments_are_refused(d: &impl ContractDriver) {
    let c = d.client();
    d.expect(
        Method::CreateInvoice,
        Ok(json!({"invoice": "lnbcrt10n1contractown", "payment_hash": UNSEEN, "expires_at": 1})),
    );
    let own = c
        .create_invoice(&CreateInvoiceRequest {
            amount_msat: Some(1_000),
            description: "own".into(),
            expiry_secs: None,
        })
        .await
        .expect("an invoice");
    d.expect(Method::PayInvoice, refusal(ErrorCode::InvalidInvoice));
    let paid = c
        .pay_invoice(&PayInvoiceRequest {
            invoice: own.invoice,
            amount_msat: None,
            wait: true,
            timeout_secs: None,
        })
        .await;
    assert_eq!(code(paid, "pay_invoice"), ErrorCode::InvalidInvoice);

    d.expect(Method::Info, Ok(prescribed_info()));
    let me = c.info().await.expect("info").node_id;
    d.expect(Method::Keysend, refusal(ErrorCode::InvalidRequest));
    let sent = c
        .keysend(&KeysendRequest {
            node_id: me,
            amount_msat: 1_000,
            wait: true,
            timeout_secs: None,
        })
        .await;
    assert_eq!(code(sent, "keysend"), ErrorCode::InvalidRequest);
}

fn prescribed_info() -> Value {
    json!({
        "node_id": "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
        "alias": "stub",
        "network": "regtest",
        "block_height": 101,
        "block_hash": "0f".repeat(32),
        "num_peers": 1,
        "num_channels": 1,
        "num_usable_channels": 1,
        "listen_addresses": [],
        "epoch": 1,
        "version": "0.0.0",
    })
}

/// See the [module docs](self).
pub async fn an_invoice_is_paid_once(d: &impl ContractDriver) {
    let c = d.client();
    let invoice = d.peer_invoice(20_000).await;
    let request = PayInvoiceRequest {
        invoice: invoice.invoice.clone(),
        amount_msat: None,
        wait: true,
        timeout_secs: Some(60),
    };
    d.expect(
        Method::PayInvoice,
        Ok(prescribed_payment(
            &invoice.payment_hash,
            PaymentDirection::Outbound,
            PaymentStatus::Succeeded,
            20_000,
        )),
    );
    let paid = c.pay_invoice(&request).await.expect("the payment is made");
    assert_eq!(paid.status, PaymentStatus::Succeeded, "{paid:?}");
    assert_eq!(paid.payment_hash, invoice.payment_hash);
    assert_eq!(paid.amount_msat, Some(20_000));
    assert!(
        paid.preimage.is_some(),
        "a succeeded payment has its preimage"
    );
    d.expect(Method::PayInvoice, refusal(ErrorCode::PaymentFailed));
    assert_eq!(
        code(c.pay_invoice(&request).await, "paying again"),
        ErrorCode::PaymentFailed
    );
}

/// See the [module docs](self).
pub async fn paying_an_invoice_in_flight_again_is_the_same_payment(d: &impl ContractDriver) {
    let c = d.client();
    let invoice = d.held_invoice(30_000).await;
    let request = PayInvoiceRequest {
        invoice: invoice.invoice.clone(),
        amount_msat: None,
        wait: false,
        timeout_secs: None,
    };
    let in_flight = prescribed_payment(
        &invoice.payment_hash,
        PaymentDirection::Outbound,
        PaymentStatus::Pending,
        30_000,
    );
    d.expect(Method::PayInvoice, Ok(in_flight.clone()));
    let first = c.pay_invoice(&request).await.expect("the payment starts");
    d.expect(Method::PayInvoice, Ok(in_flight));
    let again = c
        .pay_invoice(&request)
        .await
        .expect("a retry while in flight is not an error");
    assert_eq!(again.payment_id, first.payment_id, "one payment, not two");
    assert_ne!(again.status, PaymentStatus::Failed, "{again:?}");
    d.release(&invoice).await;
    d.expect(
        Method::PayInvoice,
        Ok(prescribed_payment(
            &invoice.payment_hash,
            PaymentDirection::Outbound,
            PaymentStatus::Succeeded,
            30_000,
        )),
    );
    let waited = c
        .pay_invoice(&PayInvoiceRequest {
            wait: true,
            timeout_secs: Some(60),
            ..request
        })
        .await
        .expect("waiting on the payment in flight");
    assert_eq!(waited.payment_id, first.payment_id);
    assert_eq!(waited.status, PaymentStatus::Succeeded, "{waited:?}");
}
