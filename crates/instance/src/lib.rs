//! One instance of a Phalanx cluster, from its configuration to a running node.
//!
//! The steps, in order: open the store named by the configuration's URL on a
//! [`StoreRuntime`] of its own, campaign for the lease ([`campaign`]), and hand what was
//! won to the [`NodeBuilder`] ([`Won::build`]). Between the two an API can tell its
//! callers that this instance leads and is loading. [`start`] runs them all;
//! [`initialize`] records a new store as this node's (`phalanx init`).
//!
//! This is the only layer that names the store backends (through
//! `phalanx-store-connect`): the node is built from a store it is handed.

#![warn(missing_docs)]

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::secp256k1::PublicKey;
use phalanx_cluster::{Campaigner, ElectionState, Leadership};
use phalanx_node::config::NodeConfig;
use phalanx_node::identity::{self, IDENTITY_SCHEMA_VERSION, IdentityError, NodeIdentity};
use phalanx_node::metrics::Metrics;
use phalanx_node::{BuildError, Node, NodeBuilder, StoreRuntime};
use phalanx_secrets::{LoadedSeedProvider, SecretsError, SeedProvider};
use phalanx_store::{Epoch, ErrorKind, HolderId, LeaseStore, Store, StoreError, StoreOptions};
use tokio::sync::watch;
use zeroize::Zeroizing;

pub mod secrets;

/// Why an instance could not win its lease, or its node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The store could not be opened, or campaigning on it failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The store's own runtime could not be started, or its task failed.
    #[error("state store: {0}")]
    Runtime(#[source] io::Error),
    /// A secret could not be had: the seed, the store's password.
    #[error("{setting} (provider {provider}): {source}")]
    Secret {
        /// The setting it was for (`seed`, `store.password_secret`).
        setting: &'static str,
        /// The provider (`file`, `env`, `encrypted-file`, `aws-secrets-manager`).
        provider: &'static str,
        /// What went wrong.
        #[source]
        source: SecretsError,
    },
    /// The seed is not that of the node this instance was configured for.
    #[error(
        "the seed from {origin} is node {actual}, but [seed] expected_node_id is {expected}: refusing to start with another node's seed"
    )]
    UnexpectedNodeId {
        /// Where the seed came from.
        origin: String,
        /// `[seed] expected_node_id`, in hex.
        expected: String,
        /// The seed's node id, in hex.
        actual: String,
    },
    /// The store is not this node's, or names another network.
    #[error("{0}")]
    Identity(#[from] IdentityError),
    /// Another instance leads the cluster and this one is not allowed to wait for it.
    #[error(
        "the lease of this cluster is held by {0}; stop that instance, or set `[cluster] enabled = true` (--cluster-enabled) on every instance to run this one as its standby"
    )]
    LeaseHeldElsewhere(String),
    /// The lease was won and the node could not be built.
    #[error("{0}")]
    Build(#[from] BuildError),
}

impl InstanceError {
    /// Whether the operator must act before a restart can help: the store is another
    /// node's or was never initialized, the seed is another node's, or a secret is
    /// missing or wrong (an unreachable secrets manager may come back: not this).
    pub fn needs_operator(&self) -> bool {
        match self {
            Self::Identity(_)
            | Self::Build(BuildError::Identity(_))
            | Self::UnexpectedNodeId { .. } => true,
            Self::Secret { source, .. } | Self::Build(BuildError::Seed(source)) => {
                !source.is_transient()
            }
            _ => false,
        }
    }
}

/// The lease won on the configured store: hand it to the builder with [`Won::build`].
pub struct Won {
    store: Arc<dyn Store>,
    leadership: Leadership,
    runtime: StoreRuntime,
    seed_provider: Arc<dyn SeedProvider>,
}

impl Won {
    /// The epoch this instance leads.
    pub fn epoch(&self) -> Epoch {
        self.leadership.epoch()
    }

    /// Builds the node with what was won and the seed loaded before campaigning (see
    /// [`NodeBuilder::build`]).
    pub async fn build(self, builder: NodeBuilder) -> Result<Arc<Node>, BuildError> {
        builder
            .seed_provider(self.seed_provider)
            .build(self.store, self.leadership, self.runtime)
            .await
    }
}

/// Loads the seed of `config` (a `file` provider creates one only when `create_file`),
/// and checks it against `[seed] expected_node_id`: before the store is opened, so that
/// a misconfigured secret fails at start, not at a failover. The provider returned
/// keeps the seed (zeroizing), so the node's build asks no secrets manager again.
pub async fn load_seed(
    config: &NodeConfig,
    create_file: bool,
) -> Result<(Arc<dyn SeedProvider>, PublicKey), InstanceError> {
    let provider = secrets::seed_provider(&config.seed, create_file).await;
    let loaded: Arc<dyn SeedProvider> = Arc::new(LoadedSeedProvider::new(provider));
    let seed = loaded
        .seed()
        .await
        .map_err(|source| InstanceError::Secret {
            setting: "seed",
            provider: config.seed.source.provider(),
            source,
        })?;
    let node_id = identity::node_id_of(&seed);
    drop(seed);
    if let Some(expected) = config.seed.expected_node_id
        && expected != node_id
    {
        return Err(InstanceError::UnexpectedNodeId {
            origin: loaded.describe(),
            expected: expected.to_string(),
            actual: node_id.to_string(),
        });
    }
    tracing::info!(%node_id, seed = loaded.describe(), "the seed is loaded");
    Ok((loaded, node_id))
}

