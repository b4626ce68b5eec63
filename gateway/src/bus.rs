//! The command bus: one secure channel per online node ([`burrow_core::secure`]), through its
//! reverse-forwarded port, multiplexing many requests by id.
//!
//! Each link has one reader thread ("link-<node>") that owns the channel's `Opener` and demultiplexes
//! frames to the waiting jobs, and a writer mutex around the socket and the `Sealer`, so frames from
//! concurrent jobs never interleave and their nonces stay in order. Output credit is returned per
//! stream as a job's consumer takes output, so a slow HTTP client stalls only its own command on the
//! node, never the link. Dials are made from short-lived threads ("dial-<node>"), at most one per node
//! and port at a time, and only to the node's two registered ports: never to a port a node merely
//! reports. What happens on the links (up, down, heartbeats, failed handshakes) is told to the
//! health module ([`Bus::on_event`]), which decides node state; the bus itself only knows "linked".

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burrow_core::identity::Identity;
#[cfg(doc)]
use burrow_core::protocol::bye;
use burrow_core::protocol::{stream, ExecSpec, ExitStatus, Message};
use burrow_core::secure::{Opener, Sealer};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use crate::refusal::{Kind, Refusal};
use crate::registry::{now, rfc3339, Approval, Registry};

/// What a request on a node's link reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Bytes on another stream of the request (a file being read).
    Data {
        stream: u32,
        data: Vec<u8>,
    },
    /// The agent sends no more on `stream`.
    Eof {
        stream: u32,
    },
    /// The agent aborted `stream`.
    Reset {
        stream: u32,
        reason: String,
    },
    /// The agent took `bytes` more of what the gateway sends on `stream` (stdin, a file).
    Credit {
        stream: u32,
        bytes: u32,
    },
    Exit(ExitStatus),
    /// The agent could not run it.
    Failed(String),
    /// The job ran on the node before, and how it ended cannot be told (`code`: one of
    /// [`burrow_core::protocol::unknown`]).
    Unknown {
        code: String,
        reason: String,
    },
    /// The link to the node went down before the request ended (the node may still be running it).
    Lost(String),
}

struct Link {
    node: String,
    writer: Mutex<(TcpStream, Sealer)>,
    /// A clone of the socket, to shut the link down without waiting for the writer mutex (a write may
    /// be blocked on a peer that stopped reading).
    closer: TcpStream,
    jobs: Mutex<HashMap<u32, Sender<Event>>>,
    next_id: AtomicU32,
    /// Commands the agent runs at once at most, from its heartbeat (0: not said yet).
    max_jobs: AtomicU32,
    last_rx: Mutex<Instant>,
    /// Disconnected once the reader thread has seen the link end (its sender lives there).
    reader_done: Receiver<()>,
}

impl Link {
    fn send(&self, message: &Message) -> Result<(), Refusal> {
        self.send_on(&mut lock(&self.writer), message)
    }

    /// Sends unless another frame is being written right now (then the link is busy, not quiet), so
    /// the health thread never waits behind a write blocked on a peer that stopped reading.
    fn try_send(&self, message: &Message) {
        if let Ok(mut w) = self.writer.try_lock() {
            let _ = self.send_on(&mut w, message);
        }
    }

    fn send_on(&self, w: &mut (TcpStream, Sealer), message: &Message) -> Result<(), Refusal> {
        let (socket, sealer) = w;
        // Sealing first: a message too large for one frame is the caller's fault, not the link's.
        let frame = sealer.seal(message).map_err(|e| match e {
            burrow_core::Error::TooLarge { .. } => Refusal::new(Kind::TooLarge, e.to_string()),
            e => {
                self.close();
                Refusal::new(
                    Kind::Unavailable,
                    format!("link to {} failed: {e}", self.node),
                )
            }
        })?;
        socket
            .write_all(&frame)
            .and_then(|()| socket.flush())
            .map_err(|e| {
                self.close();
                Refusal::new(
                    Kind::Unavailable,
                    format!("link to {} failed: {e}", self.node),
                )
            })
    }

    /// Ends the link; its reader thread sees the socket close and tells every job.
    fn close(&self) {
        let _ = self.closer.shutdown(Shutdown::Both);
    }
}

/// Called with a node's id whenever its link comes up or its heartbeat changes what it can take.
pub type LinkHook = Box<dyn Fn(&str) + Send + Sync>;

