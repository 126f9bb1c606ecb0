//! `[seed]`: where the seed comes from, and the secret references of the other
//! sections (`[api] token`, `[store] password`).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use bitcoin::secp256k1::PublicKey;
use phalanx_secrets::SecretRef;
use serde::Deserialize;

use super::{ConfigError, field};

/// `[seed]`.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SeedLayer {
    /// Where the seed comes from: file, env, encrypted-file or aws-secrets-manager.
    #[arg(long = "seed-provider", env = "PHALANX_SEED_PROVIDER")]
    #[serde(rename = "provider")]
    pub seed_provider: Option<String>,
    /// The seed file (file: 64 bytes or 128 hex digits, mode 0600, made by `phalanx
    /// init`; encrypted-file: made by `phalanx seed new --encrypt`).
    #[arg(long = "seed-file", env = "PHALANX_SEED_FILE")]
    #[serde(rename = "file")]
    pub seed_file: Option<PathBuf>,
    /// env: the variable holding the seed as 128 hex digits (default PHALANX_SEED_HEX).
    #[arg(long = "seed-env-var", env = "PHALANX_SEED_ENV_VAR")]
    #[serde(rename = "env_var")]
    pub seed_env_var: Option<String>,
    /// encrypted-file: a file (mode 0600) holding the passphrase.
    #[arg(long = "seed-passphrase-file", env = "PHALANX_SEED_PASSPHRASE_FILE")]
    #[serde(rename = "passphrase_file")]
    pub seed_passphrase_file: Option<PathBuf>,
    /// encrypted-file: the variable holding the passphrase (never a flag: every user of
    /// the machine can read a process's arguments).
    #[arg(long = "seed-passphrase-env", env = "PHALANX_SEED_PASSPHRASE_ENV")]
    #[serde(rename = "passphrase_env")]
    pub seed_passphrase_env: Option<String>,
    /// aws-secrets-manager: the secret's name or ARN.
    #[arg(long = "seed-aws-secret-id", env = "PHALANX_SEED_AWS_SECRET_ID")]
    #[serde(rename = "aws_secret_id")]
    pub seed_aws_secret_id: Option<String>,
    /// The AWS region of Secrets Manager (default: the SDK's, from AWS_REGION or the
    /// profile); also for `aws-secrets-manager:` references in other sections.
    #[arg(long = "seed-aws-region", env = "PHALANX_SEED_AWS_REGION")]
    #[serde(rename = "aws_region")]
    pub seed_aws_region: Option<String>,
    /// Another Secrets Manager endpoint (a VPC endpoint; a test server); also for
    /// `aws-secrets-manager:` references in other sections.
    #[arg(long = "seed-aws-endpoint-url", env = "PHALANX_SEED_AWS_ENDPOINT_URL")]
    #[serde(rename = "aws_endpoint_url")]
    pub seed_aws_endpoint_url: Option<String>,
    /// The node id the seed must have: checked before the store is opened.
    #[arg(long = "expected-node-id", env = "PHALANX_EXPECTED_NODE_ID")]
    #[serde(rename = "expected_node_id")]
    pub expected_node_id: Option<String>,
}

impl SeedLayer {
    /// This layer over `base`: every value set here wins.
    pub fn over(self, base: SeedLayer) -> SeedLayer {
        SeedLayer {
            seed_provider: self.seed_provider.or(base.seed_provider),
            seed_file: self.seed_file.or(base.seed_file),
            seed_env_var: self.seed_env_var.or(base.seed_env_var),
            seed_passphrase_file: self.seed_passphrase_file.or(base.seed_passphrase_file),
            seed_passphrase_env: self.seed_passphrase_env.or(base.seed_passphrase_env),
            seed_aws_secret_id: self.seed_aws_secret_id.or(base.seed_aws_secret_id),
            seed_aws_region: self.seed_aws_region.or(base.seed_aws_region),
            seed_aws_endpoint_url: self.seed_aws_endpoint_url.or(base.seed_aws_endpoint_url),
            expected_node_id: self.expected_node_id.or(base.expected_node_id),
        }
    }

