//! `POST /api/v1/nodes/{id}/exec`: run a command on a node, answered whole (JSON) or streamed
//! (`Accept: application/x-ndjson`, one event per line as output is produced).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use burrow_core::protocol::{ExecSpec, ExitStatus};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::routes::Req;
use super::{error_body, parse_body, Ctx, Reply};
use crate::bus::{Event, Job};
use crate::refusal::{bad_request, Kind, Refusal};

/// Default and largest command timeout.
const DEFAULT_TIMEOUT_S: u64 = 60;
const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
/// The gateway waits this much longer than the node's own timeout before giving up on the node.
const GRACE: Duration = Duration::from_secs(15);
/// Output kept per stream in a whole (non-streamed) answer unless `serve --max-answer-bytes` says
/// otherwise; the rest is counted and dropped. Streamed answers have no cap.
pub const DEFAULT_ANSWER_LIMIT: usize = 1 << 20;

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

pub fn exec(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let (node, call) = (req.param(0), req.call);
    let body: ExecBody = parse_body(&call.body)?;
    let spec = validate(body)?;
    let timeout = Duration::from_secs(spec.timeout_s);
    let job_id = crate::bus::new_job_id();
    ctx.pairing.audit().record(
        req.caller.actor(),
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
    collect(job, deadline, job_id, node, ctx.answer_limit)
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
        stdin: false,
    })
}

fn collect(
    mut job: Job,
    deadline: Instant,
    job_id: String,
    node: &str,
    limit: usize,
) -> Result<Reply, Refusal> {
    let (mut stdout, mut stderr) = (Capped::new(limit), Capped::new(limit));
    loop {
        let event = job.next(deadline).ok_or_else(|| {
            Refusal::new(
                Kind::Timeout,
                format!("node {node:?} did not finish the command in time"),
            )
        })?;
        match event {
            Event::Stdout(d) => stdout.push(&d),
            Event::Stderr(d) => stderr.push(&d),
            Event::Exit(status) => {
                let mut out = Map::new();
                out.insert("job_id".into(), json!(job_id));
                out.insert("node".into(), json!(node));
                exit_fields(&mut out, &status);
                bytes_field(&mut out, "stdout", &stdout.kept);
                bytes_field(&mut out, "stderr", &stderr.kept);
                out.insert(
                    "truncated".into(),
                    json!(stdout.dropped > 0 || stderr.dropped > 0),
                );
                out.insert(
                    "dropped_bytes".into(),
                    json!({"stdout": stdout.dropped, "stderr": stderr.dropped}),
                );
                return Ok(Reply::Json(200, Value::Object(out)));
            }
            Event::Failed(message) => return Err(Refusal::new(Kind::ExecFailed, message)),
            Event::Lost(message) => return Err(Refusal::new(Kind::NodeLost, message)),
        }
    }
}

/// One stream of a whole answer: the first `limit` bytes, and a count of the rest.
struct Capped {
    kept: Vec<u8>,
    limit: usize,
    dropped: u64,
}

impl Capped {
    fn new(limit: usize) -> Capped {
        Capped {
            kept: Vec::new(),
            limit,
            dropped: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len()).min(data.len());
        self.kept.extend_from_slice(&data[..room]);
        self.dropped += (data.len() - room) as u64;
    }
}

fn exit_fields(out: &mut Map<String, Value>, s: &ExitStatus) {
    out.insert("exit_code".into(), json!(s.exit_code));
    out.insert("signal".into(), json!(s.signal));
    out.insert("timed_out".into(), json!(s.timed_out));
    out.insert("duration_ms".into(), json!(s.duration_ms));
}

/// `name` as text when the bytes are UTF-8 that JSON carries about as compactly as base64, else
/// `name_b64` with the exact bytes (never both): a NUL costs 6 bytes as `\u0000`, so output full of
/// control bytes goes as base64 (4 bytes per 3) rather than growing sixfold.
fn bytes_field(out: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) if json_len(text) <= base64_len(bytes.len()) + 2 => {
            out.insert(name.into(), json!(text));
        }
        _ => {
            out.insert(format!("{name}_b64"), json!(STANDARD.encode(bytes)));
        }
    }
}

/// Bytes `text` takes as a JSON string body (without quotes), as serde_json escapes it.
fn json_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// The NDJSON event stream of one job.
struct Lines {
    job: Job,
    deadline: Instant,
    ended: bool,
    started: Instant,
}

impl Lines {
    /// The last event: `{"event": "error", "error": …, "code": …}`, the one error shape of the API.
    fn error(&mut self, kind: Kind, message: String) -> Value {
        self.ended = true;
        let mut event = error_body(&Refusal::new(kind, message));
        event["event"] = json!("error");
        event
    }
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
            Some(Event::Failed(message)) => return Some(self.error(Kind::ExecFailed, message)),
            Some(Event::Lost(message)) => return Some(self.error(Kind::NodeLost, message)),
            None => {
                let message = format!(
                    "node did not finish the command within {}s",
                    self.started.elapsed().as_secs()
                );
                return Some(self.error(Kind::Timeout, message));
            }
        }
        Some(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(bytes: &[u8]) -> Map<String, Value> {
        let mut out = Map::new();
        bytes_field(&mut out, "stdout", bytes);
        out
    }

    #[test]
    fn text_stays_text_and_control_bytes_go_as_base64_only() {
        assert_eq!(field(b"hello\n\tworld\n")["stdout"], "hello\n\tworld\n");
        let zeros = vec![0u8; 3000];
        let out = field(&zeros);
        assert!(out.get("stdout").is_none());
        let encoded = serde_json::to_string(&Value::Object(out.clone())).unwrap();
        // 3000 zeros were 18 000 bytes as `\u0000`; base64 makes 4000.
        assert!(encoded.len() < 4100, "{}", encoded.len());
        assert_eq!(
            STANDARD
                .decode(out["stdout_b64"].as_str().unwrap())
                .unwrap(),
            zeros
        );
        assert!(field(b"\xff\xfe").contains_key("stdout_b64"));
    }

    #[test]
    fn json_len_matches_serde_json() {
        let text = "a\"b\\c\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}é✓";
        assert_eq!(
            json_len(text) + 2,
            serde_json::to_string(text).unwrap().len()
        );
    }

    #[test]
    fn answers_keep_the_limit_and_count_the_rest() {
        let mut c = Capped::new(10);
        c.push(b"12345678");
        c.push(b"abcdef");
        c.push(b"xyz");
        assert_eq!(c.kept, b"12345678ab");
        assert_eq!(c.dropped, 7);
    }

    /// An exec body at the route's limit, escaped as badly as JSON allows, still encodes to a frame
    /// the agent accepts: the protocol's JSON is never longer than the body's.
    #[test]
    fn the_largest_exec_body_fits_one_frame() {
        use burrow_core::protocol::{Message, MAX_FRAME};
        for unit in ["\\u0001", "\\\"", "é", "x"] {
            let room = super::super::routes::EXEC_BODY - 64;
            let command = unit.repeat(room / unit.len());
            let body = format!(r#"{{"command": "{command}", "env": {{}}}}"#);
            assert!(body.len() <= super::super::routes::EXEC_BODY);
            let spec = validate(serde_json::from_str(&body).unwrap()).unwrap();
            let job = "f".repeat(32);
            let body = Message::Exec { id: 1, job, spec }.encode_body().unwrap();
            assert!(body.len() <= MAX_FRAME, "{unit}: {}", body.len());
        }
    }
}
