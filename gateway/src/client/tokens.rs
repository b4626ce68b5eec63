//! `gateway token create|ls|revoke` and `gateway join create|ls|revoke`: through the running
//! gateway's socket, which records, audits (under the Unix user) and answers.

use std::path::Path;

use serde_json::{json, Value};

use super::health::table;
use super::target::segment;
use super::{print_reply, Client};
use crate::cli::{JoinCommand, TokenCommand};

pub fn token(data_dir: &Path, command: TokenCommand) -> anyhow::Result<()> {
    let client = Client::open(data_dir)?;
    match command {
        TokenCommand::Create { role, ttl, name } => {
            let mut body = json!({"role": role, "ttl": format!("{}s", ttl.as_secs())});
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            let reply = client.call("POST", "/api/v1/tokens", Some(body))?;
            println!("{}", reply["token"].as_str().unwrap_or_default());
            eprintln!(
                "token {} ({}, {}), expires {}",
                text(&reply["jti"]),
                text(&reply["name"]),
                text(&reply["role"]),
                text(&reply["exp"])
            );
        }
        TokenCommand::Ls { json } => {
            let reply = client.call("GET", "/api/v1/tokens", None)?;
            print_reply(&reply, json, tokens_table)?;
        }
        TokenCommand::Revoke { jti } => {
            let reply =
                client.call("DELETE", &format!("/api/v1/tokens/{}", segment(&jti)), None)?;
            let again = if reply["already_revoked"] == true {
                " (it already was)"
            } else {
                ""
            };
            println!(
                "revoked token {jti} ({}){again}; tokens it minted stay valid",
                text(&reply["name"])
            );
        }
    }
    Ok(())
}

pub fn join(data_dir: &Path, command: JoinCommand) -> anyhow::Result<()> {
    let client = Client::open(data_dir)?;
    match command {
        JoinCommand::Create { ttl, uses, manual } => {
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
        }
        JoinCommand::Ls { json } => {
            let reply = client.call("GET", "/api/v1/join-tokens", None)?;
            print_reply(&reply, json, joins_table)?;
        }
        JoinCommand::Revoke { id } => {
            let reply = client.call(
                "DELETE",
                &format!("/api/v1/join-tokens/{}", segment(&id)),
                None,
            )?;
            let again = if reply["already_revoked"] == true {
                " (it already was)"
            } else {
                ""
            };
            println!("revoked join token {id}{again}; nodes that joined with it keep their access");
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn tokens_table(reply: &Value) -> String {
    let rows: Vec<Vec<String>> = reply["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            ["jti", "name", "role", "created_at", "exp", "state"]
                .iter()
                .map(|k| text(&t[*k]))
                .collect()
        })
        .collect();
    table(
        &["JTI", "NAME", "ROLE", "CREATED", "EXPIRES", "STATE"],
        &rows,
    )
}

fn joins_table(reply: &Value) -> String {
    let rows: Vec<Vec<String>> = reply["join_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                text(&t["id"]),
                format!("{}/{}", text(&t["uses_left"]), text(&t["uses"])),
                if t["manual"] == true {
                    "manual"
                } else {
                    "auto"
                }
                .into(),
                text(&t["created_at"]),
                text(&t["expires_at"]),
                text(&t["state"]),
            ]
        })
        .collect();
    table(
        &["ID", "USES LEFT", "APPROVAL", "CREATED", "EXPIRES", "STATE"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_table_has_the_columns_and_no_token() {
        let reply = json!({"tokens": [{"jti": "abc", "name": "grafana", "role": "viewer",
            "created_at": "2026-01-01T00:00:00Z", "exp": "2026-02-01T00:00:00Z",
            "state": "revoked", "revoked_at": "2026-01-02T00:00:00Z"}]});
        let t = tokens_table(&reply);
        let mut lines = t.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["JTI", "NAME", "ROLE", "CREATED", "EXPIRES", "STATE"]
        );
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            [
                "abc",
                "grafana",
                "viewer",
                "2026-01-01T00:00:00Z",
                "2026-02-01T00:00:00Z",
                "revoked"
            ]
        );
    }

    #[test]
    fn ids_cannot_leave_their_path_segment() {
        assert_eq!(segment("../nodes"), "..%2Fnodes");
        assert_eq!(segment("a?b"), "a%3Fb");
    }
}
