//! The node's configuration: a TOML file, every option also a flag and an environment
//! variable (flags and variables win over the file), checked into a [`NodeConfig`] with
//! one clear error naming the field when something is wrong.
//!
//! ```toml
//! network = "regtest"                  # regtest | signet | testnet | mainnet (required)
//! data_dir = "/var/lib/phalanx"        # default ./phalanx-data
//!
//! [store]
//! url = "sqlite:///var/lib/phalanx/node.db"   # default sqlite://<data_dir>/node.db
//! cluster = "default"
//! instance_id = "host-a"                      # default: the host name
//!
//! [cluster]
//! enabled = false          # true: wait as a standby while another instance leads;
//!                          # false: refuse to start then (one instance only)
//! lease_ttl_ms = 4000      # the lease lapses this long after the last renewal
//! lease_renew_interval_ms = 500
//! lease_safety_margin_ms = 1000   # the holder stops this long before the TTL
//!
//! [chain]
//! rpc_url = "http://user:pass@127.0.0.1:18443" # bitcoind RPC (required)
//! rest_url = "http://127.0.0.1:18443/rest"     # optional: follow blocks over REST
//! esplora_url = "https://esplora.example/api"  # optional second source (broadcasts)
//! poll_interval_ms = 1000
//!
//! [lightning]
//! listen = ["0.0.0.0:9735"]
//! alias = "my-node"
//! forward_delay_ms = 0                         # 0: HTLCs at once; >0: batch (privacy)
//!
//! [api]
//! listen = "127.0.0.1:8080"
//! token_file = "/var/lib/phalanx/api-token"    # default <data_dir>/api-token
//! # token_secret = "aws-secrets-manager:phalanx/api-token"  # instead of the file
//! token_reload_interval_ms = 10000             # a rotated token is read this often
//!
//! [seed]
//! provider = "file"            # file | env | encrypted-file | aws-secrets-manager
//! file = "/var/lib/phalanx/seed"               # default <data_dir>/seed
//! # expected_node_id = "02ab..."               # checked before the store is opened
//! ```
//!
//! Secrets other than the seed are named by references (`file:PATH`, `env:NAME`,
//! `aws-secrets-manager:ID`), never written in the file: `[api] token_secret`,
//! `[store] password_secret`. `Debug` of every type here hides passwords.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::Network;
use phalanx_cluster::LeaseTimings;
use phalanx_secrets::SecretRef;
use phalanx_store::{ClusterName, HolderId};
use serde::Deserialize;

mod secrets;
pub use secrets::{AwsConfig, SeedConfig, SeedLayer, SeedSource};

/// A configuration error, naming the field (`chain.rpc_url`) or the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A field is missing or wrong.
    #[error("{field}: {message}")]
    Field {
        /// The field, as `section.name`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn field(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        message: message.into(),
    }
}

/// One layer of settings: the file's, or the flags' and environment's. Every field is
/// optional; [`ConfigLayer::resolve`] merges layers and applies defaults.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// Bitcoin network: regtest, signet, testnet or mainnet.
    #[arg(long, env = "PHALANX_NETWORK")]
    pub network: Option<String>,
    /// Directory for the seed file, the API token and the default SQLite store.
    #[arg(long, env = "PHALANX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// State store settings.
    #[command(flatten)]
    #[serde(default)]
    pub store: StoreLayer,
    /// Chain source settings.
    #[command(flatten)]
    #[serde(default)]
    pub chain: ChainLayer,
    /// Lightning settings.
    #[command(flatten)]
    #[serde(default)]
    pub lightning: LightningLayer,
    /// API settings.
    #[command(flatten)]
    #[serde(default)]
    pub api: ApiLayer,
    /// Seed settings.
    #[command(flatten)]
    #[serde(default)]
    pub seed: SeedLayer,
    /// Cluster settings.
    #[command(flatten)]
    #[serde(default)]
    pub cluster: ClusterLayer,
    /// Backup settings.
    #[command(flatten)]
    #[serde(default)]
    pub backup: BackupLayer,
    /// The link to front servers.
    #[command(flatten)]
    #[serde(default)]
    pub link: LinkLayer,
}

