//! Tests of the parent module.

use super::*;

fn layer(toml: &str) -> ConfigLayer {
    ConfigLayer::from_toml(toml).unwrap()
}

#[test]
fn a_full_file_resolves() {
    let config = layer(
        r#"
        network = "regtest"
        data_dir = "/data"
        [store]
        url = "postgres://u@db/phalanx"
        cluster = "node-a"
        instance_id = "host-1"
        [chain]
        rpc_url = "http://alice:p%40ss@127.0.0.1:18443"
        rest_url = "http://127.0.0.1:18443/rest/"
        poll_interval_ms = 250
        [lightning]
        listen = ["127.0.0.1:9735", "[::1]:9736"]
        alias = "phalanx"
        forward_delay_ms = 0
        [api]
        listen = "127.0.0.1:9090"
        [seed]
        file = "/secrets/seed"
        [cluster]
        enabled = true
        "#,
    )
    .resolve()
    .unwrap();
    assert_eq!(config.network, Network::Regtest);
    assert!(config.store.cluster_enabled);
    assert_eq!(config.store.url, "postgres://u@db/phalanx");
    assert_eq!(config.store.cluster.as_str(), "node-a");
    assert_eq!(config.chain.rpc_url, "http://127.0.0.1:18443");
    assert_eq!(
        (
            config.chain.rpc_user.as_str(),
            config.chain.rpc_password.as_str()
        ),
        ("alice", "p@ss")
    );
    assert_eq!(
        config.chain.rest_url.as_deref(),
        Some("http://127.0.0.1:18443/rest")
    );
    assert_eq!(config.chain.poll_interval, Duration::from_millis(250));
    assert_eq!(config.lightning.listen.len(), 2);
    assert_eq!(config.lightning.forward_delay, Duration::ZERO);
    assert_eq!(config.api.token_file, PathBuf::from("/data/api-token"));
    assert_eq!(config.seed_file, PathBuf::from("/secrets/seed"));
}

#[test]
fn defaults_fill_the_rest() {
    let config = layer("network = \"regtest\"\n[chain]\nrpc_url = \"http://u:p@localhost:18443\"")
        .resolve()
        .unwrap();
    assert_eq!(config.store.url, "sqlite://phalanx-data/node.db");
    assert_eq!(config.api.listen.to_string(), DEFAULT_API_LISTEN);
    assert_eq!(config.lightning.listen[0].to_string(), DEFAULT_LISTEN);
    assert_eq!(config.seed_file, PathBuf::from("phalanx-data/seed"));
    assert!(!config.store.cluster_enabled, "one instance unless asked");
    assert_eq!(config.store.lease, LeaseTimings::default());
}

#[test]
fn lease_timings_are_set_and_checked_together() {
    let base = "network = \"regtest\"\n[chain]\nrpc_url = \"http://u:p@h:1\"\n[cluster]\n";
    let config = layer(&format!(
        "{base}lease_ttl_ms = 1500\nlease_renew_interval_ms = 250\nlease_safety_margin_ms = 500"
    ))
    .resolve()
    .unwrap();
    assert_eq!(config.store.lease.ttl, Duration::from_millis(1500));
    assert_eq!(
        config.store.lease.renew_interval,
        Duration::from_millis(250)
    );
    assert_eq!(config.store.lease.safety_margin, Duration::from_millis(500));
    // A TTL alone keeps the default margin (1 s) and renewal (0.5 s): too short.
    let err = layer(&format!("{base}lease_ttl_ms = 1000"))
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cluster.lease_ttl_ms:"), "{err}");
    assert!(err.contains("margin"), "{err}");
    let err = layer(&format!(
        "{base}lease_ttl_ms = 4000\nlease_renew_interval_ms = 2000"
    ))
    .resolve()
    .unwrap_err()
    .to_string();
    assert!(err.contains("renew interval"), "{err}");
    let err = ConfigLayer::from_toml("[cluster]\nlease_ttl_ms = -1").unwrap_err();
    assert!(err.contains("lease_ttl_ms"), "{err}");
}

#[test]
fn flags_win_over_the_file() {
    let file = layer(
        "network = \"mainnet\"\n[chain]\nrpc_url = \"http://u:p@h:1\"\n[api]\nlisten = \"127.0.0.1:1\"",
    );
    let flags = ConfigLayer {
        network: Some("regtest".into()),
        api: ApiLayer {
            api_listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let config = flags.over(file).resolve().unwrap();
    assert_eq!(config.network, Network::Regtest);
    assert_eq!(config.api.listen.port(), 2);
    assert_eq!(config.chain.rpc_user, "u");
}

#[test]
fn each_bad_field_is_named() {
    let base = "[chain]\nrpc_url = \"http://u:p@h:1\"\n";
    for (toml, needle) in [
        ("", "network: required"),
        ("network = \"moon\"", "network: \"moon\" is not one of"),
        ("network = \"regtest\"", "chain.rpc_url: required"),
        (
            "network = \"regtest\"\n[chain]\nrpc_url = \"localhost:1\"",
            "chain.rpc_url:",
        ),
        (
            "network = \"regtest\"\n[chain]\nrpc_url = \"ftp://h:1\"",
            "must be an http",
        ),
        (
            "network = \"regtest\"\n[chain]\nrpc_url = \"http://h:1\"",
            "chain.rpc_user: required",
        ),
        (
            &format!("network = \"regtest\"\n{base}poll_interval_ms = 1"),
            "chain.poll_interval_ms",
        ),
        (
            &format!("network = \"regtest\"\n{base}[lightning]\nlisten = [\"nope\"]"),
            "lightning.listen",
        ),
        (
            &format!("network = \"regtest\"\n{base}[api]\nlisten = \"8080\""),
            "api.listen",
        ),
        (
            &format!("network = \"regtest\"\n{base}[store]\ncluster = \"a/b\""),
            "store.cluster",
        ),
        (
            &format!("network = \"regtest\"\n{base}[store]\ninstance_id = \"has space\""),
            "store.instance_id",
        ),
    ] {
        let err = layer(toml).resolve().unwrap_err().to_string();
        assert!(err.contains(needle), "{toml:?}: {err}");
    }
}

#[test]
fn unknown_and_mistyped_keys_are_refused_with_their_location() {
    let err =
        ConfigLayer::from_toml("network = \"regtest\"\n[chain]\nrpc_ulr = \"x\"").unwrap_err();
    assert!(err.contains("unknown field `rpc_ulr`"), "{err}");
    let err = ConfigLayer::from_toml("[chain]\npoll_interval_ms = \"fast\"").unwrap_err();
    assert!(err.contains("poll_interval_ms"), "{err}");
    let err = ConfigLayer::from_toml("[cluster]\nenabled = \"yes\"").unwrap_err();
    assert!(err.contains("enabled"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = ConfigLayer::from_file(&dir.path().join("missing.toml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot read the configuration file"),
        "{err}"
    );
}
