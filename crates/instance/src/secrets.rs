//! The secrets a configuration names, made into providers: the seed's
//! ([`seed_provider`]) and the others' ([`secret_source`]). This is the only place that
//! names every provider, AWS's among them.

use std::sync::Arc;

use phalanx_node::config::{AwsConfig, SeedConfig, SeedSource};
use phalanx_secrets::{
    EncryptedFileSeedProvider, EnvSecret, EnvSeedProvider, FileSecret, FileSeedProvider, SecretRef,
    SecretSource, SecretsError, SeedProvider,
};
use phalanx_secrets_aws::{AwsSecret, AwsSeedProvider, AwsSettings, SecretsManager};
use zeroize::Zeroizing;

use crate::InstanceError;

/// The seed provider `config` names. `create_file`: a `file` provider makes a new seed
/// when there is no file (`phalanx init` only; a node's start never does).
pub async fn seed_provider(config: &SeedConfig, create_file: bool) -> Arc<dyn SeedProvider> {
    match &config.source {
        SeedSource::File { path } => Arc::new(FileSeedProvider::new(path.clone(), create_file)),
        SeedSource::Env { var } => Arc::new(EnvSeedProvider::new(var.clone())),
        SeedSource::EncryptedFile { path, passphrase } => Arc::new(EncryptedFileSeedProvider::new(
            path.clone(),
            secret_source(passphrase, &config.aws).await,
        )),
        SeedSource::AwsSecretsManager { secret_id } => Arc::new(AwsSeedProvider::new(
            secrets_manager(&config.aws).await,
            secret_id.clone(),
        )),
    }
}

/// The source of the secret `reference` names; `aws` says how AWS is reached.
pub async fn secret_source(reference: &SecretRef, aws: &AwsConfig) -> Box<dyn SecretSource> {
    match reference {
        SecretRef::File(path) => Box::new(FileSecret::new(path.clone())),
        SecretRef::Env(name) => Box::new(EnvSecret::new(name.clone())),
        SecretRef::AwsSecretsManager(id) => {
            Box::new(AwsSecret::new(secrets_manager(aws).await, id.clone()))
        }
    }
}

async fn secrets_manager(aws: &AwsConfig) -> Arc<SecretsManager> {
    Arc::new(
        SecretsManager::new(&AwsSettings {
            region: aws.region.clone(),
            endpoint_url: aws.endpoint_url.clone(),
            timeout: None,
        })
        .await,
    )
}

/// `url` with the password from `reference` in its user info (the configuration
/// checked that the URL names a user and has no password).
pub async fn url_with_password(
    url: &str,
    reference: &SecretRef,
    aws: &AwsConfig,
) -> Result<Zeroizing<String>, InstanceError> {
    let secret = |source| InstanceError::Secret {
        setting: "store.password_secret",
        provider: reference.provider(),
        source,
    };
    let source = secret_source(reference, aws).await;
    let password = source
        .fetch()
        .await
        .and_then(|bytes| bytes.text(&source.describe()))
        .map_err(secret)?;
    let mut parsed = url::Url::parse(url).map_err(|_| {
        secret(SecretsError::Invalid {
            origin: "store.url".to_owned(),
            reason: "not a URL a password can be added to".to_owned(),
        })
    })?;
    // Every byte but letters and digits escaped: the url crate leaves `%` as it is, and
    // the stores percent-decode the password strictly.
    let escaped = Zeroizing::new(
        percent_encoding::utf8_percent_encode(&password, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
    );
    parsed.set_password(Some(&escaped)).map_err(|()| {
        secret(SecretsError::Invalid {
            origin: "store.url".to_owned(),
            reason: "this URL cannot hold a password".to_owned(),
        })
    })?;
    Ok(Zeroizing::new(parsed.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_password_with_any_characters_goes_into_the_url_and_decodes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        let password = "p%20ss@w:rd/#?&=+ é";
        phalanx_secrets::write_new_private_file(&path, format!("{password}\n").as_bytes()).unwrap();
        let url = url_with_password(
            "postgres://phalanx@db:5432/node",
            &SecretRef::File(path),
            &AwsConfig::default(),
        )
        .await
        .unwrap();
        let parsed = url::Url::parse(&url).unwrap();
        assert_eq!(parsed.username(), "phalanx");
        assert_eq!(parsed.host_str(), Some("db"));
        assert_eq!(parsed.path(), "/node");
        let decoded = percent_encoding::percent_decode_str(parsed.password().unwrap())
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, password);
    }
}
