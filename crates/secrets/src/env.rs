//! Secrets in environment variables, for orchestrators that inject them so.
//!
//! A variable holding a secret is inherited by every child process and readable in
//! `/proc/PID/environ` by the same user, so a process should not keep it there.
//! [`take_from_environment`], called by `phalanx` before it starts any thread, moves
//! the named variables into this process's vault: the value is kept in zeroizing
//! memory, its bytes in the environment block are overwritten, and the variable is
//! removed. [`EnvSecret`] and [`EnvSeedProvider`] read the vault first, then the
//! environment as it is (a library caller that did not take the variables).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::Mutex;

use zeroize::{Zeroize, Zeroizing};

use crate::{SecretBytes, SecretSource, SecretsError, Seed, SeedProvider};

/// Values taken out of the environment, by variable name.
static VAULT: Mutex<BTreeMap<String, Zeroizing<String>>> = Mutex::new(BTreeMap::new());

/// Moves each named variable that is set out of the environment and into the vault
/// (see the module's documentation); returns the names that were set.
///
/// # Safety
/// Changes the process environment: no other thread may read or write it meanwhile
/// (call it before starting threads or an async runtime), as for
/// [`std::env::remove_var`].
pub unsafe fn take_from_environment<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken = Vec::new();
    let mut vault = VAULT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for name in names {
        if name.is_empty() || name.contains(['=', '\0']) {
            continue;
        }
        let Some(value) = std::env::var_os(name) else {
            continue;
        };
        let value = Zeroizing::new(value.into_encoded_bytes());
        if let Ok(text) = std::str::from_utf8(&value) {
            vault.insert(name.to_owned(), Zeroizing::new(text.to_owned()));
        }
        // SAFETY: the caller guarantees no other thread touches the environment; the
        // pointer getenv returns is to the value of a live entry, NUL-terminated, which
        // we overwrite in place (its length unchanged) before removing the entry.
        unsafe {
            if let Ok(c_name) = CString::new(name) {
                let pointer = libc::getenv(c_name.as_ptr());
                if !pointer.is_null() {
                    let len = libc::strlen(pointer);
                    std::ptr::write_bytes(pointer, b'0', len);
                }
            }
            std::env::remove_var(name);
        }
        taken.push(name.to_owned());
    }
    taken
}

/// The value of `name`: from the vault, else from the environment.
fn read(name: &str) -> Result<Zeroizing<String>, SecretsError> {
    let vault = VAULT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(value) = vault.get(name) {
        return Ok(value.clone());
    }
    drop(vault);
    match std::env::var(name) {
        Ok(mut value) => {
            let kept = Zeroizing::new(value.clone());
            value.zeroize();
            Ok(kept)
        }
        Err(_) => Err(SecretsError::MissingVariable {
            name: name.to_owned(),
        }),
    }
}

/// A secret in an environment variable (see the module's documentation).
#[derive(Clone, Debug)]
pub struct EnvSecret {
    name: String,
}

impl EnvSecret {
    /// The secret in variable `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

#[async_trait::async_trait]
impl SecretSource for EnvSecret {
    async fn fetch(&self) -> Result<SecretBytes, SecretsError> {
        let value = read(&self.name)?;
        Ok(SecretBytes::new(value.as_bytes().to_vec()))
    }

    fn describe(&self) -> String {
        format!("environment variable {}", self.name)
    }
}

/// The variable [`EnvSeedProvider`] reads unless told another.
pub const DEFAULT_SEED_VARIABLE: &str = "PHALANX_SEED_HEX";

/// A seed of 128 hex digits in an environment variable (see the module's documentation).
#[derive(Clone, Debug)]
pub struct EnvSeedProvider {
    name: String,
}

impl EnvSeedProvider {
    /// The seed in variable `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

#[async_trait::async_trait]
impl SeedProvider for EnvSeedProvider {
    async fn seed(&self) -> Result<Seed, SecretsError> {
        let value = read(&self.name)?;
        Seed::decode_hex(value.as_bytes(), &self.describe())
    }

    fn describe(&self) -> String {
        format!("environment variable {}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_seed_in_a_variable_decodes_and_a_bad_one_names_the_variable() {
        // Variables only this test sets; set before any read of them.
        let seed = Seed::generate().unwrap();
        // SAFETY: test-only variables with unique names; no other code reads them.
        unsafe {
            std::env::set_var("PHALANX_TEST_SEED_GOOD_7c1", &*seed.to_hex());
            std::env::set_var("PHALANX_TEST_SEED_BAD_7c1", "abcd");
        }
        let read = EnvSeedProvider::new("PHALANX_TEST_SEED_GOOD_7c1")
            .seed()
            .await
            .unwrap();
        assert_eq!(read.as_bytes(), seed.as_bytes());
        let err = EnvSeedProvider::new("PHALANX_TEST_SEED_BAD_7c1")
            .seed()
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable PHALANX_TEST_SEED_BAD_7c1: 4 characters"),
            "{err}"
        );
        let missing = EnvSeedProvider::new("PHALANX_TEST_SEED_UNSET_7c1")
            .seed()
            .await
            .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "environment variable PHALANX_TEST_SEED_UNSET_7c1 is not set"
        );
    }
}
