//! `phalanx node`: run one instance of the node, with its REST API.
//!
//! Order: resolve the configuration (file, then `PHALANX_*` variables and flags over
//! it), start logging, move the secrets named `env:` out of the environment (before any
//! thread starts: [`prepare`]), read the API token (creating the token file if it is
//! the token's place and missing), bind the API and serve it (a standby answers `GET
//! /v1/state` with `WAITING_TO_START` while it campaigns), load the seed, start the node
//! (wins the lease, loads, syncs), serve until SIGTERM or SIGINT, then shut down
//! cleanly (persist, resign the lease) and exit. The API token is read again every
//! `[api] token_reload_interval_ms`: a rotated token takes effect without a restart.
//!
//! Two lines go to stdout, for supervisors and tests (logs go to stderr):
//!
//! ```text
//! api listening on http://127.0.0.1:8080 token_file /var/lib/phalanx/api-token
//! node started node_id=02ab… peers=0.0.0.0:9735,[::]:9735 epoch=7 link=10.0.0.5:9736
//! ```
//!
//! (`link=` only when the node serves fronts: `[link] listen`.)
//!
//! (`token_secret aws-secrets-manager:ID` instead of `token_file PATH` when the token
//! is a secret's.)
//!
//! The addresses are the bound ones (a port 0 shows the port picked).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use phalanx_api::{AcceptedTokens, ApiTokens};
use phalanx_instance::InstanceError;
use phalanx_node::config::{ConfigError, ConfigLayer, NodeConfig};
use phalanx_node::control::NodeService;
use phalanx_node::{Node, NodeBuilder};
use phalanx_secrets::{FileSecret, SecretSource};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Exit status: stopped on request (SIGTERM or SIGINT), cleanly.
pub const EXIT_STOPPED_ON_REQUEST: u8 = 0;
/// Exit status: could not start (store, chain, API address, seed or token), or a second
/// signal cut the shutdown short.
pub const EXIT_START_FAILED: u8 = 1;
/// Exit status: the configuration is invalid (the message names the field), a secret is
/// missing or wrong, the seed is another node's, or the store is not this node's (no
/// identity record: `phalanx init`; another node's or network's).
pub const EXIT_CONFIG: u8 = 2;
/// Exit status (`EX_TEMPFAIL`): the node stopped on its own (lost the lease, fenced, a
/// write failed). Restart the process: it comes back as a standby.
pub const EXIT_NODE_STOPPED: u8 = 75;

/// How long the API may take to finish the requests under way once the node stopped.
pub const API_DRAIN_SECS: u64 = 5;
/// How long resigning the lease may take after the node stopped on its own.
pub const RESIGN_TIMEOUT_SECS: u64 = 10;

/// How log lines are written (on stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Settings: the TOML file given with --config, with every PHALANX_* variable and flag \
winning over it.

Stdout: `api listening on http://ADDR token_file PATH` once the API listens (a standby \
answers GET /v1/state with WAITING_TO_START), then `node started node_id=HEX \
peers=ADDR,... epoch=N` once this instance leads and serves. Logs go to stderr \
(filter: RUST_LOG, default info).

Exit status:
  0   stopped by SIGTERM or SIGINT: state persisted, lease resigned
  1   could not start (store, chain, API address, seed, token file), or a second \
signal cut the shutdown short
  2   invalid configuration (the message names the field); a secret missing or wrong \
(the seed, its passphrase, the API token, the store password; the message names the \
provider); the seed is not expected_node_id's; or the store is not this node's: never \
initialized (run `phalanx init`), or another node's or network's
  75  the node stopped on its own (lost the lease, fenced, a write failed): restart \
it, it comes back as a standby (EX_TEMPFAIL)")]
pub struct NodeArgs {
    /// The TOML configuration file.
    #[arg(long, env = "PHALANX_CONFIG")]
    config: Option<PathBuf>,
    /// Log format, on stderr.
    #[arg(long, value_enum, env = "PHALANX_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    settings: ConfigLayer,
}

/// A resolved configuration, logging started, and the secrets of its `env:` references
/// out of the environment: what [`run`] and [`init`] start from.
pub struct Prepared {
    config: NodeConfig,
    log_format: LogFormat,
}

