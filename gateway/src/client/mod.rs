//! CLI subcommands that act on a running gateway through its API, over the gateway's Unix socket in
//! the data dir (unix_http.rs). No token is sent: the gateway knows the caller by its Unix user
//! (root or the gateway's own user: run these as that user) and audits the action under that name.
//! The TCP address in `run.json` is never used, so whoever holds that port learns nothing.
//!
//! Here: the client, and `nodes`; `tokens.rs` holds `join` and `token`; `health.rs` prints nodes,
//! alerts and the fleet's status for people. The command bus has a
//! module per command: `exec.rs` (with `interrupt.rs` for Ctrl-C and `render.rs` for the output),
//! `jobs.rs`, `cp.rs`; `target.rs` holds the target and path syntax they share.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cli::NodesCommand;
use crate::runinfo;
use crate::unix_http;

pub mod audit;
pub mod connect;
pub mod cp;
pub mod exec;
pub mod health;
mod interrupt;
pub mod jobs;
mod render;
pub mod shell;
mod target;
pub mod tokens;

/// The JSON and NDJSON media types of the API.
const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

/// The gateway's API, over its socket.
pub(crate) struct Client {
    socket: PathBuf,
}

impl Client {
    fn open(data_dir: &Path) -> anyhow::Result<Client> {
        check_private(data_dir)?;
        Ok(Client {
            socket: runinfo::socket_path(data_dir),
        })
    }

    /// Sends a request with a JSON body (none for GET) and returns the response unread.
    fn send(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<unix_http::Response> {
        let body = match (method, body) {
            ("GET", _) => Vec::new(),
            (_, Some(body)) => body.to_string().into_bytes(),
            (_, None) => b"{}".to_vec(),
        };
        unix_http::request(
            &self.socket,
            method,
            path,
            &[("Content-Type", JSON), ("Accept", accept)],
            &body,
        )
    }

    /// A JSON call: the answer, or the API's error as an error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        json_answer(self.send(method, path, JSON, body.as_ref())?)
    }

    /// A request whose body is streamed (files, stdin).
    fn upload(
        &self,
        method: &str,
        path: &str,
        length: Option<u64>,
    ) -> anyhow::Result<unix_http::Upload> {
        unix_http::Upload::start(
            &self.socket,
            method,
            path,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Accept", JSON),
            ],
            length,
        )
    }
}

/// A JSON answer, or the API's `{"error", "code"}` as an error.
fn json_answer(response: unix_http::Response) -> anyhow::Result<Value> {
    let status = response.status;
    let text = response.into_string()?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status >= 400 {
        return Err(api_error(status, &value));
    }
    Ok(value)
}

/// The API's error answer as an error: its message, else the whole answer. The status stays
/// readable ([`ApiError`]) for callers that treat some refusals as news to nobody.
fn api_error(status: u16, answer: &Value) -> anyhow::Error {
    let message = match answer["error"].as_str() {
        Some(message) => message.to_string(),
        None => format!("the gateway answered {status}: {answer}"),
    };
    anyhow::Error::new(ApiError { status, message })
}

/// An error answer of the API (`{"error", "code"}` with a 4xx/5xx status): its status and text.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The `error` text, as shown to people.
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// A mistake in how a command was called, found after parsing (a bad `cp` path, stdin too large
/// for a broadcast): exits 2, like clap's own usage errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Prints a command's error as `main` does and picks the exit code: 2 for a usage error, else
/// `failure`.
/// Prints an API answer: as the API gave it with `--json`, else as `human` renders it for people.
pub(crate) fn print_reply(
    reply: &serde_json::Value,
    json: bool,
    human: impl FnOnce(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(reply)?);
    } else {
        print!("{}", human(reply));
    }
    Ok(())
}

pub fn exit_code(result: anyhow::Result<u8>, failure: u8) -> u8 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gateway: error: {e:#}");
            if e.downcast_ref::<Usage>().is_some() {
                2
            } else {
                failure
            }
        }
    }
}

/// The socket is trustworthy because nobody else can create a file in the data dir: check that
/// before talking to it (the gateway makes it 0700; an operator might loosen it by hand).
fn check_private(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(data_dir) {
        Ok(meta) => meta,
        // No data dir: the socket's absence will say the gateway is not running.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking {}", data_dir.display())),
    };
    let me = rustix::process::getuid().as_raw();
    if meta.mode() & 0o022 != 0 || (meta.uid() != 0 && meta.uid() != me) {
        bail!(
            "refusing to use {}: it is writable by others or owned by another user (uid {}), so \
             its socket could be anyone's; make it 0700 and owned by the gateway's user",
            data_dir.display(),
            meta.uid()
        );
    }
    Ok(())
}

pub fn nodes(data_dir: &Path, command: NodesCommand) -> anyhow::Result<()> {
    let client = Client::open(data_dir)?;
    match command {
        NodesCommand::Ls { json } => health::ls(&client, json)?,
        NodesCommand::Show { name, since, json } => health::show(&client, &name, since, json)?,
        NodesCommand::Approve { name } => {
            let n = client.call("POST", &format!("/api/v1/nodes/{name}/approve"), None)?;
            println!(
                "approved {name} ({})",
                n["fingerprint"].as_str().unwrap_or("")
            );
        }
        NodesCommand::Reject { name } => {
            client.call("POST", &format!("/api/v1/nodes/{name}/reject"), None)?;
            println!("rejected {name}");
        }
        NodesCommand::Revoke { name } => {
            client.call("DELETE", &format!("/api/v1/nodes/{name}"), None)?;
            println!("revoked {name}: it must join again to come back");
        }
        NodesCommand::Label {
            name,
            labels,
            capabilities,
        } => {
            let body = label_body(&labels, capabilities.as_deref())?;
            let n = client.call("PATCH", &format!("/api/v1/nodes/{name}"), Some(body))?;
            println!(
                "{name}: labels {}, capabilities {}",
                n["labels"], n["capabilities"]
            );
        }
    }
    Ok(())
}

/// The body of `PATCH /api/v1/nodes/{id}` from `KEY=VALUE` / `KEY=` words and a capability list.
fn label_body(labels: &[String], capabilities: Option<&str>) -> anyhow::Result<Value> {
    let mut map = serde_json::Map::new();
    for word in labels {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("{word:?}: labels are KEY=VALUE (KEY= removes one)"))?;
        let value = if v.is_empty() {
            Value::Null
        } else {
            Value::from(v)
        };
        map.insert(k.to_string(), value);
    }
    let mut body = serde_json::json!({ "labels": map });
    if let Some(list) = capabilities {
        let caps: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        body["capabilities"] = serde_json::json!(caps);
    }
    if map_is_empty(&body) && capabilities.is_none() {
        anyhow::bail!("nothing to change: give KEY=VALUE words and/or --capabilities");
    }
    Ok(body)
}

fn map_is_empty(body: &Value) -> bool {
    body["labels"].as_object().is_some_and(|m| m.is_empty())
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn label_words_become_a_patch() {
        let body = label_body(&["site=home".into(), "old=".into()], Some("gpio, camera")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"labels": {"site": "home", "old": null},
                               "capabilities": ["gpio", "camera"]})
        );
        assert!(label_body(&["nokey".into()], None).is_err());
        assert!(label_body(&[], None).is_err());
        assert_eq!(
            label_body(&[], Some("")).unwrap()["capabilities"],
            serde_json::json!([])
        );
    }
}
