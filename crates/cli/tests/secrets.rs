//! The node's secrets from the outside: `phalanx seed`, a node on an encrypted seed with
//! its API token in a variable, the expected node id, a token rotated while the node
//! runs, and bad secrets refused with the provider and the field named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use phalanx_api::{ApiClient, ApiToken, ClientError, ErrorCode};
use phalanx_e2e::process::{self, ConfigFile, EXIT_TIMEOUT, LogFile, NodeBinary, NodeProcess};
use phalanx_node::config::ChainConfig;
use phalanx_regtest::{Regtest, RegtestConfig};

fn phalanx_binary() -> NodeBinary {
    NodeBinary::new(env!("CARGO_BIN_EXE_phalanx"))
}

/// `phalanx args...` to its end, with `env`: (status, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"));
    command.args(args).envs(env.iter().copied());
    for (variable, _) in std::env::vars() {
        if variable.starts_with("PHALANX_") && !env.iter().any(|(name, _)| *name == variable) {
            command.env_remove(variable);
        }
    }
    let output = command.output().expect("phalanx runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn private_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn node_id_in(line: &str) -> String {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("node_id="))
        .unwrap_or_else(|| panic!("no node_id in {line:?}"))
        .to_owned()
}

#[test]
fn seed_commands_make_encrypt_decrypt_and_name_node_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let pass = dir.path().join("pass");
    private_file(&pass, "a long enough passphrase\n");
    let wrong = dir.path().join("wrong");
    private_file(&wrong, "another long passphrase\n");

    let (status, out, err) = run(&["seed", "new", "--out", &path("plain")], &[]);
    assert_eq!(status, Some(0), "{err}");
    let node_id = node_id_in(&out);
    assert_eq!(std::fs::read(path("plain")).unwrap().len(), 64);
    let (status, _, err) = run(&["seed", "new", "--out", &path("plain")], &[]);
    assert_eq!(status, Some(1), "an existing seed is never overwritten");
    assert!(err.contains("exists"), "{err}");

    let pass_arg = pass.display().to_string();
    let (status, out, err) = run(
        &[
            "seed",
            "encrypt",
            "--in",
            &path("plain"),
            "--out",
            &path("enc"),
            "--passphrase-file",
            &pass_arg,
        ],
        &[],
    );
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(node_id_in(&out), node_id);
    assert_ne!(
        std::fs::read(path("enc")).unwrap(),
        std::fs::read(path("plain")).unwrap()
    );

    let (status, out, err) = run(
        &[
            "seed",
            "decrypt",
            "--in",
            &path("enc"),
            "--out",
            &path("back"),
            "--passphrase-env",
            "SEED_PASS",
        ],
        &[("SEED_PASS", "a long enough passphrase")],
    );
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(node_id_in(&out), node_id);
    assert_eq!(
        std::fs::read(path("back")).unwrap(),
        std::fs::read(path("plain")).unwrap()
    );

    // node-id from each provider that can hold this seed.
    let hex_seed = hex::encode(std::fs::read(path("plain")).unwrap());
    for (args, env) in [
        (vec!["--seed-file", &path("plain")], vec![]),
        (
            vec!["--seed-provider", "env", "--seed-env-var", "MY_SEED"],
            vec![("MY_SEED", hex_seed.as_str())],
        ),
        (
            vec![
                "--seed-provider",
                "encrypted-file",
                "--seed-file",
                &path("enc"),
                "--seed-passphrase-file",
                &pass_arg,
            ],
            vec![],
        ),
    ] {
        let mut all = vec!["seed", "node-id"];
        all.extend(args.iter().copied());
        let (status, out, err) = run(&all, &env);
        assert_eq!(status, Some(0), "{args:?}: {err}");
        assert_eq!(out.trim(), node_id, "{args:?}");
    }

    // The data directory's default seed file, and the expected node id.
    let (status, out, err) = run(
        &["seed", "node-id"],
        &[("PHALANX_DATA_DIR", dir.path().to_str().unwrap())],
    );
    assert_eq!(
        status,
        Some(1),
        "no {}/seed yet: {out}{err}",
        dir.path().display()
    );
    std::fs::copy(path("plain"), dir.path().join("seed")).unwrap();
    let (status, out, err) = run(
        &[
            "seed",
            "node-id",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!((status, out.trim()), (Some(0), node_id.as_str()), "{err}");
    let other = "02eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1f283686619";
    let (status, _, err) = run(
        &[
            "seed",
            "node-id",
            "--seed-file",
            &path("plain"),
            "--expected-node-id",
            other,
        ],
        &[],
    );
    assert_eq!(status, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "is node {node_id}, but [seed] expected_node_id is {other}"
        )),
        "{err}"
    );

    // Bad input: each exits 2 naming what is wrong, and writes nothing.
    let wrong_arg = wrong.display().to_string();
    let (status, _, err) = run(
        &[
            "seed",
            "decrypt",
            "--in",
            &path("enc"),
            "--out",
            &path("nope"),
            "--passphrase-file",
            &wrong_arg,
        ],
        &[],
    );
    assert_eq!(status, Some(2), "{err}");
    assert!(
        err.contains("wrong passphrase, or the file is corrupt"),
        "{err}"
    );
    assert!(!Path::new(&path("nope")).exists());
    let bytes = std::fs::read(path("enc")).unwrap();
    phalanx_secrets::write_new_private_file(&dir.path().join("truncated"), &bytes[..90]).unwrap();
    let (status, _, err) = run(
        &[
            "seed",
            "node-id",
            "--seed-provider",
            "encrypted-file",
            "--seed-file",
            &path("truncated"),
            "--seed-passphrase-file",
            &pass_arg,
        ],
        &[],
    );
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("seed (provider encrypted-file)"), "{err}");
    assert!(err.contains("90 bytes, not 140: truncated"), "{err}");
    let (status, _, err) = run(
        &[
            "seed",
            "node-id",
            "--seed-provider",
            "env",
            "--seed-env-var",
            "NO_SUCH_VAR_7",
        ],
        &[],
    );
    assert_eq!(status, Some(2), "{err}");
    assert!(
        err.contains("seed (provider env): environment variable NO_SUCH_VAR_7 is not set"),
        "{err}"
    );
    let (status, _, err) = run(
        &[
            "seed",
            "node-id",
            "--seed-provider",
            "env",
            "--seed-env-var",
            "SHORT_SEED",
        ],
        &[("SHORT_SEED", "abcdef")],
    );
    assert_eq!(status, Some(2), "{err}");
    assert!(
        err.contains("SHORT_SEED: 6 characters that are not 128 hex digits"),
        "{err}"
    );
    let (status, _, err) = run(&["seed", "new", "--encrypt", "--out", &path("x")], &[]);
    assert_eq!(status, Some(2), "{err}");
    assert!(err.contains("never on the command line"), "{err}");
}

