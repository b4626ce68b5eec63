//! Running commands: `POST /api/v1/exec` (any target) and `POST /api/v1/nodes/{id}/exec` (one node,
//! the answer shape of before the command bus), answered whole (JSON), streamed (`Accept:
//! application/x-ndjson`) or at once (`"async": true`, 202). Every one is a job ([`crate::jobs`]):
//! the answer is a subscriber, and a client that goes away leaves the job running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use burrow_core::protocol::{stream, ExecSpec, ExitStatus};

mod tty;
use serde::Deserialize;
use serde_json::{json, Map, Value};
pub use tty::terminal_size;
use tty::{parse_tty, tty_lane};

use super::routes::Req;
use super::{error_body, parse_body, Ctx, Reply};
use crate::jobs::state::{self, NodeState};
use crate::jobs::target::Target;
use crate::jobs::{Batch, Ev, Job, JobKind, NodeResult, Submit, GRACE};
use crate::refusal::{bad_request, Kind, Refusal};

use limits::{MAX_LANE, MAX_QUEUE_TTL_S, MAX_TIMEOUT_S};

/// Default command timeout.
const DEFAULT_TIMEOUT_S: u64 = 60;

/// Bounds of an exec body, also stated in the OpenAPI document.
pub mod limits {
    /// Largest command timeout.
    pub const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
    /// Longest queue TTL.
    pub const MAX_QUEUE_TTL_S: u64 = 30 * 24 * 3600;
    /// Lane names: short words.
    pub const MAX_LANE: usize = 64;
}
/// Output kept per node and stream (in the store and in whole answers) unless `serve
/// --max-answer-bytes` says otherwise; the rest is counted. Streamed answers have no cap.
pub const DEFAULT_ANSWER_LIMIT: usize = 1 << 20;
/// A whole (non-streamed) answer carries at most this much output over all nodes.
pub const ANSWER_TOTAL: usize = 64 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    #[serde(default)]
    target: Option<Value>,
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
    #[serde(default)]
    lane: Option<String>,
    #[serde(default)]
    queue_ttl_s: Option<u64>,
    #[serde(default)]
    batch: Option<Value>,
    #[serde(default, rename = "async")]
    run_async: bool,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    stdin_b64: Option<String>,
    /// Input comes from `PUT /api/v1/jobs/{id}/stdin` (one node).
    #[serde(default)]
    stdin_stream: bool,
    /// `true` or `{"rows","cols","term"}`: run on a pseudo-terminal (one node; implies
    /// `stdin_stream`).
    #[serde(default)]
    tty: Option<Value>,
}

/// An exec request body, checked: what the handlers submit. Nothing in it has been looked up (the
/// target is parsed, not resolved against the registry).
#[derive(Debug)]
pub struct ExecRequest {
    pub target: Target,
    /// The target as given, for people (the job's `target`).
    pub target_text: String,
    pub spec: ExecSpec,
    pub lane: String,
    pub queue_ttl_s: Option<u64>,
    pub batch: Option<Batch>,
    pub run_async: bool,
    pub stdin: Option<Vec<u8>>,
    pub stdin_stream: bool,
}

