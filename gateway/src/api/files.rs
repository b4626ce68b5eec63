//! Files: `PUT /api/v1/nodes/{id}/files?path=/abs&mode=0755` and `PUT /api/v1/files?target=…&path=…`
//! stream the request body to one or many nodes; `GET /api/v1/nodes/{id}/files?path=/abs` streams a
//! node's file back. A transfer is a job (id, per-node results, cancel); the agent writes a temporary
//! file, fsyncs and renames it, so an interrupted transfer leaves nothing. Memory stays bounded
//! whatever the size: one chunk at a time, each node paced by its own credit (the slowest node
//! paces a push to many). The audit log gets the path, sizes and SHA-256, never the bytes.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::protocol::{stream, FileParams, MAX_CHUNK};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::exec::job_json;
use super::routes::Req;
use super::{Ctx, Reply};
use crate::bus::{Event, Request};
use crate::jobs::state::NodeState;
use crate::jobs::target::Target;
use crate::jobs::{Job, JobKind, Jobs, Transfer};
use crate::refusal::{bad_request, Kind, Refusal};

/// How long a node may take to grant more credit, or to finish once the data is in.
const NODE_WAIT: Duration = Duration::from_secs(60);
/// Longest path accepted.
const MAX_PATH: usize = 4096;

/// `PUT /api/v1/nodes/{id}/files`.
pub fn put_one(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let node = req.param(0).to_string();
    put(ctx, req, Target::Ids(vec![node.clone()]), node)
}

/// `PUT /api/v1/files?target=…`: many nodes.
pub fn put_many(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let text = param(req, "target")?
        .ok_or_else(|| bad_request("target=… is missing (CLI syntax: pi-1, glob:pi-*, …)"))?;
    put(ctx, req, Target::parse(&text)?, text)
}

fn param(req: &Req, name: &str) -> Result<Option<String>, Refusal> {
    Ok(super::query(&req.call.path)?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v))
}

fn checked_path(req: &Req) -> Result<String, Refusal> {
    let path = param(req, "path")?.ok_or_else(|| bad_request("path=/absolute/path is missing"))?;
    if !path.starts_with('/') || path.len() > MAX_PATH || path.contains('\0') || path.ends_with('/')
    {
        return Err(bad_request(format!(
            "path {path:?} must be an absolute file path (at most {MAX_PATH} bytes)"
        )));
    }
    Ok(path)
}

fn checked_mode(req: &Req) -> Result<u32, Refusal> {
    match param(req, "mode")? {
        None => Ok(0o644),
        Some(m) => u32::from_str_radix(&m, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| bad_request(format!("mode {m:?} is octal permission bits, like 0755"))),
    }
}

/// One node's side of a push.
struct Part {
    idx: usize,
    node: String,
    request: Request,
    credit: u64,
}

fn put(ctx: &Ctx, req: &Req, target: Target, text: String) -> Result<Reply, Refusal> {
    let path = checked_path(req)?;
    let mode = checked_mode(req)?;
    let size = req.call.content_length;
    let nodes = {
        let state = ctx.registry.read();
        target.resolve(state.nodes.values())?
    };
    if target.is_any() || nodes.is_empty() {
        return Err(bad_request(format!(
            "target {text:?} selects no node to push to"
        )));
    }
    let kind = JobKind::Put {
        path: path.clone(),
        mode,
        size,
    };
    let job = ctx
        .jobs
        .submit_transfer(kind, req.caller.actor(), &text, nodes)?;
    let params = FileParams {
        op: "put".into(),
        path: path.clone(),
        job: job.meta.id.clone(),
        mode: Some(mode),
        size,
    };
    let far = Instant::now() + NODE_WAIT;
    let mut parts = Vec::new();
    for (idx, r) in job.results().into_iter().enumerate() {
        if r.state != NodeState::Queued {
            continue;
        }
        match ctx.bus.open_file(&r.node, &params) {
            Ok(request) => {
                ctx.jobs.started(&job, idx, &r.node, far);
                parts.push(Part {
                    idx,
                    node: r.node,
                    request,
                    credit: u64::from(burrow_core::protocol::INITIAL_WINDOW),
                });
            }
            Err(why) => ctx
                .jobs
                .finish(&job, idx, NodeState::Offline, None, Some(why)),
        }
    }
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut body = req.body.borrow_mut();
    let mut chunk = vec![0u8; MAX_CHUNK];
    loop {
        if parts.is_empty() {
            break;
        }
        if ctx.jobs.is_cancelled(&job) {
            end_all(
                &ctx.jobs,
                &job,
                &mut parts,
                NodeState::Cancelled,
                "cancelled",
            );
            break;
        }
        let n = match body.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let why = format!("the upload was interrupted after {total} bytes: {e}");
                end_all(&ctx.jobs, &job, &mut parts, NodeState::Failed, &why);
                break;
            }
        };
        hasher.update(&chunk[..n]);
        total += n as u64;
        if size.is_some_and(|s| total > s) {
            let why = format!(
                "the body is longer than its Content-Length {}",
                size.unwrap_or(0)
            );
            end_all(&ctx.jobs, &job, &mut parts, NodeState::Failed, &why);
            break;
        }
        parts.retain_mut(|p| send_chunk(&ctx.jobs, &job, p, &chunk[..n]));
    }
    let sha256 = burrow_core::join::hex(&hasher.finalize());
    for mut p in parts {
        let _ = p.request.send_eof(stream::FIRST_OPENED);
        let ended = wait_end(&mut p.request, Instant::now() + NODE_WAIT);
        match ended {
            Ok(()) => {
                let t = Transfer {
                    bytes: total,
                    sha256: sha256.clone(),
                };
                ctx.jobs.set_transfer(&job, p.idx, t);
                ctx.jobs
                    .finish(&job, p.idx, NodeState::Succeeded, None, None);
                p.request.done();
            }
            Err((state, why)) => ctx.jobs.finish(&job, p.idx, state, None, Some(why)),
        }
    }
    let answer = job_json(&job, 0);
    ctx.pairing.audit().record(
        &req.caller,
        "file.put",
        &job.meta.target,
        json!({"job_id": job.meta.id, "path": path, "mode": format!("{mode:04o}"),
               "bytes": total, "sha256": sha256, "state": answer["state"],
               "summary": answer["summary"]}),
    );
    Ok(Reply::Json(200, answer))
}

