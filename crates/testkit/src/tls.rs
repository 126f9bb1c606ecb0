//! A throwaway certificate authority with a server and a client certificate, for TLS tests.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// The files a TLS server needs.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server certificate, PEM.
    pub cert_pem: String,
    /// The server's private key, PEM.
    pub key_pem: String,
    /// The CA that signs client certificates, PEM.
    pub ca_pem: String,
}

impl ServerTls {
    /// Writes `server.crt`, `server.key` (mode 0600) and `root.crt` into `dir`.
    pub fn write_server_files(&self, dir: &Path) -> anyhow::Result<()> {
        fs::write(dir.join("server.crt"), &self.cert_pem)?;
        let key = dir.join("server.key");
        fs::write(&key, &self.key_pem)?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        fs::write(dir.join("root.crt"), &self.ca_pem)?;
        Ok(())
    }
}

/// A CA, a server certificate for `localhost` and `127.0.0.1`, and a client certificate,
/// written as PEM files into a scratch directory.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
    server: ServerTls,
}

impl TestPki {
    /// Generates a new CA and its certificates; `client_name` is the client certificate's
    /// common name (etcd maps it to a user when client-certificate auth is on).
    pub fn generate(client_name: &str) -> anyhow::Result<Self> {
        let dir = crate::process::scratch_dir("pki")?;

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "phalanx test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &ca)?;

        let mut client_params = CertificateParams::new(Vec::<String>::new())?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, client_name);
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client_cert = client_params.signed_by(&client_key, &ca)?;

        let server = ServerTls {
            cert_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
            ca_pem: ca.pem(),
        };
        fs::write(dir.join("ca.crt"), &server.ca_pem)?;
        server.write_server_files(&dir)?;
        fs::write(dir.join("client.crt"), client_cert.pem())?;
        let client_key_path = dir.join("client.key");
        fs::write(&client_key_path, client_key.serialize_pem())?;
        fs::set_permissions(&client_key_path, fs::Permissions::from_mode(0o600))
            .context("chmod client key")?;
        Ok(Self { dir, server })
    }

    /// The server side.
    pub fn server(&self) -> &ServerTls {
        &self.server
    }

    /// Path of the CA certificate (PEM).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Path of the server certificate (PEM).
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// Path of the server key (PEM).
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// Path of the client certificate (PEM).
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.join("client.crt")
    }

    /// Path of the client key (PEM).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
