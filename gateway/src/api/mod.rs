//! The REST API: tiny_http with a pool of named worker threads, bearer-JWT auth, JSON in and out.
//!
//! Handlers are plain functions from a request (method, path, headers, body) to a [`Reply`], so they
//! are testable without sockets; every one is a row of the route table ([`routes`]). This module owns
//! the sockets, the order of checks (route, body size, token, handler) and the one error shape,
//! `{"error": "...", "code": "..."}`. A panicking handler becomes a 500, not a dead worker.

mod agent;
mod audit;
pub(crate) mod exec;
mod files;
mod health;
mod jobs;
mod local;
mod nodes;
mod openapi;
mod prometheus;
pub mod routes;
mod services;
pub use services::PROTOCOL as SERVICE_STREAM;
mod status;
mod tokens;

pub use exec::DEFAULT_ANSWER_LIMIT;

use std::io::{Read, Write};
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
use crate::tokens::Verified;
use routes::{Caller, Lookup, Permission, Req, Route, ROUTES};

/// Worker threads; an exec holds one for the command's duration.
const WORKERS: usize = 32;

/// What the handlers share.
pub struct Ctx {
    pub registry: Arc<Registry>,
    pub pairing: Arc<Pairing>,
    pub bus: Arc<Bus>,
    pub jobs: Arc<crate::jobs::Jobs>,
    /// Node state: the one owner ([`crate::health`]).
    pub health: Arc<crate::health::Health>,
    pub started: Instant,
    /// The sshd supervisor's status, as JSON.
    pub sshd_status: Box<dyn Fn() -> Value + Send + Sync>,
    pub contact: Value,
    /// Bytes per stream kept in an exec answered whole (`serve --max-answer-bytes`).
    pub answer_limit: usize,
    /// Set when the gateway is stopping: new requests are refused (503) while running ones finish.
    pub draining: std::sync::atomic::AtomicBool,
    /// Ends a node key's sshd access at once (`sshd::cut_off`): key lines, sessions, listeners;
    /// returns how many sessions were killed.
    pub cut_off: Box<CutOff>,
}

/// See [`Ctx::cut_off`].
pub type CutOff =
    dyn Fn(&burrow_core::identity::PublicKey, &[u16]) -> anyhow::Result<usize> + Send + Sync;

/// One HTTP request, detached from its socket.
pub struct Call {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub accept: Option<String>,
    pub body: Vec<u8>,
    /// The declared `Content-Length`, if any (chunked bodies have none).
    pub content_length: Option<u64>,
    /// The caller's Unix uid when it came through the CLI socket (`local.rs`); never set over TCP.
    pub peer_uid: Option<u32>,
    /// The caller's address over TCP (denied requests are counted per source in the audit log).
    pub peer_ip: Option<std::net::IpAddr>,
    /// The `Upgrade` header's protocol (empty if none) when `Connection` asks for an upgrade.
    pub upgrade: Option<String>,
}

/// What relays an upgraded connection, given its read and write halves.
pub type Relay = Box<dyn FnOnce(Box<dyn Read + Send>, Box<dyn Write + Send>) + Send>;

/// What a handler answers.
pub enum Reply {
    Json(u16, Value),
    /// NDJSON lines, streamed as they come; the iterator ends with the last line.
    Stream(Box<dyn Iterator<Item = Value> + Send>),
    /// Raw bytes (`application/octet-stream`, chunked) of a job, named in `X-Burrow-Job`; an error
    /// from the reader ends the response without its final chunk, so the client sees it is cut.
    Bytes {
        job_id: String,
        body: Box<dyn Read + Send>,
    },
    /// `101 Switching Protocols` to `protocol`; `run` then relays on the connection's two halves, on
    /// a thread of its own (the API worker is free again at once).
    Upgrade {
        protocol: &'static str,
        run: Relay,
    },
    /// A text body of its own media type (`/metrics`).
    Text {
        status: u16,
        content_type: &'static str,
        body: String,
    },
}

impl Reply {
    /// The status the answer starts with (streams and bytes start 200).
    fn status(&self) -> u16 {
        match self {
            Reply::Json(status, _) | Reply::Text { status, .. } => *status,
            Reply::Stream(_) | Reply::Bytes { .. } => 200,
            Reply::Upgrade { .. } => 101,
        }
    }
}

/// The running API servers (TCP, and the CLI's Unix socket); dropping it stops the workers.
pub struct Api {
    workers: Vec<(Arc<Server>, JoinHandle<()>)>,
}

