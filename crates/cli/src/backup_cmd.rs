//! `phalanx backup create|verify` and `phalanx restore`: snapshot backups of a node.
//!
//! Exit status: 0 done; 1 a store or a file failed (or could not be reached); 2 the
//! configuration, the backup or the target is not right (a backup of another node, a
//! changed byte, a state a node could not start from safely, a target that is not empty).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use phalanx_backup::archive;
use phalanx_cluster::LeaseTimings;
use phalanx_node::config::{ConfigLayer, NodeConfig};
use phalanx_node::identity;
use phalanx_store::{ErrorKind, HolderId, StoreOptions};

/// `phalanx backup`.
#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Take a consistent snapshot of the node's store while it runs, encrypted with a
    /// key from its seed, into a new directory.
    Create(CreateArgs),
    /// Check a backup: decrypt it, check every checksum, decode every channel monitor
    /// and the channel manager as a start would, and print what it holds.
    Verify(VerifyArgs),
}

/// `phalanx backup create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The node's configuration (its store, cluster and seed).
    #[arg(long, env = "PHALANX_CONFIG")]
    config: PathBuf,
    /// The new backup's directory (must not exist, or be empty).
    #[arg(long)]
    to: PathBuf,
}

/// `phalanx backup verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The node's configuration (its seed opens the backup).
    #[arg(long, env = "PHALANX_CONFIG")]
    config: PathBuf,
    /// The backup's directory.
    dir: PathBuf,
}

/// `phalanx restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The node's configuration (its seed opens the backup).
    #[arg(long, env = "PHALANX_CONFIG")]
    config: PathBuf,
    /// The backup's directory: a snapshot (`phalanx backup create`), or the directory
    /// of a backup stream (`[backup] url`), replayed to its last acknowledged commit.
    #[arg(long)]
    from: PathBuf,
    /// The empty store to restore into (any backend).
    #[arg(long, env = "PHALANX_RESTORE_TO", hide_env_values = true)]
    to: String,
    /// The backup stream a snapshot is checked against (default: the configuration's
    /// `[backup] url`): a snapshot older than the stream is refused.
    #[arg(long)]
    stream: Option<PathBuf>,
    /// Restore a snapshot even if it is older than the backup stream (see the message
    /// this is refused with: the node must not run on it as it is).
    #[arg(long)]
    allow_stale: bool,
}

/// A failure: its message, and whether the operator must change something (exit 2).
type Failure = (String, bool);

/// Runs `command`.
pub async fn run(command: BackupCommand) -> ExitCode {
    finish(match command {
        BackupCommand::Create(args) => create(args).await,
        BackupCommand::Verify(args) => verify(args).await,
    })
}

/// Runs `phalanx restore`.
pub async fn run_restore(args: RestoreArgs) -> ExitCode {
    finish(restore(args).await)
}

fn finish(outcome: Result<String, Failure>) -> ExitCode {
    match outcome {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err((message, refused)) => {
            eprintln!("error: {message}");
            ExitCode::from(if refused { 2 } else { 1 })
        }
    }
}

fn config(path: &std::path::Path) -> Result<NodeConfig, Failure> {
    ConfigLayer::from_file(path)
        .and_then(ConfigLayer::resolve)
        .map_err(|err| (format!("invalid configuration: {err}"), true))
}

async fn seed(config: &NodeConfig) -> Result<phalanx_secrets::Seed, Failure> {
    let (provider, _) = phalanx_instance::load_seed(config, false)
        .await
        .map_err(|err| (err.to_string(), err.needs_operator()))?;
    provider
        .seed()
        .await
        .map_err(|err| (format!("seed: {err}"), !err.is_transient()))
}

fn store_failure(err: phalanx_store::StoreError) -> Failure {
    let refused = err.kind() != ErrorKind::Transient;
    (err.report().to_string(), refused)
}

