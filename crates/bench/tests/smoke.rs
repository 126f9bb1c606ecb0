//! The benchmark binary runs and prints what docs/BENCHMARKS.md relies on (the figures
//! themselves are measured by running it, not here).

use std::process::Command;

/// Runs `phalanx-bench args...`, which must succeed, and parses each line of its
/// output as a JSON object.
fn bench_lines(args: &[&str]) -> Vec<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_phalanx-bench"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn store_bench_prints_one_json_object_per_case() {
    // Long enough that a loaded machine still completes a write of the 16 queued on
    // SQLite's one writer inside the window (0.2 s once counted none).
    let lines = bench_lines(&["store", "--backend", "sqlite", "--seconds", "1", "--json"]);
    let cases: Vec<(String, u64, u64)> = lines
        .iter()
        .map(|r| {
            (
                r["op"].as_str().unwrap().to_owned(),
                r["value_bytes"].as_u64().unwrap(),
                r["concurrency"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cases,
        [
            ("write".to_owned(), 1024, 1),
            ("write".to_owned(), 1024, 16),
            ("write".to_owned(), 1048576, 1),
            ("read".to_owned(), 1024, 1),
            ("read".to_owned(), 1024, 16)
        ]
    );
    for result in &lines {
        assert_eq!(result["bench"], "store");
        assert_eq!(result["backend"], "sqlite");
        assert!(result["ops_per_s"].as_f64().unwrap() > 0.0, "{result}");
        assert!(result["p99_ms"].as_f64().unwrap() >= result["p50_ms"].as_f64().unwrap());
    }
}

/// The payments bench: a line per concurrency level, every payment succeeding, and what
/// each payment made the nodes write to their stores, the manager and the monitors
/// among it.
#[test]
fn payments_bench_prints_a_line_per_level_with_the_bytes_written_per_payment() {
    let lines = bench_lines(&[
        "payments",
        "--backend",
        "sqlite",
        "--payments",
        "15",
        "--concurrency",
        "1,5",
        "--json",
    ]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (result, concurrency) in lines.iter().zip([1, 5]) {
        assert_eq!(result["bench"], "payments");
        assert_eq!(result["concurrency"], concurrency);
        assert_eq!(
            (result["payments"].as_u64(), result["failed"].as_u64()),
            (Some(15), Some(0)),
            "{result}"
        );
        let bytes = |field: &str| result[field].as_f64().unwrap();
        let (manager, monitor) = (
            bytes("payer_manager_bytes_per_payment"),
            bytes("payer_monitor_bytes_per_payment"),
        );
        assert!(manager > 0.0 && monitor > 0.0, "{result}");
        assert!(
            bytes("payer_bytes_per_payment") >= manager + monitor,
            "{result}"
        );
        assert!(bytes("payee_bytes_per_payment") > 0.0, "{result}");
    }
}

#[test]
fn front_bench_prints_a_line_per_path_and_case() {
    let lines = bench_lines(&[
        "front",
        "--handshakes",
        "4",
        "--payments",
        "4",
        "--concurrency",
        "2",
        "--json",
    ]);
    let paths: Vec<&str> = lines.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["direct", "keyless-front", "keyed-front", "direct", "front"]
    );
    for result in &lines {
        assert_eq!(result["bench"], "front");
    }
    for handshakes in &lines[..3] {
        assert_eq!(handshakes["handshakes"], 4);
        assert!(handshakes["handshake_p50_ms"].as_f64().unwrap() > 0.0);
    }
    for payments in &lines[3..] {
        assert_eq!(
            (payments["payments"].as_u64(), payments["failed"].as_u64()),
            (Some(4), Some(0))
        );
        assert!(
            payments["payments_per_s"].as_f64().unwrap() > 0.0,
            "{payments}"
        );
    }
}

#[test]
fn front_bench_measures_gossip_ingest_through_a_front_process() {
    let lines = bench_lines(&[
        "front",
        "--handshakes",
        "0",
        "--payments",
        "0",
        "--gossip-channels",
        "300",
        "--gossip-nodes",
        "100",
        "--gossip-payments-before",
        "3",
        "--json",
    ]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let result = &lines[0];
    assert_eq!(result["path"], "gossip-ingest");
    // 300 channels, two updates each, 100 nodes: each handed to the backend once.
    assert_eq!(result["messages"], 1000);
    assert_eq!(result["to_backend"], 1000);
    for field in ["messages_per_s", "front_cpu_s", "front_peak_rss_mb"] {
        assert!(result[field].as_f64().unwrap() > 0.0, "{field}: {result}");
    }
    // The payers beside the ingest, through the front and direct: their baselines, then
    // what they paid during the flood.
    for (beside, via) in lines[1..].iter().zip(["front", "direct"]) {
        assert_eq!(beside["path"], "payments-during-ingest");
        assert_eq!(beside["via"], via);
        assert_eq!(beside["payments_before"], 3);
        assert_eq!(beside["failed"], 0);
        for field in ["p50_ms_before", "p99_ms_before"] {
            assert!(beside[field].as_f64().unwrap() > 0.0, "{field}: {beside}");
        }
    }
}