/// Parses and checks the body of `POST /api/v1/exec` (`node` is `None`: the body names the target)
/// or of `POST /api/v1/nodes/{node}/exec` (the path names it; a `target` in the body is refused).
/// The one parser of both routes; pure, so the fuzz target `exec_request` (core/fuzz) calls it as is.
/// Every refusal is a [`Kind::BadRequest`].
pub fn parse_request(body: &[u8], node: Option<&str>) -> Result<ExecRequest, Refusal> {
    let body: ExecBody = parse_body(body)?;
    let (target, target_text) =
        match (node, &body.target) {
            (None, None) => {
                return Err(bad_request(
                    "\"target\" is missing (a node id, a list, \"*\", …)",
                ))
            }
            (None, Some(value)) => {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (Target::from_json(value)?, text)
            }
            (Some(_), Some(_)) => return Err(bad_request(
                "this route runs on the node in its path; use POST /api/v1/exec for a \"target\"",
            )),
            (Some(node), None) => (Target::Ids(vec![node.to_string()]), node.to_string()),
        };
    let lane = body.lane.clone().unwrap_or_else(|| "default".into());
    if lane.is_empty()
        || lane.len() > MAX_LANE
        || !lane
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(bad_request(format!(
            "lane must be 1 to {MAX_LANE} letters, digits or -_.:"
        )));
    }
    if let Some(ttl) = body.queue_ttl_s {
        if ttl == 0 || ttl > MAX_QUEUE_TTL_S {
            return Err(bad_request(format!(
                "queue_ttl_s must be between 1 and {MAX_QUEUE_TTL_S}"
            )));
        }
    }
    let batch = body.batch.as_ref().map(parse_batch).transpose()?;
    let stdin = match (&body.stdin, &body.stdin_b64) {
        (Some(_), Some(_)) => return Err(bad_request("give \"stdin\" or \"stdin_b64\", not both")),
        (Some(text), None) => Some(text.clone().into_bytes()),
        (None, Some(b64)) => Some(
            STANDARD
                .decode(b64)
                .map_err(|e| bad_request(format!("stdin_b64 is not base64: {e}")))?,
        ),
        (None, None) => None,
    };
    if body.stdin_stream && stdin.is_some() {
        return Err(bad_request(
            "give \"stdin\"/\"stdin_b64\" or \"stdin_stream\", not both",
        ));
    }
    let tty = body.tty.as_ref().map(parse_tty).transpose()?.flatten();
    if tty.is_some() && stdin.is_some() {
        return Err(bad_request(
            "a \"tty\" job reads its terminal: stream keys with PUT /api/v1/jobs/{id}/stdin, \
             not \"stdin\"/\"stdin_b64\"",
        ));
    }
    if tty.is_some() && body.queue_ttl_s.is_some() {
        return Err(bad_request(
            "a \"tty\" job is not queued for an offline node: drop \"queue_ttl_s\"",
        ));
    }
    // A terminal never waits behind the node's other commands: a lane of its own.
    let lane = match (&tty, &body.lane) {
        (Some(_), None) => tty_lane(),
        _ => lane,
    };
    let stdin_stream = body.stdin_stream || tty.is_some();
    let (queue_ttl_s, run_async) = (body.queue_ttl_s, body.run_async);
    let mut spec = validate(body)?;
    spec.tty = tty;
    Ok(ExecRequest {
        target,
        target_text,
        lane,
        queue_ttl_s,
        batch,
        run_async,
        stdin,
        stdin_stream,
        spec,
    })
}

/// `POST /api/v1/exec`.
pub fn fleet(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let request = parse_request(&req.call.body, None)?;
    let run_async = request.run_async;
    let (job, entry) = submit(ctx, req, request)?;
    if run_async {
        return Ok(accepted(&job));
    }
    if wants_ndjson(req) {
        return Ok(Reply::Stream(Box::new(Lines::new(ctx, job, true))));
    }
    job.wait(deadline_of(&job));
    answered(entry);
    Ok(Reply::Json(200, job_json(&job, ctx.answer_limit)))
}

