//! CLI subcommands that act on a running gateway through its API, authenticated with a short-lived
//! admin token minted from the gateway key in the data dir (so they need read access to it: run them
//! as the gateway's user).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use burrow_core::identity::Identity;
use serde_json::{json, Value};

use crate::cli::{ExecArgs, JoinCommand, NodesCommand};
use crate::runinfo;
use crate::tokens::{Role, Tokens};

struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    fn open(data_dir: &Path) -> anyhow::Result<Client> {
        let info = runinfo::read(data_dir)?;
        let identity = Identity::load(&data_dir.join("gateway.key"))?;
        let (token, _) =
            Tokens::new(&identity)?.issue("cli", Role::Gateway, Duration::from_secs(300))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            base: format!("http://{}", info.api),
            token,
            agent,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        }
        .with_context(|| format!("calling the gateway API at {url}"))?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string()?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            bail!("{}", value["error"].as_str().unwrap_or(&value.to_string()));
        }
        Ok(value)
    }
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
    let url = format!("{}/api/v1/nodes/{}/exec", client.base, args.node);
    let response = client
        .agent
        .post(&url)
        .header("Authorization", &format!("Bearer {}", client.token))
        .header("Accept", "application/x-ndjson")
        .header("Content-Type", "application/json")
        .send(json!({"argv": args.argv, "timeout_s": args.timeout}).to_string())
        .with_context(|| format!("calling {url}"))?;
    if response.status().as_u16() >= 400 {
        let text = response.into_body().read_to_string()?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        bail!("{}", v["error"].as_str().unwrap_or(&v.to_string()));
    }
    let reader = BufReader::new(response.into_body().into_reader());
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
