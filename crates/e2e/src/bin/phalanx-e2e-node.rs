//! `phalanx node`, `phalanx init` and `phalanx front` as the end-to-end scenarios run
//! them: the same code (`phalanx_cli::node_cmd`, `phalanx_cli::front_cmd`), in a binary of this crate so that its tests can name it
//! (`env!("CARGO_BIN_EXE_phalanx-e2e-node")`, see `phalanx_e2e::node_binary!`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phalanx_cli::front_cmd::{self, FrontArgs};
use phalanx_cli::node_cmd::{self, NodeArgs};

#[derive(Parser, Debug)]
#[command(
    name = "phalanx-e2e-node",
    about = "phalanx node, init and front, for the scenarios"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// `phalanx node`.
    Node(Box<NodeArgs>),
    /// `phalanx init`.
    Init(Box<NodeArgs>),
    /// `phalanx front`.
    Front(Box<FrontArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime's threads start: `prepare` takes secrets out of the environment.
    let prepared = match &cli.command {
        Command::Node(args) | Command::Init(args) => match node_cmd::prepare(args) {
            Ok(prepared) => Some(prepared),
            Err(code) => return code,
        },
        Command::Front(_) => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match (cli.command, prepared) {
        (Command::Front(args), _) => runtime.block_on(front_cmd::run(*args)),
        (Command::Node(_), Some(prepared)) => runtime.block_on(node_cmd::run(prepared)),
        (Command::Init(_), Some(prepared)) => runtime.block_on(node_cmd::init(prepared)),
        (Command::Node(_) | Command::Init(_), None) => unreachable!("prepared above"),
    }
}
