//! The conformance suite on sqlite.

phalanx_conformance::conformance_tests!(phalanx_conformance::factory::Sqlite);

use std::time::Duration;

use nix::sys::signal::Signal;
use phalanx_conformance::StoreFactory;
use phalanx_conformance::factory::Sqlite;
use phalanx_conformance::holder::{HolderProcess, WriteMode};

/// kill -9 of a holder writing through a replica: every acknowledged write is in both
/// files, and both pass SQLite's integrity check.
#[test]
fn replica_has_every_acknowledged_write_after_kill_9() {
    phalanx_conformance::factory::init();
    let main_dir = phalanx_testkit::process::scratch_dir("sqlite-main").unwrap();
    let replica_dir = phalanx_testkit::process::scratch_dir("sqlite-replica").unwrap();
    let main = main_dir.join("node.db");
    let replica = replica_dir.join("node.db");
    let url = format!("sqlite://{}?replica={}", main.display(), replica.display());
    for round in 0..3 {
        let mut holder = HolderProcess::spawn(
            std::path::Path::new(env!("CARGO_BIN_EXE_phalanx-store-holder")),
            &url,
            &format!("round{round}"),
            Sqlite.timings(),
            WriteMode::Keys,
        );
        holder.wait_leader(Duration::from_secs(20));
        // A holder starved past its deadline fences itself first; what it acknowledged
        // must be in both files all the same.
        holder.wait_acked_unless_fenced(
            50 + rand::random::<u32>() as usize % 200,
            Duration::from_secs(30),
        );
        holder.signal(Signal::SIGKILL);
        holder.wait_exit(Duration::from_secs(10));
        let acked = holder.acked();
        for path in [&main, &replica] {
            let conn = rusqlite::Connection::open(path).unwrap();
            let check: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok", "round {round}: {}", path.display());
            let mut stmt = conn
                .prepare("SELECT key FROM phalanx_kv WHERE primary_ns = 'keys'")
                .unwrap();
            let keys: std::collections::HashSet<String> = stmt
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            // This round's holder wrote k1, k2 ... again over the previous rounds' keys.
            for n in &acked {
                assert!(
                    keys.contains(&format!("k{n}")),
                    "round {round}: write {n} missing from {}",
                    path.display()
                );
            }
        }
    }
}