/// `[link]`: where front servers connect to the node (mutual TLS, certificates from
/// `phalanx link-certs`).
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LinkLayer {
    /// Where fronts connect (host:port); unset, the node serves no fronts.
    #[arg(long = "link-listen", env = "PHALANX_LINK_LISTEN")]
    #[serde(rename = "listen")]
    pub link_listen: Option<String>,
    /// This instance's link certificate (PEM).
    #[arg(long = "link-certificate", env = "PHALANX_LINK_CERTIFICATE")]
    #[serde(rename = "certificate")]
    pub link_certificate: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "link-key", env = "PHALANX_LINK_KEY")]
    #[serde(rename = "key")]
    pub link_key: Option<PathBuf>,
    /// The link CA's certificate (PEM): fronts with a certificate of another CA are refused.
    #[arg(long = "link-ca", env = "PHALANX_LINK_CA")]
    #[serde(rename = "ca")]
    pub link_ca: Option<PathBuf>,
}

/// `[backup]`.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackupLayer {
    /// The synchronous backup stream: every commit is also appended, encrypted and
    /// fsynced, to a log in this directory (file:///path) before it is acknowledged; a
    /// stream that cannot be written stops the node, as a failed store write does.
    #[arg(long = "backup-url", env = "PHALANX_BACKUP_URL")]
    #[serde(rename = "url")]
    pub backup_url: Option<String>,
    /// What a backup stream that cannot be written does: "stop" (the default: the
    /// write fails and the node stops, so the backup is never behind) or "alert"
    /// (UNSAFE: the write goes on, the failure is logged as an error, and the stream
    /// starts again from the whole state when it can; meanwhile the backup is behind).
    #[arg(long = "backup-on-failure", env = "PHALANX_BACKUP_ON_FAILURE")]
    #[serde(rename = "on_failure")]
    pub backup_on_failure: Option<String>,
    /// Compact the stream into a checkpoint each time its open segment passes this
    /// many MiB (default 64).
    #[arg(
        long = "backup-compact-after-mb",
        env = "PHALANX_BACKUP_COMPACT_AFTER_MB"
    )]
    #[serde(rename = "compact_after_mb")]
    pub backup_compact_after_mb: Option<u64>,
}

/// `[cluster]`.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ClusterLayer {
    /// Run as one instance of a cluster: wait as a standby while another instance
    /// leads. Without it, an instance refuses to start while another one leads.
    #[arg(
        long = "cluster-enabled",
        env = "PHALANX_CLUSTER_ENABLED",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    #[serde(rename = "enabled")]
    pub cluster_enabled: Option<bool>,
    /// How long the lease lasts after each renewal, by the store's clock (ms). A dead
    /// instance's lease lapses after this (at once on PostgreSQL); shorter is a faster
    /// failover on etcd and less tolerance of a slow store.
    #[arg(long = "lease-ttl-ms", env = "PHALANX_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<u64>,
    /// Time between lease renewals (ms).
    #[arg(
        long = "lease-renew-interval-ms",
        env = "PHALANX_LEASE_RENEW_INTERVAL_MS"
    )]
    pub lease_renew_interval_ms: Option<u64>,
    /// How long before the lease's TTL the holder stops acting if it could not renew
    /// (ms); covers clock-rate differences and scheduling delays.
    #[arg(
        long = "lease-safety-margin-ms",
        env = "PHALANX_LEASE_SAFETY_MARGIN_MS"
    )]
    pub lease_safety_margin_ms: Option<u64>,
}

