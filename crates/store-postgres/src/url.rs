//! Parsing of `postgres://` URLs into a client configuration, TLS included.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use phalanx_store::backend::{percent_decode, query_pairs, read_config_file, unknown_option};
use phalanx_store::{StoreError, StoreOptions};
use tokio_postgres::config::SslMode;

/// Default number of pooled connections for reads and writes (the lease uses its own).
pub const DEFAULT_POOL_SIZE: usize = 16;

/// A parsed PostgreSQL URL.
#[derive(Clone)]
pub struct PgUrl {
    /// The client configuration (host, port, user, password, database, timeouts).
    pub config: tokio_postgres::Config,
    /// TLS settings, when `sslmode` asks for TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// The URL without its password, for logs and errors.
    pub redacted: String,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgUrl")
            .field("url", &self.redacted)
            .field("tls", &self.tls.is_some())
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

fn config_error(message: String) -> StoreError {
    StoreError::Config(message)
}

/// The options a `postgres://` URL takes.
const OPTIONS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "pool_size",
    "application_name",
];

/// Decodes one part of the URL, strictly; the error names the part, never its text (it
/// may be the password).
fn decode(text: &str, what: &str) -> Result<String, StoreError> {
    percent_decode(text, &format!("{what} in the PostgreSQL URL"))
}

impl PgUrl {
    /// Parses `postgres://user[:password]@host[:port]/database[?options]`.
    ///
    /// Options: `sslmode=disable|require|verify-full` (default `disable`; `require` and
    /// `verify-full` both verify the server certificate and host name, against
    /// `sslrootcert` or the system's roots), `sslrootcert=PATH`, `sslcert=PATH` and
    /// `sslkey=PATH` (client certificate), `pool_size=N` (default 16),
    /// `application_name=NAME`.
    pub fn parse(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            config_error(format!(
                "cannot parse the PostgreSQL URL: {e} (expected postgres://user:password@host:port/database)"
            ))
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(config_error(format!(
                "scheme {:?} is not postgres:// or postgresql://",
                parsed.scheme()
            )));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| config_error("the PostgreSQL URL names no host".into()))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port().unwrap_or(5432);
        let user = decode(parsed.username(), "user name")?;
        if user.is_empty() {
            return Err(config_error(
                "the PostgreSQL URL names no user (postgres://USER@host/database)".into(),
            ));
        }
        let password = parsed
            .password()
            .map(|p| decode(p, "password"))
            .transpose()?;
        let database = decode(parsed.path().trim_start_matches('/'), "database name")?;
        if database.is_empty() || database.contains('/') {
            return Err(config_error(format!(
                "the PostgreSQL URL must name one database (postgres://user@host/DATABASE), not {:?}",
                parsed.path()
            )));
        }

        let mut ssl_mode = "disable".to_owned();
        let mut root_cert = None;
        let mut client_cert = None;
        let mut client_key = None;
        let mut pool_size = DEFAULT_POOL_SIZE;
        let mut application_name = "phalanx".to_owned();
        for (name, value) in parsed.query().into_iter().flat_map(query_pairs) {
            let value = decode(value, name)?;
            match name {
                "sslmode" => ssl_mode = value,
                "sslrootcert" => root_cert = Some(PathBuf::from(value)),
                "sslcert" => client_cert = Some(PathBuf::from(value)),
                "sslkey" => client_key = Some(PathBuf::from(value)),
                "pool_size" => {
                    pool_size = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=512).contains(n))
                        .ok_or_else(|| {
                            config_error(format!("pool_size must be 1 to 512, not {value:?}"))
                        })?;
                }
                "application_name" => application_name = value,
                other => return Err(unknown_option("PostgreSQL", other, OPTIONS)),
            }
        }
        let tls = match ssl_mode.as_str() {
            "disable" => {
                if root_cert.is_some() || client_cert.is_some() || client_key.is_some() {
                    return Err(config_error(
                        "sslrootcert/sslcert/sslkey need sslmode=require or sslmode=verify-full"
                            .into(),
                    ));
                }
                None
            }
            "require" | "verify-full" => Some(Arc::new(tls_config(
                root_cert.as_deref(),
                client_cert.as_deref(),
                client_key.as_deref(),
            )?)),
            other => {
                return Err(config_error(format!(
                    "sslmode {other:?} is not supported: use disable, require or verify-full (both verify the server certificate)"
                )));
            }
        };

        let mut config = tokio_postgres::Config::new();
        config
            .host(&host)
            .port(port)
            .user(&user)
            .dbname(&database)
            .application_name(&application_name)
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            // The server gives up on a runaway statement too, but only after the client
            // did, so a slow statement is reported by the client as a transient error
            // (outcome unknown). (Any cancel of a commit's wait for a synchronous
            // standby, by this timeout, an operator's `pg_cancel_backend` or a restart,
            // makes PostgreSQL commit locally and report success with a warning; the
            // timeout being longer than the client's is not a guard against that.)
            //
            // The isolation level is pinned: the fence reads the lease row with a fresh
            // snapshot after waiting for a takeover's lock, which only READ COMMITTED
            // gives. A database or role default of `repeatable read` would let a write
            // check the epoch in a snapshot from before the takeover and commit after it.
            .options(format!(
                "-c statement_timeout={} -c default_transaction_isolation=read\\ committed",
                server_statement_timeout(options.operation_timeout).as_millis()
            ))
            .ssl_mode(if tls.is_some() {
                SslMode::Require
            } else {
                SslMode::Disable
            });
        if let Some(password) = &password {
            config.password(password);
        }
        let host_for_url = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        Ok(Self {
            config,
            tls,
            pool_size,
            redacted: format!("postgres://{user}@{host_for_url}:{port}/{database}"),
        })
    }
}

