//! The link's own certificate authority: one per cluster, made by `phalanx link-certs`.
//!
//! Every backend and front gets a certificate from it; each end of the link requires
//! the other's to chain to it (mutual TLS), so a process with a certificate of another
//! authority, or none, cannot join the link. A certificate names its role as its DNS
//! name ([`server_name`]): a front dials `backend.phalanx-link` whatever address it dials,
//! so a front's certificate cannot pose as a backend.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use zeroize::Zeroizing;

use crate::{LinkError, Role};

/// The DNS name in the certificates of `role`, which the other end checks.
pub fn server_name(role: Role) -> &'static str {
    match role {
        Role::Backend => "backend.phalanx-link",
        Role::Front => "front.phalanx-link",
    }
}

/// A certificate and its private key, PEM.
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (secret: written with mode 0600, never logged).
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// A new certificate authority for one cluster's link.
pub struct LinkCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn pki_error(what: &str, err: rcgen::Error) -> LinkError {
    LinkError::Config(format!("{what}: {err}"))
}

impl LinkCa {
    /// Makes a new authority named after `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, LinkError> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| pki_error("CA parameters", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("phalanx link CA of {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let key = KeyPair::generate().map_err(|e| pki_error("CA key", e))?;
        let issuer = CertifiedIssuer::self_signed(params, key)
            .map_err(|e| pki_error("CA certificate", e))?;
        Ok(Self { issuer })
    }

    /// The authority's certificate, PEM (every end of the link needs it).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The authority's private key, PEM: keep it offline; only new certificates need it.
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.issuer.key().serialize_pem())
    }

    /// A certificate for the process `name` acting as `role`, ready to use: what a
    /// process loads from the files `phalanx link-certs` writes (tests, benchmarks).
    pub fn identity(&self, role: Role, name: &str) -> Result<crate::tls::LinkIdentity, LinkError> {
        let issued = self.issue(role, name)?;
        crate::tls::LinkIdentity::from_pem(&issued.cert_pem, &issued.key_pem, &self.cert_pem())
    }

    /// A certificate for the process `name` acting as `role`.
    pub fn issue(&self, role: Role, name: &str) -> Result<IssuedCert, LinkError> {
        let mut params = CertificateParams::new(vec![server_name(role).to_owned()])
            .map_err(|e| pki_error("certificate parameters", e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        // Each end is a TLS server to some and a client to others (a front dials the
        // backends; a backend may dial fronts), so both usages.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(|e| pki_error("key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| pki_error("certificate", e))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}