/// Sends one chunk to a part within its credit; `false` (and the part ended) when it failed.
fn send_chunk(jobs: &Arc<Jobs>, job: &Arc<Job>, p: &mut Part, data: &[u8]) -> bool {
    let deadline = Instant::now() + NODE_WAIT;
    while p.credit < data.len() as u64 {
        match p.request.next(deadline) {
            Some(Event::Credit {
                stream: stream::FIRST_OPENED,
                bytes,
            }) => p.credit += u64::from(bytes),
            Some(other) => {
                let (state, why) = ended_early(other, &p.node);
                p.request.cancel();
                jobs.finish(job, p.idx, state, None, Some(why));
                return false;
            }
            None => {
                p.request.cancel();
                let why = Refusal::new(
                    Kind::Timeout,
                    format!("{} took no data for {}s", p.node, NODE_WAIT.as_secs()),
                );
                jobs.finish(job, p.idx, NodeState::Failed, None, Some(why));
                return false;
            }
        }
    }
    if let Err(why) = p.request.send_data(stream::FIRST_OPENED, data.to_vec()) {
        jobs.finish(job, p.idx, NodeState::Lost, None, Some(why));
        return false;
    }
    p.credit -= data.len() as u64;
    true
}

/// What an event other than credit means while data is still being sent.
fn ended_early(event: Event, node: &str) -> (NodeState, Refusal) {
    match event {
        // The node owner's policy (agent/src/policy.rs): `refused`, with the rule, not `failed`.
        Event::Failed(m) if m.starts_with("refused") => {
            (NodeState::Refused, Refusal::new(Kind::Forbidden, m))
        }
        Event::Failed(m) => (NodeState::Failed, Refusal::new(Kind::ExecFailed, m)),
        Event::Lost(m) => (NodeState::Lost, Refusal::new(Kind::NodeLost, m)),
        Event::Reset { reason, .. } => (NodeState::Failed, Refusal::new(Kind::ExecFailed, reason)),
        other => (
            NodeState::Failed,
            Refusal::new(
                Kind::ExecFailed,
                format!("{node} ended the transfer early ({other:?})"),
            ),
        ),
    }
}

fn end_all(jobs: &Arc<Jobs>, job: &Arc<Job>, parts: &mut Vec<Part>, state: NodeState, why: &str) {
    for p in parts.drain(..) {
        p.request.cancel();
        let kind = if state == NodeState::Cancelled {
            Kind::Conflict
        } else {
            Kind::BadRequest
        };
        jobs.finish(job, p.idx, state, None, Some(Refusal::new(kind, why)));
    }
}

/// Waits for a put's `Exit` (the file is in place) or its failure.
fn wait_end(request: &mut Request, deadline: Instant) -> Result<(), (NodeState, Refusal)> {
    loop {
        return match request.next(deadline) {
            Some(Event::Exit(s)) if s.exit_code == Some(0) => Ok(()),
            Some(Event::Credit { .. }) => continue,
            Some(Event::Exit(s)) => Err((
                NodeState::Failed,
                Refusal::new(Kind::ExecFailed, format!("the node ended with {s:?}")),
            )),
            Some(other) => Err(ended_early(other, "the node")),
            None => Err((
                NodeState::Failed,
                Refusal::new(Kind::Timeout, "the node did not confirm the file in time"),
            )),
        };
    }
}

