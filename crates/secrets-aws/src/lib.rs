//! Phalanx's secrets from AWS Secrets Manager: the seed every instance of a cluster
//! shares, and the other secrets a configuration names `aws-secrets-manager:ID`.
//!
//! Credentials come from the AWS SDK's standard chain (environment, shared profile, web
//! identity, container and instance roles); the region from the settings, else from
//! that chain (`AWS_REGION`, the profile). The instance needs one permission:
//! `secretsmanager:GetSecretValue` on its secrets (see operations.md for the policy).
//!
//! Every request is bounded ([`AwsSettings::timeout`]): a secret that does not exist,
//! a denied permission or an unreachable endpoint is one error, naming the secret and
//! saying which of these it was, within that time.
//!
//! A seed is stored as the secret's binary value (64 bytes) or as a string of 128 hex
//! digits; the value is copied into zeroizing memory and the SDK's copy overwritten.
//! (The HTTP response buffer it was parsed from is the SDK's, and is freed unzeroed.)

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use phalanx_secrets::{SecretBytes, SecretSource, SecretsError, Seed, SeedProvider};
use zeroize::Zeroize;

/// The provider's name in errors and configuration.
pub const PROVIDER: &str = "aws-secrets-manager";

/// Where and how to reach Secrets Manager.
#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    /// The region (`eu-west-1`); `None`: the SDK's chain (`AWS_REGION`, the profile).
    pub region: Option<String>,
    /// Another endpoint than AWS's (a VPC endpoint, or a test server).
    pub endpoint_url: Option<String>,
    /// The longest a fetch may take, retries included; `None`: [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// How long a fetch may take, retries included, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long connecting may take, each attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts per fetch (the first and two retries, with the SDK's backoff).
const ATTEMPTS: u32 = 3;

/// A Secrets Manager client, shared by the secrets read through it.
#[derive(Clone, Debug)]
pub struct SecretsManager {
    client: Client,
    timeout: Duration,
}

impl SecretsManager {
    /// A client for `settings`. Nothing is sent until a secret is fetched.
    pub async fn new(settings: &AwsSettings) -> Self {
        let timeout = settings.timeout.unwrap_or(DEFAULT_TIMEOUT);
        // rustls over ring, as the rest of Phalanx: no second TLS stack to build.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(timeout / ATTEMPTS)
                    .operation_timeout(timeout)
                    .build(),
            );
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let config = loader.load().await;
        Self {
            client: Client::new(&config),
            timeout,
        }
    }

    /// The current value of `secret_id` (a name or an ARN): the binary value, or the
    /// string's bytes.
    pub async fn fetch(&self, secret_id: &str) -> Result<SecretBytes, SecretsError> {
        let request = self.client.get_secret_value().secret_id(secret_id).send();
        // The SDK bounds every attempt and the whole operation; this also bounds what
        // it does before sending (finding credentials, which may ask an instance
        // metadata service that is not there).
        let answer = tokio::time::timeout(self.timeout + CONNECT_TIMEOUT, request)
            .await
            .map_err(|_| SecretsError::Remote {
                provider: PROVIDER,
                secret_id: secret_id.to_owned(),
                transient: true,
                message: format!(
                    "no answer within {} s (is the endpoint reachable?)",
                    (self.timeout + CONNECT_TIMEOUT).as_secs()
                ),
            })?;
        let mut output = answer.map_err(|err| classify(secret_id, &err))?;
        if let Some(blob) = output.secret_binary.take() {
            return Ok(SecretBytes::new(blob.into_inner()));
        }
        if let Some(mut text) = output.secret_string.take() {
            let bytes = SecretBytes::new(text.as_bytes().to_vec());
            text.zeroize();
            return Ok(bytes);
        }
        Err(SecretsError::Remote {
            provider: PROVIDER,
            secret_id: secret_id.to_owned(),
            transient: false,
            message: "the secret has no value (neither a string nor binary)".to_owned(),
        })
    }
}

