//! CLI subcommands that act on a running gateway through its API, over the gateway's Unix socket in
//! the data dir (unix_http.rs). No token is sent: the gateway knows the caller by its Unix user
//! (root or the gateway's own user: run these as that user) and audits the action under that name.
//! The TCP address in `run.json` is never used, so whoever holds that port learns nothing.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::cli::{ExecArgs, JoinCommand, NodesCommand};
use crate::runinfo;
use crate::unix_http;

struct Client {
    socket: PathBuf,
}

impl Client {
    fn open(data_dir: &Path) -> anyhow::Result<Client> {
        check_private(data_dir)?;
        Ok(Client {
            socket: runinfo::socket_path(data_dir),
        })
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        body: Option<Value>,
    ) -> anyhow::Result<unix_http::Response> {
        let body = match (method, body) {
            ("GET", _) => Vec::new(),
            (_, body) => body.unwrap_or(json!({})).to_string().into_bytes(),
        };
        unix_http::request(
            &self.socket,
            method,
            path,
            &[("Content-Type", "application/json"), ("Accept", accept)],
            &body,
        )
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let response = self.send(method, path, "application/json", body)?;
        let status = response.status;
        let text = response.into_string()?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            bail!("{}", value["error"].as_str().unwrap_or(&value.to_string()));
        }
        Ok(value)
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

/// `gateway token create`: asks the running gateway (which checks the TTL and audits the caller).
pub fn token(
    data_dir: &Path,
    role: &str,
    ttl: std::time::Duration,
    subject: Option<&str>,
) -> anyhow::Result<()> {
    let client = Client::open(data_dir)?;
    let mut body = json!({"role": role, "ttl": format!("{}s", ttl.as_secs())});
    if let Some(subject) = subject {
        body["subject"] = json!(subject);
    }
    let reply = client.call("POST", "/api/v1/tokens", Some(body))?;
    println!("{}", reply["token"].as_str().unwrap_or_default());
    Ok(())
}

pub fn join(data_dir: &Path, command: JoinCommand) -> anyhow::Result<()> {
    let JoinCommand::Create { ttl, uses, manual } = command;
    let client = Client::open(data_dir)?;
    let reply = client.call(
        "POST",
        "/api/v1/join-tokens",
        Some(json!({"ttl": format!("{}s", ttl.as_secs()), "uses": uses, "manual": manual})),
    )?;
    println!("{}", reply["join"].as_str().unwrap_or_default());
    eprintln!(
        "join token {} for {} node(s), {}, expires {}",
        reply["id"].as_str().unwrap_or("?"),
        uses,
        if manual {
            "needs approval"
        } else {
            "auto-approved"
        },
        reply["expires_at"].as_str().unwrap_or("?")
    );
    Ok(())
}

pub fn nodes(data_dir: &Path, command: NodesCommand) -> anyhow::Result<()> {
    let client = Client::open(data_dir)?;
    match command {
        NodesCommand::Ls { json } => {
            let reply = client.call("GET", "/api/v1/nodes", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<9} {:<20} {:<21} CAPABILITIES",
                "NODE", "STATUS", "HOSTNAME", "LAST SEEN"
            );
            for n in reply["nodes"].as_array().into_iter().flatten() {
                let caps: Vec<&str> = n["capabilities"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<20} {:<9} {:<20} {:<21} {}",
                    n["id"].as_str().unwrap_or(""),
                    n["status"].as_str().unwrap_or(""),
                    n["hostname"].as_str().unwrap_or(""),
                    n["last_seen"].as_str().unwrap_or("-"),
                    caps.join(",")
                );
            }
        }
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
    }
    Ok(())
}

/// Streams a command's output and returns the exit code to exit with (like ssh: the remote code,
/// 128+signal when killed, 124 on timeout, 255 when it could not run).
pub fn exec(data_dir: &Path, args: ExecArgs) -> anyhow::Result<i32> {
    let client = Client::open(data_dir)?;
    let response = client.send(
        "POST",
        &format!("/api/v1/nodes/{}/exec", args.node),
        "application/x-ndjson",
        Some(json!({"argv": args.argv, "timeout_s": args.timeout})),
    )?;
    if response.status >= 400 {
        let text = response.into_string()?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        bail!("{}", v["error"].as_str().unwrap_or(&v.to_string()));
    }
    let reader = BufReader::new(response.into_reader());
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr());
    for line in reader.lines() {
        let event: Value = serde_json::from_str(&line?).context("bad event from the gateway")?;
        let data = || match event["data_b64"].as_str() {
            Some(b64) => STANDARD.decode(b64).unwrap_or_default(),
            None => event["data"].as_str().unwrap_or("").as_bytes().to_vec(),
        };
        match event["event"].as_str() {
            Some("stdout") => {
                stdout.write_all(&data())?;
                stdout.flush()?;
            }
            Some("stderr") => stderr.write_all(&data())?,
            Some("exit") => {
                if event["timed_out"].as_bool() == Some(true) {
                    eprintln!(
                        "burrow: command timed out after {}s and was killed",
                        args.timeout
                    );
                    return Ok(124);
                }
                if let Some(code) = event["exit_code"].as_i64() {
                    return Ok(code as i32);
                }
                return Ok(128 + event["signal"].as_i64().unwrap_or(0) as i32);
            }
            Some("error") => bail!("{}", event["message"].as_str().unwrap_or("unknown error")),
            _ => {}
        }
    }
    bail!("the gateway closed the stream before the command ended")
}
