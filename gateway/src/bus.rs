//! The command bus: one authenticated connection per online node, through its reverse-forwarded port,
//! multiplexing many requests by id.
//!
//! Each link has one reader thread ("link-<node>") that demultiplexes frames to the waiting jobs, and a
//! writer mutex so frames from concurrent jobs never interleave. Output credit is returned as a job's
//! consumer takes output, so a slow HTTP client stalls only its own command on the node, never the
//! link. Dials are made from short-lived threads ("dial-<node>"), at most one per node at a time.

use std::collections::{HashMap, HashSet};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burrow_core::handshake::handshake;
use burrow_core::identity::{Identity, PublicKey};
use burrow_core::protocol::{read_message, write_message, ExecSpec, ExitStatus, Message, Role};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use crate::refusal::{Kind, Refusal};
use crate::registry::{now, rfc3339, Approval, Registry};

/// What a running job reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitStatus),
    /// The agent could not run it.
    Failed(String),
    /// The link to the node went down before the command ended.
    Lost(String),
}

struct Link {
    node: String,
    writer: Mutex<TcpStream>,
    jobs: Mutex<HashMap<u32, Sender<Event>>>,
    next_id: AtomicU32,
    last_rx: Mutex<Instant>,
}

impl Link {
    fn send(&self, message: &Message) -> Result<(), Refusal> {
        let mut w = lock(&self.writer);
        write_message(&mut *w, message).map_err(|e| {
            let _ = w.shutdown(Shutdown::Both);
            Refusal::new(
                Kind::Unavailable,
                format!("link to {} failed: {e}", self.node),
            )
        })
    }
}

pub struct Bus {
    identity: Identity,
    registry: Arc<Registry>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    dialing: Mutex<HashSet<String>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A command in flight. Dropping it before it ends cancels it on the node.
pub struct Job {
    pub id: u32,
    link: Arc<Link>,
    rx: Receiver<Event>,
    done: bool,
}

impl Job {
    /// The next event, or `None` when `deadline` passes first.
    pub fn next(&mut self, deadline: Instant) -> Option<Event> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let event = match self.rx.recv_timeout(wait) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => return None,
            Err(RecvTimeoutError::Disconnected) => Event::Lost("link closed".into()),
        };
        match &event {
            Event::Stdout(d) | Event::Stderr(d) => {
                // The consumer has taken this output: let the agent send as much again.
                let _ = self.link.send(&Message::Credit {
                    id: self.id,
                    bytes: d.len() as u32,
                });
            }
            _ => self.done = true,
        }
        Some(event)
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        lock(&self.link.jobs).remove(&self.id);
        if !self.done {
            let _ = self.link.send(&Message::Cancel { id: self.id });
        }
    }
}

impl Bus {
    pub fn new(identity: Identity, registry: Arc<Registry>) -> Bus {
        Bus {
            identity,
            registry,
            links: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashSet::new()),
            threads: Mutex::new(Vec::new()),
        }
    }

    pub fn is_linked(&self, node: &str) -> bool {
        lock(&self.links).contains_key(node)
    }

    /// Starts a command on a node.
    pub fn exec(&self, node: &str, spec: ExecSpec) -> Result<Job, Refusal> {
        let link = lock(&self.links).get(node).cloned();
        let Some(link) = link else {
            return Err(self.why_unavailable(node));
        };
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded();
        lock(&link.jobs).insert(id, tx);
        let job = Job {
            id,
            link: link.clone(),
            rx,
            done: false,
        };
        link.send(&Message::Exec { id, spec })?;
        Ok(job)
    }

    fn why_unavailable(&self, node: &str) -> Refusal {
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

    /// Dials a node in the background unless it is linked or being dialed.
    pub fn dial(self: &Arc<Self>, node: &str) {
        if self.is_linked(node) || !lock(&self.dialing).insert(node.to_string()) {
            return;
        }
        let bus = self.clone();
        let name = node.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("dial-{node}"))
            .spawn(move || {
                if let Err(e) = bus.connect(&name) {
                    log::debug!("dialing {name}: {e:#}");
                }
                lock(&bus.dialing).remove(&name);
            });
        match spawned {
            Ok(handle) => self.keep(handle),
            Err(e) => {
                log::error!("spawning a dial thread: {e}");
                lock(&self.dialing).remove(node);
            }
        }
    }

    fn connect(self: &Arc<Self>, node: &str) -> anyhow::Result<()> {
        let (key, ports) = {
            let state = self.registry.read();
            let n = state
                .nodes
                .get(node)
                .ok_or_else(|| anyhow::anyhow!("node is gone"))?;
            let ports = n
                .ports
                .ok_or_else(|| anyhow::anyhow!("node has no ports"))?;
            (PublicKey::from_openssh(&n.public_key)?, ports)
        };
        let mut candidates = Vec::new();
        if let Some(p) = self.registry.live(node).port {
            candidates.push(p);
        }
        for p in ports {
            if !candidates.contains(&p) {
                candidates.push(p);
            }
        }
        let mut last_err = anyhow::anyhow!("no port answered");
        for port in candidates {
            match self.handshake_on(node, port, &key) {
                Ok(stream) => return self.attach(node, stream),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    fn handshake_on(&self, node: &str, port: u16, key: &PublicKey) -> anyhow::Result<TcpStream> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        handshake(&mut stream, &self.identity, Role::Gateway, |k| k == key)
            .map_err(|e| anyhow::anyhow!("handshake with {node} on port {port}: {e}"))?;
        stream.set_read_timeout(None)?;
        Ok(stream)
    }

    fn attach(self: &Arc<Self>, node: &str, stream: TcpStream) -> anyhow::Result<()> {
        let reader = stream.try_clone()?;
        let port = stream.peer_addr()?.port();
        let link = Arc::new(Link {
            node: node.to_string(),
            writer: Mutex::new(stream),
            jobs: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            last_rx: Mutex::new(Instant::now()),
        });
        lock(&self.links).insert(node.to_string(), link.clone());
        let t = now();
        self.registry.set_live(node, |l| {
            l.online = true;
            l.online_since = Some(t);
            l.last_seen = Some(t);
            l.port = Some(port);
        });
        log::info!("node {node} online (port {port})");
        let bus = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("link-{node}"))
            .spawn(move || bus.read_link(&link, reader))?;
        self.keep(handle);
        Ok(())
    }

    fn read_link(&self, link: &Arc<Link>, mut reader: TcpStream) {
        let reason = loop {
            let message = match read_message(&mut reader) {
                Ok(m) => m,
                Err(e) => break e.to_string(),
            };
            *lock(&link.last_rx) = Instant::now();
            let (id, event, last) = match message {
                Message::Stdout { id, data } => (id, Event::Stdout(data), false),
                Message::Stderr { id, data } => (id, Event::Stderr(data), false),
                Message::Exit { id, status } => (id, Event::Exit(status), true),
                Message::Failed { id, message } => (id, Event::Failed(message), true),
                Message::Ping(v) => {
                    let _ = link.send(&Message::Pong(v));
                    continue;
                }
                Message::Pong(_) => continue,
                other => break format!("unexpected message from agent: {other:?}"),
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
            self.registry.set_live(&link.node, |l| l.online = false);
            log::info!("node {} offline: {reason}", link.node);
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
                let _ = lock(&link.writer).shutdown(Shutdown::Both);
            } else if quiet >= ping_after {
                let _ = link.send(&Message::Ping(now()));
            }
        }
    }

    /// Closes every link and joins every thread.
    pub fn shutdown(&self) {
        for link in lock(&self.links).values() {
            let _ = lock(&link.writer).shutdown(Shutdown::Both);
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
