//! Bad input on the wire gets Bitcoin Core's answers, byte for byte where clients care,
//! and the server keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;

use base64::Engine;
use phalanx_regtest::{Regtest, RegtestConfig};
use serde_json::{Value, json};

struct Reply {
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
    bytes: Vec<u8>,
}

impl Reply {
    fn status(&self) -> u16 {
        self.status_line.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// One raw HTTP/1.1 request on a fresh connection.
fn send(regtest: &Regtest, method: &str, path: &str, auth: Option<&str>, body: &str) -> Reply {
    let mut stream = TcpStream::connect(regtest.addr()).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        regtest.addr(),
        body.len()
    );
    if let Some(auth) = auth {
        request.push_str(&format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(auth)
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let bytes = raw[split + 4..].to_vec();
    let body = String::from_utf8_lossy(&bytes).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    let headers = lines
        .map(|line| {
            let (key, value) = line.split_once(": ").unwrap();
            (key.to_owned(), value.to_owned())
        })
        .collect();
    Reply {
        status_line,
        headers,
        body,
        bytes,
    }
}

fn rpc(regtest: &Regtest, body: &str) -> Reply {
    send(regtest, "POST", "/", Some("phalanx:phalanx"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_matches_core() {
    let regtest = Regtest::start(RegtestConfig::default()).await.unwrap();
    let ok = rpc(&regtest, r#"{"method":"getblockcount","params":[],"id":7}"#);
    assert_eq!(ok.status_line, "HTTP/1.1 200 OK");
    assert_eq!(ok.header("content-type"), Some("application/json"));
    assert_eq!(
        ok.header("content-length"),
        Some(ok.body.len().to_string().as_str())
    );
    assert!(ok.header("transfer-encoding").is_none());
    assert!(ok.body.ends_with('\n'));
    assert_eq!(ok.json(), json!({"result": 0, "error": null, "id": 7}));

    let v2 = rpc(
        &regtest,
        r#"{"jsonrpc":"2.0","method":"getblockcount","id":"a"}"#,
    );
    assert_eq!(v2.json(), json!({"jsonrpc": "2.0", "result": 0, "id": "a"}));
    // A 2.0 notification is executed and answered with 204.
    let notification = rpc(&regtest, r#"{"jsonrpc":"2.0","method":"getblockcount"}"#);
    assert_eq!(notification.status(), 204);
    assert!(notification.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_cores_errors_and_the_server_keeps_serving() {
    let regtest = Regtest::start(RegtestConfig::default()).await.unwrap();
    let cases: Vec<(&str, u16, Value)> = vec![
        (
            "{not json",
            500,
            json!({"result": null, "error": {"code": -32700, "message": "Parse error"}, "id": null}),
        ),
        (
            "17",
            500,
            json!({"result": null, "error": {"code": -32700, "message": "Top-level object parse error"}, "id": null}),
        ),
        (
            r#"{"method":"nosuchmethod","id":1}"#,
            404,
            json!({"result": null, "error": {"code": -32601, "message": "Method not found"}, "id": 1}),
        ),
        (
            r#"{"jsonrpc":"2.0","method":"nosuchmethod","id":1}"#,
            200,
            json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 1}),
        ),
        (
            r#"{"params":[],"id":1}"#,
            400,
            json!({"result": null, "error": {"code": -32600, "message": "Missing method"}, "id": 1}),
        ),
        (
            r#"{"method":5,"id":1}"#,
            400,
            json!({"result": null, "error": {"code": -32600, "message": "Method must be a string"}, "id": 1}),
        ),
        (
            r#"{"method":"getblockcount","params":"x","id":1}"#,
            400,
            json!({"result": null, "error": {"code": -32600, "message": "Params must be an array or object"}, "id": 1}),
        ),
        (
            r#"{"jsonrpc":"3.0","method":"getblockcount","id":1}"#,
            400,
            json!({"result": null, "error": {"code": -32600, "message": "JSON-RPC version not supported"}, "id": 1}),
        ),
        (
            r#"{"method":"getblockhash","params":[9999],"id":1}"#,
            500,
            json!({"result": null, "error": {"code": -8, "message": "Block height out of range"}, "id": 1}),
        ),
        (
            r#"{"method":"getblockhash","params":["x"],"id":1}"#,
            500,
            json!({"result": null, "error": {"code": -3, "message": "Wrong type passed:\n{\n    \"Position 1 (height)\": \"JSON value of type string is not of expected type number\"\n}"}, "id": 1}),
        ),
        (
            r#"{"method":"getblock","params":["00"],"id":1}"#,
            500,
            json!({"result": null, "error": {"code": -8, "message": "blockhash must be of length 64 (not 2, for '00')"}, "id": 1}),
        ),
        (
            r#"{"method":"getblock","params":["0000000000000000000000000000000000000000000000000000000000000000"],"id":1}"#,
            500,
            json!({"result": null, "error": {"code": -5, "message": "Block not found"}, "id": 1}),
        ),
        (
            r#"{"method":"sendrawtransaction","params":["zz"],"id":1}"#,
            500,
            json!({"result": null, "error": {"code": -22, "message": "TX decode failed. Make sure the tx has at least one input."}, "id": 1}),
        ),
        (
            r#"{"method":"getrawtransaction","params":["0000000000000000000000000000000000000000000000000000000000000001"],"id":1}"#,
            500,
            json!({"result": null, "error": {"code": -5, "message": "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."}, "id": 1}),
        ),
        (
            r#"{"method":"sendtoaddress","params":["notanaddress", 1],"id":1}"#,
            500,
            json!({"result": null, "error": {"code": -5, "message": "Invalid address"}, "id": 1}),
        ),
        (
            r#"{"method":"estimatesmartfee","params":[0],"id":1}"#,
            500,
            json!({"result": null, "error": {"code": -8, "message": "Invalid conf_target, must be between 1 and 1008"}, "id": 1}),
        ),
    ];
    for (body, status, expected) in cases {
        let reply = rpc(&regtest, body);
        assert_eq!(reply.status(), status, "{body}: {}", reply.body);
        assert_eq!(reply.json(), expected, "{body}");
    }
    // Too few arguments: -1 with the method's usage.
    let reply = rpc(&regtest, r#"{"method":"getblockhash","params":[],"id":1}"#);
    assert_eq!(reply.json()["error"]["code"], -1);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("getblockhash height")
    );

    // Authentication.
    for auth in [None, Some("phalanx:wrong"), Some("someone:phalanx")] {
        let reply = send(
            &regtest,
            "POST",
            "/",
            auth,
            r#"{"method":"getblockcount","id":1}"#,
        );
        assert_eq!(reply.status(), 401, "{auth:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Basic realm=\"jsonrpc\"")
        );
        assert!(reply.body.is_empty());
    }
    let reply = send(&regtest, "GET", "/", Some("phalanx:phalanx"), "");
    assert_eq!(reply.status(), 405);
    assert_eq!(reply.body, "JSONRPC server handles only POST requests");

    // A batch: one answer per element, HTTP 200 even with errors.
    let reply = rpc(
        &regtest,
        r#"[{"method":"getblockcount","id":1},{"method":"bogus","id":2},7]"#,
    );
    assert_eq!(reply.status(), 200);
    assert_eq!(
        reply.json(),
        json!([
            {"result": 0, "error": null, "id": 1},
            {"result": null, "error": {"code": -32601, "message": "Method not found"}, "id": 2},
            {"result": null, "error": {"code": -32600, "message": "Invalid Request object"}, "id": null},
        ])
    );

    // Still serving.
    regtest.mine(2, None);
    assert_eq!(
        rpc(&regtest, r#"{"method":"getblockcount","id":1}"#).json()["result"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_are_core_text() {
    let regtest = Regtest::start(RegtestConfig::default()).await.unwrap();
    regtest.mine(3, None);
    let tip = regtest.chain().tip();
    let get = |path: &str| send(&regtest, "GET", path, None, "");

    let reply = get("/rest/block/nothex.bin");
    assert_eq!(
        (reply.status(), reply.body.as_str()),
        (400, "Invalid hash: nothex\r\n")
    );
    let reply = get(&format!("/rest/block/{tip}.xml"));
    assert_eq!(reply.status(), 404);
    assert_eq!(
        reply.body,
        "output format not found (available: .bin, .hex, .json)\r\n"
    );
    let missing = "11".repeat(32);
    let reply = get(&format!("/rest/block/{missing}.bin"));
    assert_eq!(
        (reply.status(), reply.body.clone()),
        (404, format!("{missing} not found\r\n"))
    );
    let reply = get("/rest/blockhashbyheight/99.hex");
    assert_eq!(
        (reply.status(), reply.body.as_str()),
        (404, "Block height out of range\r\n")
    );
    let many: Vec<String> = (0..16)
        .map(|i| format!("{}-{i}", "22".repeat(32)))
        .collect();
    let reply = get(&format!("/rest/getutxos/{}.json", many.join("/")));
    assert_eq!(reply.status(), 400);
    assert_eq!(
        reply.body,
        "Error: max outpoints exceeded (max: 15, tried: 16)\r\n"
    );
    let reply = get("/rest/headers/0/");
    assert_eq!(reply.status(), 404);

    // And good answers in each format.
    let reply = get("/rest/blockhashbyheight/3.hex");
    assert_eq!(reply.body, format!("{tip}\n"));
    let reply = get(&format!("/rest/headers/{tip}.json?count=2"));
    assert_eq!(
        reply.json().as_array().unwrap().len(),
        1,
        "only the tip from the tip"
    );
    let genesis = regtest.chain().hash_at(0).unwrap();
    let reply = get(&format!("/rest/headers/2/{genesis}.bin"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(reply.bytes.len(), 160);
    let reply = get("/rest/chaininfo.json");
    assert_eq!(reply.json()["blocks"], 3);
    let reply = get("/rest/mempool/info.json");
    assert_eq!(reply.json()["size"], 0);
}
