//! Secrets from AWS Secrets Manager (moto's server, a real implementation of the AWS
//! API): two instances of a cluster load one seed from it and serve as one node through
//! a failover; a third pointed at another secret refuses. Then no secret is anywhere it
//! must not be: not in a log line (the nodes log at debug), not in any value of the store.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use lightning::sign::KeysManager;
use phalanx_api::{ApiClient, CreateInvoiceRequest, PayInvoiceRequest, PaymentStatus};
use phalanx_e2e::cluster::Cluster;
use phalanx_e2e::process::{self, ConfigFile, EXIT_TIMEOUT};

use phalanx_e2e::world::{Channel, World};
use phalanx_secrets::Seed;
use phalanx_testkit::moto::{MotoServer, REGION};
use phalanx_testkit::postgres::{PostgresOptions, PostgresServer};

const STORE_PASSWORD: &str = "pg-Secret-7f3a9c1e55d0";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_shares_a_seed_from_aws_and_no_secret_reaches_a_log_or_the_store() {
    phalanx_testkit::init_tracing();
    let moto = MotoServer::start().expect("moto starts");
    let seed = Seed::generate().unwrap();
    let other_seed = Seed::generate().unwrap();
    moto.create_binary_secret("alice/seed", seed.as_bytes())
        .unwrap();
    moto.create_string_secret("mallory/seed", &other_seed.to_hex())
        .unwrap();
    moto.create_string_secret("alice/store-password", STORE_PASSWORD)
        .unwrap();
    // The node processes inherit these: the SDK's chain reads them, and they log at
    // debug. (nextest runs each test in a process of its own.)
    // SAFETY: set before any thread of this test reads the environment concurrently
    // (the runtime's workers read no variables).
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("RUST_LOG", "debug");
    }

    let postgres = PostgresServer::start_with(PostgresOptions {
        password: Some(STORE_PASSWORD.into()),
        ..Default::default()
    })
    .expect("PostgreSQL starts");
    let database = phalanx_testkit::unique_name("alice");
    postgres
        .psql("postgres", &format!("CREATE DATABASE {database}"))
        .unwrap();
    let with_password = postgres.url(&database);
    let store_url = with_password.replace(&format!(":{STORE_PASSWORD}@"), "@");
    assert_ne!(store_url, with_password, "the URL had the password");

    let world = World::set_up("secrets", |_| store_url.clone()).await;
    let binary = phalanx_e2e::node_binary!();
    let chain = world.chain.config().clone();
    let settings = |secret_id: &str| {
        format!(
            "[seed]\nprovider = \"aws-secrets-manager\"\naws_secret_id = \"{secret_id}\"\naws_region = \"{REGION}\"\naws_endpoint_url = \"{}\"\n",
            moto.endpoint()
        )
    };
    let alice_config = write_config(
        &world.dir.join("alice"),
        &store_url,
        &chain,
        &settings("alice/seed"),
    );
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx-e2e-node"))
        .args(["init", "--config", alice_config.to_str().unwrap()])
        .output()
        .expect("init runs");
    let init = format!(
        "{}{}",
        String::from_utf8_lossy(&init.stdout),
        String::from_utf8_lossy(&init.stderr)
    );
    let node_id = seed_node_id(&seed);
    assert!(
        init.contains(&format!("initialized node_id={node_id}")),
        "{init}"
    );

    let mut cluster = Cluster::start(binary.clone(), alice_config, store_url.clone(), false).await;
    let alice = cluster.active_instance().api.clone();
    world.fund_alice(&alice).await;
    Channel::open(&world, &alice).await;
    pay_both_ways(&world, &alice).await;

    cluster.kill_active(1).await;
    let alice = cluster.active_instance().api.clone();
    pay_both_ways(&world, &alice).await;

    // An instance given another node's seed refuses at start, naming both node ids,
    // instead of waiting as a standby that would fail at takeover.
    let mallory_config = write_config(
        &world.dir.join("mallory"),
        &store_url,
        &chain,
        &settings("mallory/seed"),
    );
    let mut mallory = process::node(
        &binary,
        "mallory",
        &mallory_config,
        &["--instance-id", "c", "--cluster-enabled"],
    );
    let status = mallory.wait_exit(EXIT_TIMEOUT).await;
    let refused = mallory.stderr();
    assert_eq!(status.code(), Some(2), "{refused}");
    assert!(refused.contains(&node_id), "{refused}");
    assert!(refused.contains(&seed_node_id(&other_seed)), "{refused}");

    let mut logs = vec![init, refused];
    for instance in &mut cluster.instances {
        if instance.process.is_running() {
            assert!(instance.process.terminate().await.success());
        }
        logs.push(instance.process.stderr());
        logs.push(instance.process.stdout_lines().join("\n"));
    }
    assert!(
        logs.iter().any(|log| log.contains("DEBUG")),
        "the nodes logged at debug"
    );

    let token = std::fs::read_to_string(world.dir.join("alice").join("api-token")).unwrap();
    let needles = secret_needles(&seed, &other_seed, token.trim());
    for (what, needle) in &needles {
        for log in &logs {
            assert!(!log.contains(needle.as_str()), "{what} is in a log");
        }
    }
    let store = dump_database(&postgres, &database);
    assert!(store.len() > 10_000, "the dump holds the node's state");
    for (what, needle) in &needles {
        assert!(
            !store.contains(&needle.to_lowercase()),
            "{what} is in the store"
        );
    }
}

