//! `gateway jobs ls|show|cancel|attach`: the jobs API (`/api/v1/jobs…`) for people. `attach`
//! prints a job's stream with exec's rules (render.rs), from its stored start, then live.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

use super::exec::{follow, quiet_broken_pipe, settle_missing};
use super::interrupt::{CtrlC, Mode};
use super::render::{Outcome, Printer, DID_NOT_RUN};
use super::target::{query, segment};
use super::{exit_code, Client, NDJSON};
use crate::cli::JobsCommand;

/// Widest target and command shown in `jobs ls` (longer ones end in `…`).
const MAX_TARGET: usize = 24;
const MAX_COMMAND: usize = 60;

/// Runs a `gateway jobs` command; returns its exit code (attach: exec's rules).
pub fn run(data_dir: &Path, command: JobsCommand) -> u8 {
    match command {
        JobsCommand::Attach { id } => quiet_broken_pipe(attach(data_dir, &id), DID_NOT_RUN),
        other => exit_code(simple(data_dir, other).map(|()| 0), 1),
    }
}

fn simple(data_dir: &Path, command: JobsCommand) -> anyhow::Result<()> {
    let client = Client::open(data_dir)?;
    match command {
        JobsCommand::Ls {
            node,
            state,
            limit,
            before,
            json,
        } => {
            let limit = limit.map(|n| n.to_string());
            let q = query(&[
                ("node", node.as_deref()),
                ("state", state.as_deref()),
                ("limit", limit.as_deref()),
                ("before", before.as_deref()),
            ]);
            let answer = client.call("GET", &format!("/api/v1/jobs{q}"), None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            print!("{}", table(&answer, SystemTime::now()));
            if let Some(next) = answer["next_before"].as_str() {
                eprintln!("more: gateway jobs ls --before {next}");
            }
        }
        JobsCommand::Show { id, json } => {
            let job = client.call("GET", &format!("/api/v1/jobs/{}", segment(&id)), None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                std::io::stdout().write_all(&show(&job, SystemTime::now()))?;
            }
        }
        JobsCommand::Cancel { id } => {
            let path = format!("/api/v1/jobs/{}/cancel", segment(&id));
            let answer = client.call("POST", &path, None)?;
            println!(
                "cancel of job {id} sent; it is {}",
                answer["state"].as_str().unwrap_or("?")
            );
        }
        JobsCommand::Attach { .. } => unreachable!("handled by run"),
    }
    Ok(())
}

/// Follows a job to its end; Ctrl-C detaches.
fn attach(data_dir: &Path, id: &str) -> anyhow::Result<u8> {
    let client = Client::open(data_dir)?;
    let job = client.call("GET", &format!("/api/v1/jobs/{}", segment(id)), None)?;
    let ctrl_c = CtrlC::install(&client, Mode::Detach)?;
    ctrl_c.job(id);
    let mut printer = Printer::new(std::io::stdout().lock(), std::io::stderr(), false);
    printer.expect(id, nodes_of(&job));
    let stream = format!("/api/v1/jobs/{}/stream", segment(id));
    follow(
        client.send("GET", &stream, NDJSON, None)?,
        &mut printer,
        Some(&ctrl_c),
    )?;
    settle_missing(&client, &mut printer)?;
    printer.finish(false)
}

/// The nodes of a job's JSON answer, in its order.
fn nodes_of(job: &Value) -> Vec<String> {
    let results = job["results"].as_array().into_iter().flatten();
    results
        .filter_map(|r| r["node"].as_str().map(String::from))
        .collect()
}

/// What a job ran, in one line: the command, the argv (words with spaces quoted), or the file.
fn what(job: &Value) -> String {
    if let Some(command) = job["command"].as_str() {
        return command.to_string();
    }
    if let Some(argv) = job["argv"].as_array() {
        let words: Vec<String> = argv
            .iter()
            .map(|w| {
                let w = w.as_str().unwrap_or("");
                if w.is_empty() || w.contains(|c: char| c.is_whitespace() || "'\"\\$".contains(c)) {
                    format!("'{}'", w.replace('\'', r"'\''"))
                } else {
                    w.to_string()
                }
            })
            .collect();
        return words.join(" ");
    }
    let kind = job["kind"].as_str().unwrap_or("?");
    format!("{kind} {}", job["path"].as_str().unwrap_or(""))
}

/// `45s`, `12m`, `3h`, `5d` since an RFC 3339 time (`?` if it does not parse).
pub(super) fn age(created_at: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(created_at) else {
        return "?".into();
    };
    let s = now.duration_since(then).map_or(0, |d| d.as_secs());
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub(super) fn cut(text: &str, max: usize) -> String {
    let text = text.replace(['\n', '\t'], " ");
    if text.chars().count() <= max {
        return text;
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The `jobs ls` table.
fn table(answer: &Value, now: SystemTime) -> String {
    let rows: Vec<[String; 6]> = answer["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            [
                j["job_id"].as_str().unwrap_or("?").to_string(),
                j["state"].as_str().unwrap_or("?").to_string(),
                age(j["created_at"].as_str().unwrap_or(""), now),
                j["actor"].as_str().unwrap_or("").to_string(),
                cut(j["target"].as_str().unwrap_or(""), MAX_TARGET),
                cut(&what(j), MAX_COMMAND),
            ]
        })
        .collect();
    let header = ["ID", "STATE", "AGE", "ACTOR", "TARGET", "COMMAND"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(&format!("{cell}{}  ", " ".repeat(pad)));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The stored bytes of a result's `stdout`/`stderr` (text or `_b64`).
fn stored(result: &Value, stream: &str) -> Vec<u8> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    match result[format!("{stream}_b64")].as_str() {
        Some(b64) => STANDARD.decode(b64).unwrap_or_default(),
        None => result[stream].as_str().unwrap_or("").as_bytes().to_vec(),
    }
}

/// `jobs show` for people: the job, then each node's outcome and stored output.
fn show(job: &Value, now: SystemTime) -> Vec<u8> {
    let s = |key: &str| job[key].as_str().unwrap_or("-").to_string();
    let mut out = format!(
        "job      {}\nstate    {}\nkind     {}\ncreated  {} ({} ago) by {}\ntarget   {}\nlane     {}\nrun      {}\n",
        s("job_id"),
        s("state"),
        s("kind"),
        s("created_at"),
        age(job["created_at"].as_str().unwrap_or(""), now),
        s("actor"),
        s("target"),
        s("lane"),
        what(job),
    )
    .into_bytes();
    if job["summary"].is_object() {
        let line = super::render::summary_line(&job["summary"]);
        out.extend_from_slice(format!("summary  {line}\n").as_bytes());
    }
    for r in job["results"].as_array().into_iter().flatten() {
        let node = r["node"].as_str().unwrap_or("?");
        let mut head = format!("\n[{node}] {}", Outcome::from_json(r).describe());
        if let Some(ms) = r["duration_ms"].as_u64() {
            head.push_str(&format!(" ({ms} ms)"));
        }
        if let (Some(bytes), Some(sha)) = (r["bytes"].as_u64(), r["sha256"].as_str()) {
            head.push_str(&format!(", {bytes} bytes, sha256 {sha}"));
        }
        out.extend_from_slice(head.as_bytes());
        out.push(b'\n');
        for (stream, mark) in [("stdout", "out"), ("stderr", "err")] {
            let bytes = stored(r, stream);
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                out.extend_from_slice(format!("  {mark} | ").as_bytes());
                out.extend_from_slice(line);
                if !line.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
        }
        if r["truncated"].as_bool() == Some(true) {
            out.extend_from_slice(b"  (output truncated: the gateway keeps the first part)\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn ls_prints_an_aligned_table_newest_first() {
        let answer = json!({"jobs": [
            {"job_id": "j-2", "kind": "exec", "state": "running", "created_at": "2026-12-02T04:00:00Z",
             "actor": "uid:1000(alice)", "command": "sleep 100", "target": "glob:pi-*", "lane": "default"},
            {"job_id": "j-1", "kind": "exec", "state": "succeeded", "created_at": "2026-12-01T03:59:00Z",
             "actor": "ci", "argv": ["sh", "-c", "echo 'a b'"], "target": "pi-1", "lane": "default"},
            {"job_id": "j-0", "kind": "put", "state": "failed", "created_at": "bogus",
             "actor": "ci", "path": "/opt/agent", "target": "label:site=home,cap:gpu,label:rack=a12345", "lane": "default"},
        ], "next_before": null});
        let now = at("2026-12-02T04:02:05Z");
        assert_eq!(
            table(&answer, now),
            "ID   STATE      AGE  ACTOR            TARGET                    COMMAND\n\
             j-2  running    2m   uid:1000(alice)  glob:pi-*                 sleep 100\n\
             j-1  succeeded  1d   ci               pi-1                      sh -c 'echo '\\''a b'\\'''\n\
             j-0  failed     ?    ci               label:site=home,cap:gpu…  put /opt/agent\n"
        );
    }

    #[test]
    fn ages_are_short() {
        let t0 = at("2026-12-02T00:00:00Z");
        let after = |s| t0 + Duration::from_secs(s);
        assert_eq!(age("2026-12-02T00:00:00Z", after(59)), "59s");
        assert_eq!(age("2026-12-02T00:00:00.123Z", after(3599)), "59m");
        assert_eq!(age("2026-12-02T00:00:00Z", after(7200)), "2h");
        assert_eq!(age("2026-12-02T00:00:00Z", after(3 * 86400)), "3d");
        // A clock behind the gateway's is not an error.
        assert_eq!(
            age("2026-12-02T00:00:00Z", t0 - Duration::from_secs(5)),
            "0s"
        );
    }

    #[test]
    fn show_lists_each_nodes_outcome_and_output() {
        let job = json!({"job_id": "j-1", "kind": "exec", "state": "failed",
            "created_at": "2026-12-02T04:00:00Z", "actor": "ci", "command": "date", "target": "*",
            "lane": "default",
            "results": [
                {"node": "a", "state": "succeeded", "exit_code": 0, "signal": null, "timed_out": false,
                 "stdout": "one\ntwo", "stderr": "", "truncated": false, "duration_ms": 12},
                {"node": "b", "state": "offline", "exit_code": null, "signal": null, "timed_out": false,
                 "stdout": "", "stderr_b64": "/w==", "truncated": true, "error": "b is offline",
                 "code": "offline"}
            ],
            "summary": {"succeeded": 1, "offline": 1, "failed": 0}});
        let text = show(&job, at("2026-12-02T04:00:30Z"));
        let expected: &[u8] = b"job      j-1\nstate    failed\nkind     exec\n\
            created  2026-12-02T04:00:00Z (30s ago) by ci\ntarget   *\nlane     default\nrun      date\n\
            summary  1 succeeded, 1 offline\n\
            \n[a] succeeded (12 ms)\n  out | one\n  out | two\n\
            \n[b] offline: b is offline\n  err | \xff\n  (output truncated: the gateway keeps the first part)\n";
        assert_eq!(
            String::from_utf8_lossy(&text),
            String::from_utf8_lossy(expected)
        );
        assert_eq!(nodes_of(&job), ["a", "b"]);
    }
}