/// The bound listeners, between [`Api::bind`] and [`Api::start`].
pub struct Listeners {
    tcp: Server,
    /// With TLS on the API: plain HTTP on 127.0.0.1 for the pairing routes alone, the port that
    /// join strings and sshd's `PermitOpen` name (agents speak plain HTTP inside their SSH channel).
    enroll: Option<Server>,
    local: Server,
    /// `serve --metrics-listen`: `/metrics` without a token ([`Listeners::with_metrics`]).
    metrics: Option<Server>,
}

/// Workers of the `--metrics-listen` port: a scrape is short, and one at a time is what Prometheus
/// sends.
const METRICS_WORKERS: usize = 2;

/// Workers of the plain pairing port beside an HTTPS API (pairing requests are short).
const ENROLL_WORKERS: usize = 4;

/// Workers of the CLI socket; a `gateway exec` holds one for the command's duration.
const LOCAL_WORKERS: usize = 8;

impl Api {
    /// Binds the API on `addr` (HTTPS when `tls` is given) and the CLI socket in `data_dir` (before
    /// anything else starts, so a taken port fails fast). Returns the listeners, the API's address
    /// and the port on 127.0.0.1 where pairing is served in plain HTTP: the API's own without TLS,
    /// a loopback listener of its own with TLS (only the public routes, see [`serve_enroll`]).
    pub fn bind(
        addr: SocketAddr,
        tls: Option<tiny_http::SslConfig>,
        data_dir: &Path,
    ) -> anyhow::Result<(Listeners, SocketAddr, u16)> {
        let limits = http_limits();
        let bind = |addr: SocketAddr, tls: Option<tiny_http::SslConfig>| {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the API on {addr}"))?;
            let server = Server::from_listener_with_limits(listener, tls, limits.clone())
                .map_err(|e| anyhow::anyhow!("serving the API on {addr}: {e}"))?;
            let local = server
                .server_addr()
                .to_ip()
                .context("API listener has no IP address")?;
            anyhow::Ok((server, local))
        };
        let with_tls = tls.is_some();
        let (server, local) = bind(addr, tls)?;
        let (enroll, enroll_port) = if with_tls {
            let (enroll, at) = bind(SocketAddr::from(([127, 0, 0, 1], 0)), None)?;
            (Some(enroll), at.port())
        } else {
            (None, local.port())
        };
        let socket = local::bind(&crate::runinfo::socket_path(data_dir), limits)?;
        Ok((
            Listeners {
                tcp: server,
                enroll,
                local: socket,
                metrics: None,
            },
            local,
            enroll_port,
        ))
    }