async fn create(args: CreateArgs) -> Result<String, Failure> {
    let config = config(&args.config)?;
    let seed = seed(&config).await?;
    let url = phalanx_instance::store_url(&config)
        .await
        .map_err(|err| (err.to_string(), err.needs_operator()))?;
    // A running node holds its SQLite file's exclusive lock: it takes the snapshot
    // itself, through its API. When no node answers, the file is free to read here.
    if url.starts_with("sqlite:")
        && let Some(text) = create_through_node(&config, &args.to).await?
    {
        return Ok(text);
    }
    let store =
        phalanx_store_connect::connect(&url, StoreOptions::new(config.store.cluster.clone()))
            .await
            .map_err(store_failure)?;
    drop(url);
    // No lease: one consistent read, while the node goes on.
    let started = std::time::Instant::now();
    let entries = store.snapshot().await.map_err(store_failure)?;
    let took = started.elapsed();
    let record = entries
        .iter()
        .find(|(key, _)| *key == identity::identity_key())
        .ok_or_else(|| {
            (
                format!("{} holds no node (run `phalanx init`)", store.describe()),
                true,
            )
        })?;
    let node = identity::NodeIdentity::decode(&record.1)
        .map_err(|e| (format!("the identity record is corrupt: {e}"), true))?;
    if node.node_id != identity::node_id_of(&seed) {
        return Err((
            format!(
                "{} is node {}'s, and the configured seed is node {}'s",
                store.describe(),
                node.node_id,
                identity::node_id_of(&seed)
            ),
            true,
        ));
    }
    let epoch = store
        .epoch_history(1)
        .await
        .map_err(store_failure)?
        .first()
        .map_or(0, |record| record.epoch.0);
    let bytes: usize = entries.iter().map(|(_, v)| v.len()).sum();
    let header = archive::write(
        &args.to,
        &seed,
        &node,
        config.store.cluster.as_str(),
        epoch,
        &entries,
    )
    .map_err(|err| {
        let refused = matches!(err, archive::ArchiveError::Invalid { .. });
        (err.to_string(), refused)
    })?;
    Ok(format!(
        "backup {} node_id={} epoch={epoch} keys={} bytes={bytes} snapshot_ms={} created_at_unix={}",
        args.to.display(),
        header.node_id,
        entries.len(),
        took.as_millis(),
        header.created_at_unix
    ))
}

async fn verify(args: VerifyArgs) -> Result<String, Failure> {
    let config = config(&args.config)?;
    let seed = seed(&config).await?;
    let archive = read(&args.dir, &seed)?;
    let report = phalanx_node::offline::check_state(&archive.entries, &seed)
        .map_err(|reason| (format!("backup {}: {reason}", args.dir.display()), true))?;
    let manifest = &archive.manifest;
    let mut text = format!(
        "backup {} is good: node {} on {}, cluster {}, epoch {}, taken at unix {}, {} keys, {} channel monitors, {} channels",
        args.dir.display(),
        manifest.node_id,
        manifest.network,
        manifest.cluster,
        manifest.epoch,
        manifest.created_at_unix,
        archive.entries.len(),
        report.monitors,
        report.channels.len()
    );
    for channel in &report.channels {
        text.push_str(&format!(
            "\nchannel {} peer {} funding {} capacity_sat {} ours_sat {}",
            channel.channel_id,
            channel.counterparty,
            channel.funding.as_deref().unwrap_or("-"),
            channel.capacity_sat,
            channel.our_balance_sat
        ));
    }
    Ok(text)
}

fn read(dir: &std::path::Path, seed: &phalanx_secrets::Seed) -> Result<archive::Archive, Failure> {
    archive::read(dir, seed).map_err(|err| {
        let refused = matches!(err, archive::ArchiveError::Invalid { .. });
        (err.to_string(), refused)
    })
}