/// One error for what went wrong, saying which of: no such secret, access denied, no
/// credentials or region, or the service unreachable (the only transient one).
fn classify(secret_id: &str, err: &SdkError<GetSecretValueError>) -> SecretsError {
    let remote = |transient, message: String| SecretsError::Remote {
        provider: PROVIDER,
        secret_id: secret_id.to_owned(),
        transient,
        message,
    };
    let detail = aws_sdk_secretsmanager::error::DisplayErrorContext(err).to_string();
    match err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let status = service.raw().status().as_u16();
            let code = inner.code().unwrap_or("unknown error");
            let message = inner.message().unwrap_or("");
            let denied =
                status == 403 || code == "AccessDeniedException" || code.contains("NotAuthorized");
            match inner {
                GetSecretValueError::ResourceNotFoundException(_) => remote(
                    false,
                    format!("no such secret in this account and region ({code}: {message})"),
                ),
                _ if denied => remote(
                    false,
                    format!(
                        "access denied: this instance's AWS identity may not read it; grant secretsmanager:GetSecretValue on it (see operations.md) (HTTP {status}, {code}: {message})"
                    ),
                ),
                _ if matches!(
                    code,
                    "UnrecognizedClientException"
                        | "InvalidClientTokenId"
                        | "InvalidSignatureException"
                ) || status == 401 =>
                {
                    remote(
                        false,
                        format!("the AWS credentials were refused ({code}: {message})"),
                    )
                }
                GetSecretValueError::InternalServiceError(_) => {
                    remote(true, format!("the service failed ({code}: {message})"))
                }
                _ => remote(false, format!("HTTP {status}, {code}: {message}")),
            }
        }
        SdkError::DispatchFailure(failure) if !failure.is_io() && !failure.is_timeout() => {
            // Not the network: the request could not be signed (no credentials in the
            // chain, no region). Waiting will not help.
            remote(
                false,
                format!(
                    "the request could not be made: are AWS credentials and a region set? ({detail})"
                ),
            )
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            remote(true, format!("the service could not be reached: {detail}"))
        }
        // Raised before sending: a request the SDK cannot build.
        SdkError::ConstructionFailure(_) => remote(
            false,
            format!("the request could not be made (region and credentials set?): {detail}"),
        ),
        _ => remote(false, detail),
    }
}

/// A secret in Secrets Manager, fetched anew on every [`SecretSource::fetch`].
#[derive(Clone, Debug)]
pub struct AwsSecret {
    manager: Arc<SecretsManager>,
    secret_id: String,
}

impl AwsSecret {
    /// The secret `secret_id` (a name or an ARN), read through `manager`.
    pub fn new(manager: Arc<SecretsManager>, secret_id: impl Into<String>) -> Self {
        Self {
            manager,
            secret_id: secret_id.into(),
        }
    }
}

#[async_trait::async_trait]
impl SecretSource for AwsSecret {
    async fn fetch(&self) -> Result<SecretBytes, SecretsError> {
        self.manager.fetch(&self.secret_id).await
    }

    fn describe(&self) -> String {
        format!("{PROVIDER} secret {}", self.secret_id)
    }
}

/// The node's seed in Secrets Manager: 64 binary bytes, or 128 hex digits as a string.
#[derive(Clone, Debug)]
pub struct AwsSeedProvider {
    secret: AwsSecret,
}

impl AwsSeedProvider {
    /// The seed in `secret_id`, read through `manager`.
    pub fn new(manager: Arc<SecretsManager>, secret_id: impl Into<String>) -> Self {
        Self {
            secret: AwsSecret::new(manager, secret_id),
        }
    }
}

#[async_trait::async_trait]
impl SeedProvider for AwsSeedProvider {
    async fn seed(&self) -> Result<Seed, SecretsError> {
        let value = self.secret.fetch().await?;
        let origin = self.describe();
        match <[u8; phalanx_secrets::SEED_LEN]>::try_from(value.expose()) {
            // A binary secret of 64 bytes; 64 characters of text are not a seed.
            Ok(raw) if !value.expose().iter().all(u8::is_ascii_hexdigit) => {
                Ok(Seed::from_bytes(raw))
            }
            _ => Seed::decode_hex(value.expose(), &origin),
        }
    }

    fn describe(&self) -> String {
        self.secret.describe()
    }
}
