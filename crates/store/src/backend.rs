//! Helpers for backend implementations: what every backend needs the same way, so each
//! says it once and the three read alike. Nothing here is part of the store contract;
//! callers of a store never need it.
//!
//! - URLs: [`query_pairs`], [`unknown_option`], [`percent_decode`] (strict), and
//!   [`read_config_file`] for the files a URL names.
//! - Time: [`timeout`] and [`within`] (the "no call hangs" rule of
//!   [`StateStore`](crate::StateStore)), [`now_unix_ms`], [`wait_campaign_poll`].
//! - Messages: [`stale_epoch`], [`refused_epoch`], [`newer_schema`].
//! - Values: [`write_sequence`], the one way a token's write sequence is stored.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Epoch, FencingToken, StoreError};

/// How often a backend without a watch polls a held lease while campaigning: a takeover
/// after a crash waits at most this long for the next attempt.
pub const CAMPAIGN_POLL: Duration = Duration::from_millis(100);

/// [`LeaseStore::wait_for_change`](crate::LeaseStore::wait_for_change) of a backend that
/// cannot watch the lease: waits [`CAMPAIGN_POLL`], or `max_wait` if shorter.
pub async fn wait_campaign_poll(max_wait: Duration) {
    tokio::time::sleep(max_wait.min(CAMPAIGN_POLL)).await;
}

/// The `name=value` pairs of a URL's query string (the part after `?`), in order: split
/// at `&`, empty pairs skipped, a pair without `=` read as an empty value. Neither part
/// is decoded; decode values with [`percent_decode`]. (`+` is a plus sign, not a space:
/// these are paths and names, not form data.)
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// The configuration error for URL option `name` that `backend` does not know, listing
/// the ones it does: `unknown SQLite URL option "mode" (known: replica)`.
pub fn unknown_option(backend: &str, name: &str, known: &[&str]) -> StoreError {
    StoreError::Config(format!(
        "unknown {backend} URL option {name:?} (known: {})",
        known.join(", ")
    ))
}

/// Decodes the percent-escapes of one URL component, strictly: a `%` must be followed by
/// two hex digits, and the result must be UTF-8. Anything else is a configuration error
/// naming `what` (say `user name in the PostgreSQL URL`, or a path with its text; leave a
/// secret's text out of `what`).
pub fn percent_decode(text: &str, what: &str) -> Result<String, StoreError> {
    fn hex(digit: u8) -> Option<u8> {
        (digit as char).to_digit(16).map(|value| value as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let escaped = bytes
                .get(i + 1)
                .and_then(|&high| hex(high))
                .zip(bytes.get(i + 2).and_then(|&low| hex(low)))
                .ok_or_else(|| StoreError::Config(format!("bad percent-escape in the {what}")))?;
            out.push(escaped.0 << 4 | escaped.1);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| StoreError::Config(format!("the {what} is not UTF-8")))
}

/// Reads a file a store URL names (a CA certificate, a client key), as a configuration
/// error naming `what` and the path when it cannot.
pub fn read_config_file(path: &Path, what: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|err| {
        StoreError::Config(format!("cannot read the {what} {}: {err}", path.display()))
    })
}

/// The transient error of an operation `op` that `backend` at `target` (a redacted URL,
/// a path) did not answer within `after`: `PostgreSQL at postgres://u@h:5432/db did not
/// answer within 10s`.
pub fn timeout(backend: &str, op: &'static str, target: &str, after: Duration) -> StoreError {
    StoreError::transient(
        op,
        format!("{backend} at {target} did not answer within {after:?}"),
        None,
    )
}

/// Runs `future` for at most `limit`; past that, drops it and fails with [`timeout`]. The
/// future's own output comes back untouched, for the caller to map its error.
pub async fn within<F: Future>(
    backend: &str,
    op: &'static str,
    target: &str,
    limit: Duration,
    future: F,
) -> Result<F::Output, StoreError> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| timeout(backend, op, target, limit))
}

/// Milliseconds since the Unix epoch by this machine's clock (0 before 1970).
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The token's write sequence as the signed 64-bit integer the backends store and compare.
/// A sequence past `i64::MAX` is a writer's bug; every backend refuses it with a
/// configuration error before anything is sent, rather than store a different number.
pub fn write_sequence(token: FencingToken) -> Result<i64, StoreError> {
    i64::try_from(token.sequence()).map_err(|_| {
        StoreError::Config(format!(
            "write sequence {} is out of range",
            token.sequence()
        ))
    })
}

