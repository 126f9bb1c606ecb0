//! `phalanx regtest` serves Bitcoin Core's RPC and REST until `stop` or SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Chain {
    child: Child,
    endpoints: Value,
}

fn start() -> Chain {
    let mut child = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args([
            "regtest",
            "--rpc-port",
            "0",
            "--rpc-user",
            "alice",
            "--rpc-password",
            "s3cret",
            "--rest",
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Chain {
        child,
        endpoints: serde_json::from_str(&line).unwrap(),
    }
}

/// A raw HTTP/1.1 request, as bitcoin-cli would send it.
fn http(chain: &Chain, method: &str, path: &str, body: &str) -> (u16, String) {
    let url = chain.endpoints["rpc_url"].as_str().unwrap();
    let host = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).unwrap();
    let auth = "YWxpY2U6czNjcmV0"; // alice:s3cret
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply.split(' ').nth(1).unwrap().parse().unwrap();
    let body = reply.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

fn call(chain: &Chain, method: &str, params: Value) -> Value {
    let body =
        json!({"jsonrpc": "1.0", "id": "cli", "method": method, "params": params}).to_string();
    let (status, reply) = http(chain, "POST", "/", &body);
    assert_eq!(status, 200, "{method}: {reply}");
    serde_json::from_str::<Value>(&reply).unwrap()["result"].clone()
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "phalanx regtest did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serves_rpc_and_rest_and_stops_on_request() {
    let mut chain = start();
    assert_eq!(chain.endpoints["rpc_user"], "alice");
    assert_eq!(call(&chain, "getblockcount", json!([])), 0);
    let address = call(&chain, "getnewaddress", json!([]));
    let hashes = call(&chain, "generatetoaddress", json!([101, address]));
    assert_eq!(hashes.as_array().unwrap().len(), 101);
    let txid = call(&chain, "sendtoaddress", json!([address, 1.5]));
    assert_eq!(call(&chain, "getrawmempool", json!([])), json!([txid]));
    let (status, info) = http(&chain, "GET", "/rest/chaininfo.json", "");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&info).unwrap()["blocks"], 101);

    assert_eq!(call(&chain, "stop", json!([])), "Bitcoin Core stopping");
    assert!(wait_exit(&mut chain.child).success());
}

#[test]
fn exits_cleanly_on_sigterm_and_refuses_a_busy_port() {
    let mut chain = start();
    let port = chain.endpoints["rpc_url"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let busy = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args([
            "regtest",
            "--rpc-port",
            &port,
            "--rpc-user",
            "a",
            "--rpc-password",
            "b",
        ])
        .output()
        .unwrap();
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("cannot listen on"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );

    nix_kill(chain.child.id());
    assert!(wait_exit(&mut chain.child).success());
}

fn nix_kill(pid: u32) {
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
}