/// `POST /api/v1/nodes/{id}/exec`: one node, the answer of before the bus plus `state`.
pub fn exec(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let node = req.param(0).to_string();
    let request = parse_request(&req.call.body, Some(&node))?;
    // The node must exist and be approved: refused as before, with its own code.
    if !ctx.bus.is_linked(&node) && request.queue_ttl_s.is_none() {
        return Err(ctx.bus.why_unavailable(&node));
    }
    let run_async = request.run_async;
    let (job, entry) = submit(ctx, req, request)?;
    if run_async {
        return Ok(accepted(&job));
    }
    if wants_ndjson(req) {
        return Ok(Reply::Stream(Box::new(Lines::new(ctx, job, false))));
    }
    let ended = job.wait(deadline_of(&job));
    answered(entry);
    if !ended {
        if job.is_stopped() {
            return Err(Refusal::new(
                Kind::Unavailable,
                format!(
                    "the gateway is shutting down; job {} goes on on the node (GET /api/v1/jobs/{} \
                     once the gateway is back)",
                    job.meta.id, job.meta.id
                ),
            ));
        }
        return Err(Refusal::new(
            Kind::Timeout,
            format!(
                "the node did not finish the command in time (job {})",
                job.meta.id
            ),
        ));
    }
    let r = job.results().remove(0);
    match (&r.exit, &r.error) {
        (Some(_), _) => {
            let mut out = result_json(&r, ctx.answer_limit, &mut usize::MAX.clone());
            out.insert("job_id".into(), json!(job.meta.id));
            Ok(Reply::Json(200, Value::Object(out)))
        }
        (None, Some((code, message))) => Err(Refusal::new(
            Kind::from_code(code).unwrap_or(Kind::ExecFailed),
            message.clone(),
        )),
        (None, None) => Err(Refusal::new(
            Kind::Internal,
            format!(
                "job {} ended {} without a reason",
                job.meta.id,
                r.state.name()
            ),
        )),
    }
}

fn submit(
    ctx: &Ctx,
    req: &Req,
    request: ExecRequest,
) -> Result<(Arc<Job>, Option<crate::audit::Pending>), Refusal> {
    let acknowledged_at_once = request.run_async || wants_ndjson(req);
    let job = ctx.jobs.submit(Submit {
        kind: JobKind::Exec {
            spec: request.spec,
            stdin: request.stdin,
            stdin_stream: request.stdin_stream,
        },
        actor: req.caller.actor().to_string(),
        target: request.target,
        target_text: request.target_text,
        lane: request.lane,
        queue_ttl_s: request.queue_ttl_s,
        batch: request.batch,
        acknowledged_at_once,
        // Answered whole: this worker waits for the job anyway (`Job::wait`), so it runs a part.
        run_in_waiter: !acknowledged_at_once,
    })?;
    let nodes: Vec<String> = job.results().into_iter().map(|r| r.node).collect();
    let mut detail = json!({"job_id": job.meta.id, "nodes": nodes, "lane": job.meta.lane});
    describe(&job.meta.kind, &mut detail);
    let entry = ctx
        .pairing
        .audit()
        .queue(&req.caller, "exec", &job.meta.target, detail);
    // Told the job id now (async, streaming): the entry is durable first. Answered whole: the
    // part runs meanwhile, and the answer waits for the job's end entry, written after this one
    // (the fsync of the end covers both); `answered` waits for it in any case.
    if acknowledged_at_once {
        entry.wait();
        Ok((job, None))
    } else {
        Ok((job, Some(entry)))
    }
}

/// Waits for the `exec` entry of a job answered whole before its answer goes out.
fn answered(entry: Option<crate::audit::Pending>) {
    if let Some(entry) = entry {
        entry.wait();
    }
}

fn parse_batch(v: &Value) -> Result<Batch, Refusal> {
    let bad = || bad_request("batch is a number of nodes (10) or a share of them (\"25%\")");
    match v {
        Value::Number(n) => n
            .as_u64()
            .filter(|n| *n > 0)
            .map(|n| Batch::Nodes(n as usize))
            .ok_or_else(bad),
        Value::String(s) => match s.strip_suffix('%') {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(Batch::Percent)
                .ok_or_else(bad),
            None => s
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .map(Batch::Nodes)
                .ok_or_else(bad),
        },
        _ => Err(bad()),
    }
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
        tty: None,
    })
}

fn wants_ndjson(req: &Req) -> bool {
    req.call
        .accept
        .as_deref()
        .is_some_and(|a| a.contains("application/x-ndjson"))
}

