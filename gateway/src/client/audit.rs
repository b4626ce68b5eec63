//! `gateway audit verify|ls|export`: the audit trail read straight from the data dir's files (no
//! running gateway needed, and none is asked: this works on a copy, on a stopped gateway, on a
//! backup). `verify` without a file also reads the chain head from the store (read-only).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::audit::{self, files, query};
use crate::cli::{AuditCommand, AuditLsArgs};

pub fn run(data_dir: &Path, command: AuditCommand) -> anyhow::Result<u8> {
    let log = data_dir.join("audit.log");
    match command {
        AuditCommand::Verify { file: None, .. } => {
            let trail = files::in_order(&log)?;
            let head = audit::head::load_offline(data_dir)?;
            let report = audit::verify_trail(&trail, head.as_ref())?;
            let head_note = match head {
                Some(h) => format!("; the store's chain head (seq {}) matches", h.seq),
                None => "; no chain head in the store yet".to_string(),
            };
            println!(
                "{}: {} entries, chain intact ({} file(s), seq {}..{}){head_note}",
                log.display(),
                report.entries,
                report.files,
                report.first_seq,
                report.last.seq
            );
        }
        AuditCommand::Verify {
            file: Some(file),
            head,
        } => {
            let head = match head {
                true => Some(audit::head::load_offline(data_dir)?.with_context(|| {
                    format!("no chain head in the store of {}", data_dir.display())
                })?),
                false => None,
            };
            let report = audit::verify_trail(std::slice::from_ref(&file), head.as_ref())?;
            let mut note = String::new();
            if report.first_seq > 1 {
                note = format!(
                    " (starts at seq {}: continues an older file)",
                    report.first_seq
                );
            }
            if let Some(h) = head {
                note.push_str(&format!("; the store's chain head (seq {}) matches", h.seq));
            }
            println!(
                "{}: {} entries, chain intact{note}",
                file.display(),
                report.entries
            );
        }
        AuditCommand::Ls(args) => ls(&log, &args)?,
        AuditCommand::Export => {
            let mut out = std::io::stdout().lock();
            let mut failed = None;
            query::walk(&log, 0, None, &mut |e| match writeln!(out, "{e}") {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            })?;
            if let Some(e) = failed {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e).context("writing to stdout");
                }
            }
        }
    }
    Ok(0)
}

fn ls(log: &Path, args: &AuditLsArgs) -> anyhow::Result<()> {
    if !log.exists() && files::rotated(log)?.is_empty() {
        anyhow::bail!("no audit log at {}", log.display());
    }
    let filter = query::Filter {
        since: args.since.as_deref().map(query::parse_since).transpose()?,
        node: args.node.clone(),
        actor: args.actor.clone(),
        action: args.action.clone(),
        cursor: args.cursor,
        limit: args.limit,
    };
    let page = query::page(log, &filter, None)?;
    let mut out = String::new();
    if args.json {
        for e in &page.entries {
            out.push_str(&format!("{e}\n"));
        }
    } else {
        let rows: Vec<Vec<String>> = page.entries.iter().map(row).collect();
        out = super::health::table(
            &["SEQ", "TIME", "ACTOR", "ROLE", "ACTION", "TARGET", "DETAIL"],
            &rows,
        );
        if let Some(next) = page.next {
            out.push_str(&format!("more: --cursor {next}\n"));
        }
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing to stdout")
}

fn row(e: &Value) -> Vec<String> {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    vec![
        e["seq"].to_string(),
        s(&e["ts"]),
        s(&e["actor"]),
        s(&e["role"]),
        s(&e["action"]),
        s(&e["target"]),
        summary(e),
    ]
}

/// The detail of an entry in a line: the command, per-node ends, counts.
pub fn summary(e: &Value) -> String {
    let d = &e["detail"];
    let text = match e["action"].as_str().unwrap_or("") {
        "exec" => match (&d["argv"], &d["command"]) {
            (Value::Array(argv), _) => {
                let words: Vec<String> = argv.iter().map(s_or_json).collect();
                format!("job {} argv {}", short(&d["job_id"]), words.join(" "))
            }
            (_, Value::String(c)) => format!("job {} {c}", short(&d["job_id"])),
            _ => d.to_string(),
        },
        "exec.end" | "exec.refused" | "file.get.end" => {
            let mut parts = vec![format!("job {}", short(&d["job_id"]))];
            if let Some(results) = d["results"].as_object() {
                for (node, r) in results {
                    let mut p = format!("{node}: {}", s_or_json(&r["state"]));
                    if let Some(code) = r["exit_code"].as_i64() {
                        p.push_str(&format!(" exit {code}"));
                    }
                    if let Some(rule) = r["error"].as_str() {
                        p.push_str(&format!(" ({rule})"));
                    }
                    parts.push(p);
                }
            }
            parts.join(", ")
        }
        "denied" => format!(
            "{} x{}: {}",
            d["status"],
            d["count"],
            d["reason"].as_str().unwrap_or("")
        ),
        _ => d.to_string(),
    };
    let mut text = text.replace('\n', " ");
    if text.chars().count() > 100 {
        text = text.chars().take(99).collect::<String>() + "…";
    }
    text
}

fn s_or_json(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn short(id: &Value) -> String {
    id.as_str()
        .map_or("?".into(), |s| s.chars().take(8).collect())
}
