//! `phalanx seed`: make, encrypt, decrypt a seed file, and tell a seed's node id.
//!
//! Nothing here prints a seed or a passphrase: seeds go to new files of mode 0600
//! (never over an existing file), passphrases come from a file or a variable (never a
//! flag, which every user of the machine can read in the process list).
//!
//! Exit status: 0 done; 1 a file could not be written or read; 2 bad input (a wrong
//! passphrase, a corrupt file, a missing setting).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use phalanx_node::config::{ConfigLayer, SeedLayer};
use phalanx_secrets::encrypted::{self, KdfCost};
use phalanx_secrets::{
    EnvSecret, FileSecret, FileSeedProvider, Passphrase, SecretSource, SecretsError, Seed,
    SeedProvider, write_new_private_file,
};

/// Exit status: bad input.
const EXIT_INPUT: u8 = 2;

/// `phalanx seed`.
#[derive(Subcommand, Debug)]
pub enum SeedCommand {
    /// Make a new random seed in a new file: plain (64 bytes, mode 0600), or encrypted
    /// with --encrypt. Prints its node id.
    New(NewArgs),
    /// Encrypt a plain seed file into a new file (the plain one is left as it is).
    Encrypt(ConvertArgs),
    /// Decrypt an encrypted seed file into a new plain file (mode 0600).
    Decrypt(ConvertArgs),
    /// Print the node id of the configured seed, from any provider (exit 2 if it is
    /// not `[seed] expected_node_id`).
    NodeId(NodeIdArgs),
}

/// Where the passphrase is.
#[derive(Args, Debug, Clone)]
pub struct PassphraseArgs {
    /// A file (mode 0600) holding the passphrase (a trailing newline is not part of it).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// A variable holding the passphrase.
    #[arg(long)]
    passphrase_env: Option<String>,
}

/// `phalanx seed new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// The new file (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Encrypt it with the passphrase.
    #[arg(long)]
    encrypt: bool,
    #[command(flatten)]
    passphrase: PassphraseArgs,
}

/// `phalanx seed encrypt` and `decrypt`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The file to read.
    #[arg(long = "in")]
    input: PathBuf,
    /// The new file (must not exist).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    passphrase: PassphraseArgs,
}

/// `phalanx seed node-id`.
#[derive(Args, Debug)]
pub struct NodeIdArgs {
    /// A node's TOML configuration: its `[seed]` section (and `data_dir`) are used.
    #[arg(long, env = "PHALANX_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory (where the default seed file is), over the file's.
    #[arg(long, env = "PHALANX_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    seed: SeedLayer,
}

/// Runs `command`; returns the exit status.
pub async fn run(command: SeedCommand) -> ExitCode {
    match execute(command).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(Failure::Input(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_INPUT)
        }
        Err(Failure::Io(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Input(String),
    Io(String),
}

impl From<SecretsError> for Failure {
    fn from(err: SecretsError) -> Self {
        match err {
            SecretsError::Io { .. } => Self::Io(err.to_string()),
            other => Self::Input(other.to_string()),
        }
    }
}

async fn execute(command: SeedCommand) -> Result<String, Failure> {
    match command {
        SeedCommand::New(args) => {
            let seed = Seed::generate().map_err(|e| Failure::Io(format!("no randomness: {e}")))?;
            if args.encrypt {
                let passphrase = passphrase(&args.passphrase).await?;
                encrypt_to(&args.out, &seed, passphrase).await?;
            } else {
                if args.passphrase.passphrase_file.is_some()
                    || args.passphrase.passphrase_env.is_some()
                {
                    return Err(Failure::Input(
                        "a passphrase was given without --encrypt".to_owned(),
                    ));
                }
                write_new_private_file(&args.out, seed.as_bytes())?;
            }
            Ok(format!(
                "{} node_id={}",
                args.out.display(),
                phalanx_node::identity::node_id_of(&seed)
            ))
        }
        SeedCommand::Encrypt(args) => {
            let seed = FileSeedProvider::new(&args.input, false).seed().await?;
            let passphrase = passphrase(&args.passphrase).await?;
            encrypt_to(&args.out, &seed, passphrase).await?;
            Ok(format!(
                "{} node_id={}",
                args.out.display(),
                phalanx_node::identity::node_id_of(&seed)
            ))
        }
        SeedCommand::Decrypt(args) => {
            let source = passphrase_source(&args.passphrase)?;
            let seed = phalanx_secrets::EncryptedFileSeedProvider::new(&args.input, source)
                .seed()
                .await?;
            write_new_private_file(&args.out, seed.as_bytes())?;
            Ok(format!(
                "{} node_id={}",
                args.out.display(),
                phalanx_node::identity::node_id_of(&seed)
            ))
        }
        SeedCommand::NodeId(args) => {
            let (file_seed, data_dir) = match &args.config {
                Some(path) => {
                    let file = ConfigLayer::from_file(path)
                        .map_err(|err| Failure::Input(err.to_string()))?;
                    (file.seed, file.data_dir)
                }
                None => (SeedLayer::default(), None),
            };
            let data_dir = args
                .data_dir
                .or(data_dir)
                .unwrap_or_else(|| PathBuf::from("phalanx-data"));
            let config = args
                .seed
                .over(file_seed)
                .resolve(&data_dir)
                .map_err(|err| Failure::Input(format!("invalid configuration: {err}")))?;
            let provider = phalanx_instance::secrets::seed_provider(&config, false).await;
            let seed = provider.seed().await.map_err(|err| {
                let message = format!("seed (provider {}): {err}", config.source.provider());
                if matches!(err, SecretsError::Io { .. }) || err.is_transient() {
                    Failure::Io(message)
                } else {
                    Failure::Input(message)
                }
            })?;
            let node_id = phalanx_node::identity::node_id_of(&seed);
            if let Some(expected) = config.expected_node_id
                && expected != node_id
            {
                return Err(Failure::Input(format!(
                    "the seed from {} is node {node_id}, but [seed] expected_node_id is {expected}",
                    provider.describe()
                )));
            }
            Ok(node_id.to_string())
        }
    }
}

fn passphrase_source(args: &PassphraseArgs) -> Result<Box<dyn SecretSource>, Failure> {
    match (&args.passphrase_file, &args.passphrase_env) {
        (Some(path), None) => Ok(Box::new(FileSecret::new(path.clone()))),
        (None, Some(name)) => Ok(Box::new(EnvSecret::new(name.clone()))),
        (Some(_), Some(_)) => Err(Failure::Input(
            "give --passphrase-file or --passphrase-env, not both".to_owned(),
        )),
        (None, None) => Err(Failure::Input(
            "give the passphrase with --passphrase-file or --passphrase-env (never on the command line)"
                .to_owned(),
        )),
    }
}

async fn passphrase(args: &PassphraseArgs) -> Result<Passphrase, Failure> {
    let source = passphrase_source(args)?;
    Ok(Passphrase::fetch(&*source).await?)
}

async fn encrypt_to(out: &Path, seed: &Seed, passphrase: Passphrase) -> Result<(), Failure> {
    let out = out.to_owned();
    let seed = seed.clone();
    // Argon2 takes a quarter of a second of CPU: off the async threads.
    tokio::task::spawn_blocking(move || {
        encrypted::write_encrypted(&out, &seed, &passphrase, KdfCost::DEFAULT)
    })
    .await
    .map_err(|e| Failure::Io(format!("the encryption task failed: {e}")))??;
    Ok(())
}
