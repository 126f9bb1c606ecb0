//! A real implementation of the AWS API for tests: moto's server (PyPI `moto[server]`,
//! installed by `scripts/test`), on a free loopback port, with helpers that create
//! secrets and IAM users through its HTTP API.
//!
//! The server checks no credentials until [`MotoServer::enforce_auth`]; after that,
//! only the access keys of users made by [`MotoServer::create_user`] are accepted, and
//! only for what their policy allows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use nix::sys::signal::Signal;

use crate::process::{self, at_exit, cancel_at_exit, scratch_dir};

/// The region tests use.
pub const REGION: &str = "us-east-1";

/// Access keys of an IAM user made on the server.
#[derive(Clone, Debug)]
pub struct AccessKey {
    /// `AWS_ACCESS_KEY_ID`.
    pub id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret: String,
}

/// A running moto server owned by the test process. Killed and deleted on drop.
pub struct MotoServer {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    exit_hook: u64,
}

impl MotoServer {
    /// Starts a server on a free loopback port (retried on another port if one is taken
    /// meanwhile).
    pub fn start() -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once() {
                Err(err) if attempt < 3 => {
                    tracing::warn!(error = %format!("{err:#}"), "moto did not start; trying another port");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    fn start_once() -> anyhow::Result<Self> {
        let binary = process::find_binary("moto_server", "PHALANX_MOTO_BIN", &[])?;
        let dir = scratch_dir("moto")?;
        let port = process::free_port();
        let log = std::fs::File::create(dir.join("moto.log"))?;
        let mut command = Command::new(binary);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = process::spawn_tied(command).context("spawn moto_server")?;
        let pid = child.id();
        let dir_for_hook = dir.clone();
        let exit_hook = at_exit(move || {
            process::stop_pid(pid, Signal::SIGKILL, Duration::from_secs(2));
            let _ = std::fs::remove_dir_all(&dir_for_hook);
        });
        let mut server = Self {
            dir,
            port,
            child: Some(child),
            exit_hook,
        };
        let ready = crate::wait_until("moto to answer", Duration::from_secs(60), || {
            if let Some(child) = server.child.as_mut()
                && !matches!(child.try_wait(), Ok(None))
            {
                return Some(false);
            }
            server
                .request("GET", "/moto-api/", &[], b"")
                .ok()
                .map(|(status, _)| status == 200)
                .filter(|ok| *ok)
        })?;
        if !ready {
            bail!("moto_server exited during start-up; log:\n{}", server.log());
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`: the endpoint URL to give the SDK.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("moto.log")).unwrap_or_default()
    }

    /// Stops the server (SIGKILL): later requests find nothing listening.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates a secret holding `bytes` as its binary value.
    pub fn create_binary_secret(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let value = base64::engine::general_purpose::STANDARD.encode(bytes);
        self.secrets_manager(
            "CreateSecret",
            &format!(r#"{{"Name":"{name}","SecretBinary":"{value}"}}"#),
        )
        .map(drop)
    }

    /// Creates a secret holding `text` as its string value (`text` must need no JSON
    /// escaping).
    pub fn create_string_secret(&self, name: &str, text: &str) -> anyhow::Result<()> {
        self.secrets_manager(
            "CreateSecret",
            &format!(r#"{{"Name":"{name}","SecretString":"{text}"}}"#),
        )
        .map(drop)
    }

    /// Replaces the string value of secret `name` (a rotation).
    pub fn put_string_secret(&self, name: &str, text: &str) -> anyhow::Result<()> {
        self.secrets_manager(
            "PutSecretValue",
            &format!(r#"{{"SecretId":"{name}","SecretString":"{text}"}}"#),
        )
        .map(drop)
    }

    /// Makes an IAM user with inline policy `policy_json` (none if `None`) and returns
    /// its access key.
    pub fn create_user(&self, name: &str, policy_json: Option<&str>) -> anyhow::Result<AccessKey> {
        self.iam(&[("Action", "CreateUser"), ("UserName", name)])?;
        if let Some(policy) = policy_json {
            self.iam(&[
                ("Action", "PutUserPolicy"),
                ("UserName", name),
                ("PolicyName", "phalanx"),
                ("PolicyDocument", policy),
            ])?;
        }
        let answer = self.iam(&[("Action", "CreateAccessKey"), ("UserName", name)])?;
        let field = |tag: &str| -> anyhow::Result<String> {
            let open = format!("<{tag}>");
            let start = answer
                .find(&open)
                .with_context(|| format!("no {tag} in {answer}"))?
                + open.len();
            let end = answer[start..]
                .find('<')
                .with_context(|| format!("no end of {tag}"))?;
            Ok(answer[start..start + end].to_owned())
        };
        Ok(AccessKey {
            id: field("AccessKeyId")?,
            secret: field("SecretAccessKey")?,
        })
    }

    /// From now on, every request must be signed with the access key of a user made
    /// by [`MotoServer::create_user`] and be allowed by its policy.
    pub fn enforce_auth(&self) -> anyhow::Result<()> {
        let (status, body) = self.request("POST", "/moto-api/reset-auth", &[], b"0")?;
        anyhow::ensure!(status == 200, "reset-auth answered {status}: {body}");
        Ok(())
    }

    fn secrets_manager(&self, action: &str, json: &str) -> anyhow::Result<String> {
        let target = format!("secretsmanager.{action}");
        let (status, body) = self.request(
            "POST",
            "/",
            &[
                ("X-Amz-Target", &target),
                ("Content-Type", "application/x-amz-json-1.1"),
                ("Authorization", &unsigned_authorization("secretsmanager")),
            ],
            json.as_bytes(),
        )?;
        anyhow::ensure!(status == 200, "{action} answered {status}: {body}");
        Ok(body)
    }

    fn iam(&self, params: &[(&str, &str)]) -> anyhow::Result<String> {
        let mut form = url_encode(&[("Version", "2010-05-08")]);
        form.push('&');
        form.push_str(&url_encode(params));
        let (status, body) = self.request(
            "POST",
            "/",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &unsigned_authorization("iam")),
            ],
            form.as_bytes(),
        )?;
        anyhow::ensure!(status == 200, "IAM {params:?} answered {status}: {body}");
        Ok(body)
    }

    /// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP answer: {text}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

/// An `Authorization` header naming `service`, which moto routes by; its signature is
/// checked only once auth is enforced, when these set-up calls are over.
fn unsigned_authorization(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/{REGION}/{service}/aws4_request, SignedHeaders=host, Signature=00"
    )
}

fn url_encode(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(key, value)| {
            let encode = |text: &str| {
                text.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect::<String>()
            };
            format!("{}={}", encode(key), encode(value))
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.kill();
        cancel_at_exit(self.exit_hook);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