/// How long an answer waits for a job: its timeout, its queue TTL and the grace.
fn deadline_of(job: &Job) -> Instant {
    let timeout = match &job.meta.kind {
        JobKind::Exec { spec, .. } => spec.timeout_s,
        JobKind::Put { .. } | JobKind::Get { .. } => 3600,
    };
    let queued = job.meta.queue_ttl_s.unwrap_or(0);
    // Queued behind other commands in a lane, a part may wait for several timeouts: a whole
    // answer waits for the command's own time plus a grace, then answers with what is known.
    Instant::now() + Duration::from_secs(timeout + queued) + GRACE + GRACE
}

/// What a job does, in `out` (`command`/`argv`/`cwd`, or the file's `path`, `mode`, `size`).
pub fn describe(kind: &JobKind, out: &mut Value) {
    match kind {
        JobKind::Exec { spec, .. } => {
            if let Some(c) = &spec.command {
                out["command"] = json!(c);
            }
            if let Some(a) = &spec.argv {
                out["argv"] = json!(a);
            }
            if let Some(cwd) = &spec.cwd {
                out["cwd"] = json!(cwd);
            }
            if let Some(tty) = &spec.tty {
                out["tty"] = json!({"rows": tty.rows, "cols": tty.cols, "term": tty.term});
            }
        }
        JobKind::Put { path, mode, size } => {
            out["path"] = json!(path);
            out["mode"] = json!(format!("{mode:04o}"));
            out["size"] = json!(size);
        }
        JobKind::Get { path } => out["path"] = json!(path),
    }
}

fn accepted(job: &Job) -> Reply {
    let nodes: Vec<String> = job.results().into_iter().map(|r| r.node).collect();
    Reply::Json(
        202,
        json!({"job_id": job.meta.id, "state": job.state().name(), "nodes": nodes}),
    )
}

/// The whole answer of a job: `{"job_id", "state", "results": […], "summary": {…}}`.
pub fn job_json(job: &Job, per_stream: usize) -> Value {
    let results = job.results();
    let mut budget = ANSWER_TOTAL;
    let list: Vec<Value> = results
        .iter()
        .map(|r| Value::Object(result_json(r, per_stream, &mut budget)))
        .collect();
    let mut out = json!({
        "job_id": job.meta.id,
        "kind": job.meta.kind.name(),
        "state": job.state().name(),
        "created_at": crate::registry::rfc3339(job.meta.created_at),
        "actor": job.meta.actor,
        "target": job.meta.target,
        "lane": job.meta.lane,
        "results": list,
        "summary": state::summary(results.iter().map(|r| r.state)),
    });
    describe(&job.meta.kind, &mut out);
    out
}

/// One node's result; output beyond `per_stream` (already cut when stored) or beyond what is left of
/// `budget` is counted in `dropped_bytes`.
pub fn result_json(r: &NodeResult, per_stream: usize, budget: &mut usize) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("node".into(), json!(r.node));
    out.insert("state".into(), json!(r.state.name()));
    match &r.exit {
        Some(s) => exit_fields(&mut out, s),
        None => {
            for k in ["exit_code", "signal", "duration_ms"] {
                out.insert(k.into(), Value::Null);
            }
            out.insert("timed_out".into(), json!(false));
        }
    }
    let mut dropped = [0u64; 2];
    for (i, name) in ["stdout", "stderr"].into_iter().enumerate() {
        let kept = &r.output[i].kept;
        let n = kept.len().min(per_stream).min(*budget);
        *budget -= n;
        dropped[i] = r.output[i].dropped + (kept.len() - n) as u64;
        bytes_field(&mut out, name, &kept[..n]);
    }
    out.insert("truncated".into(), json!(dropped != [0, 0]));
    out.insert(
        "dropped_bytes".into(),
        json!({"stdout": dropped[0], "stderr": dropped[1]}),
    );
    if let Some(t) = &r.transfer {
        out.insert("bytes".into(), json!(t.bytes));
        out.insert("sha256".into(), json!(t.sha256));
    }
    if let Some((code, message)) = &r.error {
        out.insert("error".into(), json!(message));
        out.insert("code".into(), json!(code));
    }
    out
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

