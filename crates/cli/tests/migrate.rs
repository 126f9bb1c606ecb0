//! `phalanx migrate` as an operator runs it: SQLite to PostgreSQL, then the refusals.

use std::process::Command;

fn phalanx(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(args)
        .env_remove("PHALANX_CLUSTER")
        .output()
        .expect("phalanx runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_node_is_moved_once_and_its_old_store_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/node.db", dir.path().display());
    let postgres = phalanx_testkit::postgres::shared()
        .fresh_database()
        .expect("a PostgreSQL database");
    let config = dir.path().join("phalanx.toml");
    std::fs::write(
        &config,
        format!(
            "network = \"regtest\"\ndata_dir = \"{}\"\n[store]\nurl = \"{sqlite}\"\ncluster = \"moved\"\n[chain]\nrpc_url = \"http://u:p@127.0.0.1:1\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (status, out, err) = phalanx(&["init", "--config", config]);
    assert_eq!(status, Some(0), "{err}");
    let node_id = out
        .split_whitespace()
        .find_map(|f| f.strip_prefix("node_id="))
        .unwrap()
        .to_owned();

    let (status, out, err) = phalanx(&[
        "migrate",
        "--from",
        &sqlite,
        "--to",
        &postgres,
        "--cluster",
        "moved",
    ]);
    assert_eq!(status, Some(0), "{err}");
    assert!(
        out.starts_with(&format!("migrated node_id={node_id} keys=")),
        "{out}"
    );

    // Again: the source was moved; into a store that is not empty: refused.
    let (status, _, err) = phalanx(&[
        "migrate",
        "--from",
        &sqlite,
        "--to",
        &postgres,
        "--cluster",
        "moved",
    ]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("was migrated"), "{err}");
    let other = format!("sqlite://{}/other.db", dir.path().display());
    let (status, _, err) = phalanx(&[
        "migrate",
        "--from",
        &postgres,
        "--to",
        &sqlite,
        "--cluster",
        "moved",
    ]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("only into an empty store"), "{err}");
    let (status, _, err) = phalanx(&[
        "migrate",
        "--from",
        &other,
        "--to",
        &postgres,
        "--cluster",
        "moved",
    ]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("holds no node identity"), "{err}");
    let (status, _, err) = phalanx(&["migrate", "--from", "mysql://x", "--to", &postgres]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("--from"), "{err}");

    // The node refuses its old store (exit 2), before the chain is ever asked.
    let (status, _, err) = phalanx(&["node", "--config", config]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("was migrated"), "{err}");
    // And `init` will not make it a new node either.
    let (status, _, err) = phalanx(&["init", "--config", config]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("was migrated"), "{err}");
}
