//! A `NodeSigner` without the node key, for a front's `PeerManager`.
//!
//! Of a `NodeSigner`, LDK 0.3's `PeerManager` calls only `get_node_id(Recipient::Node)`
//! (which must not fail: `PeerManager::new` expects it) and `ecdh(Recipient::Node, point,
//! None)` for the noise handshake, plus `sign_gossip_message` if asked to broadcast a node
//! announcement, which a front never is: the backend signs the node's announcements
//! (docs/fronts-ldk.md). So the node id is given, the ECDH is asked of an [`EcdhSource`]
//! (the backend, over the link; or, for a front given the key, [`NodeKey`]), and
//! everything else is refused.

use bitcoin::secp256k1::ecdh::SharedSecret;
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, Signature};
use bitcoin::secp256k1::{PublicKey, Scalar, schnorr};
use lightning::ln::inbound_payment::ExpandedKey;
use lightning::ln::msgs::UnsignedGossipMessage;
use lightning::offers::invoice::UnsignedBolt12Invoice;
use lightning::sign::{NodeSigner, PeerStorageKey, ReceiveAuthKey, Recipient};
use lightning_invoice::RawBolt11Invoice;

/// Why an [`EcdhSource`] gave no answer (the backend is unreachable, or refused).
#[derive(Debug, thiserror::Error)]
#[error("no ECDH for the handshake: {0}")]
pub struct EcdhUnavailable(pub String);

/// Where a keyless front gets the noise handshake's ECDH.
///
/// Contract: `ecdh(point)` returns exactly what the node's own signer would for
/// `NodeSigner::ecdh(Recipient::Node, point, None)` (SHA-256 of the node secret times
/// `point`), or an error if it cannot answer (the backend is unreachable, or refuses):
/// LDK then drops that one connection, nothing else. It is called synchronously from
/// inside `PeerManager::read_event` with that peer's lock held, so it must answer or fail
/// within a bounded time.
pub trait EcdhSource: Send + Sync {
    /// The shared secret of the node key with `point`.
    fn ecdh(&self, point: &PublicKey) -> Result<SharedSecret, EcdhUnavailable>;
}

impl<T: EcdhSource + ?Sized> EcdhSource for std::sync::Arc<T> {
    fn ecdh(&self, point: &PublicKey) -> Result<SharedSecret, EcdhUnavailable> {
        (**self).ecdh(point)
    }
}

/// A `NodeSigner` for a front: the node's id, ECDH from an [`EcdhSource`], no secret.
pub struct KeylessSigner<S> {
    node_id: PublicKey,
    source: S,
    /// The trait makes every signer return these keys, though `PeerManager` never asks
    /// for them: random for each front, so that nothing derived from them means anything
    /// (they are not the node's).
    unused_expanded_key: [u8; 32],
    unused_peer_storage_key: [u8; 32],
    unused_receive_auth_key: [u8; 32],
}

impl<S: EcdhSource> KeylessSigner<S> {
    /// A signer for the node `node_id`, asking `source` for the handshake's ECDH.
    pub fn new(node_id: PublicKey, source: S) -> Self {
        Self {
            node_id,
            source,
            unused_expanded_key: rand::random(),
            unused_peer_storage_key: rand::random(),
            unused_receive_auth_key: rand::random(),
        }
    }
}

impl<S: EcdhSource> NodeSigner for KeylessSigner<S> {
    fn get_expanded_key(&self) -> ExpandedKey {
        ExpandedKey::new(self.unused_expanded_key)
    }

    fn get_peer_storage_key(&self) -> PeerStorageKey {
        PeerStorageKey {
            inner: self.unused_peer_storage_key,
        }
    }

    fn get_receive_auth_key(&self) -> ReceiveAuthKey {
        ReceiveAuthKey(self.unused_receive_auth_key)
    }

    fn get_node_id(&self, recipient: Recipient) -> Result<PublicKey, ()> {
        match recipient {
            Recipient::Node => Ok(self.node_id),
            Recipient::PhantomNode => Err(()),
        }
    }

    fn ecdh(
        &self,
        recipient: Recipient,
        other_key: &PublicKey,
        tweak: Option<&Scalar>,
    ) -> Result<SharedSecret, ()> {
        // The handshake never tweaks; anything else is not the front's to answer.
        match (recipient, tweak) {
            // LDK drops the connection on an error; the source says why in its own logs.
            (Recipient::Node, None) => self.source.ecdh(other_key).map_err(|_| ()),
            _ => Err(()),
        }
    }

    fn sign_invoice(
        &self,
        _invoice: &RawBolt11Invoice,
        _recipient: Recipient,
    ) -> Result<RecoverableSignature, ()> {
        Err(())
    }

    fn sign_bolt12_invoice(
        &self,
        _invoice: &UnsignedBolt12Invoice,
    ) -> Result<schnorr::Signature, ()> {
        Err(())
    }

    fn sign_gossip_message(&self, _msg: UnsignedGossipMessage) -> Result<Signature, ()> {
        Err(())
    }

    fn sign_message(&self, _msg: &[u8]) -> Result<String, ()> {
        Err(())
    }
}

/// The node key, for a front that holds it (`[front] key_provider = "seed"`): the
/// handshake's ECDH is answered locally instead of over the link. Its `Debug` hides it;
/// it is erased when dropped.
pub struct NodeKey(bitcoin::secp256k1::SecretKey);

impl NodeKey {
    /// The key.
    pub fn new(secret: bitcoin::secp256k1::SecretKey) -> Self {
        Self(secret)
    }

    /// The node id it is the key of.
    pub fn node_id(&self) -> PublicKey {
        PublicKey::from_secret_key(&bitcoin::secp256k1::Secp256k1::signing_only(), &self.0)
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl Drop for NodeKey {
    fn drop(&mut self) {
        self.0.non_secure_erase();
    }
}

impl EcdhSource for NodeKey {
    fn ecdh(&self, point: &PublicKey) -> Result<SharedSecret, EcdhUnavailable> {
        Ok(SharedSecret::new(point, &self.0))
    }
}