/// The NDJSON events of a job: kept ones first (a replay), then live ones as they happen.
pub struct Lines {
    job: Arc<Job>,
    replay: std::vec::IntoIter<Arc<Ev>>,
    live: Option<crossbeam_channel::Receiver<Arc<Ev>>>,
    /// The fleet form: a `job` event first, node ids on every event, a `summary` last.
    fleet: bool,
    begun: bool,
    ended: bool,
    deadline: Instant,
}

impl Lines {
    pub fn new(ctx: &Ctx, job: Arc<Job>, fleet: bool) -> Lines {
        let sub = ctx.jobs.subscribe(&job);
        Lines {
            deadline: deadline_of(&job),
            job,
            replay: sub.replay.into_iter(),
            live: sub.live,
            fleet,
            begun: false,
            ended: false,
        }
    }

    fn next_event(&mut self) -> Option<Arc<Ev>> {
        if let Some(ev) = self.replay.next() {
            return Some(ev);
        }
        let rx = self.live.as_ref()?;
        let wait = self.deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(wait).ok()
    }

    fn render(&self, ev: &Ev) -> Option<Value> {
        let id = &self.job.meta.id;
        let mut out = Map::new();
        match ev {
            Ev::Start { node } => {
                if !self.fleet {
                    return None;
                }
                out.insert("event".into(), json!("start"));
                out.insert("node".into(), json!(node));
            }
            Ev::Output {
                node,
                stream: s,
                data,
            } => {
                let name = if *s == stream::STDERR {
                    "stderr"
                } else {
                    "stdout"
                };
                out.insert("event".into(), json!(name));
                out.insert("node".into(), json!(node));
                bytes_field(&mut out, "data", data);
            }
            Ev::End { result } => {
                out.insert("node".into(), json!(result.node));
                out.insert("state".into(), json!(result.state.name()));
                match (&result.exit, &result.error) {
                    (Some(s), _) => {
                        out.insert("event".into(), json!("exit"));
                        exit_fields(&mut out, s);
                    }
                    (None, error) => {
                        let (code, message) = error.clone().unwrap_or_else(|| {
                            ("internal".into(), format!("ended {}", result.state.name()))
                        });
                        let kind = Kind::from_code(&code).unwrap_or(Kind::ExecFailed);
                        let mut e = error_body(&Refusal::new(kind, message));
                        e["event"] = json!("error");
                        if let Value::Object(m) = e {
                            out.extend(m);
                        }
                    }
                }
            }
            Ev::Finished => {
                if !self.fleet {
                    return None;
                }
                out.insert("event".into(), json!("summary"));
                out.insert("state".into(), json!(self.job.state().name()));
                out.insert(
                    "summary".into(),
                    state::summary(self.job.results().iter().map(|r| r.state)),
                );
            }
        }
        out.insert("job_id".into(), json!(id));
        Some(Value::Object(out))
    }
}

impl Iterator for Lines {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.ended {
            return None;
        }
        if !self.begun && self.fleet {
            self.begun = true;
            let nodes: Vec<String> = self.job.results().into_iter().map(|r| r.node).collect();
            return Some(json!({"event": "job", "job_id": self.job.meta.id, "nodes": nodes}));
        }
        loop {
            let Some(ev) = self.next_event() else {
                self.ended = true;
                // The job goes on; this answer stops following it.
                let message = format!(
                    "stopped following job {} (it goes on: GET /api/v1/jobs/{}/stream)",
                    self.job.meta.id, self.job.meta.id
                );
                let mut e = error_body(&Refusal::new(Kind::Timeout, message));
                e["event"] = json!("error");
                e["job_id"] = json!(self.job.meta.id);
                return Some(e);
            };
            if matches!(*ev, Ev::Finished) {
                self.ended = true;
            }
            let single_end = !self.fleet && matches!(*ev, Ev::End { .. });
            if let Some(v) = self.render(&ev) {
                if single_end {
                    self.ended = true;
                }
                return Some(v);
            }
            if self.ended {
                return None;
            }
        }
    }
}

