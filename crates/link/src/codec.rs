//! Frames on a byte stream: a 4-byte big-endian length, then the frame.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::{Frame, LinkError};

/// The longest frame: a Lightning message is at most 65,535 bytes, so this leaves room
/// for batches to come without letting a broken peer make the other end allocate much.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// A `tokio_util` codec of [`Frame`]s (use it with `Framed` on the TLS stream).
#[derive(Debug)]
pub struct LinkCodec {
    lengths: LengthDelimitedCodec,
}

impl Default for LinkCodec {
    fn default() -> Self {
        Self {
            lengths: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .max_frame_length(MAX_FRAME_BYTES)
                .new_codec(),
        }
    }
}

impl Decoder for LinkCodec {
    type Item = Frame;
    type Error = LinkError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, LinkError> {
        // `LengthDelimitedCodec` refuses a frame over the limit as soon as it has read its
        // length, before buffering any of it, with `InvalidData` (its only error).
        match self.lengths.decode(src) {
            Ok(Some(bytes)) => Frame::decode(&bytes).map(Some),
            Ok(None) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => Err(LinkError::TooLarge {
                max: MAX_FRAME_BYTES,
            }),
            Err(err) => Err(LinkError::Io(err)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, LinkError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(LinkError::Malformed(format!(
                "the link closed in the middle of a frame ({} bytes of it)",
                src.len()
            ))),
        }
    }
}

impl Encoder<Frame> for LinkCodec {
    type Error = LinkError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), LinkError> {
        let bytes = frame.encode();
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(LinkError::TooLarge {
                max: MAX_FRAME_BYTES,
            });
        }
        self.lengths.encode(Bytes::from(bytes), dst)?;
        Ok(())
    }
}

/// Writes the frames queued for one end of a link to its `sink` until the queue closes
/// or a write fails. Each write takes every frame queued by then and flushes once: a
/// burst (a gossip flood's funding checks, a graph handed over) costs one system call
/// per batch instead of one per frame, and a lone frame leaves at once.
pub async fn write_queued_frames<S>(
    mut sink: S,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Frame>,
) where
    S: futures::Sink<Frame, Error = LinkError> + Unpin,
{
    use futures::SinkExt;
    while let Some(frame) = queue.recv().await {
        if sink.feed(frame).await.is_err() {
            return;
        }
        while let Ok(frame) = queue.try_recv() {
            if sink.feed(frame).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
