//! Phalanx's end-to-end harness, shared by the tests of every crate, the scenarios of
//! this crate (`tests/scenarios`, one file per disruption) and the benchmarks.
//!
//! - [`chain`]: a regtest chain, in process and over its RPC.
//! - [`nodes`]: in-process nodes brought to funded, usable channels in a line each
//!   (panicking wrappers over `phalanx_devnet::harness`, which the devnet runs too).
//! - [`process`]: `phalanx node` as a child process: its configuration file, its
//!   stdout lines, its API, signals, and its logs when a test fails.
//! - [`api`]: driving a node over its API while it may vanish.
//! - [`stream`]: a stream of payments both ways that records every attempt.
//! - [`world`]: what a scenario starts from: the chain, Bob, Alice's store and channel.
//! - [`cluster`]: a node run as several instances, disrupted round after round.
//! - [`scenario`]: the scenario drivers the tests in `tests/scenarios` run.
//! - [`invariants`]: the named checks every scenario must leave true; each returns its
//!   violations, tests assert the list is empty, benchmarks count and print it.

#![warn(missing_docs)]

pub mod api;
pub mod chain;
pub mod cluster;
pub mod fronts;
pub mod invariants;
pub mod nodes;
pub mod process;
pub mod scenario;
pub mod stream;
pub mod world;

pub use phalanx_devnet::harness::STEP_TIMEOUT;

/// The node binary of this crate (`phalanx node` and `phalanx init`), for its own tests:
/// `env!` is expanded in the test, where Cargo sets it.
#[macro_export]
macro_rules! node_binary {
    () => {
        $crate::process::NodeBinary::new(env!("CARGO_BIN_EXE_phalanx-e2e-node"))
    };
}
