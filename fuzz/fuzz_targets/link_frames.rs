//! A stream of bytes from the other end of the link: the length-prefixed codec, then each
//! frame's decoding. Errors are fine; panics and large allocations are not.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use phalanx_link::{Frame, LinkCodec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        // What decodes encodes back to the same bytes (postcard is canonical).
        assert_eq!(frame.encode(), data);
    }
    let mut codec = LinkCodec::default();
    let mut stream = BytesMut::from(data);
    while let Ok(Some(_)) = codec.decode(&mut stream) {}
    let _ = codec.decode_eof(&mut stream);
});