async fn regtest() -> Regtest {
    let regtest = Regtest::start(RegtestConfig::default())
        .await
        .expect("regtest starts");
    regtest.mine(101, None);
    regtest
}

/// A configuration on SQLite in `dir` with `api` lines under `[api]` and `seed` as its
/// `[seed]` section.
fn config(dir: &Path, rpc_url: &str, store_url: &str, api: &str, seed: &str) -> PathBuf {
    let chain = ChainConfig {
        rpc_url: rpc_url.to_owned(),
        rpc_user: "phalanx".into(),
        rpc_password: "phalanx".into(),
        rest_url: None,
        esplora_url: None,
        poll_interval: Duration::from_millis(100),
    };
    let path = ConfigFile::new(dir, store_url, "secrets", &chain).write_uninitialized();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}{api}\n[seed]\n{seed}\n")).unwrap();
    path
}

fn spawn(name: &str, config: &Path, env: &[(&str, &str)]) -> NodeProcess {
    let config = config.display().to_string();
    process::spawn(
        &phalanx_binary(),
        name,
        &["node", "--config", &config],
        env,
        LogFile::Temporary,
    )
}

/// The API's URL from the `api listening on URL token_...` line.
async fn api_url(process: &mut NodeProcess) -> String {
    let line = process.wait_line("api listening on ").await;
    line.strip_prefix("api listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a URL")
        .to_owned()
}

