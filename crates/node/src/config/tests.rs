//! Tests of the parent module.

use super::*;
use phalanx_secrets::SecretRef;

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
    assert_eq!(
        config.seed.source,
        SeedSource::File {
            path: PathBuf::from("/secrets/seed")
        }
    );
}

#[test]
fn defaults_fill_the_rest() {
    let config = layer("network = \"regtest\"\n[chain]\nrpc_url = \"http://u:p@localhost:18443\"")
        .resolve()
        .unwrap();
    assert_eq!(config.store.url, "sqlite://phalanx-data/node.db");
    assert_eq!(config.api.listen.to_string(), DEFAULT_API_LISTEN);
    assert_eq!(config.lightning.listen[0].to_string(), DEFAULT_LISTEN);
    assert_eq!(
        config.seed.source,
        SeedSource::File {
            path: PathBuf::from("phalanx-data/seed")
        }
    );
    assert_eq!(config.seed.expected_node_id, None);
    assert_eq!(config.backup_dir, None);
    assert_eq!(config.backup_options, BackupOptions::default());
    assert!(
        !config.backup_options.alert_only,
        "a failed stream stops the node"
    );
    assert_eq!(config.api.token_secret, None);
    assert_eq!(
        config.api.token_reload_interval,
        Duration::from_millis(DEFAULT_TOKEN_RELOAD_INTERVAL_MS)
    );
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

const BASE: &str = "network = \"regtest\"\n[chain]\nrpc_url = \"http://u:p@h:1\"\n";

fn resolve_with(extra: &str) -> Result<NodeConfig, ConfigError> {
    layer(&format!("{BASE}{extra}")).resolve()
}

#[test]
fn each_seed_provider_resolves_with_its_settings() {
    let node_id = "02eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1f283686619";
    let env = resolve_with(&format!(
        "[seed]\nprovider = \"env\"\nexpected_node_id = \"{node_id}\""
    ))
    .unwrap();
    assert_eq!(
        env.seed.source,
        SeedSource::Env {
            var: "PHALANX_SEED_HEX".into()
        }
    );
    assert_eq!(env.seed.expected_node_id.unwrap().to_string(), node_id);
    assert_eq!(env.secret_variables(), vec!["PHALANX_SEED_HEX"]);

    let encrypted = resolve_with(
        "[seed]\nprovider = \"encrypted-file\"\nfile = \"/s/seed.enc\"\npassphrase_env = \"PASS\"",
    )
    .unwrap();
    assert_eq!(
        encrypted.seed.source,
        SeedSource::EncryptedFile {
            path: "/s/seed.enc".into(),
            passphrase: SecretRef::Env("PASS".into())
        }
    );

    let aws = resolve_with(
        "[seed]\nprovider = \"aws-secrets-manager\"\naws_secret_id = \"phalanx/seed\"\naws_region = \"eu-west-1\"\naws_endpoint_url = \"http://127.0.0.1:5000/\"\n[api]\ntoken_secret = \"env:TOKEN\"\n[store]\nurl = \"postgres://phalanx@db/p\"\npassword_secret = \"aws-secrets-manager:phalanx/pg\"",
    )
    .unwrap();
    assert_eq!(
        aws.seed.source,
        SeedSource::AwsSecretsManager {
            secret_id: "phalanx/seed".into()
        }
    );
    assert_eq!(aws.seed.aws.region.as_deref(), Some("eu-west-1"));
    assert_eq!(
        aws.seed.aws.endpoint_url.as_deref(),
        Some("http://127.0.0.1:5000")
    );
    assert_eq!(aws.api.token_secret, Some(SecretRef::Env("TOKEN".into())));
    assert_eq!(
        aws.store.password_secret,
        Some(SecretRef::AwsSecretsManager("phalanx/pg".into()))
    );
    assert_eq!(aws.secret_variables(), vec!["TOKEN"]);
}

#[test]
fn wrong_seed_and_secret_settings_name_their_field() {
    for (extra, expected) in [
        (
            "[seed]\nprovider = \"vault\"",
            "seed.provider: \"vault\" is not one of",
        ),
        (
            "[seed]\nprovider = \"aws-secrets-manager\"",
            "seed.aws_secret_id: provider aws-secrets-manager needs",
        ),
        (
            "[seed]\nprovider = \"encrypted-file\"",
            "seed.passphrase_file: provider encrypted-file needs",
        ),
        (
            "[seed]\nprovider = \"encrypted-file\"\npassphrase_file = \"/p\"\npassphrase_env = \"P\"",
            "not both",
        ),
        (
            "[seed]\nenv_var = \"X\"",
            "seed.env_var: is for provider env, and seed.provider is file",
        ),
        (
            "[seed]\nprovider = \"env\"\nfile = \"/x\"",
            "seed.file: is for provider file or encrypted-file",
        ),
        (
            "[seed]\nexpected_node_id = \"02ab\"",
            "seed.expected_node_id: \"02ab\" is not a node id",
        ),
        (
            "[seed]\naws_endpoint_url = \"ftp://x\"",
            "seed.aws_endpoint_url",
        ),
        (
            "[api]\ntoken_secret = \"hunter2hunter2hunter2\"",
            "api.token_secret: secret reference \"(not shown)\"",
        ),
        (
            "[api]\ntoken_secret = \"env:T\"\ntoken_file = \"/t\"",
            "api.token_secret: set api.token_secret or api.token_file, not both",
        ),
        (
            "[api]\ntoken_reload_interval_ms = 5",
            "api.token_reload_interval_ms: 5 is not between",
        ),
        (
            "[store]\npassword_secret = \"env:PG\"",
            "store.password_secret: a SQLite store has no password",
        ),
        (
            "[store]\nurl = \"postgres://db/p\"\npassword_secret = \"env:PG\"",
            "store.url names no user",
        ),
        (
            "[store]\nurl = \"postgres://u:pw@db/p\"\npassword_secret = \"env:PG\"",
            "store.url has a password already",
        ),
        (
            "[backup]\nurl = \"s3://bucket/x\"",
            "backup.url: \"s3://bucket/x\" is not a file:///directory URL",
        ),
        (
            "[backup]\non_failure = \"ignore\"",
            "backup.on_failure: \"ignore\" is neither \"stop\" nor \"alert\"",
        ),
        (
            "[backup]\ncompact_after_mb = 0",
            "backup.compact_after_mb: 0 is not between 1 and 1048576",
        ),
    ] {
        let err = resolve_with(extra).unwrap_err().to_string();
        assert!(err.contains(expected), "{extra}: {err}");
        assert!(!err.contains("hunter2"), "a pasted secret is echoed: {err}");
    }
}

#[test]
fn debug_hides_every_password() {
    let text = "network = \"regtest\"\n[chain]\nrpc_url = \"http://u:rpc-pw-2@h:1\"\nrpc_password = \"rpc-pw-3\"\n[store]\nurl = \"postgres://phalanx:store-pw-1@db/p\"\n";
    let layer = layer(text);
    let shown = format!("{layer:?}");
    let config = layer.resolve().unwrap();
    let shown_config = format!("{config:?}");
    for shown in [shown, shown_config] {
        for password in ["store-pw-1", "rpc-pw-2", "rpc-pw-3"] {
            assert!(!shown.contains(password), "{password} in {shown}");
        }
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}

#[test]
fn the_backup_stream_takes_its_options() {
    let config = resolve_with(
        "[backup]\nurl = \"file:///mnt/nas/phalanx\"\non_failure = \"alert\"\ncompact_after_mb = 8",
    )
    .unwrap();
    assert_eq!(config.backup_dir, Some(PathBuf::from("/mnt/nas/phalanx")));
    assert_eq!(
        config.backup_options,
        BackupOptions {
            compact_after_bytes: 8 * 1024 * 1024,
            alert_only: true
        }
    );
}

#[test]
fn the_front_link_takes_its_address_and_certificates_together() {
    assert_eq!(resolve_with("").unwrap().link, None);
    let config = resolve_with(
        "[link]\nlisten = \"127.0.0.1:9736\"\ncertificate = \"/l/a.crt\"\nkey = \"/l/a.key\"\nca = \"/l/ca.crt\"",
    )
    .unwrap();
    assert_eq!(
        config.link,
        Some(LinkConfig {
            listen: "127.0.0.1:9736".parse().unwrap(),
            certificate: PathBuf::from("/l/a.crt"),
            key: PathBuf::from("/l/a.key"),
            ca: PathBuf::from("/l/ca.crt"),
        })
    );
    for (toml, needle) in [
        ("[link]\nlisten = \"9736\"", "link.listen"),
        (
            "[link]\nlisten = \"127.0.0.1:9736\"",
            "link.certificate: is needed",
        ),
        (
            "[link]\nlisten = \"127.0.0.1:9736\"\ncertificate = \"/a\"\nkey = \"/b\"",
            "link.ca: is needed",
        ),
    ] {
        let err = resolve_with(toml).unwrap_err().to_string();
        assert!(err.contains(needle), "{toml:?}: {err}");
    }
}
