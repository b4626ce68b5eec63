//! The node's declared services and the streams to them (protocol doc, "Services"): `agent run
//! --service ssh=127.0.0.1:22 --service web=unix:/run/web.sock`. Nothing else on the node is
//! reachable through burrow; the node's owner turns services off in the policy file (`services =
//! false`, `services_off = ["web"]`, read again on SIGHUP).
//!
//! A stream is a request opened with `Open{stream: FIRST_OPENED, purpose: Service}`, served on its
//! own thread (`svc-<id>`): refused, or connected (bounded by [`CONNECT_TIMEOUT`]) and answered with
//! the first `Credit`. Then that thread writes what the gateway sends to the socket (returning credit
//! for each chunk written, so at most [`INITIAL_WINDOW`] bytes wait in memory) and a second one
//! (`svc-<id>-rx`) sends what the service writes within the gateway's credit. `Eof` from the gateway
//! shuts down the socket's write half; the service closing its side sends `Eof`; `Exit` (code 0) once
//! both have ended. `Reset`, `Cancel` or the connection's end shut the socket down at once.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use burrow_core::api::ServiceInfo;
use burrow_core::protocol::{
    service_refusal, stream, ExitStatus, Message, ServiceParams, INITIAL_WINDOW, MAX_CHUNK,
};

use crate::job::Sink;

/// The stream a service's bytes travel on (both ways).
pub const STREAM: u32 = stream::FIRST_OPENED;
/// How long connecting to a service's address may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `--max-streams` when not given.
pub const DEFAULT_MAX_STREAMS: usize = 32;

/// Where a service listens on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `host:port`, resolved when a stream opens.
    Tcp(String),
    /// `unix:/path`.
    Unix(PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => f.write_str(a),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One `--service NAME=ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub address: Address,
}

/// Parses `NAME=ADDR` (`--service`): a name of 1 to 32 of `a-z 0-9 _ -` starting with a letter or
/// digit, and `host:port` or `unix:/absolute/path`.
pub fn parse_declared(text: &str) -> Result<Declared, String> {
    let Some((name, addr)) = text.split_once('=') else {
        return Err(format!(
            "{text:?}: expected NAME=ADDR, e.g. ssh=127.0.0.1:22 or web=unix:/run/web.sock"
        ));
    };
    let good_name = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !good_name {
        return Err(format!(
            "service name {name:?}: 1 to 32 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ));
    }
    let address = if let Some(path) = addr.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(format!(
                "service {name}: {addr:?}: a Unix socket path must be absolute"
            ));
        }
        Address::Unix(PathBuf::from(path))
    } else {
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Address::Tcp(addr.to_string())
            }
            _ => {
                return Err(format!(
                    "service {name}: {addr:?}: expected host:port (e.g. 127.0.0.1:22) or unix:/path"
                ))
            }
        }
    };
    Ok(Declared {
        name: name.to_string(),
        address,
    })
}

/// The node's declared services and the streams open to them.
pub struct Services {
    declared: Vec<Declared>,
    max_streams: usize,
    open: Arc<AtomicUsize>,
}

impl Services {
    /// At most `max_streams` streams at once; names must be unique.
    pub fn new(declared: Vec<Declared>, max_streams: usize) -> anyhow::Result<Services> {
        for (i, d) in declared.iter().enumerate() {
            if declared[..i].iter().any(|e| e.name == d.name) {
                bail!("service {:?} is declared twice", d.name);
            }
        }
        Ok(Services {
            declared,
            max_streams,
            open: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// What the heartbeat lists, with `enabled` as the policy in force says.
    pub fn info(&self) -> Vec<ServiceInfo> {
        let policy = crate::policy::current();
        self.declared
            .iter()
            .map(|d| ServiceInfo {
                name: d.name.clone(),
                target: d.address.to_string(),
                enabled: policy.check_service(&d.name).is_ok(),
            })
            .collect()
    }

    /// Streams open now.
    #[cfg(test)]
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The service a stream asks for, if it may be opened now: a `Failed` message otherwise.
    fn admit(&self, params: &str) -> Result<(Declared, Slot), String> {
        let params: ServiceParams =
            serde_json::from_str(params).map_err(|e| format!("bad service stream params: {e}"))?;
        let Some(declared) = self.declared.iter().find(|d| d.name == params.service) else {
            let names: Vec<&str> = self.declared.iter().map(|d| d.name.as_str()).collect();
            return Err(format!(
                "refused ({}): this node declares no service {:?} ({})",
                service_refusal::NOT_DECLARED,
                params.service,
                if names.is_empty() {
                    "it declares none".to_string()
                } else {
                    format!("it has: {}", names.join(", "))
                }
            ));
        };
        if let Err(refused) = crate::policy::current().check_service(&declared.name) {
            return Err(format!(
                "refused ({}): {}",
                service_refusal::TURNED_OFF,
                refused.detail
            ));
        }
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_streams).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(format!(
                "refused ({}): the node already carries {} service streams (its --max-streams)",
                service_refusal::TOO_MANY,
                self.max_streams
            ));
        }
        Ok((declared.clone(), Slot(self.open.clone())))
    }
}

/// One stream's place under `--max-streams`; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the connection tells a running stream.
#[derive(Default)]
pub struct Flow {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Chunks from the gateway, not yet written to the socket.
    inbound: VecDeque<Vec<u8>>,
    /// Bytes the gateway may still send (what we granted minus what came).
    granted: u64,
    /// The gateway sent `Eof`.
    inbound_ended: bool,
    /// Credit the gateway gave for our sending.
    credit: u64,
    /// `Reset`, `Cancel` or the connection's end.
    aborted: bool,
    /// Reading from the service failed (it reset the connection): the writer stops too.
    broken: bool,
}

impl Flow {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Data` from the gateway: more than it was granted is a protocol error.
    pub fn data(&self, data: Vec<u8>) -> Result<(), String> {
        let mut s = self.lock();
        if s.inbound_ended {
            return Err("data after eof on a service stream".into());
        }
        let n = data.len() as u64;
        if n > s.granted {
            return Err(format!(
                "{n} bytes on a service stream with {} bytes of credit",
                s.granted
            ));
        }
        s.granted -= n;
        s.inbound.push_back(data);
        self.changed.notify_all();
        Ok(())
    }

    /// `Eof` from the gateway.
    pub fn eof(&self) {
        self.lock().inbound_ended = true;
        self.changed.notify_all();
    }

    /// `Credit` from the gateway.
    pub fn add_credit(&self, bytes: u32) {
        self.lock().credit += u64::from(bytes);
        self.changed.notify_all();
    }

    /// `Reset`, `Cancel`, or the connection is gone.
    pub fn abort(&self) {
        self.lock().aborted = true;
        self.changed.notify_all();
    }
}

