//! Parsing of `etcd://` URLs. Written by hand because a URL with several hosts
//! (`etcd://a:2379,b:2379/prefix`) is not a URL the `url` crate accepts.

use std::path::PathBuf;

use phalanx_store::StoreError;
use phalanx_store::backend::{percent_decode, query_pairs, unknown_option};

/// Where and how to reach an etcd cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `host:port` of each member.
    pub hosts: Vec<String>,
    /// The key prefix every Phalanx key lives under (one path segment).
    pub prefix: String,
    /// User name and password for etcd's authentication.
    pub credentials: Option<(String, String)>,
    /// TLS to the members, when the scheme is `etcds://`.
    pub tls: Option<EtcdTlsFiles>,
}

/// TLS files for `etcds://` URLs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EtcdTlsFiles {
    /// CA certificate(s) to verify the members against; the system roots if `None`.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for `--client-cert-auth` servers.
    pub client: Option<(PathBuf, PathBuf)>,
    /// The name to verify the members' certificates for, when it is not the host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn config_error(message: impl Into<String>) -> StoreError {
    StoreError::Config(message.into())
}

/// The options an `etcd://` URL takes.
const OPTIONS: &[&str] = &["cacert", "cert", "key", "domain"];

/// Decodes one part of the URL, strictly; the error names the part, never its text (it
/// may be the password).
fn decode(text: &str, what: &str) -> Result<String, StoreError> {
    percent_decode(text, &format!("{what} in the etcd URL"))
}

impl EtcdUrl {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "phalanx";

    /// Parses `etcd://[user:password@]host:port[,host:port...][/prefix]` or the same with
    /// `etcds://` for TLS, with options `cacert=PATH`, `cert=PATH`, `key=PATH` (client
    /// certificate), `domain=NAME` (TLS server name).
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("etcds://") {
            (true, rest)
        } else {
            return Err(config_error(format!(
                "{:?} is not an etcd URL (expected etcd://host:port[,host:port...]/prefix or etcds://...)",
                url.split('@').next_back().unwrap_or(url)
            )));
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| config_error("etcd credentials must be user:password@"))?;
                let user = decode(user, "user name")?;
                if user.is_empty() {
                    return Err(config_error("the etcd user name is empty"));
                }
                (Some((user, decode(password, "password")?)), hosts)
            }
            None => (None, authority),
        };
        let hosts = hosts
            .split(',')
            .map(|host| parse_host(host.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let prefix = decode(path.trim_end_matches('/'), "prefix")?;
        let prefix = if prefix.is_empty() {
            Self::DEFAULT_PREFIX.to_owned()
        } else {
            prefix
        };
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            || prefix.len() > 128
        {
            return Err(config_error(format!(
                "etcd key prefix {prefix:?} must be one path segment of a-z, A-Z, 0-9, '_', '-', '.' (at most 128)"
            )));
        }

        let mut files = EtcdTlsFiles::default();
        let (mut cert, mut key) = (None, None);
        for (name, value) in query.into_iter().flat_map(query_pairs) {
            let value = decode(value, name)?;
            if value.is_empty() {
                return Err(config_error(format!(
                    "etcd URL option {name} needs a value"
                )));
            }
            match name {
                "cacert" => files.ca = Some(PathBuf::from(value)),
                "cert" => cert = Some(PathBuf::from(value)),
                "key" => key = Some(PathBuf::from(value)),
                "domain" => files.domain = Some(value),
                other => return Err(unknown_option("etcd", other, OPTIONS)),
            }
        }
        files.client = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => return Err(config_error("etcd URL options cert and key go together")),
        };
        if !tls && files != EtcdTlsFiles::default() {
            return Err(config_error(
                "cacert, cert, key and domain need an etcds:// (TLS) URL",
            ));
        }
        Ok(Self {
            hosts,
            prefix,
            credentials,
            tls: tls.then_some(files),
        })
    }

    /// The URL without its password.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        let user = self
            .credentials
            .as_ref()
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("{scheme}://{user}{}/{}", self.hosts.join(","), self.prefix)
    }

    /// The endpoints in the form the client takes (`http://host:port` or `https://...`).
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.hosts
            .iter()
            .map(|host| format!("{scheme}://{host}"))
            .collect()
    }
}