/// Fenced: `token`'s epoch is older than the cluster's `current` one, won by `holder` when
/// the backend knows who.
pub fn stale_epoch(token: FencingToken, current: Epoch, holder: Option<&str>) -> StoreError {
    let holder = holder
        .map(|holder| format!(" (holder {holder})"))
        .unwrap_or_default();
    StoreError::fenced(format!(
        "epoch {} is stale; the cluster is at epoch {current}{holder}",
        token.epoch()
    ))
}

/// Fenced: the store refused `token` and could not say more, or the look-up of why
/// failed with `cause`.
pub fn refused_epoch(token: FencingToken, cause: Option<&StoreError>) -> StoreError {
    StoreError::fenced(match cause {
        Some(cause) => format!("epoch {} was refused ({})", token.epoch(), cause.report()),
        None => format!("epoch {} was refused", token.epoch()),
    })
}

/// The message for a store whose schema, at version `found`, was written by a newer
/// Phalanx than this one, which knows versions up to `known`.
pub fn newer_schema(found: usize, known: usize) -> String {
    format!("schema version {found} was written by a newer Phalanx (this one knows {known})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("a%20b%2Fc", "path").unwrap(), "a b/c");
        assert_eq!(percent_decode("p%40ss", "password").unwrap(), "p@ss");
        // A plus sign is a plus sign (these are paths and names, not form data).
        assert_eq!(percent_decode("my+ca.pem", "path").unwrap(), "my+ca.pem");
        assert_eq!(percent_decode("", "path").unwrap(), "");
        for bad in ["%zz", "a%2", "%", "%+1", "%-1", "% 1", "%é"] {
            let err = percent_decode(bad, "thing").unwrap_err();
            assert_eq!(
                err.to_string(),
                "invalid store configuration: bad percent-escape in the thing",
                "{bad:?}"
            );
        }
        let err = percent_decode("a%ff", "thing").unwrap_err();
        assert!(err.to_string().contains("the thing is not UTF-8"), "{err}");
    }

    #[test]
    fn query_pairs_are_split_but_not_decoded() {
        let pairs: Vec<_> = query_pairs("a=1&&b&c=x%20y+z&d=e=f").collect();
        assert_eq!(
            pairs,
            [("a", "1"), ("b", ""), ("c", "x%20y+z"), ("d", "e=f")]
        );
        assert_eq!(query_pairs("").count(), 0);
    }

    #[test]
    fn unknown_options_list_the_known_ones() {
        let err = unknown_option("etcd", "timeout", &["cacert", "cert"]);
        assert_eq!(
            err.to_string(),
            "invalid store configuration: unknown etcd URL option \"timeout\" (known: cacert, cert)"
        );
    }

    #[test]
    fn a_write_sequence_past_i64_is_refused_not_clamped() {
        let token = FencingToken::new(Epoch(3));
        assert_eq!(write_sequence(token).unwrap(), 0);
        assert_eq!(
            write_sequence(token.sequenced(i64::MAX as u64)).unwrap(),
            i64::MAX
        );
        let err = write_sequence(token.sequenced(i64::MAX as u64 + 1)).unwrap_err();
        assert!(matches!(err, StoreError::Config(_)), "{err}");
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn fenced_messages_name_both_epochs() {
        let token = FencingToken::new(Epoch(3));
        let err = stale_epoch(token, Epoch(5), Some("b"));
        assert!(err.is_fenced());
        assert_eq!(
            err.to_string(),
            "fenced: epoch 3 is stale; the cluster is at epoch 5 (holder b)"
        );
        assert_eq!(
            stale_epoch(token, Epoch(5), None).to_string(),
            "fenced: epoch 3 is stale; the cluster is at epoch 5"
        );
        let cause = StoreError::transient("read lease", "gone", None);
        assert_eq!(
            refused_epoch(token, Some(&cause)).to_string(),
            "fenced: epoch 3 was refused (store unavailable during read lease: gone)"
        );
        assert!(newer_schema(9, 4).contains("newer Phalanx (this one knows 4)"));
    }

    #[tokio::test(start_paused = true)]
    async fn within_bounds_a_future_that_never_ends() {
        let err = within(
            "etcd",
            "read",
            "etcd://h:2379/p",
            Duration::from_secs(2),
            std::future::pending::<()>(),
        )
        .await
        .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            "store unavailable during read: etcd at etcd://h:2379/p did not answer within 2s"
        );
        let answered = within("etcd", "read", "t", Duration::from_secs(2), async { 7 }).await;
        assert_eq!(answered.unwrap(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn the_campaign_poll_waits_at_most_its_interval() {
        let started = tokio::time::Instant::now();
        wait_campaign_poll(Duration::from_secs(30)).await;
        assert_eq!(started.elapsed(), CAMPAIGN_POLL);
        let started = tokio::time::Instant::now();
        wait_campaign_poll(Duration::from_millis(10)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(10));
    }
}
