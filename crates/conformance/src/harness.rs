//! How the suite reaches each backend: a fresh, empty store per test, on a real server
//! shared by the tests of one process.

use std::time::Duration;

use phalanx_cluster::LeaseTimings;
use phalanx_testkit::{etcd, postgres, process, unique_name};

/// A backend under test.
pub trait Harness: Send + Sync {
    /// The backend's name, for messages.
    fn name(&self) -> &'static str;

    /// The URL of a new, empty store that no other test uses.
    fn fresh_url(&self) -> String;

    /// The lease TTL lease tests request: the shortest the backend handles well.
    fn ttl(&self) -> Duration {
        Duration::from_millis(600)
    }

    /// Lease timings for driver tests, scaled from [`ttl`](Self::ttl).
    fn timings(&self) -> LeaseTimings {
        let ttl = self.ttl();
        LeaseTimings {
            ttl,
            renew_interval: ttl / 8,
            safety_margin: ttl / 4,
            retry_interval: ttl / 10,
        }
    }

    /// True when a holder that stops renewing keeps the lease until its process ends
    /// (SQLite's file lock), false when the lease expires after its TTL.
    fn lease_is_a_process_lock(&self) -> bool {
        false
    }
}

/// Sets up logging for a test.
pub fn init() {
    phalanx_testkit::init_tracing();
}

/// SQLite: a new database file in a scratch directory per test.
pub struct Sqlite;

impl Harness for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn fresh_url(&self) -> String {
        let dir = process::scratch_dir("sqlite").expect("scratch dir");
        format!("sqlite://{}/node.db", dir.display())
    }

    fn lease_is_a_process_lock(&self) -> bool {
        true
    }
}

/// PostgreSQL: a new database per test on the process's shared server.
pub struct Postgres;

impl Harness for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn fresh_url(&self) -> String {
        postgres::shared()
            .fresh_database()
            .expect("create a test database")
    }
}

/// etcd: a new key prefix per test on the process's shared server.
pub struct Etcd;

impl Harness for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn fresh_url(&self) -> String {
        etcd::shared().url(&unique_name("t"))
    }

    fn ttl(&self) -> Duration {
        // etcd leases are whole seconds.
        Duration::from_secs(1)
    }
}