impl ClusterLayer {
    /// The lease timings: the defaults, overridden by what is set, checked together.
    fn lease_timings(&self) -> Result<LeaseTimings, ConfigError> {
        let mut timings = LeaseTimings::default();
        let ms = Duration::from_millis;
        if let Some(value) = self.lease_ttl_ms {
            timings.ttl = ms(value);
        }
        if let Some(value) = self.lease_renew_interval_ms {
            timings.renew_interval = ms(value);
        }
        if let Some(value) = self.lease_safety_margin_ms {
            timings.safety_margin = ms(value);
        }
        timings.validate().map_err(|err| {
            let message = match err {
                phalanx_store::StoreError::Config(message) => message,
                other => other.to_string(),
            };
            field("cluster.lease_ttl_ms", message)
        })?;
        Ok(timings)
    }
}

/// `[store]`.
#[derive(Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct StoreLayer {
    /// State store URL (sqlite://, postgres://, etcd://).
    #[arg(long = "store-url", env = "PHALANX_STORE_URL", hide_env_values = true)]
    #[serde(rename = "url")]
    pub store_url: Option<String>,
    /// Cluster name: the node's keys and lease in the store.
    #[arg(long = "cluster", env = "PHALANX_CLUSTER")]
    #[serde(rename = "cluster")]
    pub store_cluster: Option<String>,
    /// This instance's id (default: the host name).
    #[arg(long = "instance-id", env = "PHALANX_INSTANCE_ID")]
    #[serde(rename = "instance_id")]
    pub store_instance_id: Option<String>,
    /// Where the store's password is, instead of in the URL: file:PATH, env:NAME or
    /// aws-secrets-manager:ID (PostgreSQL and etcd URLs with a user name).
    #[arg(long = "store-password-secret", env = "PHALANX_STORE_PASSWORD_SECRET")]
    #[serde(rename = "password_secret")]
    pub store_password_secret: Option<String>,
}

impl fmt::Debug for StoreLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreLayer")
            .field("store_url", &self.store_url.as_deref().map(redact_url))
            .field("store_cluster", &self.store_cluster)
            .field("store_instance_id", &self.store_instance_id)
            .field("store_password_secret", &self.store_password_secret)
            .finish()
    }
}

/// `[chain]`.
#[derive(Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ChainLayer {
    /// bitcoind JSON-RPC URL, credentials in the URL or in the next two options.
    #[arg(
        long = "chain-rpc-url",
        env = "PHALANX_CHAIN_RPC_URL",
        hide_env_values = true
    )]
    #[serde(rename = "rpc_url")]
    pub chain_rpc_url: Option<String>,
    /// bitcoind RPC user.
    #[arg(long = "chain-rpc-user", env = "PHALANX_CHAIN_RPC_USER")]
    #[serde(rename = "rpc_user")]
    pub chain_rpc_user: Option<String>,
    /// bitcoind RPC password.
    #[arg(
        long = "chain-rpc-password",
        env = "PHALANX_CHAIN_RPC_PASSWORD",
        hide_env_values = true
    )]
    #[serde(rename = "rpc_password")]
    pub chain_rpc_password: Option<String>,
    /// bitcoind REST URL (`http://host:port/rest`): follow blocks over REST.
    #[arg(long = "chain-rest-url", env = "PHALANX_CHAIN_REST_URL")]
    #[serde(rename = "rest_url")]
    pub chain_rest_url: Option<String>,
    /// Esplora API URL, a second source for broadcasting.
    #[arg(long = "chain-esplora-url", env = "PHALANX_CHAIN_ESPLORA_URL")]
    #[serde(rename = "esplora_url")]
    pub chain_esplora_url: Option<String>,
    /// How often to poll the chain for a new tip, in milliseconds.
    #[arg(
        long = "chain-poll-interval-ms",
        env = "PHALANX_CHAIN_POLL_INTERVAL_MS"
    )]
    #[serde(rename = "poll_interval_ms")]
    pub chain_poll_interval_ms: Option<u64>,
}

