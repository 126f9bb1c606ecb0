//! `phalanx front`: every setting from the file, a variable or a flag; each bad one
//! refused with exit 2 and its name, before anything listens.

use phalanx_link::Role;
use phalanx_link::pki::LinkCa;

/// `phalanx front`, with none of the test process's own `PHALANX_*` variables.
fn front_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"));
    command.arg("front");
    for (variable, _) in std::env::vars() {
        if variable.starts_with("PHALANX_") {
            command.env_remove(variable);
        }
    }
    command
}

fn front(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = front_command();
    command.args(args);
    let output = command
        .envs(env.iter().copied())
        .output()
        .expect("phalanx runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Writes a new link CA's `ca.crt` and front-1's `front-1.crt` and `front-1.key` in
/// `dir`; returns the CA.
fn write_front_certs(dir: &std::path::Path) -> LinkCa {
    let ca = LinkCa::generate("test").unwrap();
    let issued = ca.issue(Role::Front, "front-1").unwrap();
    std::fs::write(dir.join("front-1.crt"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("front-1.key"), issued.key_pem.as_bytes()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
    ca
}

#[test]
fn each_bad_setting_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LinkCa::generate("test").unwrap();
    let issued = ca.issue(Role::Front, "front-1").unwrap();
    for (file, text) in [
        ("front-1.crt", issued.cert_pem.clone()),
        ("front-1.key", issued.key_pem.to_string()),
        ("ca.crt", ca.cert_pem()),
        ("garbage.crt", "not a certificate".to_owned()),
    ] {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let path = |file: &str| dir.path().join(file).display().to_string();
    let good = [
        "--name".to_owned(),
        "front-1".to_owned(),
        "--backends".to_owned(),
        "127.0.0.1:1".to_owned(),
        "--certificate".to_owned(),
        path("front-1.crt"),
        "--key".to_owned(),
        path("front-1.key"),
    ];
    let with = |extra: &[&str]| {
        let mut args: Vec<String> = good.to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let ca_arg = path("ca.crt");
    let garbage = path("garbage.crt");
    let missing = path("missing.crt");
    for (args, needle) in [
        (
            vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()],
            "front.name",
        ),
        (with(&["--ca", &ca_arg, "--listen", "9735"]), "front.listen"),
        (
            vec![
                "--name".to_owned(),
                "x".to_owned(),
                "--backends".to_owned(),
                "nope".to_owned(),
            ],
            "front.backends",
        ),
        (with(&[]), "front.ca: is needed"),
        (with(&["--ca", &missing]), "front.ca"),
        (with(&["--ca", &garbage]), "CA file holds no certificate"),
        (
            with(&["--ca", &ca_arg, "--ecdh-timeout-ms", "5"]),
            "front.ecdh_timeout_ms",
        ),
        (
            with(&["--ca", &ca_arg, "--api-listen", "localhost"]),
            "front.api_listen",
        ),
        (
            with(&["--ca", &ca_arg, "--key-provider", "hsm"]),
            "front.key_provider",
        ),
        (
            with(&["--ca", &ca_arg, "--public-address", "pay example com"]),
            "front.public_address",
        ),
        // A front holding the key needs to be told where the seed is.
        (
            with(&["--ca", &ca_arg, "--key-provider", "seed"]),
            "seed.file: is needed",
        ),
        (
            with(&[
                "--ca",
                &ca_arg,
                "--key-provider",
                "seed",
                "--seed-provider",
                "carrier-pigeon",
            ]),
            "seed.provider",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, stderr) = front(&args, &[]);
        assert_eq!(status, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }

    // The file's [front] table, with a variable over it; unknown keys are refused.
    let config = dir.path().join("front.toml");
    std::fs::write(&config, "[front]\nname = \"front-1\"\nlisten = \"nope\"\n").unwrap();
    let config_arg = config.display().to_string();
    let (status, stderr) = front(&["--config", &config_arg], &[]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("front.listen"), "{stderr}");
    let (status, stderr) = front(
        &["--config", &config_arg],
        &[("PHALANX_FRONT_LISTEN", "127.0.0.1:0")],
    );
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains("front.backends"),
        "the variable won: {stderr}"
    );
    // The node's [seed] table may sit beside [front], for key_provider = "seed"; a
    // seed that cannot be read stops the start (status 1), naming no secret.
    std::fs::write(
        &config,
        format!(
            "[front]\nname = \"front-1\"\nlisten = \"127.0.0.1:0\"\nbackends = \
             [\"127.0.0.1:1\"]\ncertificate = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\
             key_provider = \"seed\"\n\n[seed]\nfile = \"{}\"\n",
            path("front-1.crt"),
            path("front-1.key"),
            ca_arg,
            path("no-such-seed")
        ),
    )
    .unwrap();
    let (status, stderr) = front(&["--config", &config_arg], &[]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stderr.contains("cannot load the node's seed"), "{stderr}");
    std::fs::write(&config, "[front]\nnmae = \"front-1\"\n").unwrap();
    let (status, stderr) = front(&["--config", &config_arg], &[]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `nmae`"), "{stderr}");
}

/// The status and body of `GET path` on `address`, if it answers.
fn get(address: &str, path: &str) -> Option<(u16, String)> {
    phalanx_testkit::http::get_blocking(address, path).ok()
}

#[test]
fn a_front_without_a_backend_says_so_on_its_api_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    write_front_certs(dir.path());
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    // Nothing listens where the backend should be.
    let (backend, api) = (free(), free());
    let path = |file: &str| dir.path().join(file).display().to_string();
    let mut command = front_command();
    command
        .args(["--name", "front-1", "--listen", "127.0.0.1:0"])
        .args(["--backends", &backend, "--api-listen", &api])
        .args([
            "--certificate",
            &path("front-1.crt"),
            "--key",
            &path("front-1.key"),
        ])
        .args(["--ca", &path("ca.crt")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    let mut answered = None;
    for _ in 0..200 {
        answered = get(&api, "/v1/state");
        if answered.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let (status, body) = answered.expect("the API answers while the front waits");
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["state"], "FRONT_WAITING", "{body}");
    assert!(state["node_id"].is_null(), "{body}");
    assert_eq!(get(&api, "/v1/ready").unwrap().0, 503);
    let metrics = get(&api, "/metrics").unwrap().1;
    assert!(
        metrics.contains("phalanx_front_backend_attached 0"),
        "{metrics}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("front started"), "{stdout}");
    // Nothing listening is how a cluster looks during a failover: no warning.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("backend refused"), "{stderr}");
}

/// A backend the front can never attach to, for a reason the operator must fix, is named
/// in a warning once (not once a round), with the reason: one whose certificate is of
/// another CA, one that speaks another link version, and one that refuses the front's
/// certificate of another CA. A backend where nothing listens is the ordinary absence
/// of a backend and gets no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_warns_once_of_each_backend_it_can_never_attach_to() {
    use futures::{SinkExt, StreamExt};
    use phalanx_link::{Frame, Hello, LINK_VERSION, LinkCodec};
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let ca = write_front_certs(dir.path());
    let root = dir.path().to_owned();
    let path = move |file: &str| root.join(file).display().to_string();
    // Each fake backend: TLS with its certificate, then a hello of the next link version.
    let serve = |identity: phalanx_link::tls::LinkIdentity, listener: tokio::net::TcpListener| {
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config().unwrap());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut link = tokio_util::codec::Framed::new(tls, LinkCodec::default());
                    let _ = link.next().await;
                    let mut hello = Hello::new(Role::Backend, "backend-next");
                    hello.version = LINK_VERSION + 1;
                    let _ = link.send(Frame::Hello(hello)).await;
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                });
            }
        })
    };
    let bind = || async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        (listener, address)
    };
    let (listener, foreign) = bind().await;
    let other_ca = LinkCa::generate("another cluster").unwrap();
    let _foreign = serve(
        other_ca.identity(Role::Backend, "backend-1").unwrap(),
        listener,
    );
    let (listener, newer) = bind().await;
    let _newer = serve(ca.identity(Role::Backend, "backend-2").unwrap(), listener);
    let (listener, absent) = bind().await;
    drop(listener);

    // A front run for 3 s (over ten rounds of dialling), with its stderr's warnings
    // about `backend`.
    let run_front = |name: &'static str, backends: String| {
        let path = path.clone();
        async move {
            let mut command = tokio::process::Command::from(front_command());
            command
                .args(["--name", name, "--listen", "127.0.0.1:0"])
                .args(["--backends", &backends])
                .args(["--certificate", &path(&format!("{name}.crt"))])
                .args([
                    "--key",
                    &path(&format!("{name}.key")),
                    "--ca",
                    &path("ca.crt"),
                ])
                .env("NO_COLOR", "1")
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let mut child = command.spawn().unwrap();
            let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
            let mut stderr = Vec::new();
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
            while let Ok(Ok(Some(line))) = tokio::time::timeout_at(until, lines.next_line()).await {
                stderr.push(line);
            }
            child.kill().await.unwrap();
            stderr.join("\n")
        }
    };
    let warnings = |stderr: &str, backend: &str| {
        stderr
            .lines()
            .filter(|line| line.contains("backend refused") && line.contains(backend))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

    let stderr = run_front("front-1", format!("{foreign},{newer},{absent}")).await;
    let foreign_warnings = warnings(&stderr, &foreign);
    assert_eq!(foreign_warnings.len(), 1, "{stderr}");
    assert!(foreign_warnings[0].contains("WARN"), "{stderr}");
    assert!(foreign_warnings[0].contains("certificate"), "{stderr}");
    let newer_warnings = warnings(&stderr, &newer);
    assert_eq!(newer_warnings.len(), 1, "{stderr}");
    assert!(
        newer_warnings[0].contains(&format!("link version {}", LINK_VERSION + 1)),
        "{stderr}"
    );
    assert!(warnings(&stderr, &absent).is_empty(), "{stderr}");

    // The other way round: a front whose own certificate is of another CA, refused by a
    // backend of the cluster.
    let issued = other_ca.issue(Role::Front, "front-2").unwrap();
    std::fs::write(dir.path().join("front-2.crt"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("front-2.key"), issued.key_pem.as_bytes()).unwrap();
    let stderr = run_front("front-2", newer.clone()).await;
    let refused = warnings(&stderr, &newer);
    assert_eq!(refused.len(), 1, "{stderr}");
    assert!(refused[0].contains("alert"), "{stderr}");
}

/// `--key-provider seed`: the front loads the node's seed, holds the node key (`key=held`)
/// and serves a backend of that node; given another node's seed, it refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_given_the_seed_holds_the_key_of_its_backends_node() {
    use lightning::ln::peer_handler::ErroringMessageHandler;
    use lightning::sign::{KeysManager, NodeSigner, Recipient};
    use phalanx_link::ActiveBackend;
    use phalanx_link::backend::LinkServer;

    let dir = tempfile::tempdir().unwrap();
    let ca = write_front_certs(dir.path());
    let path = |file: &str| dir.path().join(file).display().to_string();
    // Two seeds, as `phalanx init` writes them (128 hex digits, mode 0600).
    let seeds = [[0x11u8; 64], [0x22u8; 64]];
    for (index, seed) in seeds.iter().enumerate() {
        let file = dir.path().join(format!("seed-{index}"));
        std::fs::write(&file, hex::encode(seed)).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    // The backend runs the node of the first seed.
    let seed = phalanx_secrets::Seed::from_bytes(seeds[0]);
    let node_id = KeysManager::new(&seed.ldk_seed(), 0, 0, true)
        .get_node_id(Recipient::Node)
        .unwrap();
    let server = std::sync::Arc::new(LinkServer::new(
        std::sync::Arc::new(ErroringMessageHandler::new()),
        "backend-1",
        ActiveBackend {
            node_id,
            chain_hash: *bitcoin::constants::ChainHash::REGTEST.as_bytes(),
            init_features: Vec::new(),
            node_features: Vec::new(),
        },
        Box::new(|_| None),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap().to_string();
    let identity = ca.identity(Role::Backend, "backend-1").unwrap();
    tokio::spawn(async move { server.serve(listener, &identity).await });

    let run = |seed_file: String| {
        let mut command = tokio::process::Command::from(front_command());
        command
            .args(["--name", "front-1", "--listen", "127.0.0.1:0"])
            .args(["--backends", &backend])
            .args(["--certificate", &path("front-1.crt")])
            .args(["--key", &path("front-1.key"), "--ca", &path("ca.crt")])
            .args(["--key-provider", "seed", "--seed-file", &seed_file])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        command.spawn().unwrap()
    };

    let mut keyed = run(path("seed-0"));
    let stdout = keyed.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the front starts")
        .unwrap()
        .unwrap_or_default();
    assert!(line.starts_with("front started"), "{line}");
    assert!(line.contains(&format!("node_id={node_id}")), "{line}");
    assert!(line.ends_with("key=held"), "{line}");
    keyed.kill().await.unwrap();

    let other = run(path("seed-1"));
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), other.wait_with_output())
        .await
        .expect("the front stops")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds the key of node"), "{stderr}");
    assert!(!stderr.contains(&hex::encode(seeds[1])), "{stderr}");
}
