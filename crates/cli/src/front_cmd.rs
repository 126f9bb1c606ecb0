//! `phalanx front`: run a front server: peers' connections at the edge, forwarded to the
//! node's active backend over the link; no node key.
//!
//! One line goes to stdout once the front is attached and serving (logs go to stderr):
//!
//! ```text
//! front started name=front-1 node_id=02ab… peers=0.0.0.0:9735 api=127.0.0.1:9090 key=backend
//! ```
//!
//! `key=held` instead when the front holds the node key (`--key-provider seed`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use phalanx_frontend::config::{FrontLayer, FrontSettings, KeyProvider};
use phalanx_frontend::{Front, NodeKey, api};
use phalanx_node::config::{SeedConfig, SeedLayer};
use tokio::signal::unix::{SignalKind, signal};

use crate::node_cmd::{LogFormat, init_tracing};

/// Exit status: stopped by SIGTERM or SIGINT.
pub const EXIT_STOPPED_ON_REQUEST: u8 = 0;
/// Exit status: could not start (an address in use).
pub const EXIT_START_FAILED: u8 = 1;
/// Exit status: the configuration is invalid (the message names the setting).
pub const EXIT_CONFIG: u8 = 2;

#[derive(Args, Debug)]
#[command(after_help = "\
Settings: the [front] table of the TOML file given with --config, with every \
PHALANX_FRONT_* variable and flag winning over it.

The front waits for an active backend (it dials every one in --backends until one \
greets it as active), learns the node's id from it, then accepts peers. Stdout: `front \
started name=NAME node_id=HEX peers=ADDR api=ADDR` once it serves. Logs go to stderr \
(filter: RUST_LOG, default info).

Exit status:
  0   stopped by SIGTERM or SIGINT
  1   could not start (an address in use)
  2   invalid configuration (the message names the setting), or the link's \
certificates cannot be read or used")]
pub struct FrontArgs {
    /// The TOML configuration file (its [front] table).
    #[arg(long, env = "PHALANX_FRONT_CONFIG")]
    config: Option<PathBuf>,
    /// Log format, on stderr.
    #[arg(long, value_enum, env = "PHALANX_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    settings: FrontLayer,
    /// The node's seed, for `--key-provider seed` (as `phalanx node` takes it).
    #[command(flatten)]
    seed: SeedLayer,
}

/// The `[seed]` table of a front's file (other tables are the front's own).
#[derive(serde::Deserialize)]
struct SeedFile {
    #[serde(default)]
    seed: SeedLayer,
}

fn resolve(args: FrontArgs) -> Result<(FrontSettings, Option<SeedConfig>), String> {
    let (base, seed_base) = match &args.config {
        Some(path) => {
            let front = FrontLayer::from_file(path).map_err(|err| err.to_string())?;
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("config: {}: {err}", path.display()))?;
            let seed = toml::from_str::<SeedFile>(&text)
                .map_err(|err| format!("config: {}", err.to_string().trim()))?
                .seed;
            (front, seed)
        }
        None => (FrontLayer::default(), SeedLayer::default()),
    };
    let settings = args
        .settings
        .over(base)
        .resolve()
        .map_err(|err| err.to_string())?;
    let seed = args.seed.over(seed_base);
    if settings.key_provider == KeyProvider::None {
        return Ok((settings, None));
    }
    // A front has no data directory to find a default seed file in.
    if matches!(seed.seed_provider.as_deref(), None | Some("file")) && seed.seed_file.is_none() {
        return Err("seed.file: is needed when front.key_provider is \"seed\"".into());
    }
    let seed = seed
        .resolve(std::path::Path::new("."))
        .map_err(|err| err.to_string())?;
    Ok((settings, Some(seed)))
}

/// The node key from the seed `config` names, checked against its expected node id.
async fn load_node_key(config: &SeedConfig) -> Result<NodeKey, String> {
    let seed = phalanx_instance::secrets::seed_provider(config, false)
        .await
        .seed()
        .await
        .map_err(|err| format!("cannot load the node's seed: {err}"))?;
    let keys = lightning::sign::KeysManager::new(&seed.ldk_seed(), 0, 0, true);
    let key = NodeKey::new(keys.get_node_secret_key());
    if let Some(expected) = config.expected_node_id
        && key.node_id() != expected
    {
        return Err(format!(
            "the seed is node {}'s, not the expected {expected}",
            key.node_id()
        ));
    }
    Ok(key)
}

/// Runs the front until SIGTERM or SIGINT.
pub async fn run(args: FrontArgs) -> ExitCode {
    let log_format = args.log_format;
    let (mut settings, seed) = match resolve(args) {
        Ok(resolved) => resolved,
        Err(err) => {
            eprintln!("error: invalid configuration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(log_format);
    if let Some(seed) = &seed {
        match load_node_key(seed).await {
            Ok(key) => settings.front.node_key = Some(key),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(EXIT_START_FAILED);
            }
        }
    }
    let (mut terminate, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        _ => {
            eprintln!("error: cannot handle signals");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    let name = settings.front.name.clone();
    // The API answers from the start: FRONT_WAITING (and 503 on /v1/ready) until the
    // front has attached to an active backend.
    let slot = api::FrontSlot::new();
    let mut api_address = String::from("none");
    let mut api_task = None;
    if let Some(address) = settings.api_listen {
        let listener = match api::bind(address).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("error: cannot serve the front's API on {address}: {err}");
                return ExitCode::from(EXIT_START_FAILED);
            }
        };
        api_address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let serving = slot.clone();
        api_task = Some(tokio::spawn(async move {
            if let Err(err) = api::serve(serving, listener).await {
                tracing::error!(error = %err, "the front's API stopped");
            }
        }));
        tracing::info!(front = %name, api = %api_address, "front API listening");
    }
    tracing::info!(front = %name, backends = ?settings.front.backends, "waiting for an active backend");
    let front = tokio::select! {
        started = Front::start(settings.front) => match started {
            Ok(front) => front,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(EXIT_START_FAILED);
            }
        },
        _ = terminate.recv() => return ExitCode::from(EXIT_STOPPED_ON_REQUEST),
        _ = interrupt.recv() => return ExitCode::from(EXIT_STOPPED_ON_REQUEST),
    };
    slot.fill(&front);
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "front started name={name} node_id={} peers={} api={api_address} key={}",
        front.state().node_id(),
        front.address(),
        if front.holds_key() { "held" } else { "backend" }
    );
    let _ = stdout.flush();
    drop(stdout);
    let signal = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal, front = %name, "stopping");
    if let Some(task) = api_task {
        task.abort();
    }
    drop(front);
    ExitCode::from(EXIT_STOPPED_ON_REQUEST)
}