impl fmt::Debug for ChainLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainLayer")
            .field(
                "chain_rpc_url",
                &self.chain_rpc_url.as_deref().map(redact_url),
            )
            .field("chain_rpc_user", &self.chain_rpc_user)
            .field(
                "chain_rpc_password",
                &self.chain_rpc_password.as_ref().map(|_| REDACTED),
            )
            .field(
                "chain_rest_url",
                &self.chain_rest_url.as_deref().map(redact_url),
            )
            .field(
                "chain_esplora_url",
                &self.chain_esplora_url.as_deref().map(redact_url),
            )
            .field("chain_poll_interval_ms", &self.chain_poll_interval_ms)
            .finish()
    }
}

/// What `Debug` shows instead of a password.
const REDACTED: &str = "<redacted>";

/// `text` with the password of its user info, if any, replaced by [`REDACTED`]; text
/// that is not a URL is hidden whole (it may be a password pasted in the wrong place).
fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some(REDACTED));
            }
            url.to_string()
        }
        Err(_) => REDACTED.to_owned(),
    }
}

/// `[lightning]`.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LightningLayer {
    /// Addresses to accept peer connections on (repeat or comma-separate).
    #[arg(long = "listen", env = "PHALANX_LISTEN", value_delimiter = ',')]
    #[serde(rename = "listen")]
    pub lightning_listen: Option<Vec<String>>,
    /// Node alias for gossip.
    #[arg(long = "alias", env = "PHALANX_ALIAS")]
    #[serde(rename = "alias")]
    pub lightning_alias: Option<String>,
    /// Longest wait before received HTLCs are processed, in milliseconds. 0 (the default)
    /// processes them as soon as they are irrevocably committed, for latency; a larger
    /// value batches forwards, which hides timing from observers (LDK also batches on
    /// its own with a random delay of about 50 ms).
    #[arg(long = "forward-delay-ms", env = "PHALANX_FORWARD_DELAY_MS")]
    #[serde(rename = "forward_delay_ms")]
    pub lightning_forward_delay_ms: Option<u64>,
}

/// `[api]`.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ApiLayer {
    /// Address of the REST API.
    #[arg(long = "api-listen", env = "PHALANX_API_LISTEN")]
    #[serde(rename = "listen")]
    pub api_listen: Option<String>,
    /// File holding the API bearer token (created at first start).
    #[arg(long = "api-token-file", env = "PHALANX_API_TOKEN_FILE")]
    #[serde(rename = "token_file")]
    pub api_token_file: Option<PathBuf>,
    /// Where the API token is, instead of the token file: file:PATH, env:NAME or
    /// aws-secrets-manager:ID. It may hold several tokens, one per line (a rotation).
    #[arg(long = "api-token-secret", env = "PHALANX_API_TOKEN_SECRET")]
    #[serde(rename = "token_secret")]
    pub api_token_secret: Option<String>,
    /// How often the token is read again, so that a rotated token takes effect without
    /// a restart (ms).
    #[arg(
        long = "api-token-reload-interval-ms",
        env = "PHALANX_API_TOKEN_RELOAD_INTERVAL_MS"
    )]
    #[serde(rename = "token_reload_interval_ms")]
    pub api_token_reload_interval_ms: Option<u64>,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The Bitcoin network.
    pub network: Network,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The state store.
    pub store: StoreConfig,
    /// The chain source.
    pub chain: ChainConfig,
    /// Lightning.
    pub lightning: LightningConfig,
    /// The REST API.
    pub api: ApiConfig,
    /// Where the seed comes from.
    pub seed: SeedConfig,
    /// The directory of the synchronous backup stream (`[backup] url`), if any.
    pub backup_dir: Option<PathBuf>,
    /// How the backup stream is written.
    pub backup_options: BackupOptions,
    /// The link to front servers (`[link]`), if the node serves any.
    pub link: Option<LinkConfig>,
}

/// Where fronts connect, and the link's certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// The link's address.
    pub listen: SocketAddr,
    /// This instance's certificate (PEM file).
    pub certificate: PathBuf,
    /// Its private key (PEM file).
    pub key: PathBuf,
    /// The link CA's certificate (PEM file).
    pub ca: PathBuf,
}

