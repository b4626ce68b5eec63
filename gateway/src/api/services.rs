//! `POST /api/v1/nodes/{id}/services/{name}/connect`: a byte stream to a service the node declares
//! (protocol doc, "Services"), relayed over an HTTP upgrade (`Connection: Upgrade`, `Upgrade:
//! burrow-stream`). The gateway opens the stream on the node's link and waits for the agent's
//! answer first, so a refusal is an ordinary JSON error (404 not declared, 403 turned off, 429 too
//! many streams, 502 unreachable, 503 offline); only a connected stream is answered `101
//! Switching Protocols`, after which the connection carries the service's bytes both ways.
//!
//! Two threads per stream: `stream-<node>` writes what the node sends to the client and returns its
//! credit; `stream-<node>-up` reads the client within the credit the agent grants. The client's
//! end of input (its write half shut down) is sent as `Eof`; the node's `Eof` (the service closed its
//! side) ends the client connection. Audited: `service.open` before the 101, `service.end` with the
//! bytes each way and the duration.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use burrow_core::protocol::{service_refusal, stream, MAX_CHUNK};
use serde_json::json;

use super::routes::Req;
use super::{Ctx, Reply};
use crate::audit::Actor;
use crate::bus::{Event, Request};
use crate::refusal::{Kind, Refusal};

/// The protocol name in `Upgrade:`.
pub const PROTOCOL: &str = "burrow-stream";
/// How long the agent may take to connect to the service before the caller gets a 504.
const CONNECT_WAIT: Duration = Duration::from_secs(15);
/// Service streams the gateway relays at once at most (each holds two threads and an API
/// connection); more are answered 429.
pub const MAX_STREAMS: usize = 256;

static OPEN: AtomicUsize = AtomicUsize::new(0);

/// One stream's place under [`MAX_STREAMS`].
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        OPEN.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_STREAMS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn connect(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let (node, service) = (req.param(0).to_string(), req.param(1).to_string());
    if !req
        .call
        .upgrade
        .as_deref()
        .is_some_and(|u| u.eq_ignore_ascii_case(PROTOCOL))
    {
        return Err(Refusal::new(
            Kind::BadRequest,
            format!(
                "this route relays a byte stream: send `Connection: Upgrade` and `Upgrade: {PROTOCOL}` \
                 (`gateway connect NODE SERVICE` does)"
            ),
        ));
    }
    if !ctx.registry.read().nodes.contains_key(&node) {
        return Err(Refusal::new(Kind::NotFound, format!("no node {node:?}")));
    }
    let slot = Slot::take().ok_or_else(|| {
        Refusal::new(
            Kind::TooMany,
            format!("the gateway already relays {MAX_STREAMS} service streams"),
        )
    })?;
    let mut request = ctx.bus.open_service(&node, &service)?;
    let deadline = Instant::now() + CONNECT_WAIT;
    let credit = match request.next(deadline) {
        Some(Event::Credit { bytes, .. }) => bytes,
        Some(Event::Failed(message)) => return Err(refusal_of(&node, &service, &message)),
        Some(Event::Lost(why)) => {
            return Err(Refusal::new(
                Kind::NodeLost,
                format!("the link to {node} went down: {why}"),
            ))
        }
        Some(other) => {
            request.cancel();
            return Err(Refusal::new(
                Kind::Internal,
                format!("node {node} answered the stream with {other:?}"),
            ));
        }
        None => {
            request.cancel();
            return Err(Refusal::new(
                Kind::Timeout,
                format!(
                    "node {node} did not connect to service {service} within {}s",
                    CONNECT_WAIT.as_secs()
                ),
            ));
        }
    };
    let audit = ctx.pairing.audit().clone();
    let actor: Actor = (&req.caller).into();
    audit.record(
        actor.clone(),
        "service.open",
        &node,
        json!({"node": node, "service": service}),
    );
    let run = move |up: Box<dyn Read + Send>, down: Box<dyn Write + Send>| {
        let started = Instant::now();
        let (sent, received) = relay(&node, request, credit, up, down);
        // Queued, not waited for: the stream is over, nobody waits for its answer.
        drop(audit.queue(
            actor,
            "service.end",
            &node,
            json!({
                "node": node,
                "service": service,
                "bytes_up": sent,
                "bytes_down": received,
                "duration_ms": started.elapsed().as_millis() as u64,
            }),
        ));
        drop(slot);
    };
    Ok(Reply::Upgrade {
        protocol: PROTOCOL,
        run: Box::new(run),
    })
}