fn parse_host(host: &str) -> Result<String, StoreError> {
    if host.is_empty() {
        return Err(config_error(
            "the etcd URL names an empty host (expected host:port[,host:port...])",
        ));
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => (name, Some(port)),
        _ => (host, None),
    };
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                config_error(format!("etcd host {host:?} has an invalid port {port:?}"))
            })?,
        None => 2379,
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'))
    {
        return Err(config_error(format!(
            "etcd host {host:?} is not a host name or address"
        )));
    }
    Ok(format!("{name}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_prefix_credentials_and_tls() {
        let url = EtcdUrl::parse("etcd://a:2379,b:2380,10.0.0.3/lnd").unwrap();
        assert_eq!(url.hosts, ["a:2379", "b:2380", "10.0.0.3:2379"]);
        assert_eq!(url.prefix, "lnd");
        assert_eq!(url.endpoints()[0], "http://a:2379");

        let url = EtcdUrl::parse("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(url.prefix, "phalanx");

        let url = EtcdUrl::parse(
            "etcds://root:p%40ss@h:2379/p?cacert=/ca.pem&cert=/c.pem&key=/k.pem&domain=etcd.local",
        )
        .unwrap();
        assert_eq!(url.credentials, Some(("root".into(), "p@ss".into())));
        let tls = url.tls.clone().unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.domain.as_deref(), Some("etcd.local"));
        assert_eq!(url.endpoints()[0], "https://h:2379");
        assert_eq!(url.redacted(), "etcds://root@h:2379/p");
        assert!(!format!("{url:?}").contains("p@ss"));

        // `+` is a plus sign, as in every store URL.
        let url = EtcdUrl::parse("etcds://u:a+b@h/p?cacert=/c+a.pem").unwrap();
        assert_eq!(url.credentials, Some(("u".into(), "a+b".into())));
        assert_eq!(url.tls.unwrap().ca, Some(PathBuf::from("/c+a.pem")));

        let url = EtcdUrl::parse("etcd://[::1]:2379/p").unwrap();
        assert_eq!(url.hosts, ["[::1]:2379"]);
    }

    #[test]
    fn rejects_bad_urls_naming_the_problem() {
        for (url, needle) in [
            ("http://a:2379/p", "not an etcd URL"),
            ("etcd:///p", "empty host"),
            ("etcd://a:2379,,b/p", "empty host"),
            ("etcd://a:notaport/p", "invalid port"),
            ("etcd://a:0/p", "invalid port"),
            ("etcd://a b:2379/p", "not a host name"),
            ("etcd://a/p/q", "one path segment"),
            ("etcd://user@a/p", "user:password@"),
            ("etcd://a/p?cacert=/x", "need an etcds://"),
            ("etcds://a/p?cert=/x", "go together"),
            (
                "etcds://a/p?timeout=1",
                "unknown etcd URL option \"timeout\"",
            ),
            ("etcds://a/p?cacert=", "needs a value"),
            // Escapes are decoded strictly everywhere, as in every store URL.
            ("etcd://u:p%zz@a/p", "bad percent-escape in the password"),
            ("etcd://a/p%2", "bad percent-escape in the prefix"),
            (
                "etcds://a/p?cacert=/x%zz",
                "bad percent-escape in the cacert",
            ),
        ] {
            let err = EtcdUrl::parse(url)
                .err()
                .unwrap_or_else(|| panic!("{url} parsed"))
                .to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    proptest::proptest! {
        /// Whatever an operator types, parsing answers with a value or an error.
        #[test]
        fn never_panics(text in "\\PC{0,80}", scheme in proptest::sample::select(vec!["etcd://", "etcds://"]), rest in "[ -~]{0,80}") {
            let _ = EtcdUrl::parse(&text);
            let _ = EtcdUrl::parse(&format!("{scheme}{rest}"));
        }
    }
}
