//! The Phalanx node's REST API, independent of LDK.
//!
//! - [`NodeControl`]: what the API asks of the node, with its contract. The node
//!   implements it; this crate has no LDK types, only strings, hex and integers.
//! - [`router`] / [`serve`]: the axum server. Every route but `GET /v1/state` needs
//!   `Authorization: Bearer <token>` (see [`load_or_create_token`]); every one but
//!   that probe answers `503 not_active` unless the instance is `SERVER_ACTIVE`, so a
//!   standby never serves.
//! - [`ApiClient`]: the client `phalanx ctl` uses.
//! - [`types`]: the JSON bodies; [`ApiError`] / [`ErrorCode`]: the errors, each code
//!   with its HTTP status, all as `{"error":{"code":"...","message":"..."}}`.
//!
//! With the `test-utils` feature, for tests:
//! - [`stub::StubNode`]: a scripted `NodeControl` with no behaviour of its own. A test
//!   queues the answer of each call and reads back the arguments each call received,
//!   so tests of the server, the client and `phalanx ctl` check what those carry.
//! - [`contract`]: the `NodeControl` contract as a suite of cases, run against the stub
//!   (the server and the client carry each prescribed answer) and against the real node
//!   (the node gives it).

#![warn(missing_docs)]

mod client;
#[cfg(feature = "test-utils")]
pub mod contract;
mod control;
mod error;
mod server;
#[cfg(feature = "test-utils")]
pub mod stub;
mod token;
pub mod types;
pub mod validate;

pub use client::{ApiClient, ClientError, DEFAULT_REQUEST_TIMEOUT_SECS};
pub use control::NodeControl;
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use server::{MAX_REQUEST_BODY_BYTES, router, serve};
pub use token::{
    AcceptedTokens, ApiToken, ApiTokens, MAX_TOKENS, TOKEN_BYTES, TokenError, TokenLoadError,
    fetch_tokens, load_or_create_token, read_token, reload_tokens,
};
pub use types::*;
