//! The conformance suite of Phalanx's state store backends.
//!
//! One list of tests ([`suite`]) runs against every backend through
//! [`conformance_tests!`], each on a real server the test process starts (see
//! `phalanx-testkit`). The tests get their stores from the backend's
//! [`StoreFactory`], never from a URL of their own. A backend's
//! test file is one macro call plus the tests only that backend needs (restarting its
//! server, the SQLite replica):
//!
//! ```ignore
//! phalanx_conformance::conformance_tests!(phalanx_conformance::factory::Postgres);
//! ```
//!
//! The crash tests run the lease holder in a child process (the `phalanx-store-holder`
//! binary of this package, driven through [`holder`]), so it can be paused with SIGSTOP
//! and killed with SIGKILL.

#![warn(missing_docs)]

pub mod factory;
pub mod holder;
pub mod restart;
pub mod suite;

use std::sync::Arc;
use std::time::Duration;

pub use phalanx_store::testing::{must_win, try_win, win_within};
use phalanx_store::{ClusterName, Store, StoreOptions};

pub use factory::StoreFactory;

/// Opens a handle on `url` for `cluster` with test timeouts, for the tests that start a
/// server of their own (the restart tests); suite tests use their
/// [`StoreFactory`].
pub async fn open(url: &str, cluster: &str) -> Arc<dyn Store> {
    phalanx_store_connect::connect(url, store_options(cluster))
        .await
        .unwrap_or_else(|err| panic!("open {url}: {}", err.report()))
}

/// Store options for tests: short timeouts so a hang shows up quickly.
pub fn store_options(cluster: &str) -> StoreOptions {
    let mut options = StoreOptions::new(ClusterName::new(cluster).expect("valid cluster name"));
    options.connect_timeout = Duration::from_secs(3);
    options.operation_timeout = Duration::from_secs(5);
    options
}

/// Runs the whole conformance suite as `#[tokio::test]`s against `$factory` (an
/// expression whose type implements [`StoreFactory`]).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            crud_round_trip,
            a_late_write_never_lands_over_a_newer_one,
            a_write_sequence_past_i64_is_refused,
            listing_is_per_namespace,
            invalid_keys_are_refused,
            values_of_32_mib_round_trip,
            oversized_values_are_refused_and_write_nothing,
            batches_are_atomic,
            a_snapshot_holds_every_key_of_the_cluster,
            a_snapshot_is_one_state_while_batches_commit,
            fenced_batches_write_nothing,
            concurrent_writes_to_one_key_leave_one_of_them,
            read_after_write_across_handles,
            ldk_kv_store_orders_writes_by_call,
            ldk_kv_store_refuses_after_leadership_ends,
            exactly_one_of_several_campaigners_wins,
            epochs_increase_and_are_recorded,
            a_stale_token_of_the_same_holder_is_fenced,
            an_unrenewed_lease_passes_to_the_other_campaigner,
            renewals_keep_the_lease,
            resigning_hands_over_within_a_second,
            writes_racing_a_takeover_are_fenced,
            clusters_on_one_store_are_separate,
            campaigners_and_self_fencing_on_the_backend,
            a_holder_paused_past_its_ttl_is_fenced_when_it_resumes,
            kill_9_loses_no_acknowledged_write,
            no_call_hangs_when_the_link_is_cut,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::factory::init();
                let env = $crate::suite::Env {
                    factory: &$factory,
                    holder_binary: ::std::path::Path::new(env!("CARGO_BIN_EXE_phalanx-store-holder")),
                };
                $crate::suite::$name(&env).await;
            }
        )*
    };
}