/// How the backup stream is written (`[backup]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupOptions {
    /// Compact once the open segment holds this many bytes.
    pub compact_after_bytes: u64,
    /// Whether a stream that cannot be written only alerts (unsafe) instead of failing
    /// the write.
    pub alert_only: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            compact_after_bytes: 64 * 1024 * 1024,
            alert_only: false,
        }
    }
}

/// Where state lives.
#[derive(Clone)]
pub struct StoreConfig {
    /// The store URL (its password, if it has one, is hidden by `Debug`).
    pub url: String,
    /// Where the store's password is, to be put in the URL (`[store] password_secret`).
    pub password_secret: Option<SecretRef>,
    /// The cluster name.
    pub cluster: ClusterName,
    /// This instance's id.
    pub instance_id: HolderId,
    /// `[cluster] enabled`: wait as a standby while another instance leads (otherwise
    /// refuse to start).
    pub cluster_enabled: bool,
    /// `[cluster] lease_*`: how the lease is held.
    pub lease: LeaseTimings,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &redact_url(&self.url))
            .field("password_secret", &self.password_secret)
            .field("cluster", &self.cluster)
            .field("instance_id", &self.instance_id)
            .field("cluster_enabled", &self.cluster_enabled)
            .field("lease", &self.lease)
            .finish()
    }
}

/// Where the chain comes from.
#[derive(Clone)]
pub struct ChainConfig {
    /// bitcoind RPC endpoint, without credentials (`http://host:port[/path]`).
    pub rpc_url: String,
    /// RPC user.
    pub rpc_user: String,
    /// RPC password.
    pub rpc_password: String,
    /// bitcoind REST endpoint, if blocks are to be followed over REST.
    pub rest_url: Option<String>,
    /// Esplora endpoint, a second broadcast path.
    pub esplora_url: Option<String>,
    /// Tip poll interval.
    pub poll_interval: Duration,
}

impl fmt::Debug for ChainConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainConfig")
            .field("rpc_url", &self.rpc_url)
            .field("rpc_user", &self.rpc_user)
            .field("rpc_password", &REDACTED)
            .field("rest_url", &self.rest_url)
            .field("esplora_url", &self.esplora_url)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// Lightning settings.
#[derive(Clone, Debug)]
pub struct LightningConfig {
    /// Listen addresses for peers.
    pub listen: Vec<SocketAddr>,
    /// Gossip alias.
    pub alias: Option<String>,
    /// Delay before processing HTLC forwards.
    pub forward_delay: Duration,
}

/// REST API settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// The bearer token file, made at first start (unless `token_secret` is set).
    pub token_file: PathBuf,
    /// Where the token is instead of `token_file` (`[api] token_secret`).
    pub token_secret: Option<SecretRef>,
    /// How often the token is read again.
    pub token_reload_interval: Duration,
}

/// Default tip poll interval, in milliseconds.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
/// Default forward delay, in milliseconds.
pub const DEFAULT_FORWARD_DELAY_MS: u64 = 0;
/// Default peer port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9735";
/// Default API address.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8080";
/// Default interval between two reads of the API token, in milliseconds.
pub const DEFAULT_TOKEN_RELOAD_INTERVAL_MS: u64 = 10_000;