/// The node id `seed` derives, in hex.
fn seed_node_id(seed: &Seed) -> String {
    phalanx_node::identity::node_id_of(seed).to_string()
}

/// What must appear nowhere: the seeds, the node secret key, the API token and the
/// store's password, in hex (both cases) and base64.
fn secret_needles(seed: &Seed, other: &Seed, token: &str) -> Vec<(String, String)> {
    let node_secret = KeysManager::new(&seed.ldk_seed(), 0, 0, true).get_node_secret_key();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut needles = Vec::new();
    for (what, bytes) in [
        ("the seed", seed.as_bytes().to_vec()),
        ("the other seed", other.as_bytes().to_vec()),
        ("the node secret key", node_secret.secret_bytes().to_vec()),
        ("the LDK seed", seed.ldk_seed().to_vec()),
    ] {
        needles.push((format!("{what} (hex)"), hex::encode(&bytes)));
        needles.push((format!("{what} (HEX)"), hex::encode_upper(&bytes)));
        needles.push((format!("{what} (base64)"), b64(&bytes)));
    }
    for (what, text) in [
        ("the API token", token),
        ("the store password", STORE_PASSWORD),
    ] {
        needles.push((what.to_owned(), text.to_owned()));
        needles.push((format!("{what} (base64)"), b64(text.as_bytes())));
        needles.push((format!("{what} (hex)"), hex::encode(text.as_bytes())));
    }
    needles
}

/// Every row of every table of `database` as text (byte strings in hex).
fn dump_database(postgres: &PostgresServer, database: &str) -> String {
    let tables = postgres
        .psql(
            database,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .unwrap();
    let mut dump = String::new();
    for table in tables.lines().filter(|t| !t.is_empty()) {
        dump.push_str(
            &postgres
                .psql(database, &format!("SELECT t::text FROM {table} t"))
                .unwrap(),
        );
        dump.push('\n');
    }
    dump.to_lowercase()
}

/// A node configuration in `dir` for the cluster's store, with the `[seed]` section and
/// the store password from Secrets Manager.
fn write_config(
    dir: &Path,
    store_url: &str,
    chain: &phalanx_node::config::ChainConfig,
    seed_section: &str,
) -> std::path::PathBuf {
    let path = ConfigFile::new(dir, store_url, "alice", chain)
        .cluster_settings("enabled = true")
        .write_uninitialized();
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[store]\n",
        "[store]\npassword_secret = \"aws-secrets-manager:alice/store-password\"\n",
        1,
    );
    std::fs::write(&path, format!("{text}\n{seed_section}")).unwrap();
    path
}

/// A payment each way between Alice (over her API) and Bob, retried until both succeed
/// (after a failover the channel is re-established first).
async fn pay_both_ways(world: &World, alice: &ApiClient) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let to_alice = async {
            let invoice = alice
                .create_invoice(&CreateInvoiceRequest {
                    amount_msat: Some(10_000),
                    description: "to alice".into(),
                    expiry_secs: None,
                })
                .await
                .ok()?;
            let id = world.bob.pay_invoice(&invoice.invoice, None).await.ok()?;
            let record = world
                .bob
                .wait_payment(id, Duration::from_secs(10))
                .await
                .ok()?;
            (record.status == phalanx_node::payments::PaymentStatus::Succeeded).then_some(())
        };
        let to_bob = async {
            let invoice = world
                .bob
                .create_invoice(Some(10_000), "to bob", None)
                .await
                .ok()?;
            let payment = alice
                .pay_invoice(&PayInvoiceRequest {
                    invoice: invoice.to_string(),
                    amount_msat: None,
                    wait: true,
                    timeout_secs: Some(10),
                })
                .await
                .ok()?;
            (payment.status == PaymentStatus::Succeeded).then_some(())
        };
        if to_alice.await.is_some() && to_bob.await.is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "payments did not succeed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
