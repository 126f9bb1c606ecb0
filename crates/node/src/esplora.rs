//! Esplora as a second broadcast source: every transaction the node broadcasts through
//! bitcoind is also posted to Esplora's `POST /tx`, so a bitcoind that is behind, badly
//! connected or down does not keep a justice or sweep transaction off the network.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Transaction, Txid};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// The longest an Esplora post may take.
pub const ESPLORA_TIMEOUT: Duration = Duration::from_secs(10);

/// Why Esplora could not be used: its own errors, never reported as bitcoind's.
#[derive(Debug, thiserror::Error)]
pub enum EsploraError {
    /// The configured URL cannot be an Esplora endpoint.
    #[error("invalid Esplora URL {url}: {message}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Esplora could not be reached, or did not answer in time.
    #[error("cannot reach Esplora at {url}: {message}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What happened.
        message: String,
    },
    /// Esplora answered with an HTTP error: it refused the transaction.
    #[error("Esplora at {url} refused the transaction: HTTP {status}: {message}")]
    Refused {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Its answer.
        message: String,
    },
    /// Esplora's answer could not be understood.
    #[error("Esplora at {url} answered something unexpected: {message}")]
    Invalid {
        /// The endpoint.
        url: String,
        /// Its answer.
        message: String,
    },
}

/// An Esplora endpoint (`http://` or `https://`, e.g. `https://blockstream.info/api`).
pub struct Esplora {
    url: url::Url,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Esplora {
    /// Checks the URL; `https` uses the system's root certificates.
    pub fn new(url: &str) -> Result<Self, EsploraError> {
        let invalid = |message: String| EsploraError::InvalidUrl {
            url: url.to_owned(),
            message,
        };
        let parsed = url::Url::parse(url).map_err(|err| invalid(format!("not a URL: {err}")))?;
        if parsed.host_str().is_none() {
            return Err(invalid("no host".into()));
        }
        let tls = match parsed.scheme() {
            "http" => None,
            "https" => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|err| invalid(format!("TLS: {err}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
            }
            other => {
                return Err(invalid(format!(
                    "unsupported scheme {other:?} (use http or https)"
                )));
            }
        };
        Ok(Self { url: parsed, tls })
    }

    /// The endpoint, for logs.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Posts `tx`; Esplora answers with its txid.
    pub async fn broadcast(&self, tx: &Transaction) -> Result<Txid, EsploraError> {
        match tokio::time::timeout(ESPLORA_TIMEOUT, self.post_tx(serialize_hex(tx))).await {
            Ok(result) => result,
            Err(_) => Err(self.unreachable(format!("no answer within {ESPLORA_TIMEOUT:?}"))),
        }
    }

    fn unreachable(&self, message: String) -> EsploraError {
        EsploraError::Unreachable {
            url: self.url.to_string(),
            message,
        }
    }

    async fn post_tx(&self, body: String) -> Result<Txid, EsploraError> {
        let host = self.url.host_str().unwrap_or_default().to_owned();
        let port = self.url.port_or_known_default().unwrap_or(80);
        let path = format!("{}/tx", self.url.path().trim_end_matches('/'));
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|err| self.unreachable(err.to_string()))?;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| self.unreachable(err.to_string()))?;
        let response = match &self.tls {
            None => self.send(TokioIo::new(tcp), request).await?,
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|err| self.unreachable(format!("bad host name: {err}")))?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|err| self.unreachable(format!("TLS: {err}")))?;
                self.send(TokioIo::new(stream), request).await?
            }
        };
        let (status, text) = response;
        if !status.is_success() {
            return Err(EsploraError::Refused {
                url: self.url.to_string(),
                status: status.as_u16(),
                message: text,
            });
        }
        text.trim().parse().map_err(|_| EsploraError::Invalid {
            url: self.url.to_string(),
            message: text,
        })
    }

    async fn send<I>(
        &self,
        io: I,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, String), EsploraError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|err| self.unreachable(err.to_string()))?;
        tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| self.unreachable(err.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| self.unreachable(err.to_string()))?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    }
}