impl ConfigLayer {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())
    }

    /// This layer over `base`: every value set here wins.
    pub fn over(self, base: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            network: self.network.or(base.network),
            data_dir: self.data_dir.or(base.data_dir),
            store: StoreLayer {
                store_url: self.store.store_url.or(base.store.store_url),
                store_cluster: self.store.store_cluster.or(base.store.store_cluster),
                store_instance_id: self
                    .store
                    .store_instance_id
                    .or(base.store.store_instance_id),
                store_password_secret: self
                    .store
                    .store_password_secret
                    .or(base.store.store_password_secret),
            },
            chain: ChainLayer {
                chain_rpc_url: self.chain.chain_rpc_url.or(base.chain.chain_rpc_url),
                chain_rpc_user: self.chain.chain_rpc_user.or(base.chain.chain_rpc_user),
                chain_rpc_password: self
                    .chain
                    .chain_rpc_password
                    .or(base.chain.chain_rpc_password),
                chain_rest_url: self.chain.chain_rest_url.or(base.chain.chain_rest_url),
                chain_esplora_url: self
                    .chain
                    .chain_esplora_url
                    .or(base.chain.chain_esplora_url),
                chain_poll_interval_ms: self
                    .chain
                    .chain_poll_interval_ms
                    .or(base.chain.chain_poll_interval_ms),
            },
            lightning: LightningLayer {
                lightning_listen: self
                    .lightning
                    .lightning_listen
                    .or(base.lightning.lightning_listen),
                lightning_alias: self
                    .lightning
                    .lightning_alias
                    .or(base.lightning.lightning_alias),
                lightning_forward_delay_ms: self
                    .lightning
                    .lightning_forward_delay_ms
                    .or(base.lightning.lightning_forward_delay_ms),
            },
            api: ApiLayer {
                api_listen: self.api.api_listen.or(base.api.api_listen),
                api_token_file: self.api.api_token_file.or(base.api.api_token_file),
                api_token_secret: self.api.api_token_secret.or(base.api.api_token_secret),
                api_token_reload_interval_ms: self
                    .api
                    .api_token_reload_interval_ms
                    .or(base.api.api_token_reload_interval_ms),
            },
            seed: self.seed.over(base.seed),
            backup: BackupLayer {
                backup_url: self.backup.backup_url.or(base.backup.backup_url),
                backup_on_failure: self
                    .backup
                    .backup_on_failure
                    .or(base.backup.backup_on_failure),
                backup_compact_after_mb: self
                    .backup
                    .backup_compact_after_mb
                    .or(base.backup.backup_compact_after_mb),
            },
            link: LinkLayer {
                link_listen: self.link.link_listen.or(base.link.link_listen),
                link_certificate: self.link.link_certificate.or(base.link.link_certificate),
                link_key: self.link.link_key.or(base.link.link_key),
                link_ca: self.link.link_ca.or(base.link.link_ca),
            },
            cluster: ClusterLayer {
                cluster_enabled: self
                    .cluster
                    .cluster_enabled
                    .or(base.cluster.cluster_enabled),
                lease_ttl_ms: self.cluster.lease_ttl_ms.or(base.cluster.lease_ttl_ms),
                lease_renew_interval_ms: self
                    .cluster
                    .lease_renew_interval_ms
                    .or(base.cluster.lease_renew_interval_ms),
                lease_safety_margin_ms: self
                    .cluster
                    .lease_safety_margin_ms
                    .or(base.cluster.lease_safety_margin_ms),
            },
        }
    }

    /// Applies defaults and checks every field.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let network = match self.network.as_deref() {
            None => {
                return Err(field(
                    "network",
                    "required: regtest, signet, testnet or mainnet",
                ));
            }
            Some("regtest") => Network::Regtest,
            Some("signet") => Network::Signet,
            Some("testnet") => Network::Testnet,
            Some("mainnet" | "bitcoin") => Network::Bitcoin,
            Some(other) => {
                return Err(field(
                    "network",
                    format!("{other:?} is not one of regtest, signet, testnet, mainnet"),
                ));
            }
        };
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("phalanx-data"));
        let store_url = self
            .store
            .store_url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("node.db").display()));
        let cluster = ClusterName::new(self.store.store_cluster.as_deref().unwrap_or("default"))
            .map_err(|e| field("store.cluster", e.to_string()))?;
        let instance_id = match self.store.store_instance_id {
            Some(id) => id,
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "phalanx".to_owned()),
        };
        let instance_id =
            HolderId::new(&instance_id).map_err(|e| field("store.instance_id", e.to_string()))?;

        let rpc_text = self.chain.chain_rpc_url.ok_or_else(|| {
            field(
                "chain.rpc_url",
                "required: the bitcoind RPC URL, e.g. http://user:pass@127.0.0.1:8332",
            )
        })?;
        let mut rpc_url = parse_http_url("chain.rpc_url", &rpc_text)?;
        let url_user = (!rpc_url.username().is_empty()).then(|| decode(rpc_url.username()));
        let url_password = rpc_url.password().map(decode);
        let _ = rpc_url.set_username("");
        let _ = rpc_url.set_password(None);
        let rpc_user = self.chain.chain_rpc_user.or(url_user).ok_or_else(|| {
            field(
                "chain.rpc_user",
                "required (or as user:password@ in chain.rpc_url)",
            )
        })?;
        let rpc_password = self
            .chain
            .chain_rpc_password
            .or(url_password)
            .ok_or_else(|| {
                field(
                    "chain.rpc_password",
                    "required (or as user:password@ in chain.rpc_url)",
                )
            })?;
        let rest_url = self
            .chain
            .chain_rest_url
            .map(|text| {
                parse_http_url("chain.rest_url", &text)
                    .map(|u| u.as_str().trim_end_matches('/').to_owned())
            })
            .transpose()?;
        let esplora_url = self
            .chain
            .chain_esplora_url
            .map(|text| {
                parse_http_url("chain.esplora_url", &text)
                    .map(|u| u.as_str().trim_end_matches('/').to_owned())
            })
            .transpose()?;
        let poll_ms = self
            .chain
            .chain_poll_interval_ms
            .unwrap_or(DEFAULT_POLL_INTERVAL_MS);
        if !(10..=600_000).contains(&poll_ms) {
            return Err(field(
                "chain.poll_interval_ms",
                format!("{poll_ms} is not between 10 and 600000"),
            ));
        }

        let lease = self.cluster.lease_timings()?;

        let listen = self
            .lightning
            .lightning_listen
            .unwrap_or_else(|| vec![DEFAULT_LISTEN.to_owned()])
            .iter()
            .map(|text| {
                text.trim().parse::<SocketAddr>().map_err(|_| {
                    field(
                        "lightning.listen",
                        format!("{text:?} is not an address like 0.0.0.0:9735"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(alias) = &self.lightning.lightning_alias
            && alias.len() > 32
        {
            return Err(field("lightning.alias", "at most 32 bytes"));
        }
        let forward_delay = Duration::from_millis(
            self.lightning
                .lightning_forward_delay_ms
                .unwrap_or(DEFAULT_FORWARD_DELAY_MS),
        );
        let api_text = self
            .api
            .api_listen
            .unwrap_or_else(|| DEFAULT_API_LISTEN.to_owned());
        let api_listen = api_text.parse::<SocketAddr>().map_err(|_| {
            field(
                "api.listen",
                format!("{api_text:?} is not an address like 127.0.0.1:8080"),
            )
        })?;
        let token_file_set = self.api.api_token_file.is_some();
        let token_file = self
            .api
            .api_token_file
            .unwrap_or_else(|| data_dir.join("api-token"));
        let token_secret = secrets::secret_ref("api.token_secret", self.api.api_token_secret)?;
        if token_secret.is_some() && token_file_set {
            return Err(field(
                "api.token_secret",
                "set api.token_secret or api.token_file, not both",
            ));
        }
        let reload_ms = self
            .api
            .api_token_reload_interval_ms
            .unwrap_or(DEFAULT_TOKEN_RELOAD_INTERVAL_MS);
        if !(100..=86_400_000).contains(&reload_ms) {
            return Err(field(
                "api.token_reload_interval_ms",
                format!("{reload_ms} is not between 100 and 86400000"),
            ));
        }
        let password_secret =
            secrets::secret_ref("store.password_secret", self.store.store_password_secret)?;
        if password_secret.is_some() {
            check_url_takes_a_password(&store_url)?;
        }
        let seed = self.seed.resolve(&data_dir)?;
        let backup_dir = self
            .backup
            .backup_url
            .map(|text| {
                url::Url::parse(&text)
                    .ok()
                    .filter(|url| url.scheme() == "file")
                    .and_then(|url| url.to_file_path().ok())
                    .ok_or_else(|| {
                        field(
                            "backup.url",
                            format!("{text:?} is not a file:///directory URL"),
                        )
                    })
            })
            .transpose()?;
        let alert_only = match self.backup.backup_on_failure.as_deref() {
            None | Some("stop") => false,
            Some("alert") => true,
            Some(other) => {
                return Err(field(
                    "backup.on_failure",
                    format!("{other:?} is neither \"stop\" nor \"alert\""),
                ));
            }
        };
        let compact_after_mb = self.backup.backup_compact_after_mb.unwrap_or(64);
        if !(1..=1024 * 1024).contains(&compact_after_mb) {
            return Err(field(
                "backup.compact_after_mb",
                format!("{compact_after_mb} is not between 1 and 1048576"),
            ));
        }
        let backup_options = BackupOptions {
            compact_after_bytes: compact_after_mb * 1024 * 1024,
            alert_only,
        };
        let link = self.link.resolve()?;
        Ok(NodeConfig {
            network,
            store: StoreConfig {
                url: store_url,
                password_secret,
                cluster,
                instance_id,
                cluster_enabled: self.cluster.cluster_enabled.unwrap_or(false),
                lease,
            },
            chain: ChainConfig {
                rpc_url: rpc_url.as_str().trim_end_matches('/').to_owned(),
                rpc_user,
                rpc_password,
                rest_url,
                esplora_url,
                poll_interval: Duration::from_millis(poll_ms),
            },
            lightning: LightningConfig {
                listen,
                alias: self.lightning.lightning_alias,
                forward_delay,
            },
            api: ApiConfig {
                listen: api_listen,
                token_file,
                token_secret,
                token_reload_interval: Duration::from_millis(reload_ms),
            },
            seed,
            backup_dir,
            backup_options,
            link,
            data_dir,
        })
    }
}

impl LinkLayer {
    fn resolve(self) -> Result<Option<LinkConfig>, ConfigError> {
        let Some(listen) = self.link_listen else {
            return Ok(None);
        };
        let listen = listen.parse().map_err(|_| {
            field(
                "link.listen",
                format!("{listen:?} is not an address (host:port)"),
            )
        })?;
        let path = |name: &'static str, value: Option<PathBuf>| {
            value.ok_or_else(|| field(name, "is needed with link.listen".to_owned()))
        };
        Ok(Some(LinkConfig {
            listen,
            certificate: path("link.certificate", self.link_certificate)?,
            key: path("link.key", self.link_key)?,
            ca: path("link.ca", self.link_ca)?,
        }))
    }
}

/// A store password from a secret goes into the URL's user info: the URL must name a
/// user and hold no password of its own.
fn check_url_takes_a_password(store_url: &str) -> Result<(), ConfigError> {
    let name = "store.password_secret";
    let url = url::Url::parse(store_url)
        .map_err(|_| field(name, "store.url is not a URL a password can be added to"))?;
    if url.scheme() == "sqlite" {
        return Err(field(name, "a SQLite store has no password"));
    }
    if url.username().is_empty() {
        return Err(field(
            name,
            "store.url names no user (write user@host) for the password to go with",
        ));
    }
    if url.password().is_some() {
        return Err(field(
            name,
            "store.url has a password already: remove it from the URL",
        ));
    }
    Ok(())
}

fn decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn parse_http_url(name: &'static str, text: &str) -> Result<url::Url, ConfigError> {
    let url =
        url::Url::parse(text).map_err(|e| field(name, format!("{text:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(field(
            name,
            format!("{text:?} must be an http:// or https:// URL"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(field(name, format!("{text:?} names no host")));
    }
    Ok(url)
}

#[cfg(test)]
mod tests;