    pub fn start(listeners: Listeners, ctx: Arc<Ctx>) -> anyhow::Result<Api> {
        let mut workers = Vec::new();
        let servers = [
            Some((listeners.tcp, WORKERS, "api", serve as fn(&Ctx, Request))),
            listeners.enroll.map(|e| {
                (
                    e,
                    ENROLL_WORKERS,
                    "api-enroll",
                    serve_enroll as fn(&Ctx, Request),
                )
            }),
            Some((listeners.local, LOCAL_WORKERS, "api-local", serve)),
            listeners.metrics.map(|m| {
                (
                    m,
                    METRICS_WORKERS,
                    "metrics",
                    prometheus::serve_metrics as fn(&Ctx, Request),
                )
            }),
        ];
        for (server, count, name, handle) in servers.into_iter().flatten() {
            let server = Arc::new(server);
            for i in 0..count {
                let (s, ctx) = (server.clone(), ctx.clone());
                let worker = std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        // `recv` returns Err once `unblock` is called on shutdown.
                        while let Ok(request) = s.recv() {
                            handle(&ctx, request);
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

/// The plain pairing port next to an HTTPS API: the routes anyone may call (pairing, `/healthz`),
/// nothing that takes a token, so no token travels there in the clear.
fn serve_enroll(ctx: &Ctx, request: Request) {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or_default();
    let method = request.method().as_str().to_uppercase();
    match routes::find(ROUTES, &method, path) {
        Lookup::Route(route, _) if route.permission == Permission::Public => serve(ctx, request),
        _ => {
            let refusal = Refusal::new(
                Kind::NotFound,
                format!("{method} {path} is not served on the pairing port; the API is HTTPS"),
            );
            respond(request, error_reply(&refusal));
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
    let call = Call {
        method: request.method().as_str().to_uppercase(),
        path: request.url().to_string(),
        authorization: header("Authorization"),
        accept: header("Accept"),
        body: Vec::new(),
        content_length: request.body_length().map(|n| n as u64),
        peer_uid: request.peer_credentials().map(|c| c.uid),
        peer_ip: request.remote_addr().map(|a| a.ip()),
        // As tiny_http decides it (which then hands over the raw stream): `Connection` alone.
        upgrade: header("Connection")
            .filter(|c| c.to_ascii_lowercase().contains("upgrade"))
            .map(|_| header("Upgrade").unwrap_or_default()),
    };
    let declared = request.body_length();
    let reply = dispatch(ctx, call, declared, request.as_reader());
    respond(request, reply);
}

/// Writes `reply` as the answer to `request`.
fn respond(request: Request, reply: Reply) {
    let result = match reply {
        Reply::Json(status, value) => {
            let body = serde_json::to_vec(&value).expect("JSON serializes");
            let mut response = Response::from_data(body)
                .with_status_code(status)
                .with_header(content_type("application/json"));
            if let Some(allow) = value.get("allow").and_then(Value::as_str) {
                if status == 405 {
                    response.add_header(
                        Header::from_bytes(&b"Allow"[..], allow.as_bytes()).expect("valid header"),
                    );
                }
            }
            request.respond(response)
        }
        Reply::Stream(lines) => stream(request, lines),
        Reply::Upgrade { protocol, run } => {
            let (up, down) =
                request.upgrade_split(protocol, Response::empty(tiny_http::StatusCode(101)));
            match std::thread::Builder::new()
                .name("stream".into())
                .spawn(move || run(up, down))
            {
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Reply::Text {
            status,
            content_type: media,
            body,
        } => request.respond(
            Response::from_string(body)
                .with_status_code(status)
                .with_header(content_type(media)),
        ),
        Reply::Bytes { job_id, body } => {
            let headers = vec![
                content_type("application/octet-stream"),
                Header::from_bytes(&b"X-Burrow-Job"[..], job_id.as_bytes()).expect("hex header"),
            ];
            request.respond(Response::new(
                tiny_http::StatusCode(200),
                headers,
                body,
                None,
                None,
            ))
        }
    };
    if let Err(e) = result {
        log::debug!("writing response: {e}");
    }
}

/// Routes one request: table lookup (404/405), body size against the route's limit (413, from the
/// declared length before anything is read, then from what arrives), the route's permission, then
/// the handler (a panic there becomes a 500). An unread body is drained by tiny_http, not buffered.
/// Each answer is counted for `/metrics` under its route's pattern (never the raw path, so the
/// series stay bounded).
pub fn dispatch(ctx: &Ctx, call: Call, declared: Option<usize>, body: &mut dyn Read) -> Reply {
    let method = call.method.clone();
    let (route, reply) = route_and_run(ctx, call, declared, body);
    let pattern = route.map_or(crate::metrics::counters::UNMATCHED, |r| r.pattern);
    crate::metrics::counters::global().request(&method, pattern, reply.status());
    reply
}

fn route_and_run(
    ctx: &Ctx,
    mut call: Call,
    declared: Option<usize>,
    body: &mut dyn Read,
) -> (Option<&'static Route>, Reply) {
    if ctx.draining.load(std::sync::atomic::Ordering::Relaxed) {
        let refusal = Refusal::new(
            Kind::Unavailable,
            "the gateway is shutting down; try again once it is back",
        );
        return (None, error_reply(&refusal));
    }
    let path = call.path.split('?').next().unwrap_or("").to_string();
    let (route, params) = match routes::find(ROUTES, &call.method, &path) {
        Lookup::Route(route, params) => (route, params),
        Lookup::MethodNotAllowed(allowed) => {
            let allow = allowed.join(", ");
            let refusal = Refusal::new(
                Kind::MethodNotAllowed,
                format!("{} is not allowed on {path}; use {allow}", call.method),
            );
            let mut body = error_body(&refusal);
            body["allow"] = Value::from(allow);
            return (None, Reply::Json(refusal.kind.status(), body));
        }
        Lookup::NotFound => {
            let refusal = Refusal::new(Kind::NotFound, format!("no route {path}"));
            return (None, error_reply(&refusal));
        }
    };
    // After an upgrade request's head comes the new protocol's stream, not a body (tiny_http puts
    // no timeout on it): never read it here, on any route, or a worker would wait on it for good.
    let mut nothing = std::io::empty();
    let body: &mut dyn Read = if call.upgrade.is_some() {
        &mut nothing
    } else {
        body
    };
    if route.body_limit != routes::STREAMED {
        if let Err(r) = read_body(route, declared, body, &mut call.body) {
            return (Some(route), error_reply(&r));
        }
    }
    let reply = authorize(ctx, route, &call)
        .inspect_err(|r| count_denied(ctx, route, &call, r))
        .and_then(|caller| run_handler(ctx, route, &call, params, caller, body))
        .unwrap_or_else(|r| error_reply(&r));
    (Some(route), reply)
}

fn read_body(
    route: &Route,
    declared: Option<usize>,
    body: &mut dyn Read,
    into: &mut Vec<u8>,
) -> Result<(), Refusal> {
    if let Some(len) = declared {
        routes::check_body(route, len as u64)?;
    }
    let limit = route.body_limit as u64;
    let n = body
        .take(limit + 1)
        .read_to_end(into)
        .map_err(|e| Refusal::new(Kind::BadRequest, format!("reading body: {e}")))?;
    routes::check_body(route, n as u64)
}

fn authorize(ctx: &Ctx, route: &Route, call: &Call) -> Result<Caller, Refusal> {
    if route.permission == Permission::Public {
        return Ok(Caller { token: None });
    }
    let who = authenticate(ctx, call)?;
    if !route.permission.allows(who.role) {
        return Err(Refusal::new(
            Kind::Forbidden,
            format!(
                "{} {} needs {}; this token is {}",
                route.method,
                route.pattern,
                route.permission.roles(),
                who.role.as_str()
            ),
        ));
    }
    Ok(Caller { token: Some(who) })
}

/// A 401/403 at the route check goes to the audit log's counts (one entry per source, route and
/// reason per interval, never one per request: a flood of bad tokens costs no fsync).
fn count_denied(ctx: &Ctx, route: &Route, call: &Call, refusal: &Refusal) {
    if !matches!(refusal.kind, Kind::Unauthorized | Kind::Forbidden) {
        return;
    }
    let source = match (call.peer_uid, call.peer_ip) {
        (Some(uid), _) => local::actor(uid),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => "unknown".to_string(),
    };
    let route = format!("{} {}", route.method, route.pattern);
    ctx.pairing
        .audit()
        .denied(&source, &route, refusal.kind.status(), &refusal.message);
}

fn run_handler(
    ctx: &Ctx,
    route: &Route,
    call: &Call,
    params: Vec<&str>,
    caller: Caller,
    body: &mut dyn Read,
) -> Result<Reply, Refusal> {
    let req = Req {
        call,
        params,
        caller,
        body: std::cell::RefCell::new(body),
    };
    catch_unwind(AssertUnwindSafe(|| (route.handler)(ctx, &req))).unwrap_or_else(|_| {
        log::error!("handler for {} {} panicked", call.method, call.path);
        Err(Refusal::new(
            Kind::Internal,
            "internal error (handler panicked)",
        ))
    })
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

/// The one error shape, `{"error": …, "code": …}`, of answers and of NDJSON `error` events.
pub fn error_body(r: &Refusal) -> Value {
    if r.kind == Kind::Internal {
        log::error!("internal error: {}", r.message);
    }
    json!({"error": r.message, "code": r.kind.code()})
}

pub fn error_reply(r: &Refusal) -> Reply {
    Reply::Json(r.kind.status(), error_body(r))
}

/// The token of an `Authorization: Bearer <token>` header, or a refusal that says what is wrong.
fn bearer(header: Option<&str>) -> Result<&str, Refusal> {
    let unauthorized = |m: &str| Refusal::new(Kind::Unauthorized, m);
    let header = header
        .map(str::trim)
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>`"))?;
    let (scheme, token) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized(
            "the Authorization header lacks the `Bearer` scheme: send `Authorization: Bearer <token>`",
        ));
    }
    match token.trim() {
        "" => Err(unauthorized("`Authorization: Bearer` carries no token")),
        token => Ok(token),
    }
}

/// Checks the bearer token: EdDSA signature by this gateway, not expired, not revoked.
pub fn authenticate(ctx: &Ctx, call: &Call) -> Result<Verified, Refusal> {
    if let Some(uid) = call.peer_uid {
        return local::authenticate(uid);
    }
    let token = bearer(call.authorization.as_deref())?;
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

/// The query string of `path` as decoded `(key, value)` pairs (`+` is a space, `%XX` a byte).
pub fn query(path: &str) -> Result<Vec<(String, String)>, Refusal> {
    let Some((_, q)) = path.split_once('?') else {
        return Ok(Vec::new());
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, Refusal> {
    let bad = || Refusal::new(Kind::BadRequest, format!("bad escape in query {text:?}"));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3).ok_or_else(bad)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The API listener's bounds, which keep one client from holding memory, threads or workers (issue 6
/// §2; our tiny_http patch, gateway/vendor/tiny_http/PATCHES.md). Bodies up to the largest route
/// limit are read by the connection's thread before a worker sees the request, so stalled uploads
/// hold no worker. The body limit itself is the route's (413 with the API's JSON, from the declared
/// length before any byte is read: `dispatch`), so tiny_http sets none. Also the fuzz target
/// `http`'s (core/fuzz).
pub fn http_limits() -> tiny_http::Limits {
    let mut limits = tiny_http::Limits::default();
    limits.max_body_bytes = None;
    limits.buffer_body_up_to = routes::MAX_BODY_LIMIT;
    // A client refused for a body a few times too large (a 1 MiB command) still gets to read its
    // 413 instead of a broken pipe: its body is drained (fixed buffer, on the connection's thread)
    // rather than the connection closed under it.
    limits.drain_limit = 4 << 20;
    // A job's streamed stdin (a terminal's keystrokes, `gateway exec`'s pipe) reaches the handler
    // chunk by chunk and may pause for as long as its user does.
    limits.streamed_body = Some(is_stdin_stream);
    limits
}

/// `PUT /api/v1/jobs/{id}/stdin` (by path: tiny_http asks before any routing).
fn is_stdin_stream(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    path.starts_with("/api/v1/jobs/") && path.ends_with("/stdin")
}

/// Parses a JSON body (an object; empty reads as `{}`) into `T`, with a 400 that says what is wrong.
///
/// Only an object: serde also fills a struct from an array, field by field in declaration order, so
/// `[null, "id"]` was an exec body with `command: "id"` (found by schemathesis: a join-token body
/// of `[null, null]` answered 201). Every body of the API is an object.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let body = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => &b"{}"[..],
        Some(b'{') => body,
        Some(_) => {
            return Err(Refusal::new(
                Kind::BadRequest,
                "invalid JSON body: expected an object ({…})",
            ))
        }
    };
    serde_json::from_slice(body)
        .map_err(|e| Refusal::new(Kind::BadRequest, format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let q = query("/api/v1/jobs?node=pi%2D1&state=failed&x=a+b&flag").unwrap();
        assert_eq!(
            q,
            vec![
                ("node".into(), "pi-1".into()),
                ("state".into(), "failed".into()),
                ("x".into(), "a b".into()),
                ("flag".into(), "".into())
            ]
        );
        assert!(query("/x?a=%zz").is_err());
        assert!(query("/x?a=%ff").is_err());
        assert!(query("/x").unwrap().is_empty());
    }

    /// Regression (schemathesis): a JSON array was read as a body struct, positionally.
    #[test]
    fn json_array_bodies_are_not_read_positionally() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code, reason = "only parsed")]
        struct Body {
            #[serde(default)]
            ttl: Option<String>,
            #[serde(default)]
            uses: Option<u32>,
        }
        // What serde alone does, and why the check is needed.
        assert!(serde_json::from_slice::<Body>(b"[null, 3]").is_ok());
        for body in [&b"[null, 3]"[..], b" [] ", b"null", b"3", b"\"x\""] {
            let e = parse_body::<Body>(body).unwrap_err();
            assert_eq!(e.kind, Kind::BadRequest, "{body:?}");
            assert!(e.message.contains("object"), "{}", e.message);
        }
        assert!(parse_body::<Body>(b"  ").is_ok());
        assert_eq!(parse_body::<Body>(b" {\"uses\": 3}").unwrap().uses, Some(3));
    }

    /// Regression: a header without `Bearer ` was reported as a missing header.
    #[test]
    fn authorization_without_the_bearer_scheme_says_so() {
        assert_eq!(bearer(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(Some("bearer  abc ")).unwrap(), "abc");
        let msg = |h| bearer(h).unwrap_err().message;
        assert!(msg(Some("abc.def.ghi")).contains("lacks the `Bearer` scheme"));
        assert!(msg(Some("Basic dXNlcg==")).contains("lacks the `Bearer` scheme"));
        assert!(msg(Some("Bearer ")).contains("no token"));
        assert!(msg(None).contains("missing"));
    }
}