async fn restore(args: RestoreArgs) -> Result<String, Failure> {
    let config = config(&args.config)?;
    let seed = seed(&config).await?;
    // A snapshot backup, or the directory of a backup stream.
    let from_stream = !args.from.join(archive::HEADER_FILE).exists();
    let (entries, cluster, origin, detail) = if from_stream {
        let replayed = phalanx_backup_stream::replay(&args.from, &seed)
            .map_err(|err| (err.to_string(), true))?;
        if replayed.segments == 0 && replayed.checkpoint.is_none() {
            return Err((
                format!(
                    "{} holds neither a backup ({}) nor a backup stream (epoch-*.log, checkpoint-*.ckpt)",
                    args.from.display(),
                    archive::HEADER_FILE
                ),
                true,
            ));
        }
        let detail = format!(
            "from the backup stream: {} records of {} segments after checkpoint {}, last epoch {}, {} cut short and skipped",
            replayed.records,
            replayed.segments,
            replayed.checkpoint.as_deref().unwrap_or("none"),
            replayed.last_epoch,
            replayed.torn
        );
        (
            replayed.entries,
            config.store.cluster.as_str().to_owned(),
            format!("backup stream {}", args.from.display()),
            detail,
        )
    } else {
        let archive = read(&args.from, &seed)?;
        let mut detail = format!(
            "from the snapshot of epoch {} taken at unix {}",
            archive.manifest.epoch, archive.manifest.created_at_unix
        );
        let stream = args.stream.as_ref().or(config.backup_dir.as_ref());
        if let Some(stream) = stream
            && let Some(newer) = newer_stream(stream, &seed, &archive)
        {
            if !args.allow_stale {
                return Err((stale_refusal(&args.from, stream, &newer), true));
            }
            detail.push_str(&format!(
                ", STALE: {newer}; the node must not run on this store as it is (see `phalanx restore --help`)"
            ));
        }
        (
            archive.entries,
            archive.header.cluster.clone(),
            format!("backup {}", args.from.display()),
            detail,
        )
    };
    let record = entries
        .iter()
        .find(|(key, _)| *key == identity::identity_key())
        .map(|(_, value)| value.clone())
        .ok_or_else(|| {
            (
                format!(
                    "{} holds no identity record (a stream written before this version's bases, enabled after `phalanx init`, holds only what came after: restore a snapshot taken since)",
                    args.from.display()
                ),
                true,
            )
        })?;
    let node = identity::NodeIdentity::decode(&record)
        .map_err(|e| (format!("the identity record is corrupt: {e}"), true))?;
    if node.node_id != identity::node_id_of(&seed) {
        return Err((
            format!(
                "{} is node {}'s, and the configured seed is node {}'s",
                args.from.display(),
                node.node_id,
                identity::node_id_of(&seed)
            ),
            true,
        ));
    }
    // Only a state a node can start from safely is restored.
    phalanx_node::offline::check_state(&entries, &seed)
        .map_err(|reason| (format!("{}: {reason}", args.from.display()), true))?;
    let cluster = phalanx_store::ClusterName::new(&cluster)
        .map_err(|e| (format!("the backup's cluster: {e}"), true))?;
    let target = phalanx_store_connect::connect(&args.to, StoreOptions::new(cluster))
        .await
        .map_err(store_failure)?;
    let described = target.describe();
    let keys = phalanx_backup::restore(
        &entries,
        &node,
        &origin,
        target,
        HolderId::new("phalanx-restore").expect("a valid holder id"),
        LeaseTimings::default(),
    )
    .await
    .map_err(|err| {
        let refused = !matches!(&err, phalanx_backup::MigrateError::Store { source, .. } if source.kind() == ErrorKind::Transient);
        (err.to_string(), refused)
    })?;
    Ok(format!(
        "restored node_id={} keys={keys} into {described} {detail}",
        node.node_id
    ))
}

