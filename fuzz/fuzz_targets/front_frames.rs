//! What a front takes from the backend: frames decoded from bytes, then handled by the
//! front's state (events rebuilt for its PeerManager, sessions, ECDH answers). Errors are
//! fine; panics are not.

#![no_main]

use std::time::Duration;

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use libfuzzer_sys::fuzz_target;
use lightning::ln::msgs::BaseMessageHandler;
use phalanx_frontend::FrontState;
use phalanx_link::Frame;

fuzz_target!(|data: &[u8]| {
    let node_id = PublicKey::from_secret_key(
        &Secp256k1::signing_only(),
        &SecretKey::from_slice(&[1; 32]).expect("a key"),
    );
    let (state, _dials) = FrontState::new(node_id, Duration::from_millis(1));
    // Frames, each behind a 2-byte length.
    let mut rest = data;
    while rest.len() >= 2 {
        let length = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let bytes = &rest[2..2 + length];
        rest = &rest[2 + length..];
        if let Ok(frame) = Frame::decode(bytes) {
            let _ = state.on_frame(frame);
        }
    }
    let _ = state.get_and_clear_pending_msg_events();
});
