//! References to secrets in the configuration: `file:PATH`, `env:NAME`,
//! `aws-secrets-manager:ID`. A reference names a secret and holds none, so a
//! configuration file with references may be shared and logged.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::SecretsError;

/// Where a secret other than the seed is read from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `file:PATH`: a file of mode 0600 or stricter, read anew on every fetch.
    File(PathBuf),
    /// `env:NAME`: an environment variable (removed from the process by `phalanx`).
    Env(String),
    /// `aws-secrets-manager:ID`: a secret's name or ARN in AWS Secrets Manager (string
    /// or binary).
    AwsSecretsManager(String),
}

impl SecretRef {
    /// The provider's name, as written before the colon.
    pub fn provider(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Env(_) => "env",
            Self::AwsSecretsManager(_) => "aws-secrets-manager",
        }
    }
}

impl FromStr for SecretRef {
    type Err = SecretsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // What is not a reference may be a secret pasted in its place: never echoed.
        let not_a_reference = || {
            SecretsError::Reference {
            reference: "(not shown)".to_owned(),
            reason: "write file:PATH, env:NAME or aws-secrets-manager:ID (a reference to the secret, not the secret itself)".to_owned(),
        }
        };
        let fail = |reason: &str| SecretsError::Reference {
            reference: text.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((provider, rest)) = text.split_once(':') else {
            return Err(not_a_reference());
        };
        if rest.is_empty() {
            return Err(fail("names no file, variable or secret after the colon"));
        }
        match provider {
            "file" => Ok(Self::File(PathBuf::from(rest))),
            "env" => {
                if rest.contains(['=', '\0']) || rest.chars().any(char::is_whitespace) {
                    return Err(fail("is not a variable name"));
                }
                Ok(Self::Env(rest.to_owned()))
            }
            "aws-secrets-manager" => Ok(Self::AwsSecretsManager(rest.to_owned())),
            _ => Err(not_a_reference()),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Env(name) => write!(f, "env:{name}"),
            Self::AwsSecretsManager(id) => write!(f, "aws-secrets-manager:{id}"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_print_back() {
        for text in [
            "file:/run/secrets/token",
            "env:PHALANX_API_TOKEN",
            "aws-secrets-manager:arn:aws:secretsmanager:eu-west-1:1:secret:phalanx/token-AbCd",
        ] {
            let parsed: SecretRef = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(
            "aws-secrets-manager:x".parse::<SecretRef>().unwrap(),
            SecretRef::AwsSecretsManager("x".to_owned())
        );
        for (bad, why) in [
            ("hunter2hunter2", "not the secret itself"),
            ("vault:hunter2", "not the secret itself"),
            ("file:", "names no file"),
            ("env:A B", "not a variable name"),
        ] {
            let err = bad.parse::<SecretRef>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("hunter2"), "a pasted secret is echoed: {err}");
        }
    }
}
