//! Checks of identifiers and addresses before they reach the node.

use crate::error::ApiError;

/// A node id: 33 bytes of hex starting `02` or `03` (a compressed public key), returned
/// lowercased. Whether it is a point on the curve is the node's to check.
pub fn node_id(s: &str) -> Result<String, ApiError> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() != 66 || !is_hex(&s) || !(s.starts_with("02") || s.starts_with("03")) {
        return Err(ApiError::invalid_request(format!(
            "`{}` is not a node id (66 hex characters starting 02 or 03)",
            shorten(&s)
        )));
    }
    Ok(s)
}

/// A 32-byte identifier (channel id, payment hash), returned lowercased; `what` names
/// it in the error.
pub fn hex32(s: &str, what: &str) -> Result<String, ApiError> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() != 64 || !is_hex(&s) {
        return Err(ApiError::invalid_request(format!(
            "`{}` is not a {what} (64 hex characters)",
            shorten(&s)
        )));
    }
    Ok(s)
}

/// A peer's address: `host:port` (`[v6]:port` for IPv6), returned trimmed.
pub fn peer_address(s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    let bad = || {
        ApiError::invalid_request(format!(
            "`{}` is not a peer address (host:port)",
            shorten(s)
        ))
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && !host.contains(char::is_whitespace)
        && !host.contains('@')
        && !host.contains('/');
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(s.to_owned())
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Long garbage stays out of error messages.
fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        return s.to_owned();
    }
    let mut short: String = s.chars().take(MAX).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        let id = format!("03{}", "aB".repeat(32));
        assert_eq!(node_id(&id).unwrap(), id.to_lowercase());
        assert!(node_id(&format!("04{}", "ab".repeat(32))).is_err());
        assert!(node_id(&format!("02{}", "ab".repeat(31))).is_err());
        assert!(node_id(&format!("02{}", "zz".repeat(32))).is_err());
    }

    #[test]
    fn hashes() {
        assert!(hex32(&"00".repeat(32), "payment hash").is_ok());
        let err = hex32("abc", "payment hash").unwrap_err();
        assert!(err.message.contains("not a payment hash"), "{err}");
    }

    #[test]
    fn addresses() {
        for ok in ["127.0.0.1:9735", "[::1]:9735", "node.example:9735"] {
            assert_eq!(peer_address(ok).unwrap(), ok);
        }
        for bad in ["127.0.0.1", ":9735", "host:0", "host:99999", "a b:1", ""] {
            assert!(peer_address(bad).is_err(), "{bad}");
        }
    }
}
