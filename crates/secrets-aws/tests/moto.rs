//! AWS Secrets Manager against moto's server: a real implementation of the AWS API,
//! started by the test on a free loopback port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx_secrets::{SecretSource, Seed, SeedProvider};
use phalanx_secrets_aws::{AwsSecret, AwsSeedProvider, AwsSettings, SecretsManager};
use phalanx_testkit::moto::{AccessKey, MotoServer, REGION};

/// Credentials for the SDK's chain, through the environment (the first link of the
/// chain an instance uses too). Every test of this binary sets the same values, unless
/// it enforces auth on a server of its own and names its keys through a profile.
fn use_test_credentials() {
    // SAFETY: every test sets the same values; the SDK only reads them.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::remove_var("AWS_PROFILE");
    }
}

async fn manager(endpoint: String, timeout: Duration) -> Arc<SecretsManager> {
    use_test_credentials();
    Arc::new(
        SecretsManager::new(&AwsSettings {
            region: Some(REGION.to_owned()),
            endpoint_url: Some(endpoint),
            timeout: Some(timeout),
        })
        .await,
    )
}

#[tokio::test]
async fn a_seed_reads_from_a_binary_or_a_hex_secret_and_a_bad_one_is_named() {
    let moto = MotoServer::start().unwrap();
    let seed = Seed::generate().unwrap();
    moto.create_binary_secret("phalanx/seed-bin", seed.as_bytes())
        .unwrap();
    moto.create_string_secret("phalanx/seed-hex", &seed.to_hex())
        .unwrap();
    moto.create_string_secret("phalanx/short", "abcdef")
        .unwrap();
    moto.create_binary_secret("phalanx/long", &[1u8; 65])
        .unwrap();
    let manager = manager(moto.endpoint(), Duration::from_secs(10)).await;

    for id in ["phalanx/seed-bin", "phalanx/seed-hex"] {
        let read = AwsSeedProvider::new(manager.clone(), id)
            .seed()
            .await
            .unwrap();
        assert_eq!(read.as_bytes(), seed.as_bytes(), "{id}");
    }
    for id in ["phalanx/short", "phalanx/long"] {
        let err = AwsSeedProvider::new(manager.clone(), id)
            .seed()
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("aws-secrets-manager secret {id}: ")),
            "{message}"
        );
        assert!(message.contains("not a Phalanx seed"), "{message}");
    }
    let missing = AwsSeedProvider::new(manager.clone(), "phalanx/nope")
        .seed()
        .await
        .unwrap_err();
    let message = missing.to_string();
    assert!(message.contains("\"phalanx/nope\""), "{message}");
    assert!(message.contains("no such secret"), "{message}");
    assert!(!missing.is_transient());
}

#[tokio::test]
async fn a_rotated_string_secret_is_read_anew() {
    let moto = MotoServer::start().unwrap();
    moto.create_string_secret("phalanx/token", "first-token-0123456789")
        .unwrap();
    let manager = manager(moto.endpoint(), Duration::from_secs(10)).await;
    let token = AwsSecret::new(manager, "phalanx/token");
    assert_eq!(
        &*token.fetch().await.unwrap().text("t").unwrap(),
        "first-token-0123456789"
    );
    moto.put_string_secret("phalanx/token", "second-token-0123456789")
        .unwrap();
    assert_eq!(
        &*token.fetch().await.unwrap().text("t").unwrap(),
        "second-token-0123456789"
    );
    assert_eq!(token.describe(), "aws-secrets-manager secret phalanx/token");
}

#[tokio::test]
async fn a_down_endpoint_is_one_transient_error_within_the_timeout() {
    let mut moto = MotoServer::start().unwrap();
    let endpoint = moto.endpoint();
    moto.kill();
    let manager = manager(endpoint, Duration::from_secs(3)).await;
    let started = Instant::now();
    let err = AwsSeedProvider::new(manager, "phalanx/seed")
        .seed()
        .await
        .unwrap_err();
    let took = started.elapsed();
    let message = err.to_string();
    assert!(err.is_transient(), "{message}");
    assert!(
        message.starts_with("aws-secrets-manager secret \"phalanx/seed\": "),
        "{message}"
    );
    assert!(message.contains("could not be reached"), "{message}");
    // Bounded: the 3 s budget plus the connect allowance, not the SDK's defaults.
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[tokio::test]
async fn an_identity_without_permission_is_told_access_denied() {
    let moto = MotoServer::start().unwrap();
    let seed = Seed::generate().unwrap();
    moto.create_binary_secret("phalanx/seed", seed.as_bytes())
        .unwrap();
    let reader = moto
        .create_user(
            "phalanx-node",
            Some(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:GetSecretValue","Resource":"*"}]}"#,
            ),
        )
        .unwrap();
    let stranger = moto.create_user("stranger", None).unwrap();
    moto.enforce_auth().unwrap();

    // Each identity through the environment, the first link of the SDK's chain: set
    // between requests, never while one is under way (nextest runs each test in a
    // process of its own).
    let read_as = |key: AccessKey| {
        // SAFETY: no request is under way while the variables change.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", &key.id);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", &key.secret);
        }
        let endpoint = moto.endpoint();
        async move {
            let manager = SecretsManager::new(&AwsSettings {
                region: Some(REGION.to_owned()),
                endpoint_url: Some(endpoint),
                timeout: Some(Duration::from_secs(10)),
            })
            .await;
            AwsSeedProvider::new(Arc::new(manager), "phalanx/seed")
                .seed()
                .await
        }
    };
    let allowed = read_as(reader).await.unwrap();
    assert_eq!(allowed.as_bytes(), seed.as_bytes());
    let denied = read_as(stranger).await.unwrap_err();
    let message = denied.to_string();
    assert!(message.contains("access denied"), "{message}");
    assert!(
        message.contains("secretsmanager:GetSecretValue"),
        "{message}"
    );
    assert!(!denied.is_transient());
}

#[tokio::test]
async fn no_credentials_is_a_permanent_error_not_an_outage() {
    let moto = MotoServer::start().unwrap();
    moto.create_binary_secret("phalanx/seed", &[1u8; 64])
        .unwrap();
    let dir = std::env::temp_dir().join(phalanx_testkit::unique_name("no-aws"));
    // SAFETY: set before the SDK is made; nextest runs this test in its own process.
    unsafe {
        std::env::remove_var("AWS_ACCESS_KEY_ID");
        std::env::remove_var("AWS_SECRET_ACCESS_KEY");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_WEB_IDENTITY_TOKEN_FILE");
        std::env::remove_var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
        std::env::remove_var("AWS_CONTAINER_CREDENTIALS_FULL_URI");
        std::env::set_var("AWS_CONFIG_FILE", dir.join("config"));
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", dir.join("credentials"));
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let manager = SecretsManager::new(&AwsSettings {
        region: Some(REGION.to_owned()),
        endpoint_url: Some(moto.endpoint()),
        timeout: Some(Duration::from_secs(10)),
    })
    .await;
    let err = AwsSeedProvider::new(Arc::new(manager), "phalanx/seed")
        .seed()
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(!err.is_transient(), "{message}");
    assert!(message.contains("credentials"), "{message}");
}
