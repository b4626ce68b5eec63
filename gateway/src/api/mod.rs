//! The REST API: tiny_http with a pool of named worker threads, bearer-JWT auth, JSON in and out.
//!
//! Handlers are plain functions from a [`Call`] (method, path, headers, body) to a [`Reply`], so they
//! are testable without sockets; this module owns the sockets, the routing table and the one error
//! shape, `{"error": "...", "code": "..."}`. A panicking handler becomes a 500, not a dead worker.

mod agent;
mod exec;
mod local;
mod nodes;

use std::io::Read;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};
use tiny_http::{Header, Request, Response, Server};

use crate::bus::Bus;
use crate::pairing::Pairing;
use crate::refusal::{Kind, Refusal};
use crate::registry::Registry;
use crate::tokens::{Role, Verified};

/// Largest request body accepted.
const MAX_BODY: u64 = 1 << 20;
/// Worker threads; an exec holds one for the command's duration.
const WORKERS: usize = 32;

/// What the handlers share.
pub struct Ctx {
    pub registry: Arc<Registry>,
    pub pairing: Arc<Pairing>,
    pub bus: Arc<Bus>,
    pub started: Instant,
    /// The sshd supervisor's status, as JSON.
    pub sshd_status: Box<dyn Fn() -> Value + Send + Sync>,
    pub contact: Value,
}

/// One HTTP request, detached from its socket.
pub struct Call {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub accept: Option<String>,
    pub body: Vec<u8>,
    /// The caller's Unix uid when it came through the CLI socket (`local.rs`); never set over TCP.
    pub peer_uid: Option<u32>,
}

/// What a handler answers.
pub enum Reply {
    Json(u16, Value),
    /// NDJSON lines, streamed as they come; the iterator ends with the last line.
    Stream(Box<dyn Iterator<Item = Value> + Send>),
}

/// The running API servers (TCP, and the CLI's Unix socket); dropping it stops the workers.
pub struct Api {
    workers: Vec<(Arc<Server>, JoinHandle<()>)>,
}

/// The bound listeners, between [`Api::bind`] and [`Api::start`].
pub struct Listeners {
    tcp: Server,
    local: Server,
}

/// Workers of the CLI socket; a `gateway exec` holds one for the command's duration.
const LOCAL_WORKERS: usize = 8;

impl Api {
    /// Binds the API on `addr` and the CLI socket in `data_dir` (before anything else starts, so a
    /// taken port fails fast).
    pub fn bind(addr: SocketAddr, data_dir: &Path) -> anyhow::Result<(Listeners, SocketAddr)> {
        // Bounds that keep one client from holding memory, threads or workers (issue 6 §2; our
        // tiny_http patch, gateway/vendor/tiny_http/PATCHES.md). Bodies up to MAX_BODY are read by
        // the connection's thread before a worker sees the request, so stalled uploads hold no
        // worker; larger ones are refused (413) before any byte is read.
        let mut limits = tiny_http::Limits::default();
        limits.max_body_bytes = Some(MAX_BODY);
        limits.buffer_body_up_to = MAX_BODY as usize;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the API on {addr}"))?;
        let server = Server::from_listener_with_limits(listener, None, limits.clone())
            .map_err(|e| anyhow::anyhow!("serving the API on {addr}: {e}"))?;
        let local = server
            .server_addr()
            .to_ip()
            .context("API listener has no IP address")?;
        let socket = local::bind(&crate::runinfo::socket_path(data_dir), limits)?;
        Ok((
            Listeners {
                tcp: server,
                local: socket,
            },
            local,
        ))
    }

    pub fn start(listeners: Listeners, ctx: Arc<Ctx>) -> anyhow::Result<Api> {
        let mut workers = Vec::new();
        for (server, count, name) in [
            (listeners.tcp, WORKERS, "api"),
            (listeners.local, LOCAL_WORKERS, "api-local"),
        ] {
            let server = Arc::new(server);
            for i in 0..count {
                let (s, ctx) = (server.clone(), ctx.clone());
                let worker = std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        // `recv` returns Err once `unblock` is called on shutdown.
                        while let Ok(request) = s.recv() {
                            serve(&ctx, request);
                        }
                    })?;
                workers.push((server.clone(), worker));
            }
        }
        Ok(Api { workers })
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        // One `unblock` per worker of each server, then join them all.
        for (server, _) in &self.workers {
            server.unblock();
        }
        for (_, w) in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn serve(ctx: &Ctx, mut request: Request) {
    let header = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().to_string())
    };
    let mut call = Call {
        method: request.method().as_str().to_uppercase(),
        path: request.url().to_string(),
        authorization: header("Authorization"),
        accept: header("Accept"),
        body: Vec::new(),
        peer_uid: request.peer_credentials().map(|c| c.uid),
    };
    let reply = match request
        .as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut call.body)
    {
        Err(e) => Err(Refusal::new(Kind::BadRequest, format!("reading body: {e}"))),
        Ok(n) if n as u64 > MAX_BODY => {
            Err(Refusal::new(Kind::BadRequest, "request body over 1 MiB"))
        }
        Ok(_) => catch_unwind(AssertUnwindSafe(|| route(ctx, &call))).unwrap_or_else(|_| {
            log::error!("handler for {} {} panicked", call.method, call.path);
            Err(Refusal::new(
                Kind::Internal,
                "internal error (handler panicked)",
            ))
        }),
    };
    let reply = reply.unwrap_or_else(|r| error_reply(&r));
    let result = match reply {
        Reply::Json(status, value) => {
            let body = serde_json::to_vec(&value).expect("JSON serializes");
            request.respond(
                Response::from_data(body)
                    .with_status_code(status)
                    .with_header(content_type("application/json")),
            )
        }
        Reply::Stream(lines) => stream(request, lines),
    };
    if let Err(e) = result {
        log::debug!("writing response: {e}");
    }
}

