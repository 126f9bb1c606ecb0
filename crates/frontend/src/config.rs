//! A front's settings: a TOML file's `[front]` table, with each setting also a flag and a
//! `PHALANX_FRONT_*` variable that win over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phalanx_link::tls::LinkIdentity;
use serde::Deserialize;

use crate::front::FrontConfig;

/// A setting that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FrontConfigError {
    /// The setting, as in the file (`front.listen`).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn field(field: &'static str, message: impl Into<String>) -> FrontConfigError {
    FrontConfigError {
        field,
        message: message.into(),
    }
}

/// The front's settings, each optional until [`FrontLayer::resolve`].
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct FrontLayer {
    /// The front's name: its link certificate's, shown in the backend's logs and peers.
    #[arg(long = "name", env = "PHALANX_FRONT_NAME")]
    pub name: Option<String>,
    /// Where peers connect (host:port; default 0.0.0.0:9735). Behind a load balancer, its
    /// address is the one the node announces.
    #[arg(long = "listen", env = "PHALANX_FRONT_LISTEN")]
    pub listen: Option<String>,
    /// The link addresses of every backend instance (host:port, comma-separated): the
    /// front attaches to whichever is active.
    #[arg(
        long = "backends",
        env = "PHALANX_FRONT_BACKENDS",
        value_delimiter = ','
    )]
    pub backends: Option<Vec<String>>,
    /// The front's link certificate (PEM, from `phalanx link-certs`).
    #[arg(long = "certificate", env = "PHALANX_FRONT_CERTIFICATE")]
    pub certificate: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "key", env = "PHALANX_FRONT_KEY")]
    pub key: Option<PathBuf>,
    /// The link CA's certificate (PEM): backends with another CA's certificate are refused.
    #[arg(long = "ca", env = "PHALANX_FRONT_CA")]
    pub ca: Option<PathBuf>,
    /// Where the front serves `GET /v1/state` and `/metrics` (host:port; unset: nowhere).
    #[arg(long = "api-listen", env = "PHALANX_FRONT_API_LISTEN")]
    pub api_listen: Option<String>,
    /// How long a peer's handshake waits for the backend's ECDH (default 5000).
    #[arg(long = "ecdh-timeout-ms", env = "PHALANX_FRONT_ECDH_TIMEOUT_MS")]
    pub ecdh_timeout_ms: Option<u64>,
    /// What the node announces as its address through this front: the load balancer's
    /// (host:port, a name or an IP; unset: the front announces nothing).
    #[arg(long = "public-address", env = "PHALANX_FRONT_PUBLIC_ADDRESS")]
    pub public_address: Option<String>,
    /// Where the node key comes from: `none` (the default: the front holds no key and
    /// asks the backend) or `seed` (the front loads the node's seed as `phalanx node`
    /// does, from the `[seed]` table and `--seed-*` settings, and holds the key).
    #[arg(long = "key-provider", env = "PHALANX_FRONT_KEY_PROVIDER")]
    pub key_provider: Option<String>,
}

/// Where a front's node key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyProvider {
    /// No key: the backend answers the handshakes' ECDH over the link.
    None,
    /// The node's seed, from its seed provider: the front holds the key.
    Seed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontFile {
    #[serde(default)]
    front: FrontLayer,
    /// The node's `[seed]` table, for `key_provider = "seed"`: read by `phalanx front`
    /// with the node's own rules, so only allowed here.
    #[serde(default)]
    #[allow(dead_code)]
    seed: Option<toml::Table>,
}

/// A front's resolved settings.
#[derive(Debug)]
pub struct FrontSettings {
    /// The front itself.
    pub front: FrontConfig,
    /// Where its state and metrics are served, if anywhere.
    pub api_listen: Option<SocketAddr>,
    /// Where its node key comes from (the caller loads it into `front.node_key`).
    pub key_provider: KeyProvider,
}

impl FrontLayer {
    /// The `[front]` table of the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, FrontConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| field("config", format!("{}: {err}", path.display())))?;
        Self::from_toml(&text)
    }

    /// The `[front]` table of `text`.
    pub fn from_toml(text: &str) -> Result<Self, FrontConfigError> {
        toml::from_str::<FrontFile>(text)
            .map(|file| file.front)
            .map_err(|err| field("config", err.to_string().trim().to_owned()))
    }

    /// These settings, with `base`'s where these have none.
    pub fn over(self, base: FrontLayer) -> FrontLayer {
        FrontLayer {
            name: self.name.or(base.name),
            listen: self.listen.or(base.listen),
            backends: self.backends.or(base.backends),
            certificate: self.certificate.or(base.certificate),
            key: self.key.or(base.key),
            ca: self.ca.or(base.ca),
            api_listen: self.api_listen.or(base.api_listen),
            ecdh_timeout_ms: self.ecdh_timeout_ms.or(base.ecdh_timeout_ms),
            key_provider: self.key_provider.or(base.key_provider),
            public_address: self.public_address.or(base.public_address),
        }
    }

    /// Checks every setting and reads the link's certificates.
    pub fn resolve(self) -> Result<FrontSettings, FrontConfigError> {
        let name = self
            .name
            .filter(|name| !name.trim().is_empty())
            .ok_or_else(|| field("front.name", "is needed"))?;
        let address = |name: &'static str, text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|_| field(name, format!("{text:?} is not an address (host:port)")))
        };
        let listen = address(
            "front.listen",
            self.listen.as_deref().unwrap_or("0.0.0.0:9735"),
        )?;
        let backends = self
            .backends
            .unwrap_or_default()
            .iter()
            .map(|text| address("front.backends", text.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if backends.is_empty() {
            return Err(field("front.backends", "at least one backend is needed"));
        }
        let api_listen = self
            .api_listen
            .as_deref()
            .map(|text| address("front.api_listen", text))
            .transpose()?;
        let ecdh_timeout_ms = self.ecdh_timeout_ms.unwrap_or(5000);
        if !(100..=60_000).contains(&ecdh_timeout_ms) {
            return Err(field(
                "front.ecdh_timeout_ms",
                format!("{ecdh_timeout_ms} is not between 100 and 60000"),
            ));
        }
        let public_address = self
            .public_address
            .map(|text| {
                text.parse::<lightning::ln::msgs::SocketAddress>()
                    .map(|_| text.clone())
                    .map_err(|_| {
                        field(
                            "front.public_address",
                            format!("{text:?} is not an address a node can announce (host:port)"),
                        )
                    })
            })
            .transpose()?;
        let key_provider = match self.key_provider.as_deref().unwrap_or("none") {
            "none" => KeyProvider::None,
            "seed" => KeyProvider::Seed,
            other => {
                return Err(field(
                    "front.key_provider",
                    format!("{other:?} is not a key provider (none or seed)"),
                ));
            }
        };
        let read = |name: &'static str, path: Option<PathBuf>| {
            let path = path.ok_or_else(|| field(name, "is needed"))?;
            std::fs::read_to_string(&path)
                .map(zeroize::Zeroizing::new)
                .map_err(|err| field(name, format!("{}: {err}", path.display())))
        };
        let certificate = read("front.certificate", self.certificate)?;
        let key = read("front.key", self.key)?;
        let ca = read("front.ca", self.ca)?;
        let identity = LinkIdentity::from_pem(&certificate, &key, &ca)
            .map_err(|err| field("front.certificate", err.to_string()))?;
        Ok(FrontSettings {
            front: FrontConfig {
                name,
                listen,
                backends,
                identity,
                ecdh_timeout: Duration::from_millis(ecdh_timeout_ms),
                node_key: None,
                public_address,
            },
            api_listen,
            key_provider,
        })
    }
}
