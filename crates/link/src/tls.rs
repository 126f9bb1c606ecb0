//! Mutual TLS for the link (rustls, TLS 1.3 only): both ends present a certificate of the
//! cluster's link CA and refuse any other.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{LinkError, Role, pki};

/// One end's certificate and key, and the CA it trusts.
pub struct LinkIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for LinkIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl LinkIdentity {
    /// From PEM text: this end's certificate, its key, the cluster's link CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, LinkError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LinkError::Config(format!("the link certificate: {e}")))?;
        if chain.is_empty() {
            return Err(LinkError::Config(
                "the link certificate file holds no certificate".into(),
            ));
        }
        // The key's own error could quote it: say only what is wrong.
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
            LinkError::Config("the link key file holds no valid private key".into())
        })?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| LinkError::Config(format!("the link CA: {e}")))?;
            roots
                .add(ca)
                .map_err(|e| LinkError::Config(format!("the link CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(LinkError::Config(
                "the link CA file holds no certificate".into(),
            ));
        }
        Ok(Self {
            chain,
            key,
            roots: Arc::new(roots),
        })
    }

    /// The TLS server side: asks every client for a certificate of the link CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, LinkError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| LinkError::Config(format!("the link's client verifier: {e}")))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Config(format!("TLS: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| LinkError::Config(format!("the link certificate and key: {e}")))?;
        Ok(Arc::new(config))
    }

    /// The TLS client side: presents this end's certificate and trusts only the link CA.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, LinkError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Config(format!("TLS: {e}")))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| LinkError::Config(format!("the link certificate and key: {e}")))?;
        Ok(Arc::new(config))
    }
}

/// The name a client checks in the certificate of the `role` it dials.
pub fn expected_name(role: Role) -> ServerName<'static> {
    ServerName::try_from(pki::server_name(role)).expect("a valid DNS name")
}
