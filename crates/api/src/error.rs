//! The API's errors: a stable code, the HTTP status it maps to, a clear message.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::ServerState;

/// What went wrong, as a stable `snake_case` code; each maps to one HTTP status.
///
/// | code                  | status | meaning |
/// |-----------------------|--------|---------|
/// | `unauthorized`        | 401 | no `Authorization: Bearer` token, or the wrong one |
/// | `invalid_request`     | 400 | malformed JSON, missing or unknown fields, wrong content type, bad hex or node id, out-of-range values |
/// | `invalid_invoice`     | 400 | the invoice does not parse, is for another network, or is expired |
/// | `invalid_offer`       | 400 | the BOLT 12 offer does not parse, is for another chain or currency, or is expired |
/// | `invalid_address`     | 400 | the on-chain address does not parse or is for another network |
/// | `insufficient_funds`  | 400 | not enough on-chain funds or channel liquidity |
/// | `not_found`           | 404 | no such route |
/// | `unknown_peer`        | 404 | no connected peer with that node id |
/// | `unknown_channel`     | 404 | no channel with that id |
/// | `unknown_payment`     | 404 | no payment with that hash |
/// | `method_not_allowed`  | 405 | the route exists, not with this method |
/// | `payment_failed`      | 409 | the payment cannot be made in the node's current state and nothing was sent: the invoice is already paid, or the node refused to start it (no route, no usable channel). A payment that was sent and then failed is not an error: the route answers 200 with the payment's `status` `failed` and its `failure_reason` |
/// | `internal`            | 500 | a bug or an unexpected failure; the node's log has the details |
/// | `peer_unreachable`    | 502 | the peer could not be connected to |
/// | `not_active`          | 503 | this instance does not serve (a standby, or starting); the body's `state` says which |
/// | `store_unavailable`   | 503 | the state store cannot be reached; retry |
/// | `chain_unavailable`   | 503 | the chain source cannot be reached; retry |
///
/// Clients must accept codes they do not know: they read as [`ErrorCode::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 401.
    Unauthorized,
    /// 400.
    InvalidRequest,
    /// 400.
    InvalidInvoice,
    /// 400.
    InvalidOffer,
    /// 400.
    InvalidAddress,
    /// 400.
    InsufficientFunds,
    /// 404.
    NotFound,
    /// 404.
    UnknownPeer,
    /// 404.
    UnknownChannel,
    /// 404.
    UnknownPayment,
    /// 405.
    MethodNotAllowed,
    /// 409.
    PaymentFailed,
    /// 500.
    Internal,
    /// 502.
    PeerUnreachable,
    /// 503.
    NotActive,
    /// 503.
    StoreUnavailable,
    /// 503.
    ChainUnavailable,
    /// A code this client does not know (a newer server); never sent by this one. 500.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code a server sends (not [`ErrorCode::Unknown`]).
    pub const ALL: [ErrorCode; 17] = [
        Self::Unauthorized,
        Self::InvalidRequest,
        Self::InvalidInvoice,
        Self::InvalidOffer,
        Self::InvalidAddress,
        Self::InsufficientFunds,
        Self::NotFound,
        Self::UnknownPeer,
        Self::UnknownChannel,
        Self::UnknownPayment,
        Self::MethodNotAllowed,
        Self::PaymentFailed,
        Self::Internal,
        Self::PeerUnreachable,
        Self::NotActive,
        Self::StoreUnavailable,
        Self::ChainUnavailable,
    ];

    /// The HTTP status it maps to (see the table in the type's docs).
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::InvalidRequest
            | Self::InvalidInvoice
            | Self::InvalidOffer
            | Self::InvalidAddress
            | Self::InsufficientFunds => 400,
            Self::NotFound | Self::UnknownPeer | Self::UnknownChannel | Self::UnknownPayment => 404,
            Self::MethodNotAllowed => 405,
            Self::PaymentFailed => 409,
            Self::Internal | Self::Unknown => 500,
            Self::PeerUnreachable => 502,
            Self::NotActive | Self::StoreUnavailable | Self::ChainUnavailable => 503,
        }
    }

    /// Whether the same request may succeed later without change: the node was not
    /// active, a dependency was down, the peer unreachable.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::NotActive
                | Self::StoreUnavailable
                | Self::ChainUnavailable
                | Self::PeerUnreachable
        )
    }

    /// The wire name (`"invalid_request"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidInvoice => "invalid_invoice",
            Self::InvalidOffer => "invalid_offer",
            Self::InvalidAddress => "invalid_address",
            Self::InsufficientFunds => "insufficient_funds",
            Self::NotFound => "not_found",
            Self::UnknownPeer => "unknown_peer",
            Self::UnknownChannel => "unknown_channel",
            Self::UnknownPayment => "unknown_payment",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PaymentFailed => "payment_failed",
            Self::Internal => "internal",
            Self::PeerUnreachable => "peer_unreachable",
            Self::NotActive => "not_active",
            Self::StoreUnavailable => "store_unavailable",
            Self::ChainUnavailable => "chain_unavailable",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error the API answers with: on the wire
/// `{"error":{"code":"unknown_channel","message":"no channel 00ab…"}}`.
///
/// The message is for people (operators, logs); programs act on the code. It must not
/// contain secrets (preimages, the API token, seed material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// What went wrong.
    pub code: ErrorCode,
    /// A clear message.
    pub message: String,
    /// With `not_active`: the instance's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServerState>,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            state: None,
        }
    }

    /// `invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// `not_active`, in `state`.
    pub fn not_active(state: ServerState) -> Self {
        Self {
            code: ErrorCode::NotActive,
            message: format!(
                "this instance is {state}, not SERVER_ACTIVE: it does not serve; ask the active instance"
            ),
            state: Some(state),
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"from_the_future\"").unwrap(),
            ErrorCode::Unknown
        );
    }

    #[test]
    fn the_state_appears_only_when_set() {
        let body = ErrorBody {
            error: ApiError::invalid_request("x"),
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error": {"code": "invalid_request", "message": "x"}})
        );
        let body = ErrorBody {
            error: ApiError::not_active(ServerState::WaitingToStart),
        };
        let value = serde_json::to_value(&body).unwrap();
        assert_eq!(value["error"]["state"], "WAITING_TO_START");
        assert_eq!(value["error"]["code"], "not_active");
    }
}