/// The job states a result can be listed by (for `?state=`).
pub fn parse_state(text: &str) -> Result<NodeState, Refusal> {
    NodeState::parse(text).ok_or_else(|| {
        let names: Vec<&str> = NodeState::ALL.iter().map(|s| s.name()).collect();
        bad_request(format!(
            "unknown state {text:?}; one of {}",
            names.join(", ")
        ))
    })
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
    fn a_whole_answer_keeps_its_budget_and_counts_the_rest() {
        let mut r = NodeResult::new("pi-1".into());
        r.output[0].kept = b"12345678".to_vec();
        r.output[0].dropped = 2;
        let mut budget = 5;
        let out = result_json(&r, 100, &mut budget);
        assert_eq!(out["stdout"], "12345");
        assert_eq!(out["dropped_bytes"]["stdout"], 5);
        assert_eq!(out["truncated"], true);
        assert_eq!(budget, 0);
    }

    /// Regression (schemathesis): `[null, "id"]` was an exec body running `id` (serde fills a
    /// struct from an array); `parse_body` takes objects only.
    #[test]
    fn an_array_is_not_an_exec_body() {
        assert!(serde_json::from_slice::<ExecBody>(br#"[null, "id"]"#).is_ok());
        let e = parse_body::<ExecBody>(br#"[null, "id"]"#).err().unwrap();
        assert_eq!(e.kind, Kind::BadRequest);
    }

    #[test]
    fn batches_are_counts_or_shares() {
        assert_eq!(parse_batch(&json!(10)).unwrap(), Batch::Nodes(10));
        assert_eq!(parse_batch(&json!("25%")).unwrap(), Batch::Percent(25));
        assert_eq!(parse_batch(&json!("3")).unwrap(), Batch::Nodes(3));
        for bad in [
            json!(0),
            json!("0%"),
            json!("101%"),
            json!("x"),
            json!(true),
        ] {
            assert!(parse_batch(&bad).is_err(), "{bad}");
        }
    }

    /// Both routes parse with `parse_request`: the fleet route needs a target, the node route
    /// refuses one and runs on the node in its path; every refusal is a 400.
    #[test]
    fn both_exec_routes_parse_with_one_parser() {
        let r = parse_request(br#"{"target":"cap:gpu","argv":["nvidia-smi"]}"#, None).unwrap();
        assert_eq!(r.target_text, "cap:gpu");
        assert_eq!(r.lane, "default");
        let r = parse_request(br#"{"command":"uptime","stdin":"x"}"#, Some("pi-1")).unwrap();
        assert_eq!(r.target, Target::Ids(vec!["pi-1".into()]));
        assert_eq!(r.stdin.as_deref(), Some(&b"x"[..]));
        for (body, node) in [
            (&br#"{"command":"uptime"}"#[..], None),
            (br#"{"target":"pi-2","command":"uptime"}"#, Some("pi-1")),
            (br#"{"command":"uptime","lane":"a b"}"#, Some("pi-1")),
            (
                br#"{"command":"x","stdin":"a","stdin_stream":true}"#,
                Some("pi-1"),
            ),
            (br#"{"command":"x","argv":["x"]}"#, Some("pi-1")),
            (b"[", Some("pi-1")),
        ] {
            let err = parse_request(body, node).unwrap_err();
            assert_eq!(
                err.kind,
                Kind::BadRequest,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
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