/// Resolves the configuration, starts logging, and moves the variables that hold
/// secrets (`env:` references, `[seed] provider = "env"`) out of the environment and
/// into the process's vault (see [`phalanx_secrets::env`]). An invalid configuration
/// is reported and answered with [`EXIT_CONFIG`].
///
/// Call it before any thread starts (before the async runtime): it changes the
/// process's environment.
pub fn prepare(args: &NodeArgs) -> Result<Prepared, ExitCode> {
    let config = resolve(args.config.as_deref(), args.settings.clone()).map_err(|err| {
        eprintln!("error: invalid configuration: {err}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    init_tracing(args.log_format);
    // SAFETY: the caller runs this before starting threads (see above); the logging
    // set up just now writes from the calling thread only.
    let taken = unsafe { phalanx_secrets::env::take_from_environment(config.secret_variables()) };
    if !taken.is_empty() {
        tracing::debug!(variables = ?taken, "secrets moved out of the environment");
    }
    Ok(Prepared {
        config,
        log_format: args.log_format,
    })
}

/// Runs the node until it is stopped; returns the exit status (see [`NodeArgs`]).
pub async fn run(prepared: Prepared) -> ExitCode {
    let Prepared {
        config,
        log_format: format,
    } = prepared;
    exit_on_panic();
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(err) => return fatal(format, format!("cannot handle signals: {err}")),
    };

    // The API first, so a standby answers its probe while it campaigns.
    let (tokens, token_source, token_place) = match api_tokens(&config).await {
        Ok(found) => found,
        Err((message, needs_operator)) => {
            let code = fatal(format, message);
            // A missing or malformed token: the operator must act, as for a bad config.
            return if needs_operator {
                ExitCode::from(EXIT_CONFIG)
            } else {
                code
            };
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.api.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            return fatal(
                format,
                format!("cannot listen for the API on {}: {err}", config.api.listen),
            );
        }
    };
    let api_addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => return fatal(format, format!("the API listener has no address: {err}")),
    };
    let service = Arc::new(NodeService::new());
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let (token_sender, token_receiver) = tokio::sync::watch::channel(tokens);
    tokio::spawn(phalanx_api::reload_tokens(
        token_source,
        token_sender,
        config.api.token_reload_interval,
    ));
    let api = tokio::spawn(phalanx_api::serve(
        listener,
        Arc::clone(&service),
        AcceptedTokens::new(token_receiver),
        async move {
            let _ = api_stopped.await;
        },
    ));
    say(&format!("api listening on http://{api_addr} {token_place}"));
    tracing::info!(
        network = %config.network,
        instance = %config.store.instance_id,
        cluster = %config.store.cluster,
        "starting the node (waiting for the lease if another instance holds it)"
    );

    // Campaigning (a standby waits here), then loading: the API tells them apart.
    let node = tokio::select! {
        started = start_node(&config, &service) => match started {
            Ok(node) => node,
            Err(err) => {
                let refused = err.needs_operator();
                let code = fatal(format, format!("cannot start the node: {err}"));
                drain_api(stop_api, api).await;
                // Not this node's store: the operator must act, as for a bad config.
                return if refused { ExitCode::from(EXIT_CONFIG) } else { code };
            }
        },
        signal = signals.next() => {
            tracing::info!(signal, "stopping before the node started");
            drain_api(stop_api, api).await;
            return ExitCode::from(EXIT_STOPPED_ON_REQUEST);
        }
    };
    if service.set_node(Arc::clone(&node)).is_err() {
        // Unreachable: the service is new.
        return fatal(format, "the API already had a node".to_owned());
    }
    let peers: Vec<String> = node
        .listen_addresses()
        .iter()
        .map(ToString::to_string)
        .collect();
    let link = node
        .link_address()
        .map(|address| format!(" link={address}"))
        .unwrap_or_default();
    say(&format!(
        "node started node_id={} peers={} epoch={}{link}",
        node.node_id(),
        peers.join(","),
        node.epoch()
    ));

    let code = tokio::select! {
        signal = signals.next() => {
            tracing::info!(signal, "shutting down: persisting and resigning the lease");
            service.set_stopping();
            tokio::select! {
                () = node.shutdown() => ExitCode::from(EXIT_STOPPED_ON_REQUEST),
                signal = signals.next() => {
                    tracing::error!(signal, "second signal: exiting before the shutdown finished");
                    ExitCode::from(EXIT_START_FAILED)
                }
            }
        }
        reason = node.stopped() => {
            tracing::error!(
                %reason,
                exit_status = EXIT_NODE_STOPPED,
                "the node stopped on its own; exiting so that the process is restarted as a standby"
            );
            service.set_stopping();
            // Hands the lease over at once when it is still ours (it expires otherwise).
            if tokio::time::timeout(Duration::from_secs(RESIGN_TIMEOUT_SECS), node.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("resigning the lease timed out; it will expire");
            }
            ExitCode::from(EXIT_NODE_STOPPED)
        }
    };
    drain_api(stop_api, api).await;
    code
}

/// The API's tokens, where they are read again from, and where that is for the
/// `api listening` line: the secret `[api] token_secret` names, else the token file
/// (made with a new token if it does not exist). An error says whether the operator
/// must act (a missing or malformed token) or a retry may do (a file that cannot be
/// made, an unreachable secrets manager).
async fn api_tokens(
    config: &NodeConfig,
) -> Result<(ApiTokens, Box<dyn SecretSource>, String), (String, bool)> {
    let (source, place): (Box<dyn SecretSource>, String) = match &config.api.token_secret {
        Some(reference) => (
            phalanx_instance::secrets::secret_source(reference, &config.seed.aws).await,
            format!("token_secret {reference}"),
        ),
        None => {
            let token_file = &config.api.token_file;
            for dir in [
                Some(config.data_dir.as_path()),
                token_file.parent().filter(|d| !d.as_os_str().is_empty()),
            ]
            .into_iter()
            .flatten()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|err| (format!("cannot create {}: {err}", dir.display()), false))?;
            }
            phalanx_api::load_or_create_token(token_file).map_err(|err| {
                let needs_operator = !matches!(err, phalanx_api::TokenError::Io { .. });
                (err.to_string(), needs_operator)
            })?;
            (
                Box::new(FileSecret::new(token_file.clone())),
                format!("token_file {}", token_file.display()),
            )
        }
    };
    let tokens = phalanx_api::fetch_tokens(&*source)
        .await
        .map_err(|err| (err.to_string(), !err.is_transient()))?;
    Ok((tokens, source, place))
}