/// The agent's `Failed` as the caller's error (protocol doc, "Services").
fn refusal_of(node: &str, service: &str, message: &str) -> Refusal {
    let code = message
        .strip_prefix("refused (")
        .and_then(|rest| rest.split_once("): "));
    match code {
        Some((service_refusal::NOT_DECLARED, why)) => {
            Refusal::new(Kind::NotFound, format!("node {node}: {why}"))
        }
        Some((service_refusal::TURNED_OFF, why)) => {
            Refusal::new(Kind::Forbidden, format!("node {node}: {why}"))
        }
        Some((service_refusal::TOO_MANY, why)) => {
            Refusal::new(Kind::TooMany, format!("node {node}: {why}"))
        }
        _ if message.starts_with(service_refusal::UNREACHABLE) => Refusal::new(
            Kind::BadGateway,
            format!("node {node} could not reach service {service}: {message}"),
        ),
        _ => Refusal::new(Kind::ExecFailed, format!("node {node}: {message}")),
    }
}

/// Credit the agent granted for the client → node direction.
struct Window {
    credit: Mutex<(u64, bool)>,
    changed: Condvar,
}

/// Relays until both directions ended or either side fails; returns the bytes sent to the node
/// and received from it.
fn relay(
    node: &str,
    mut request: Request,
    credit: u32,
    mut up: Box<dyn Read + Send>,
    mut down: Box<dyn Write + Send>,
) -> (u64, u64) {
    let window = Arc::new(Window {
        credit: Mutex::new((u64::from(credit), false)),
        changed: Condvar::new(),
    });
    let sender = request.handle();
    let uploader = {
        let window = window.clone();
        std::thread::Builder::new()
            .name(format!("stream-{node}-up"))
            .spawn(move || {
                let mut sent = 0u64;
                let mut buf = vec![0u8; MAX_CHUNK];
                loop {
                    let room = {
                        let mut w = window.credit.lock().unwrap_or_else(PoisonError::into_inner);
                        while w.0 == 0 && !w.1 {
                            w = window
                                .changed
                                .wait(w)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                        if w.1 {
                            return sent;
                        }
                        w.0.min(MAX_CHUNK as u64) as usize
                    };
                    match up.read(&mut buf[..room]) {
                        Ok(0) => {
                            let _ = sender.send_eof(stream::FIRST_OPENED);
                            return sent;
                        }
                        Ok(n) => {
                            if sender
                                .send_data(stream::FIRST_OPENED, buf[..n].to_vec())
                                .is_err()
                            {
                                return sent;
                            }
                            sent += n as u64;
                            window
                                .credit
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .0 -= n as u64;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            let _ = sender.reset(stream::FIRST_OPENED, "the client went away");
                            return sent;
                        }
                    }
                }
            })
    };
    let mut received = 0u64;
    loop {
        let Some(event) = request.next(Instant::now() + Duration::from_secs(3600)) else {
            continue;
        };
        match event {
            Event::Data { data, .. } => {
                if down.write_all(&data).and_then(|()| down.flush()).is_err() {
                    // The client stopped reading: abort the stream, the node's side too.
                    request.reset(stream::FIRST_OPENED, "the client went away");
                    break;
                }
                received += data.len() as u64;
                request.credit(stream::FIRST_OPENED, data.len());
            }
            Event::Credit { bytes, .. } => {
                window
                    .credit
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .0 += u64::from(bytes);
                window.changed.notify_all();
            }
            // The service closed its side: so does the client's connection (its write half).
            Event::Eof { .. } => {
                drop(std::mem::replace(&mut down, Box::new(std::io::sink())));
            }
            Event::Exit(_) | Event::Reset { .. } | Event::Failed(_) | Event::Lost(_) => break,
            other => log::debug!("stream to {node}: ignoring {other:?}"),
        }
    }
    // Ends the uploader: it is either blocked on credit (woken here) or reading the client, whose
    // connection ends when both halves are dropped.
    window
        .credit
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .1 = true;
    window.changed.notify_all();
    drop(down);
    let sent = match uploader {
        Ok(t) => t.join().unwrap_or(0),
        Err(e) => {
            log::warn!("stream to {node}: starting the upload thread: {e}");
            0
        }
    };
    (sent, received)
}