/// A connected socket to a service.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn connect(address: &Address) -> io::Result<Conn> {
        match address {
            Address::Tcp(addr) => {
                let deadline = Instant::now() + CONNECT_TIMEOUT;
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for a in addr.to_socket_addrs()? {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match TcpStream::connect_timeout(&a, left) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            return Ok(Conn::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Address::Unix(path) => UnixStream::connect(path).map(Conn::Unix),
        }
    }

    fn try_clone(&self) -> io::Result<Conn> {
        match self {
            Conn::Tcp(s) => s.try_clone().map(Conn::Tcp),
            Conn::Unix(s) => s.try_clone().map(Conn::Unix),
        }
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves stream request `id` to its end; returns its last frame (`None` after an abort, which
/// needs none, or when the connection is gone).
pub fn serve(
    id: u32,
    params: &str,
    services: &Services,
    flow: &Arc<Flow>,
    sink: &Sink,
) -> Option<Message> {
    let started = Instant::now();
    let (declared, _slot) = match services.admit(params) {
        Ok(admitted) => admitted,
        Err(message) => {
            log::info!("service stream {id}: {message}");
            return Some(Message::Failed { id, message });
        }
    };
    let conn = match Conn::connect(&declared.address) {
        Ok(conn) => conn,
        Err(e) => {
            let message = format!(
                "{}: service {} at {}: {e}",
                service_refusal::UNREACHABLE,
                declared.name,
                declared.address
            );
            log::warn!("service stream {id}: {message}");
            return Some(Message::Failed { id, message });
        }
    };
    log::info!(
        "service stream {id}: connected to {} at {}",
        declared.name,
        declared.address
    );
    flow.lock().granted = u64::from(INITIAL_WINDOW);
    flow.lock().credit = u64::from(INITIAL_WINDOW);
    if !sink(Message::Credit {
        id,
        stream: STREAM,
        bytes: INITIAL_WINDOW,
    }) {
        conn.shutdown(Shutdown::Both);
        return None;
    }
    let reader = match conn.try_clone() {
        Ok(r) => r,
        Err(e) => {
            conn.shutdown(Shutdown::Both);
            return Some(Message::Failed {
                id,
                message: format!("duplicating the service socket: {e}"),
            });
        }
    };
    let outbound = {
        let (flow, sink) = (flow.clone(), sink.clone());
        std::thread::Builder::new()
            .name(format!("svc-{id}-rx"))
            .stack_size(crate::exec::HELPER_STACK)
            .spawn(move || send_output(id, reader, &flow, &sink))
    };
    let outbound = match outbound {
        Ok(t) => t,
        Err(e) => {
            conn.shutdown(Shutdown::Both);
            return Some(Message::Failed {
                id,
                message: format!("starting a thread for the stream: {e}"),
            });
        }
    };
    let inbound_ok = write_input(id, conn, flow, sink);
    // The writer ended (gateway's Eof, an abort or a write error): wait for the other direction.
    let outbound_ok = outbound.join().unwrap_or(false);
    let aborted = flow.lock().aborted;
    log::info!(
        "service stream {id} to {} ended after {:.1}s{}",
        declared.name,
        started.elapsed().as_secs_f32(),
        if aborted { " (reset)" } else { "" }
    );
    if aborted {
        return None;
    }
    if inbound_ok && outbound_ok {
        Some(Message::Exit {
            id,
            status: ExitStatus {
                exit_code: Some(0),
                signal: None,
                timed_out: false,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            },
        })
    } else {
        Some(Message::Reset {
            id,
            stream: STREAM,
            reason: format!("the connection to service {} failed", declared.name),
        })
    }
}

/// Gateway → service: writes chunks as they come, returning credit for each; shuts down the write
/// half at the gateway's `Eof`. `false` on a write error (the service went away). An abort shuts
/// the whole socket down, which also ends the other direction's read.
fn write_input(id: u32, mut conn: Conn, flow: &Flow, sink: &Sink) -> bool {
    loop {
        let chunk = {
            let mut s = flow.lock();
            loop {
                if s.aborted || s.broken {
                    drop(s);
                    conn.shutdown(Shutdown::Both);
                    return false;
                }
                if let Some(chunk) = s.inbound.pop_front() {
                    break chunk;
                }
                if s.inbound_ended {
                    drop(s);
                    conn.shutdown(Shutdown::Write);
                    return true;
                }
                s = flow.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
        };
        if let Err(e) = conn.write_all(&chunk) {
            log::debug!("service stream {id}: writing to the service: {e}");
            conn.shutdown(Shutdown::Both);
            flow.lock().inbound.clear();
            return false;
        }
        let bytes = chunk.len() as u32;
        flow.lock().granted += u64::from(bytes);
        if !sink(Message::Credit {
            id,
            stream: STREAM,
            bytes,
        }) {
            flow.abort();
        }
    }
}

/// Service → gateway: reads within the gateway's credit and sends `Data`, then `Eof` when the
/// service closes its side. `false` on a read error (reset) or when the connection is gone.
fn send_output(id: u32, mut conn: Conn, flow: &Flow, sink: &Sink) -> bool {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let room = {
            let mut s = flow.lock();
            loop {
                if s.aborted {
                    return false;
                }
                if s.credit > 0 {
                    break s.credit.min(MAX_CHUNK as u64) as usize;
                }
                s = flow.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let n = match conn.read(&mut buf[..room]) {
            // After an abort the socket was shut down under us: that end is no `Eof`.
            Ok(0) if flow.lock().aborted => return false,
            Ok(0) => return sink(Message::Eof { id, stream: STREAM }),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("service stream {id}: reading from the service: {e}");
                conn.shutdown(Shutdown::Both);
                flow.lock().broken = true;
                flow.changed.notify_all();
                return false;
            }
        };
        flow.lock().credit -= n as u64;
        if !sink(Message::Data {
            id,
            stream: STREAM,
            data: buf[..n].to_vec(),
        }) {
            flow.abort();
            return false;
        }
    }
}

#[cfg(test)]
mod tests;