/// What the bus tells the health module ([`Bus::on_event`]): the facts node state is decided from.
#[derive(Debug)]
pub enum LinkEvent<'a> {
    /// The node's link came up (handshake done).
    Up { node: &'a str },
    /// The node's link ended, and why.
    Down { node: &'a str, reason: &'a str },
    /// A heartbeat arrived on the link, at `received_ms` (the gateway's clock, Unix milliseconds).
    Beat {
        node: &'a str,
        beat: &'a burrow_core::api::Heartbeat,
        received_ms: u64,
    },
    /// A dial reached something on the node's port that failed the handshake (a wrong key, a
    /// protocol error): not a refused or timed-out connection, which only means "not there".
    HandshakeFailed {
        node: &'a str,
        port: u16,
        error: &'a str,
    },
    /// A handshake with the node succeeded (resets the count of failed ones).
    HandshakeOk { node: &'a str },
}

/// See [`Bus::on_event`]. Called on bus threads: it must not block, nor call the bus.
pub type EventHook = Box<dyn Fn(LinkEvent<'_>) + Send + Sync>;

pub struct Bus {
    identity: Identity,
    on_link: Mutex<Option<Arc<LinkHook>>>,
    on_event: Mutex<Option<Arc<EventHook>>>,
    registry: Arc<Registry>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// Dials in progress, one at most per node and port: a port that hangs (a stale sshd session
    /// still holding it after a network cut) does not hold back the dial of the other one.
    dialing: Mutex<HashSet<(String, u16)>>,
    /// Linked nodes that take no command now (in `error`, [`Bus::hold`]): their commands queue.
    held: Mutex<HashSet<String>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A request in flight on one link. Dropping it only stops listening: the node goes on (a job owns
/// itself; it is stopped by [`Request::cancel`] or [`RequestHandle::cancel`]).
pub struct Request {
    /// The request id on the node's link.
    pub id: u32,
    link: Arc<Link>,
    rx: Receiver<Event>,
}

/// What another thread needs to cancel a request.
#[derive(Clone)]
pub struct RequestHandle {
    id: u32,
    link: Arc<Link>,
}

impl RequestHandle {
    /// Asks the agent to stop the request (its process group is killed); its `Exit` follows.
    pub fn cancel(&self) {
        let _ = self.link.send(&Message::Cancel { id: self.id });
    }

    /// Sends bytes on a stream the gateway writes, within credit the caller tracks (from a thread
    /// other than the one reading the request's events).
    pub fn send_data(&self, stream: u32, data: Vec<u8>) -> Result<(), Refusal> {
        self.link.send(&Message::Data {
            id: self.id,
            stream,
            data,
        })
    }

    /// Half-closes a stream the gateway writes.
    pub fn send_eof(&self, stream: u32) -> Result<(), Refusal> {
        self.link.send(&Message::Eof {
            id: self.id,
            stream,
        })
    }

    /// Aborts a stream both ways.
    pub fn reset(&self, stream: u32, reason: &str) -> Result<(), Refusal> {
        self.link.send(&Message::Reset {
            id: self.id,
            stream,
            reason: reason.to_string(),
        })
    }

    /// The request's terminal has a new size (a tty job).
    pub fn resize(&self, rows: u16, cols: u16) {
        let _ = self.link.send(&Message::Resize {
            id: self.id,
            rows,
            cols,
        });
    }

    /// Signals the request's foreground process group (a tty job).
    pub fn signal(&self, signal: i32) {
        let _ = self.link.send(&Message::Signal {
            id: self.id,
            signal,
        });
    }
}

impl Request {
    /// The next event, or `None` when `deadline` passes first.
    pub fn next(&mut self, deadline: Instant) -> Option<Event> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(wait) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Event::Lost("link closed".into())),
        }
    }

    /// The events as a channel, for `select!` with other sources.
    pub fn events(&self) -> &Receiver<Event> {
        &self.rx
    }

    /// The consumer has taken `bytes` of `stream`: the agent may send as much again on it.
    pub fn credit(&self, stream: u32, bytes: usize) {
        let _ = self.link.send(&Message::Credit {
            id: self.id,
            stream,
            bytes: bytes as u32,
        });
    }

    /// Sends bytes on a stream the gateway writes (stdin), within credit the caller tracks.
    pub fn send_data(&self, stream: u32, data: Vec<u8>) -> Result<(), Refusal> {
        self.handle().send_data(stream, data)
    }

    /// Half-closes a stream the gateway writes.
    pub fn send_eof(&self, stream: u32) -> Result<(), Refusal> {
        self.handle().send_eof(stream)
    }

    /// Aborts a stream both ways.
    pub fn reset(&self, stream: u32, reason: &str) {
        let _ = self.handle().reset(stream, reason);
    }

    /// The outcome is stored durably: the agent may forget it.
    pub fn done(&self) {
        let _ = self.link.send(&Message::Done { id: self.id });
    }

    pub fn cancel(&self) {
        self.handle().cancel();
    }

    pub fn handle(&self) -> RequestHandle {
        RequestHandle {
            id: self.id,
            link: self.link.clone(),
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        lock(&self.link.jobs).remove(&self.id);
    }
}

impl Bus {
    pub fn new(identity: Identity, registry: Arc<Registry>) -> Bus {
        Bus {
            identity,
            on_link: Mutex::new(None),
            on_event: Mutex::new(None),
            registry,
            links: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashSet::new()),
            held: Mutex::new(HashSet::new()),
            threads: Mutex::new(Vec::new()),
        }
    }

    pub fn is_linked(&self, node: &str) -> bool {
        lock(&self.links).contains_key(node)
    }

    /// Whether commands are sent to the node now: linked, and not held by the health module (a node
    /// in `error` keeps its link, but its commands wait in the queue).
    pub fn takes_commands(&self, node: &str) -> bool {
        self.is_linked(node) && !lock(&self.held).contains(node)
    }

    /// Holds (`true`) or releases a node's commands (see [`Bus::takes_commands`]); a release wakes
    /// the scheduler like a new link does.
    pub fn hold(&self, node: &str, held: bool) {
        let changed = match held {
            true => lock(&self.held).insert(node.to_string()),
            false => lock(&self.held).remove(node),
        };
        if changed && !held && self.is_linked(node) {
            self.linked(node);
        }
    }

    /// Sets what hears of links coming and going, heartbeats and failed handshakes (the health
    /// module).
    pub fn on_event(&self, hook: EventHook) {
        *lock(&self.on_event) = Some(Arc::new(hook));
    }

    fn event(&self, event: LinkEvent<'_>) {
        let hook = lock(&self.on_event).clone();
        if let Some(hook) = hook {
            hook(event);
        }
    }

    /// How many commands the node takes at once, as its agent said (`None` until it has).
    pub fn max_jobs(&self, node: &str) -> Option<usize> {
        let links = lock(&self.links);
        let n = links.get(node)?.max_jobs.load(Ordering::Relaxed);
        (n > 0).then_some(n as usize)
    }

    /// Sets what is called when a link comes up (the job scheduler's wake-up).
    pub fn on_link(&self, hook: LinkHook) {
        *lock(&self.on_link) = Some(Arc::new(hook));
    }

    fn linked(&self, node: &str) {
        let hook = lock(&self.on_link).clone();
        if let Some(hook) = hook {
            hook(node);
        }
    }

    /// Starts (or, for a job id the node has seen, attaches to) job `job` on a node.
    pub fn exec(&self, node: &str, job: String, spec: ExecSpec) -> Result<Request, Refusal> {
        let link = lock(&self.links).get(node).cloned();
        let Some(link) = link else {
            return Err(self.why_unavailable(node));
        };
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded();
        lock(&link.jobs).insert(id, tx);
        let message = Message::Exec { id, job, spec };
        let request = Request {
            id,
            link: link.clone(),
            rx,
        };
        link.send(&message)?;
        Ok(request)
    }

    /// Opens a file transfer on a node (protocol: "Files") on stream `stream::FIRST_OPENED`.
    pub fn open_file(
        &self,
        node: &str,
        params: &burrow_core::protocol::FileParams,
    ) -> Result<Request, Refusal> {
        self.open(
            node,
            burrow_core::protocol::Purpose::File,
            serde_json::to_string(params).expect("file params serialize"),
        )
    }

    /// Opens a stream to a service the node declares (protocol: "Services") on stream
    /// `stream::FIRST_OPENED`; the agent's first `Credit` says it connected.
    pub fn open_service(&self, node: &str, service: &str) -> Result<Request, Refusal> {
        let params = burrow_core::protocol::ServiceParams {
            service: service.to_string(),
        };
        self.open(
            node,
            burrow_core::protocol::Purpose::Service,
            serde_json::to_string(&params).expect("service params serialize"),
        )
    }

    fn open(
        &self,
        node: &str,
        purpose: burrow_core::protocol::Purpose,
        params: String,
    ) -> Result<Request, Refusal> {
        let link = lock(&self.links).get(node).cloned();
        let Some(link) = link else {
            return Err(self.why_unavailable(node));
        };
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded();
        lock(&link.jobs).insert(id, tx);
        let request = Request {
            id,
            link: link.clone(),
            rx,
        };
        link.send(&Message::Open {
            id,
            stream: stream::FIRST_OPENED,
            purpose,
            params,
        })?;
        Ok(request)
    }

    /// Why a node cannot take a command now (not found, pending, rejected, offline since …).
    pub fn why_unavailable(&self, node: &str) -> Refusal {
        let state = self.registry.read();
        match state.nodes.get(node).map(|n| n.approval) {
            None => Refusal::new(Kind::NotFound, format!("no node {node:?}")),
            Some(Approval::Pending) => Refusal::new(
                Kind::NodePending,
                format!("node {node:?} is pending approval"),
            ),
            Some(Approval::Rejected) => {
                Refusal::new(Kind::NodeRejected, format!("node {node:?} was rejected"))
            }
            Some(Approval::Approved) => {
                let seen = self
                    .registry
                    .live(node)
                    .last_seen
                    .map_or_else(|| "never".to_string(), rfc3339);
                Refusal::new(
                    Kind::NodeOffline,
                    format!("node {node:?} is offline (last seen {seen})"),
                )
            }
        }
    }

    fn attach(
        self: &Arc<Self>,
        node: &str,
        stream: TcpStream,
        sealer: Sealer,
        opener: Opener,
    ) -> anyhow::Result<()> {
        let reader = stream.try_clone()?;
        let closer = stream.try_clone()?;
        let port = stream.peer_addr()?.port();
        let (reader_alive, reader_done) = crossbeam_channel::bounded::<()>(0);
        let link = Arc::new(Link {
            node: node.to_string(),
            writer: Mutex::new((stream, sealer)),
            closer,
            jobs: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            max_jobs: AtomicU32::new(0),
            last_rx: Mutex::new(Instant::now()),
            reader_done,
        });
        {
            let mut links = lock(&self.links);
            if links.contains_key(node) {
                // The other port's dial won: this one is not needed.
                let _ = link.closer.shutdown(Shutdown::Both);
                return Ok(());
            }
            links.insert(node.to_string(), link.clone());
        }
        let t = now();
        self.registry.set_live(node, |l| {
            l.online_since = Some(t);
            l.last_seen = Some(t);
            l.port = Some(port);
        });
        log::info!("node {node} linked (port {port})");
        self.event(LinkEvent::Up { node });
        self.linked(node);
        let bus = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("link-{node}"))
            .spawn(move || {
                bus.read_link(&link, reader, opener);
                drop(reader_alive);
            })?;
        self.keep(handle);
        Ok(())
    }

    fn read_link(&self, link: &Arc<Link>, mut reader: TcpStream, mut opener: Opener) {
        let reason = loop {
            // Nothing that fails to open is acted upon: the first bad frame ends the link.
            let message = match opener.read_message(&mut reader) {
                Ok(m) => m,
                Err(e) => break e.to_string(),
            };
            *lock(&link.last_rx) = Instant::now();
            let (id, event, last) = match message {
                Message::Data {
                    id,
                    stream: stream::STDOUT,
                    data,
                } => (id, Event::Stdout(data), false),
                Message::Data {
                    id,
                    stream: stream::STDERR,
                    data,
                } => (id, Event::Stderr(data), false),
                Message::Credit { id, stream, bytes } => {
                    (id, Event::Credit { stream, bytes }, false)
                }
                Message::Exit { id, status } => (id, Event::Exit(status), true),
                Message::Failed { id, message } => (id, Event::Failed(message), true),
                Message::Unknown { id, code, reason } => {
                    (id, Event::Unknown { code, reason }, true)
                }
                Message::Ping(v) => {
                    // Never wait for the writer here: this thread must keep reading (the node's
                    // frames are what keep its link alive). A busy writer is sending the agent
                    // frames anyway, and any frame answers its ping.
                    link.try_send(&Message::Pong(v));
                    continue;
                }
                Message::Pong(_) => continue,
                // The link's handshake authenticated the node: no token needed.
                Message::Heartbeat(beat) => {
                    self.event(LinkEvent::Beat {
                        node: &link.node,
                        beat: &beat,
                        received_ms: now_ms(),
                    });
                    let before = link.max_jobs.swap(beat.max_jobs, Ordering::Relaxed);
                    self.registry.record_heartbeat(&link.node, beat);
                    if before != link.max_jobs.load(Ordering::Relaxed) {
                        self.linked(&link.node);
                    }
                    continue;
                }
                Message::Data { id, stream, data } => (id, Event::Data { stream, data }, false),
                Message::Eof { id, stream } => (id, Event::Eof { stream }, false),
                Message::Reset { id, stream, reason } => {
                    (id, Event::Reset { stream, reason }, false)
                }
                other => break format!("unexpected {} from the agent", other.kind_name()),
            };
            let mut jobs = lock(&link.jobs);
            if let Some(tx) = jobs.get(&id) {
                let _ = tx.send(event);
            }
            if last {
                jobs.remove(&id);
            }
        };
        let _ = reader.shutdown(Shutdown::Both);
        for (_, tx) in lock(&link.jobs).drain() {
            let _ = tx.send(Event::Lost(format!(
                "connection to {} lost: {reason}",
                link.node
            )));
        }
        let mut links = lock(&self.links);
        if links.get(&link.node).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(&link.node);
            drop(links);
            log::info!("node {} link lost: {reason}", link.node);
            self.event(LinkEvent::Down {
                node: &link.node,
                reason: &reason,
            });
        }
    }

    /// Pings quiet links and drops dead ones (no frame for `dead_after`).
    pub fn probe(&self, ping_after: Duration, dead_after: Duration) {
        let links: Vec<Arc<Link>> = lock(&self.links).values().cloned().collect();
        for link in links {
            let quiet = lock(&link.last_rx).elapsed();
            if quiet >= dead_after {
                log::warn!(
                    "node {}: no answer for {}s, dropping the link",
                    link.node,
                    quiet.as_secs()
                );
                link.close();
            } else if quiet >= ping_after {
                link.try_send(&Message::Ping(now()));
            }
        }
    }

    /// Ends a node's link at once (rejected, revoked): the agent is told why (`Bye` with `code`, one
    /// of [`bye`]) when its link can take the frame right away, then the link is closed; its jobs
    /// end as lost, and the agent kills the commands they ran when the connection drops.
    pub fn cut_off(&self, node: &str, code: &str, reason: &str) {
        let link = lock(&self.links).remove(node);
        let Some(link) = link else { return };
        self.event(LinkEvent::Down { node, reason });
        log::info!("node {node} cut off ({code}): {reason}");
        // A writer blocked on a peer that stopped reading holds the mutex: then skip the goodbye.
        let deadline = Instant::now() + Duration::from_millis(500);
        let _ = link
            .closer
            .set_write_timeout(Some(Duration::from_millis(500)));
        let said_bye = loop {
            match link.writer.try_lock() {
                Ok(mut w) => {
                    let (socket, sealer) = &mut *w;
                    let bye = Message::Bye {
                        code: code.into(),
                        reason: reason.into(),
                    };
                    break sealer
                        .seal(&bye)
                        .is_ok_and(|frame| socket.write_all(&frame).is_ok());
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break false,
            }
        };
        if said_bye {
            // The goodbye must reach the agent before the caller kills the node's sshd sessions,
            // which would drop it inside sshd: end our side of the stream after it, and give the
            // agent a moment to hang up in turn (the reader then sees the end).
            let _ = link.closer.shutdown(Shutdown::Write);
            let _ = link.reader_done.recv_timeout(Duration::from_secs(2));
        }
        link.close();
    }

    /// Closes every link and joins every thread.
    pub fn shutdown(&self) {
        for link in lock(&self.links).values() {
            link.close();
        }
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for t in threads {
            if let Err(panic) = t.join() {
                log::error!("a bus thread panicked: {panic:?}");
            }
        }
    }

    fn keep(&self, handle: JoinHandle<()>) {
        let mut threads = lock(&self.threads);
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
    }
}

/// A fresh job id: 128 random bits as hex, globally unique without coordination.
pub fn new_job_id() -> String {
    burrow_core::join::hex(&burrow_core::random_bytes::<16>())
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

mod dial;
#[cfg(test)]
mod tests;