/// Where and how the backup stream is written, when `[backup] url` is set.
struct StreamSetup {
    dir: std::path::PathBuf,
    seed: phalanx_secrets::Seed,
    options: phalanx_backup_stream::StreamOptions,
}

/// The backup stream's directory, options and the seed its key comes from, when
/// `[backup] url` is set.
async fn backup_stream(
    config: &NodeConfig,
    seed_provider: &dyn SeedProvider,
) -> Result<Option<StreamSetup>, InstanceError> {
    let Some(dir) = &config.backup_dir else {
        return Ok(None);
    };
    let seed = seed_provider
        .seed()
        .await
        .map_err(|source| InstanceError::Secret {
            setting: "seed",
            provider: config.seed.source.provider(),
            source,
        })?;
    let options = phalanx_backup_stream::StreamOptions {
        compact_after_bytes: config.backup_options.compact_after_bytes,
        on_failure: if config.backup_options.alert_only {
            tracing::warn!(
                "backup on_failure = \"alert\": a backup stream that cannot be written will not stop the node, and the backup may then be behind it (unsafe)"
            );
            phalanx_backup_stream::OnFailure::Alert
        } else {
            phalanx_backup_stream::OnFailure::Stop
        },
    };
    Ok(Some(StreamSetup {
        dir: dir.clone(),
        seed,
        options,
    }))
}

/// `store`, its commits streamed to the backup when one is configured.
fn with_backup(store: Arc<dyn Store>, backup: Option<StreamSetup>) -> Arc<dyn Store> {
    match backup {
        Some(setup) => Arc::new(phalanx_backup_stream::BackedUpStore::with_options(
            store,
            setup.dir,
            setup.seed,
            setup.options,
        )),
        None => store,
    }
}

/// The store URL of `config`, with the password from `[store] password_secret` in it.
pub async fn store_url(config: &NodeConfig) -> Result<Zeroizing<String>, InstanceError> {
    match &config.store.password_secret {
        Some(reference) => {
            secrets::url_with_password(&config.store.url, reference, &config.seed.aws).await
        }
        None => Ok(Zeroizing::new(config.store.url.clone())),
    }
}

/// Refuses a store whose identity record names another node or network, or that has
/// none, before campaigning: a standby with the wrong seed must fail now, not when it
/// takes over. A record that cannot be read yet (a SQLite store locked by the leader)
/// is left to the builder, which checks again under the lease.
async fn precheck_identity(
    store: &Arc<dyn Store>,
    node_id: PublicKey,
    network: bitcoin::Network,
) -> Result<(), InstanceError> {
    match tokio::time::timeout(Duration::from_secs(5), identity::read_identity(&**store)).await {
        Ok(Ok(stored)) => {
            identity::check(&store.describe(), stored.as_ref(), node_id, network)?;
            Ok(())
        }
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "the identity record cannot be read before the lease; checked after");
            Ok(())
        }
        Err(_) => {
            tracing::debug!("reading the identity record timed out; checked after the lease");
            Ok(())
        }
    }
}

/// Opens the store of `config` (waiting while it cannot be reached, see [`open_store`])
/// and campaigns for its lease, renewals recorded into `metrics`. With `[cluster]
/// enabled` it waits while another instance leads (a standby); without, another live
/// leader is an error, and only this instance's own lease (a restart after a crash) is
/// waited out.
pub async fn campaign(config: &NodeConfig, metrics: &Arc<Metrics>) -> Result<Won, InstanceError> {
    let (seed_provider, node_id) = load_seed(config, false).await?;
    let backup = backup_stream(config, &*seed_provider).await?;
    let url = store_url(config).await?;
    let network = config.network;
    let runtime = StoreRuntime::new().map_err(InstanceError::Runtime)?;
    let options = StoreOptions::new(config.store.cluster.clone());
    let instance = config.store.instance_id.clone();
    let renewal_observer = metrics.renewal_observer();
    let wait_for_leader = config.store.cluster_enabled;
    let lease_timings = config.store.lease;
    // Opening, campaigning and renewing run on the store runtime (see StoreRuntime).
    let (store, leadership) = runtime
        .run(async move {
            let store = with_backup(open_store(&url, options).await?, backup);
            drop(url);
            precheck_identity(&store, node_id, network).await?;
            let lease_store: Arc<dyn LeaseStore> = store.clone();
            let campaigner = Campaigner::new(lease_store, instance, lease_timings)?
                .observe_renewals(renewal_observer);
            let leadership = if wait_for_leader {
                campaigner.campaign().await?
            } else {
                win_unless_led(&campaigner).await?
            };
            Ok::<_, InstanceError>((store, leadership))
        })
        .await
        .map_err(InstanceError::Runtime)??;
    Ok(Won {
        store,
        leadership,
        runtime,
        seed_provider,
    })
}

