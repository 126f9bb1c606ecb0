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
//! With the `test-utils` feature, [`fake::FakeNode`] is an in-memory `NodeControl` for
//! tests.

#![warn(missing_docs)]

mod client;
mod control;
mod error;
#[cfg(feature = "test-utils")]
pub mod fake;
mod server;
mod token;
pub mod types;
pub mod validate;

pub use client::{ApiClient, ClientError, DEFAULT_REQUEST_TIMEOUT_SECS};
pub use control::NodeControl;
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use server::{MAX_REQUEST_BODY_BYTES, router, serve};
pub use token::{ApiToken, TOKEN_BYTES, TokenError, load_or_create_token, read_token};
pub use types::*;