/// Writes NDJSON as HTTP/1.1 chunks, one flushed chunk per line. tiny_http's own chunked writer
/// buffers 8 KiB and `chunked_transfer`'s never flushes the socket's buffer, either of which would hold
/// back streaming output; the framing itself is three writes.
fn stream(request: Request, lines: Box<dyn Iterator<Item = Value> + Send>) -> std::io::Result<()> {
    use std::io::Write;
    let mut raw = request.into_writer();
    raw.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-cache\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )?;
    raw.flush()?;
    for line in lines {
        let mut bytes = serde_json::to_vec(&line).expect("JSON serializes");
        bytes.push(b'\n');
        write!(raw, "{:x}\r\n", bytes.len())?;
        raw.write_all(&bytes)?;
        raw.write_all(b"\r\n")?;
        raw.flush()?;
    }
    raw.write_all(b"0\r\n\r\n")?;
    raw.flush()
}

fn content_type(value: &str) -> Header {
    Header::from_bytes(&b"Content-Type"[..], value.as_bytes()).expect("valid header")
}

/// The one error shape.
pub fn error_reply(r: &Refusal) -> Reply {
    let (status, code) = match r.kind {
        Kind::BadRequest => (400, "bad_request"),
        Kind::Unauthorized => (401, "unauthorized"),
        Kind::Forbidden => (403, "forbidden"),
        Kind::NotFound => (404, "not_found"),
        Kind::Conflict => (409, "conflict"),
        Kind::Unavailable => (503, "unavailable"),
        Kind::Timeout => (504, "timeout"),
        Kind::Internal => (500, "internal"),
    };
    if status == 500 {
        log::error!("internal error: {}", r.message);
    }
    Reply::Json(status, json!({"error": r.message, "code": code}))
}

/// The routing table.
pub fn route(ctx: &Ctx, call: &Call) -> Result<Reply, Refusal> {
    let path = call.path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = call.method.as_str();
    match (method, segments.as_slice()) {
        ("GET", ["healthz"]) => Ok(Reply::Json(200, json!({"status": "ok"}))),
        (_, ["api", "v1", "agent", action]) => agent::route(ctx, call, method, action),
        (_, ["api", "v1", ..]) => {
            let who = authenticate(ctx, call)?;
            match (method, &segments[2..]) {
                ("GET", ["status"]) => nodes::status(ctx, require(&who, Role::can_read)?),
                ("GET", ["nodes"]) => nodes::list(ctx, require(&who, Role::can_read)?),
                ("GET", ["nodes", id]) => nodes::show(ctx, require(&who, Role::can_read)?, id),
                ("POST", ["nodes", id, "approve"]) => {
                    nodes::approve(ctx, require(&who, Role::can_admin)?, id)
                }
                ("POST", ["nodes", id, "reject"]) => {
                    nodes::reject(ctx, require(&who, Role::can_admin)?, id)
                }
                ("POST", ["nodes", id, "exec"]) => {
                    exec::exec(ctx, require(&who, Role::can_exec)?, id, call)
                }
                ("POST", ["join-tokens"]) => {
                    nodes::create_join(ctx, require(&who, Role::can_admin)?, &call.body)
                }
                ("POST", ["tokens"]) => {
                    nodes::create_token(ctx, require(&who, Role::can_admin)?, &call.body)
                }
                (_, ["status" | "nodes" | "join-tokens" | "tokens", ..]) => Err(Refusal::new(
                    Kind::BadRequest,
                    format!("{method} is not allowed on {path}"),
                )),
                _ => Err(Refusal::new(Kind::NotFound, format!("no route {path}"))),
            }
        }
        _ => Err(Refusal::new(Kind::NotFound, format!("no route {path}"))),
    }
}

/// Checks the bearer token: EdDSA signature by this gateway, not expired, not revoked.
pub fn authenticate(ctx: &Ctx, call: &Call) -> Result<Verified, Refusal> {
    if let Some(uid) = call.peer_uid {
        return local::authenticate(uid);
    }
    let token = call
        .authorization
        .as_deref()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            Refusal::new(
                Kind::Unauthorized,
                "missing `Authorization: Bearer <token>`",
            )
        })?;
    let verified = ctx
        .pairing
        .tokens
        .verify(token)
        .map_err(|e| Refusal::new(Kind::Unauthorized, format!("invalid token: {e}")))?;
    if ctx.registry.read().revoked_jtis.contains_key(&verified.jti) {
        return Err(Refusal::new(Kind::Unauthorized, "token was revoked"));
    }
    Ok(verified)
}

fn require(who: &Verified, allowed: fn(Role) -> bool) -> Result<&Verified, Refusal> {
    if allowed(who.role) {
        Ok(who)
    } else {
        Err(Refusal::new(
            Kind::Forbidden,
            format!("role {} may not do this", who.role.as_str()),
        ))
    }
}

/// Parses a JSON body into `T`, with a 400 that says what is wrong.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| Refusal::new(Kind::BadRequest, format!("invalid JSON body: {e}")))
}
