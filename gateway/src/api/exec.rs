//! `POST /api/v1/nodes/{id}/exec`: run a command on a node, answered whole (JSON) or streamed
//! (`Accept: application/x-ndjson`, one event per line as output is produced).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use burrow_core::protocol::{ExecSpec, ExitStatus};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{parse_body, Call, Ctx, Reply};
use crate::bus::{Event, Job};
use crate::refusal::{bad_request, Kind, Refusal};
use crate::tokens::Verified;

/// Default and largest command timeout.
const DEFAULT_TIMEOUT_S: u64 = 60;
const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
/// The gateway waits this much longer than the node's own timeout before giving up on the node.
const GRACE: Duration = Duration::from_secs(15);
/// Output kept per stream in a whole (non-streamed) answer; the rest is counted and dropped.
const MAX_BUFFERED: usize = 16 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    timeout_s: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
}

pub fn exec(ctx: &Ctx, who: &Verified, node: &str, call: &Call) -> Result<Reply, Refusal> {
    let body: ExecBody = parse_body(&call.body)?;
    let spec = validate(body)?;
    let timeout = Duration::from_secs(spec.timeout_s);
    let job_id = crate::bus::new_job_id();
    ctx.pairing.audit().record(
        &who.subject,
        "exec",
        node,
        json!({"job_id": job_id, "command": spec.command, "argv": spec.argv, "cwd": spec.cwd}),
    );
    let job = ctx.bus.exec(node, job_id.clone(), spec)?;
    let deadline = Instant::now() + timeout + GRACE;
    let streaming = call
        .accept
        .as_deref()
        .is_some_and(|a| a.contains("application/x-ndjson"));
    if streaming {
        return Ok(Reply::Stream(Box::new(Lines {
            job,
            deadline,
            ended: false,
            started: Instant::now(),
        })));
    }
    collect(job, deadline, job_id, node)
}

fn validate(body: ExecBody) -> Result<ExecSpec, Refusal> {
    match (&body.command, &body.argv) {
        (Some(c), None) if c.trim().is_empty() => return Err(bad_request("command is empty")),
        (None, Some(a)) if a.is_empty() || a[0].is_empty() => {
            return Err(bad_request("argv is empty"))
        }
        (Some(_), None) | (None, Some(_)) => {}
        _ => {
            return Err(bad_request(
                "give exactly one of \"command\" (run by /bin/sh -c) or \"argv\"",
            ))
        }
    }
    let timeout_s = body.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S);
    if timeout_s == 0 || timeout_s > MAX_TIMEOUT_S {
        return Err(bad_request(format!(
            "timeout_s must be between 1 and {MAX_TIMEOUT_S}"
        )));
    }
    Ok(ExecSpec {
        command: body.command,
        argv: body.argv,
        env: body.env,
        cwd: body.cwd,
        timeout_s,
    })
}

fn collect(mut job: Job, deadline: Instant, job_id: String, node: &str) -> Result<Reply, Refusal> {
    let (mut stdout, mut stderr, mut dropped) = (Vec::new(), Vec::new(), 0usize);
    loop {
        let event = job.next(deadline).ok_or_else(|| {
            Refusal::new(
                Kind::Timeout,
                format!("node {node:?} did not finish the command in time"),
            )
        })?;
        match event {
            Event::Stdout(d) => keep(&mut stdout, &d, &mut dropped),
            Event::Stderr(d) => keep(&mut stderr, &d, &mut dropped),
            Event::Exit(status) => {
                let mut out = Map::new();
                out.insert("job_id".into(), json!(job_id));
                out.insert("node".into(), json!(node));
                exit_fields(&mut out, &status);
                bytes_field(&mut out, "stdout", &stdout);
                bytes_field(&mut out, "stderr", &stderr);
                if dropped > 0 {
                    out.insert("truncated_bytes".into(), json!(dropped));
                }
                return Ok(Reply::Json(200, Value::Object(out)));
            }
            Event::Failed(message) => return Err(Refusal::new(Kind::BadRequest, message)),
            Event::Lost(message) => return Err(Refusal::new(Kind::Unavailable, message)),
        }
    }
}

fn keep(buf: &mut Vec<u8>, data: &[u8], dropped: &mut usize) {
    let room = MAX_BUFFERED.saturating_sub(buf.len()).min(data.len());
    buf.extend_from_slice(&data[..room]);
    *dropped += data.len() - room;
}

fn exit_fields(out: &mut Map<String, Value>, s: &ExitStatus) {
    out.insert("exit_code".into(), json!(s.exit_code));
    out.insert("signal".into(), json!(s.signal));
    out.insert("timed_out".into(), json!(s.timed_out));
    out.insert("duration_ms".into(), json!(s.duration_ms));
}

/// `name` as text, plus `name_b64` with the exact bytes when they are not valid UTF-8.
fn bytes_field(out: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            out.insert(name.into(), json!(text));
        }
        Err(_) => {
            out.insert(name.into(), json!(String::from_utf8_lossy(bytes)));
            out.insert(format!("{name}_b64"), json!(STANDARD.encode(bytes)));
        }
    }
}

/// The NDJSON event stream of one job.
struct Lines {
    job: Job,
    deadline: Instant,
    ended: bool,
    started: Instant,
}

impl Iterator for Lines {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.ended {
            return None;
        }
        let mut out = Map::new();
        match self.job.next(self.deadline) {
            Some(Event::Stdout(d)) => {
                out.insert("event".into(), json!("stdout"));
                bytes_field(&mut out, "data", &d);
            }
            Some(Event::Stderr(d)) => {
                out.insert("event".into(), json!("stderr"));
                bytes_field(&mut out, "data", &d);
            }
            Some(Event::Exit(status)) => {
                self.ended = true;
                out.insert("event".into(), json!("exit"));
                exit_fields(&mut out, &status);
            }
            Some(Event::Failed(message) | Event::Lost(message)) => {
                self.ended = true;
                out.insert("event".into(), json!("error"));
                out.insert("message".into(), json!(message));
            }
            None => {
                self.ended = true;
                out.insert("event".into(), json!("error"));
                out.insert(
                    "message".into(),
                    json!(format!(
                        "node did not finish the command within {}s",
                        self.started.elapsed().as_secs()
                    )),
                );
            }
        }
        Some(Value::Object(out))
    }
}
