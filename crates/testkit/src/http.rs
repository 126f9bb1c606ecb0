//! A bare HTTP/1.0 `GET` on loopback, for tests that read a small API (a front's state
//! and metrics) without a client library.

use std::io;

/// The status and body of `GET path` on `address` (`host:port`).
pub async fn get(address: &str, path: &str) -> io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(request(path).as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    parse(&response)
}

/// [`get`], blocking (for tests without a runtime).
pub fn get_blocking(address: &str, path: &str) -> io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.write_all(request(path).as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    parse(&response)
}

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")
}

fn parse(response: &str) -> io::Result<(u16, String)> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(malformed)?;
    Ok((status, body.to_owned()))
}