    /// Checks the section; `data_dir` gives the default seed file.
    pub fn resolve(self, data_dir: &Path) -> Result<SeedConfig, ConfigError> {
        let provider = self.seed_provider.as_deref().unwrap_or("file");
        let only_for = |set: bool, name: &'static str, providers: &str| {
            if set {
                Err(field(
                    name,
                    format!("is for provider {providers}, and seed.provider is {provider}"),
                ))
            } else {
                Ok(())
            }
        };
        let passphrase_set =
            self.seed_passphrase_file.is_some() || self.seed_passphrase_env.is_some();
        let source = match provider {
            "file" => {
                only_for(self.seed_env_var.is_some(), "seed.env_var", "env")?;
                only_for(passphrase_set, "seed.passphrase_file", "encrypted-file")?;
                only_for(
                    self.seed_aws_secret_id.is_some(),
                    "seed.aws_secret_id",
                    "aws-secrets-manager",
                )?;
                SeedSource::File {
                    path: self.seed_file.unwrap_or_else(|| data_dir.join("seed")),
                }
            }
            "env" => {
                only_for(
                    self.seed_file.is_some(),
                    "seed.file",
                    "file or encrypted-file",
                )?;
                only_for(passphrase_set, "seed.passphrase_file", "encrypted-file")?;
                only_for(
                    self.seed_aws_secret_id.is_some(),
                    "seed.aws_secret_id",
                    "aws-secrets-manager",
                )?;
                let var = self
                    .seed_env_var
                    .unwrap_or_else(|| phalanx_secrets::env::DEFAULT_SEED_VARIABLE.to_owned());
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(field(
                        "seed.env_var",
                        format!("{var:?} is not a variable name"),
                    ));
                }
                SeedSource::Env { var }
            }
            "encrypted-file" => {
                only_for(self.seed_env_var.is_some(), "seed.env_var", "env")?;
                only_for(
                    self.seed_aws_secret_id.is_some(),
                    "seed.aws_secret_id",
                    "aws-secrets-manager",
                )?;
                let passphrase = match (self.seed_passphrase_file, self.seed_passphrase_env) {
                    (Some(path), None) => SecretRef::File(path),
                    (None, Some(var)) if !var.is_empty() && !var.contains(['=', '\0']) => {
                        SecretRef::Env(var)
                    }
                    (None, Some(var)) => {
                        return Err(field(
                            "seed.passphrase_env",
                            format!("{var:?} is not a variable name"),
                        ));
                    }
                    (Some(_), Some(_)) => {
                        return Err(field(
                            "seed.passphrase_file",
                            "set seed.passphrase_file or seed.passphrase_env, not both",
                        ));
                    }
                    (None, None) => {
                        return Err(field(
                            "seed.passphrase_file",
                            "provider encrypted-file needs seed.passphrase_file or seed.passphrase_env",
                        ));
                    }
                };
                SeedSource::EncryptedFile {
                    path: self.seed_file.unwrap_or_else(|| data_dir.join("seed.enc")),
                    passphrase,
                }
            }
            "aws-secrets-manager" => {
                only_for(
                    self.seed_file.is_some(),
                    "seed.file",
                    "file or encrypted-file",
                )?;
                only_for(self.seed_env_var.is_some(), "seed.env_var", "env")?;
                only_for(passphrase_set, "seed.passphrase_file", "encrypted-file")?;
                let secret_id = self
                    .seed_aws_secret_id
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| {
                        field(
                            "seed.aws_secret_id",
                            "provider aws-secrets-manager needs the secret's name or ARN",
                        )
                    })?;
                SeedSource::AwsSecretsManager { secret_id }
            }
            other => {
                return Err(field(
                    "seed.provider",
                    format!(
                        "{other:?} is not one of file, env, encrypted-file, aws-secrets-manager"
                    ),
                ));
            }
        };
        let endpoint_url = self
            .seed_aws_endpoint_url
            .map(|text| {
                super::parse_http_url("seed.aws_endpoint_url", &text)
                    .map(|u| u.as_str().trim_end_matches('/').to_owned())
            })
            .transpose()?;
        let expected_node_id = self
            .expected_node_id
            .map(|text| {
                PublicKey::from_str(text.trim()).map_err(|_| {
                    field(
                        "seed.expected_node_id",
                        format!("{text:?} is not a node id (66 hex digits, 02 or 03 first)"),
                    )
                })
            })
            .transpose()?;
        Ok(SeedConfig {
            source,
            expected_node_id,
            aws: AwsConfig {
                region: self.seed_aws_region.filter(|r| !r.is_empty()),
                endpoint_url,
            },
        })
    }
}

/// Where the seed comes from, and what it must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedConfig {
    /// The provider and its settings.
    pub source: SeedSource,
    /// The node id the seed must have (`[seed] expected_node_id`).
    pub expected_node_id: Option<PublicKey>,
    /// How AWS Secrets Manager is reached, for the seed and for every
    /// `aws-secrets-manager:` reference.
    pub aws: AwsConfig,
}

/// A seed provider and its settings (`[seed] provider`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeedSource {
    /// `file`.
    File {
        /// The seed file.
        path: PathBuf,
    },
    /// `env`.
    Env {
        /// The variable.
        var: String,
    },
    /// `encrypted-file`.
    EncryptedFile {
        /// The encrypted seed file.
        path: PathBuf,
        /// Where its passphrase is (a file or a variable).
        passphrase: SecretRef,
    },
    /// `aws-secrets-manager`.
    AwsSecretsManager {
        /// The secret's name or ARN.
        secret_id: String,
    },
}

impl SeedSource {
    /// The provider's name, as configured.
    pub fn provider(&self) -> &'static str {
        match self {
            Self::File { .. } => "file",
            Self::Env { .. } => "env",
            Self::EncryptedFile { .. } => "encrypted-file",
            Self::AwsSecretsManager { .. } => "aws-secrets-manager",
        }
    }
}

/// How AWS Secrets Manager is reached (`[seed] aws_region`, `aws_endpoint_url`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsConfig {
    /// The region; `None`: the SDK's chain.
    pub region: Option<String>,
    /// Another endpoint than AWS's.
    pub endpoint_url: Option<String>,
}

/// Parses an optional secret reference of field `name`.
pub(super) fn secret_ref(
    name: &'static str,
    text: Option<String>,
) -> Result<Option<SecretRef>, ConfigError> {
    text.map(|text| SecretRef::from_str(&text).map_err(|err| field(name, err.to_string())))
        .transpose()
}

impl super::NodeConfig {
    /// The environment variables this configuration reads secrets from: `phalanx`
    /// moves them out of the environment before it starts threads
    /// ([`phalanx_secrets::env::take_from_environment`]).
    pub fn secret_variables(&self) -> Vec<&str> {
        let mut names = Vec::new();
        match &self.seed.source {
            SeedSource::Env { var } => names.push(var.as_str()),
            SeedSource::EncryptedFile {
                passphrase: SecretRef::Env(var),
                ..
            } => names.push(var.as_str()),
            _ => {}
        }
        for reference in [&self.api.token_secret, &self.store.password_secret]
            .into_iter()
            .flatten()
        {
            if let SecretRef::Env(var) = reference {
                names.push(var.as_str());
            }
        }
        names
    }
}