/// Why the backup stream at `stream` is newer than the snapshot `archive`, if it is (or
/// cannot be read, which cannot tell it is not).
fn newer_stream(
    stream: &std::path::Path,
    seed: &phalanx_secrets::Seed,
    archive: &archive::Archive,
) -> Option<String> {
    if !stream.exists() {
        return None;
    }
    let replayed = match phalanx_backup_stream::replay(stream, seed) {
        Ok(replayed) => replayed,
        Err(err) => {
            return Some(format!("the backup stream cannot be read to tell ({err})"));
        }
    };
    if replayed.segments == 0 && replayed.checkpoint.is_none() {
        return None;
    }
    let snapshot_epoch = archive.manifest.epoch;
    if replayed.last_epoch > snapshot_epoch {
        return Some(format!(
            "the backup stream reaches epoch {}, the snapshot is of epoch {snapshot_epoch}",
            replayed.last_epoch
        ));
    }
    if replayed.last_epoch == snapshot_epoch && replayed.entries != archive.entries {
        let snapshot: std::collections::BTreeMap<_, _> =
            archive.entries.iter().map(|(k, v)| (k, v)).collect();
        let changed = replayed
            .entries
            .iter()
            .filter(|(k, v)| snapshot.get(k) != Some(&v))
            .count()
            + snapshot
                .keys()
                .filter(|k| {
                    replayed
                        .entries
                        .binary_search_by(|(key, _)| key.cmp(k))
                        .is_err()
                })
                .count();
        return Some(format!(
            "the backup stream differs from the snapshot within epoch {snapshot_epoch} ({changed} keys): it went on after the snapshot"
        ));
    }
    None
}

fn stale_refusal(from: &std::path::Path, stream: &std::path::Path, newer: &str) -> String {
    format!(
        "{from} is older than the backup stream {stream}: {newer}.\n\
         Restore from the stream instead: phalanx restore --from {stream} ...\n\
         A node restarted on an older state than its peers have is in danger:\n\
         - if it force-closes a channel (an HTLC nearing its expiry is enough), it broadcasts a\n\
           revoked commitment, and the peer can take every satoshi in that channel;\n\
         - when a peer reconnects, channel_reestablish proves the node is behind (data-loss\n\
           protection) and LDK stops the node rather than let it broadcast.\n\
         What a stale state can still get back: start once with no channel state, let each peer\n\
         force-close its channels with its own latest commitment, wait for those closes to\n\
         confirm, then restore the stale monitors to sweep what is ours. Pass --allow-stale\n\
         to restore it anyway, for that procedure or when the stream is known to be wrong.",
        from = from.display(),
        stream = stream.display()
    )
}

/// Asks the running node of `config` to write the backup itself (`POST /v1/backups`);
/// `None` when no node answers on its API.
async fn create_through_node(
    config: &NodeConfig,
    to: &std::path::Path,
) -> Result<Option<String>, Failure> {
    let to = std::path::absolute(to).map_err(|err| (format!("{}: {err}", to.display()), true))?;
    let mut address = config.api.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let source: Box<dyn phalanx_secrets::SecretSource> = match &config.api.token_secret {
        Some(reference) => {
            phalanx_instance::secrets::secret_source(reference, &config.seed.aws).await
        }
        None => Box::new(phalanx_secrets::FileSecret::new(
            config.api.token_file.clone(),
        )),
    };
    let client = phalanx_api::ApiClient::new(&format!("http://{address}"))
        .map_err(|err| (err.to_string(), true))?
        .with_timeout(std::time::Duration::from_secs(600));
    // No token (the node never ran here) means no node to ask.
    let Ok(tokens) = phalanx_api::fetch_tokens(&*source).await else {
        return Ok(None);
    };
    let client = client.with_token(tokens.first().clone());
    let request = phalanx_api::CreateBackupRequest {
        to: to.display().to_string(),
    };
    match client.create_backup(&request).await {
        Ok(created) => Ok(Some(format!(
            "backup {} node_id={} epoch={} keys={} bytes={} snapshot_ms={} created_at_unix={} (taken by the running node)",
            created.dir,
            created.node_id,
            created.epoch,
            created.keys,
            created.bytes,
            created.snapshot_ms,
            created.created_at_unix
        ))),
        Err(phalanx_api::ClientError::Connect { .. }) => Ok(None),
        Err(phalanx_api::ClientError::Api { error, .. }) => Err((
            format!("the node refused the backup: {error}"),
            error.code != phalanx_api::ErrorCode::StoreUnavailable
                && error.code != phalanx_api::ErrorCode::NotActive,
        )),
        Err(err) => Err((format!("the node's API: {err}"), false)),
    }
}