/// The first pause before opening the store again after a transient failure.
pub const OPEN_RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest pause between two tries at opening the store.
pub const OPEN_RETRY_MAX: Duration = Duration::from_secs(5);

/// Opens the store at `url`, trying again while it is unreachable (a transient error: a
/// database restarting, a network partition): an instance started meanwhile, a standby
/// restarted by its supervisor say, waits for the store as it waits for the lease,
/// instead of exiting. A permanent error (a malformed URL, refused credentials, an
/// unknown database) is returned at once.
async fn open_store(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    let mut pause = OPEN_RETRY_FIRST;
    loop {
        match phalanx_store_connect::connect(url, options.clone()).await {
            Err(err) if err.kind() == ErrorKind::Transient => {
                tracing::warn!(
                    error = %err.report(),
                    retry_in_ms = pause.as_millis() as u64,
                    "the store cannot be opened yet; trying again"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(OPEN_RETRY_MAX);
            }
            opened => return opened,
        }
    }
}

/// Campaigns for the lease and builds the node of `config` with its seed, recording
/// into `metrics`: [`campaign`], then [`Won::build`].
pub async fn start(config: &NodeConfig, metrics: Arc<Metrics>) -> Result<Arc<Node>, InstanceError> {
    let won = campaign(config, &metrics).await?;
    Ok(won.build(NodeBuilder::new(config).metrics(metrics)).await?)
}

/// What [`initialize`] found or did.
#[derive(Clone, Debug)]
pub struct Initialized {
    /// The store's identity record.
    pub identity: NodeIdentity,
    /// Whether this call recorded it (false: the store was already this node's).
    pub created: bool,
}

/// Records in the store of `config` that it belongs to this node (the seed's node id,
/// creating the seed file of a `file` provider if there is none, and the network): what
/// `phalanx init` does,
/// once, before the node's first start. Takes the lease for the write, so no instance
/// may be running. A store that already names this node is left as it is; one that
/// names another node or network is an error.
pub async fn initialize(config: &NodeConfig) -> Result<Initialized, InstanceError> {
    let (seed_provider, node_id) = load_seed(config, true).await?;
    let backup = backup_stream(config, &*seed_provider).await?;
    let url = store_url(config).await?;
    let runtime = StoreRuntime::new().map_err(InstanceError::Runtime)?;
    let options = StoreOptions::new(config.store.cluster.clone());
    let instance = config.store.instance_id.clone();
    let lease_timings = config.store.lease;
    let network = config.network;
    runtime
        .run(async move {
            let store = with_backup(phalanx_store_connect::connect(&url, options).await?, backup);
            let lease_store: Arc<dyn LeaseStore> = store.clone();
            let campaigner = Campaigner::new(lease_store, instance, lease_timings)?;
            let leadership = win_unless_led(&campaigner).await?;
            let outcome = match identity::read_identity(&*store).await? {
                Some(stored) => {
                    identity::check(&store.describe(), Some(&stored), node_id, network)?;
                    Initialized {
                        identity: stored,
                        created: false,
                    }
                }
                None => {
                    let record = NodeIdentity {
                        node_id,
                        network,
                        created_at_unix: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs(),
                        schema_version: IDENTITY_SCHEMA_VERSION,
                    };
                    store
                        .write(leadership.token()?, &identity::identity_key(), record.encode())
                        .await?;
                    tracing::info!(%node_id, %network, store = store.describe(), "recorded the node's identity");
                    Initialized {
                        identity: record,
                        created: true,
                    }
                }
            };
            leadership.resign().await?;
            Ok::<_, InstanceError>(outcome)
        })
        .await
        .map_err(InstanceError::Runtime)?
}

/// Wins the lease unless another instance leads: that is an error to report, not a
/// leader to wait for. This instance's own lease (a restart after a crash) is waited out.
/// For the tools that must hold a store alone (`phalanx init`, `phalanx migrate`).
pub async fn win_unless_led(campaigner: &Campaigner) -> Result<Leadership, InstanceError> {
    let mut election = campaigner.state();
    tokio::select! {
        won = campaigner.campaign() => Ok(won?),
        holder = led_by_another(&mut election, campaigner.holder()) => {
            Err(InstanceError::LeaseHeldElsewhere(holder))
        }
    }
}

/// Resolves with a description of the holder once the campaign sees the lease held by
/// an instance other than `me` (or by a holder the store does not name).
async fn led_by_another(election: &mut watch::Receiver<ElectionState>, me: &HolderId) -> String {
    loop {
        if let ElectionState::Campaigning { leader } = &*election.borrow_and_update() {
            match leader {
                Some(lease) if lease.holder != me.as_str() => {
                    return format!("instance {} (epoch {})", lease.holder, lease.epoch);
                }
                None => return "another process".to_owned(),
                Some(_) => {}
            }
        }
        if election.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
