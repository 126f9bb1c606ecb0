//! `phalanx migrate`: move a node from one store to another (see [`phalanx_backup::migrate`]).
//!
//! Stdout on success: `migrated node_id=HEX keys=N bytes=N from=STORE to=STORE`.
//! Exit status: 0 done; 1 a store failed or could not be reached (run it again: an
//! interrupted migration is finished or redone by the next run); 2 refused: an instance
//! leads the source, the source holds no node or was migrated, the target is not empty,
//! or the copy differs (nothing was changed on the source then).

use std::process::ExitCode;

use clap::Args;
use phalanx_backup::MigrateError;
use phalanx_cluster::LeaseTimings;
use phalanx_instance::InstanceError;
use phalanx_store::{ClusterName, ErrorKind, HolderId, StoreOptions};

/// `phalanx migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The store the node is on now (every instance stopped).
    #[arg(long, env = "PHALANX_MIGRATE_FROM", hide_env_values = true)]
    from: String,
    /// The empty store to move it to (any backend).
    #[arg(long, env = "PHALANX_MIGRATE_TO", hide_env_values = true)]
    to: String,
    /// The cluster (the node's name in both stores).
    #[arg(long, env = "PHALANX_CLUSTER", default_value = "default")]
    cluster: String,
}

/// Runs the migration; returns the exit status.
pub async fn run(args: MigrateArgs) -> ExitCode {
    match migrate(args).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err((message, refused)) => {
            eprintln!("error: {message}");
            ExitCode::from(if refused { 2 } else { 1 })
        }
    }
}

async fn migrate(args: MigrateArgs) -> Result<String, (String, bool)> {
    let cluster = ClusterName::new(&args.cluster).map_err(|e| (format!("--cluster: {e}"), true))?;
    let open = async |url: &str, which: &str| {
        phalanx_store_connect::connect(url, StoreOptions::new(cluster.clone()))
            .await
            .map_err(|err| {
                (
                    format!("--{which}: {}", err.report()),
                    err.kind() != ErrorKind::Transient,
                )
            })
    };
    let source = open(&args.from, "from").await?;
    let target = open(&args.to, "to").await?;
    let (from, to) = (source.describe(), target.describe());
    let holder = HolderId::new("phalanx-migrate").expect("a valid holder id");
    let moved = phalanx_backup::migrate(source, target, holder, LeaseTimings::default())
        .await
        .map_err(|err| {
            let refused = match &err {
                MigrateError::Store { source, .. } => source.kind() != ErrorKind::Transient,
                MigrateError::Instance(InstanceError::Store(source)) => {
                    source.kind() != ErrorKind::Transient
                }
                _ => true,
            };
            (err.to_string(), refused)
        })?;
    Ok(format!(
        "migrated node_id={} keys={} bytes={} from={from} to={to}{}",
        moved.identity.node_id,
        moved.keys,
        moved.bytes,
        if moved.resumed {
            " (finished an earlier run)"
        } else {
            ""
        }
    ))
}