fn client(url: &str, token: &str) -> ApiClient {
    ApiClient::new(url)
        .unwrap()
        .with_token(ApiToken::new(token).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_an_encrypted_seed_keeps_its_secrets_out_of_its_environment() {
    let regtest = regtest().await;
    let dir = phalanx_testkit::process::scratch_dir("secrets").unwrap();
    let passphrase = "passphrase-4e1f0c-long enough";
    let token = "env-token-9b2d7a61c3f04e58";
    let enc = dir.join("seed.enc");
    let (status, out, err) = run(
        &[
            "seed",
            "new",
            "--encrypt",
            "--out",
            enc.to_str().unwrap(),
            "--passphrase-env",
            "PASS",
        ],
        &[("PASS", passphrase)],
    );
    assert_eq!(status, Some(0), "{err}");
    let node_id = node_id_in(&out);
    let store_url = format!("sqlite://{}/node.db", dir.display());
    let seed_section = format!(
        "provider = \"encrypted-file\"\nfile = \"{}\"\npassphrase_env = \"PHALANX_TEST_PASS\"\nexpected_node_id = \"{node_id}\"",
        enc.display()
    );
    let path = config(
        &dir,
        &regtest.rpc_url(),
        &store_url,
        "token_secret = \"env:PHALANX_TEST_TOKEN\"",
        &seed_section,
    );
    let env = [
        ("PHALANX_TEST_PASS", passphrase),
        ("PHALANX_TEST_TOKEN", token),
    ];
    let (status, out, err) = run(&["init", "--config", path.to_str().unwrap()], &env);
    assert_eq!(status, Some(0), "{err}");
    assert!(
        out.contains(&format!("initialized node_id={node_id}")),
        "{out}"
    );

    let mut node = spawn("encrypted", &path, &env);
    let started = node.started().await;
    assert_eq!(started.node_id, node_id);
    let url = api_url(&mut node).await;
    assert!(
        node.line("api listening on ")
            .unwrap()
            .ends_with("token_secret env:PHALANX_TEST_TOKEN")
    );
    client(&url, token)
        .info()
        .await
        .expect("the env token is accepted");
    // The variables are gone from the process: not in its environment block, which
    // other processes of the user can read, nor inherited by children.
    let pid = node.child.id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(passphrase),
        "the passphrase is in /proc/{pid}/environ"
    );
    assert!(
        !environ.contains(token),
        "the token is in /proc/{pid}/environ"
    );
    assert!(node.terminate().await.success());
    assert!(!node.stderr().contains(passphrase));

    // A wrong passphrase: exit 2 naming the provider and the file; nothing written.
    let mut wrong = spawn(
        "wrong passphrase",
        &path,
        &[
            ("PHALANX_TEST_PASS", "not the passphrase at all"),
            ("PHALANX_TEST_TOKEN", token),
        ],
    );
    let status = wrong.wait_exit(EXIT_TIMEOUT).await;
    let stderr = wrong.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("seed (provider encrypted-file)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("wrong passphrase, or the file is corrupt"),
        "{stderr}"
    );

    // A token variable that is not set: exit 2 naming it.
    let mut no_token = spawn("no token", &path, &[("PHALANX_TEST_PASS", passphrase)]);
    let status = no_token.wait_exit(EXIT_TIMEOUT).await;
    let stderr = no_token.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("API token: environment variable PHALANX_TEST_TOKEN is not set"),
        "{stderr}"
    );

    // Another expected node id fails before the store is opened: the store here cannot
    // be reached, and would be waited for.
    let other = "02eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1f283686619";
    let unreachable = config(
        &dir.join("other"),
        &regtest.rpc_url(),
        "postgres://phalanx@127.0.0.1:1/phalanx",
        "token_secret = \"env:PHALANX_TEST_TOKEN\"",
        &seed_section.replace(&node_id, other),
    );
    let mut refused = spawn("unexpected node id", &unreachable, &env);
    let status = refused.wait_exit(EXIT_TIMEOUT).await;
    let stderr = refused.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("is node {node_id}")), "{stderr}");
    assert!(
        stderr.contains(&format!("expected_node_id is {other}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("cannot be opened yet"),
        "the store was tried: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_api_token_takes_effect_without_a_restart() {
    let regtest = regtest().await;
    let dir = phalanx_testkit::process::scratch_dir("secrets").unwrap();
    let token_file = dir.join("tokens");
    private_file(&token_file, "first-token-1f2e3d4c5b6a\n");
    let seed = dir.join("seed");
    let (status, _, err) = run(&["seed", "new", "--out", seed.to_str().unwrap()], &[]);
    assert_eq!(status, Some(0), "{err}");
    let path = config(
        &dir,
        &regtest.rpc_url(),
        &format!("sqlite://{}/node.db", dir.display()),
        &format!(
            "token_secret = \"file:{}\"\ntoken_reload_interval_ms = 100",
            token_file.display()
        ),
        &format!("file = \"{}\"", seed.display()),
    );
    let (status, _, err) = run(&["init", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(status, Some(0), "{err}");
    let mut node = spawn("rotation", &path, &[]);
    node.started().await;
    let url = api_url(&mut node).await;
    let first = client(&url, "first-token-1f2e3d4c5b6a");
    let second = client(&url, "second-token-6a5b4c3d2e1f");
    first.info().await.expect("the first token works");
    let unauthorized = |result: Result<_, ClientError>| matches!(result, Err(ClientError::Api { ref error, .. }) if error.code == ErrorCode::Unauthorized);
    assert!(unauthorized(second.info().await));

    // The rotation: both for a while, then only the new one.
    let rewrite = |text: &str| {
        let temp = dir.join("tokens.new");
        private_file(&temp, text);
        std::fs::rename(&temp, &token_file).unwrap();
    };
    rewrite("second-token-6a5b4c3d2e1f\nfirst-token-1f2e3d4c5b6a\n");
    phalanx_devnet::harness::wait_for(
        "the new token to be accepted",
        Duration::from_secs(10),
        || async { second.info().await.ok() },
    )
    .await
    .unwrap();
    first
        .info()
        .await
        .expect("the old token still works meanwhile");
    rewrite("second-token-6a5b4c3d2e1f\n");
    phalanx_devnet::harness::wait_for(
        "the old token to be refused",
        Duration::from_secs(10),
        || async { unauthorized(first.info().await).then_some(()) },
    )
    .await
    .unwrap();
    second.info().await.expect("the new token works");
    assert!(node.is_running(), "the same process all along");
    assert!(node.stderr().contains("the API tokens changed"));
    assert!(!node.stderr().contains("token-6a5b4c3d2e1f"));
    assert!(node.terminate().await.success());
}