/// The server-side statement timeout for a client operation timeout: twice as long, so
/// the client always gives up first.
pub fn server_statement_timeout(operation_timeout: Duration) -> Duration {
    operation_timeout * 2
}

fn tls_config(
    root_cert: Option<&Path>,
    client_cert: Option<&Path>,
    client_key: Option<&Path>,
) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem = read_config_file(path, "sslrootcert")?;
            let mut count = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    config_error(format!("sslrootcert {} is not PEM: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    config_error(format!(
                        "sslrootcert {} holds an unusable certificate: {e}",
                        path.display()
                    ))
                })?;
                count += 1;
            }
            if count == 0 {
                return Err(config_error(format!(
                    "sslrootcert {} holds no PEM certificate",
                    path.display()
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(config_error(
                    "sslmode needs sslrootcert=PATH: no system CA certificates were found".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    match (client_cert, client_key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert_path), Some(key_path)) => {
            let cert_pem = read_config_file(cert_path, "sslcert")?;
            let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    config_error(format!("sslcert {} is not PEM: {e}", cert_path.display()))
                })?;
            let key_pem = read_config_file(key_path, "sslkey")?;
            let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .map_err(|e| {
                    config_error(format!("sslkey {} is not PEM: {e}", key_path.display()))
                })?
                .ok_or_else(|| {
                    config_error(format!(
                        "sslkey {} holds no private key",
                        key_path.display()
                    ))
                })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| config_error(format!("client certificate rejected: {e}")))
        }
        _ => Err(config_error(
            "sslcert and sslkey must be given together".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use phalanx_store::ClusterName;

    use super::*;

    fn parse(url: &str) -> Result<PgUrl, StoreError> {
        PgUrl::parse(url, &StoreOptions::new(ClusterName::new("c").unwrap()))
    }

    #[test]
    fn parses_a_full_url_and_redacts_the_password() {
        let url = parse("postgres://alice:p%40ss@db.example:6543/phalanx?pool_size=4").unwrap();
        assert_eq!(url.redacted, "postgres://alice@db.example:6543/phalanx");
        assert_eq!(url.pool_size, 4);
        assert_eq!(url.config.get_user(), Some("alice"));
        assert_eq!(url.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(url.config.get_dbname(), Some("phalanx"));
        assert_eq!(url.config.get_ports(), &[6543]);
        assert!(url.tls.is_none());
        assert!(!format!("{url:?}").contains("p@ss"));
        // A bad escape in the password is named, its text is not.
        let err = parse("postgres://alice:s3cr%zzet@h/db")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("s3cr"), "{err}");
        // The server's statement timeout outlasts the client's (10 s by default).
        assert_eq!(
            url.config.get_options(),
            Some("-c statement_timeout=20000 -c default_transaction_isolation=read\\ committed")
        );
    }

    #[test]
    fn rejects_bad_urls_naming_the_problem() {
        for (url, needle) in [
            ("postgres//x", "cannot parse"),
            ("mysql://u@h/db", "is not postgres://"),
            ("postgres://h/db", "names no user"),
            ("postgres://u@h", "must name one database"),
            ("postgres://u@h/a/b", "must name one database"),
            ("postgres://u@h:99999/db", "cannot parse"),
            ("postgres://u@h/db?sslmode=prefer", "not supported"),
            ("postgres://u@h/db?pool_size=0", "pool_size"),
            (
                "postgres://u@h/db?foo=1",
                "unknown PostgreSQL URL option \"foo\"",
            ),
            ("postgres://u@h/db?sslrootcert=/x", "need sslmode"),
            (
                "postgres://u@h/db?sslmode=require&sslrootcert=/nonexistent/ca.crt",
                "cannot read the sslrootcert",
            ),
            ("postgres://u@h/db?sslmode=require&sslcert=/x", "together"),
            // Escapes are decoded strictly everywhere, as in every store URL.
            (
                "postgres://u%zz@h/db",
                "bad percent-escape in the user name",
            ),
            (
                "postgres://u:p%2@h/db",
                "bad percent-escape in the password",
            ),
            (
                "postgres://u@h/db%ff",
                "database name in the PostgreSQL URL is not UTF-8",
            ),
            (
                "postgres://u@h/db?sslmode=dis%zzable",
                "bad percent-escape in the sslmode",
            ),
        ] {
            let err = parse(url)
                .err()
                .unwrap_or_else(|| panic!("{url} parsed"))
                .to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn a_plus_in_an_option_is_a_plus() {
        let url = parse("postgres://u@h/db?application_name=node+1%2Ba").unwrap();
        assert_eq!(url.config.get_application_name(), Some("node+1+a"));
    }

    #[test]
    fn tls_with_a_root_certificate_file() {
        let pki = phalanx_testkit::tls::TestPki::generate("client").unwrap();
        let url = format!(
            "postgres://u@localhost/db?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            pki.ca_path().display(),
            pki.client_cert_path().display(),
            pki.client_key_path().display()
        );
        assert!(parse(&url).unwrap().tls.is_some());

        let not_pem = pki.ca_path().with_file_name("garbage.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let err = parse(&format!(
            "postgres://u@localhost/db?sslmode=require&sslrootcert={}",
            not_pem.display()
        ))
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }

    proptest::proptest! {
        /// Whatever an operator types, parsing answers with a value or an error.
        #[test]
        fn never_panics(text in "\\PC{0,80}", scheme in proptest::sample::select(vec!["postgres://", "postgresql://"]), rest in "[ -~]{0,80}") {
            let _ = parse(&text);
            let _ = parse(&format!("{scheme}{rest}"));
        }
    }
}
