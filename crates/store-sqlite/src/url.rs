//! Parsing of `sqlite://` URLs.

use std::path::PathBuf;

use phalanx_store::StoreError;
use phalanx_store::backend::{percent_decode, query_pairs, unknown_option};

/// The options a `sqlite://` URL takes.
const OPTIONS: &[&str] = &["replica"];

/// Where the SQLite store keeps its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteConfig {
    /// The database file.
    pub path: PathBuf,
    /// The synchronous replica file, if any.
    pub replica: Option<PathBuf>,
}

impl SqliteConfig {
    /// Parses `sqlite://PATH[?replica=PATH]`. `sqlite:///abs/node.db` is absolute,
    /// `sqlite://rel/node.db` relative to the working directory. Percent-escapes are
    /// decoded in both paths.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let rest = url.strip_prefix("sqlite://").ok_or_else(|| {
            StoreError::Config(format!(
                "{url:?} is not a SQLite URL (expected sqlite:///path/to/node.db)"
            ))
        })?;
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let path = decode(path, "database path")?;
        if path.is_empty() {
            return Err(StoreError::Config(format!(
                "{url:?} names no database file (expected sqlite:///path/to/node.db)"
            )));
        }
        let mut replica = None;
        for (name, value) in query.into_iter().flat_map(query_pairs) {
            match name {
                "replica" => {
                    let value = decode(value, "replica path")?;
                    if value.is_empty() {
                        return Err(StoreError::Config("replica= needs a file path".into()));
                    }
                    replica = Some(PathBuf::from(value));
                }
                other => return Err(unknown_option("SQLite", other, OPTIONS)),
            }
        }
        Ok(Self {
            path: PathBuf::from(path),
            replica,
        })
    }
}

/// Decodes a path, naming it with its text in the error.
fn decode(text: &str, what: &str) -> Result<String, StoreError> {
    percent_decode(text, &format!("{what} {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_replica() {
        let config = SqliteConfig::parse("sqlite:///var/lib/phalanx/node.db").unwrap();
        assert_eq!(config.path, PathBuf::from("/var/lib/phalanx/node.db"));
        assert_eq!(config.replica, None);

        let config =
            SqliteConfig::parse("sqlite:///a/node.db?replica=/mnt/other%20disk/node.db").unwrap();
        assert_eq!(
            config.replica,
            Some(PathBuf::from("/mnt/other disk/node.db"))
        );

        let config = SqliteConfig::parse("sqlite://data/node.db").unwrap();
        assert_eq!(config.path, PathBuf::from("data/node.db"));

        // `+` is a plus sign in a path, as in every store URL.
        let config = SqliteConfig::parse("sqlite:///a+b/node.db?replica=/c+d/node.db").unwrap();
        assert_eq!(config.path, PathBuf::from("/a+b/node.db"));
        assert_eq!(config.replica, Some(PathBuf::from("/c+d/node.db")));
    }

    #[test]
    fn rejects_bad_urls_with_a_reason() {
        for (url, needle) in [
            ("postgres://x/y", "not a SQLite URL"),
            ("sqlite:/node.db", "not a SQLite URL"),
            ("sqlite://", "names no database file"),
            ("sqlite:///a.db?replica=", "needs a file path"),
            (
                "sqlite:///a.db?mode=ro",
                "unknown SQLite URL option \"mode\"",
            ),
            ("sqlite:///a%zz.db", "bad percent-escape"),
            ("sqlite:///a%+1.db", "bad percent-escape"),
            ("sqlite:///a.db?replica=/b%2", "bad percent-escape"),
            ("sqlite:///a%ff.db", "not UTF-8"),
        ] {
            let err = SqliteConfig::parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    proptest::proptest! {
        /// Whatever an operator types, parsing answers with a value or an error.
        #[test]
        fn never_panics(text in "\\PC{0,80}", scheme in proptest::sample::select(vec!["sqlite://"]), rest in "[ -~]{0,80}") {
            let _ = SqliteConfig::parse(&text);
            let _ = SqliteConfig::parse(&format!("{scheme}{rest}"));
        }
    }
}
