//! What can go wrong on the link.

/// A link error. [`is_transient`](Self::is_transient) tells a broken connection (dial
/// again) from a peer that speaks something else (dialling again will not help).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The connection failed or closed.
    #[error("link I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A frame longer than the link allows; a received one is refused from its length
    /// alone, before any of it is buffered.
    #[error("a link frame over the limit of {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// A frame that does not decode.
    #[error("malformed link frame: {0}")]
    Malformed(String),
    /// The other end speaks another version of the link.
    #[error("the other end speaks link version {theirs}, this one {ours}")]
    Version {
        /// Ours.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// A certificate, key or TLS setting that cannot be used.
    #[error("link configuration: {0}")]
    Config(String),
    /// The other end broke the link's protocol (a frame out of place).
    #[error("link protocol: {0}")]
    Protocol(String),
}

impl LinkError {
    /// Whether trying again (a new connection) may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, LinkError::Io(_))
    }
}