/// Wins the lease, tells the API the node is loading, and builds the node.
async fn start_node(
    config: &NodeConfig,
    service: &NodeService,
) -> Result<Arc<Node>, InstanceError> {
    let won = phalanx_instance::campaign(config, &service.metrics()).await?;
    tracing::info!(epoch = %won.epoch(), "the lease is won; loading the node");
    service.set_loading();
    Ok(won
        .build(NodeBuilder::new(config).metrics(service.metrics()))
        .await?)
}

/// The file's settings under the flags' and the environment's.
fn resolve(file: Option<&std::path::Path>, flags: ConfigLayer) -> Result<NodeConfig, ConfigError> {
    let base = match file {
        Some(path) => ConfigLayer::from_file(path)?,
        None => ConfigLayer::default(),
    };
    flags.over(base).resolve()
}

pub(crate) fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// One line on stdout, flushed at once (supervisors and tests wait for it).
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Makes a panic in any thread or task end the process at once with
/// [`EXIT_NODE_STOPPED`], as a fail-stop does: a node with a dead task must not keep its
/// lease (tokio would otherwise catch the panic and the rest of the node would go on),
/// and a process that exits without writing cannot hurt its channels. The release
/// profile aborts on panic too; this hook runs first and gives the status a supervisor
/// restarts as a standby.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(
            exit_status = EXIT_NODE_STOPPED,
            "a thread panicked: the node stops without writing or broadcasting"
        );
        std::process::exit(i32::from(EXIT_NODE_STOPPED));
    }));
}

/// `phalanx init`: records in the configured store that it is this node's (see
/// [`phalanx_instance::initialize`]). Exit 0 when recorded or already this node's; 2 for an invalid
/// configuration or a store of another node or network; 1 when the store or seed fails.
pub async fn init(prepared: Prepared) -> ExitCode {
    let Prepared { config, log_format } = prepared;
    if let Err(err) = std::fs::create_dir_all(&config.data_dir) {
        return fatal(
            log_format,
            format!("cannot create {}: {err}", config.data_dir.display()),
        );
    }
    match phalanx_instance::initialize(&config).await {
        Ok(done) => {
            let identity = &done.identity;
            say(&format!(
                "{} node_id={} network={} created_at_unix={}",
                if done.created {
                    "initialized"
                } else {
                    "already initialized"
                },
                identity.node_id,
                identity.network,
                identity.created_at_unix
            ));
            ExitCode::SUCCESS
        }
        Err(err) if err.needs_operator() => {
            fatal(log_format, format!("cannot initialize: {err}"));
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) => fatal(log_format, format!("cannot initialize: {err}")),
    }
}

/// Reports why the process cannot go on; returns [`EXIT_START_FAILED`].
fn fatal(format: LogFormat, message: String) -> ExitCode {
    match format {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => tracing::error!(error = %message, "exiting"),
    }
    ExitCode::from(EXIT_START_FAILED)
}

/// Stops the API, giving the requests under way [`API_DRAIN_SECS`] to finish.
async fn drain_api(
    stop: tokio::sync::oneshot::Sender<()>,
    api: tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(API_DRAIN_SECS), api).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::warn!(error = %err, "the API server failed"),
        Ok(Err(err)) => tracing::warn!(error = %err, "the API server task failed"),
        Err(_) => tracing::warn!("requests still under way when the API stopped"),
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