/// `GET /api/v1/nodes/{id}/files?path=/abs`: the file's bytes, as they come from the node.
pub fn get(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let node = req.param(0).to_string();
    let path = checked_path(req)?;
    {
        let state = ctx.registry.read();
        Target::Ids(vec![node.clone()]).resolve(state.nodes.values())?;
    }
    if !ctx.bus.is_linked(&node) {
        return Err(ctx.bus.why_unavailable(&node));
    }
    let kind = JobKind::Get { path: path.clone() };
    let job = ctx
        .jobs
        .submit_transfer(kind, req.caller.actor(), &node, vec![node.clone()])?;
    let params = FileParams {
        op: "get".into(),
        path: path.clone(),
        job: job.meta.id.clone(),
        mode: None,
        size: None,
    };
    let mut request = match ctx.bus.open_file(&node, &params) {
        Ok(r) => r,
        Err(why) => {
            ctx.jobs
                .finish(&job, 0, NodeState::Offline, None, Some(why.clone()));
            return Err(why);
        }
    };
    ctx.jobs.started(&job, 0, &node, Instant::now() + NODE_WAIT);
    // The first event decides the status: a missing file is a 404, not a broken 200.
    let first = match request.next(Instant::now() + NODE_WAIT) {
        Some(Event::Data { data, .. }) => Some(data),
        Some(Event::Eof { .. }) => None,
        other => {
            let mut state = NodeState::Failed;
            let why = match other {
                Some(Event::Failed(m)) if m.starts_with("refused") => {
                    state = NodeState::Refused;
                    Refusal::new(Kind::Forbidden, m)
                }
                Some(Event::Failed(m)) if m.contains("not found") || m.contains("No such") => {
                    Refusal::new(Kind::NotFound, m)
                }
                Some(Event::Failed(m)) => Refusal::new(Kind::BadRequest, m),
                Some(Event::Lost(m)) => Refusal::new(Kind::NodeLost, m),
                Some(e) => Refusal::new(Kind::ExecFailed, format!("unexpected {e:?}")),
                None => Refusal::new(Kind::Timeout, "the node did not start sending the file"),
            };
            ctx.jobs.finish(&job, 0, state, None, Some(why.clone()));
            return Err(why);
        }
    };
    ctx.pairing.audit().record(
        &req.caller,
        "file.get",
        &node,
        json!({"job_id": job.meta.id, "path": path}),
    );
    let ended = first.is_none();
    Ok(Reply::Bytes {
        job_id: job.meta.id.clone(),
        body: Box::new(FileReader {
            jobs: ctx.jobs.clone(),
            job,
            request,
            pending: first.unwrap_or_default(),
            offset: 0,
            hasher: Sha256::new(),
            total: 0,
            eof: ended,
            finished: false,
        }),
    })
}

/// A node's file as a `Read`: data as it arrives, credit back as it is read, the job's end at EOF.
struct FileReader {
    jobs: Arc<Jobs>,
    job: Arc<Job>,
    request: Request,
    pending: Vec<u8>,
    offset: usize,
    hasher: Sha256,
    total: u64,
    eof: bool,
    finished: bool,
}

impl FileReader {
    fn fail(&mut self, state: NodeState, why: Refusal) -> std::io::Error {
        self.finished = true;
        let message = why.message.clone();
        self.jobs.finish(&self.job, 0, state, None, Some(why));
        std::io::Error::other(message)
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.offset < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.offset);
                buf[..n].copy_from_slice(&self.pending[self.offset..self.offset + n]);
                self.hasher.update(&buf[..n]);
                self.offset += n;
                self.total += n as u64;
                if self.offset == self.pending.len() {
                    self.request
                        .credit(stream::FIRST_OPENED, self.pending.len());
                }
                return Ok(n);
            }
            if self.finished {
                return Ok(0);
            }
            let deadline = Instant::now() + NODE_WAIT;
            if self.eof {
                return match self.request.next(deadline) {
                    Some(Event::Exit(s)) if s.exit_code == Some(0) => {
                        let sha256 = burrow_core::join::hex(&self.hasher.clone().finalize());
                        let t = Transfer {
                            bytes: self.total,
                            sha256,
                        };
                        self.jobs.set_transfer(&self.job, 0, t);
                        self.jobs
                            .finish(&self.job, 0, NodeState::Succeeded, None, None);
                        self.request.done();
                        self.finished = true;
                        Ok(0)
                    }
                    Some(Event::Credit { .. }) => continue,
                    other => {
                        let (state, why) = match other {
                            Some(e) => ended_early(e, "the node"),
                            None => (
                                NodeState::Failed,
                                Refusal::new(Kind::Timeout, "the node did not end the transfer"),
                            ),
                        };
                        Err(self.fail(state, why))
                    }
                };
            }
            match self.request.next(deadline) {
                Some(Event::Data { data, .. }) => {
                    self.pending = data;
                    self.offset = 0;
                }
                Some(Event::Eof { .. }) => self.eof = true,
                Some(Event::Credit { .. }) => {}
                Some(other) => {
                    let (state, why) = ended_early(other, "the node");
                    return Err(self.fail(state, why));
                }
                None => {
                    let why = Refusal::new(Kind::Timeout, "the node stopped sending the file");
                    self.request.cancel();
                    return Err(self.fail(NodeState::Failed, why));
                }
            }
        }
    }
}

impl Drop for FileReader {
    fn drop(&mut self) {
        if !self.finished {
            // The client went away mid-file.
            self.request.cancel();
            let why = Refusal::new(Kind::BadRequest, "the client stopped reading the file");
            self.jobs
                .finish(&self.job, 0, NodeState::Cancelled, None, Some(why));
        }
    }
}
