//! Jobs own themselves: a command for one or many nodes, with one public id, per-node results and
//! its output kept by the gateway, not by the HTTP worker that asked for it.
//!
//! # Life of a job
//!
//! [`Jobs::submit`] resolves the target ([`target`]), writes the job and one `queued` row per node to
//! the store *durably* (the id the caller is given always exists after a crash), and puts each node's
//! part in its **lane** on that node. The scheduler ([`Jobs::pump`]) starts a lane's head when the
//! lane has nothing running, the node is linked, fewer than the node's announced limit run there, and
//! the job's batch window has room; lanes and nodes otherwise run in parallel. Each started part gets
//! a thread (`job-<node>`) that sends `Exec` with the job id and follows the request:
//!
//! - output goes to every attached subscriber (the slowest one paces the command: credit goes back to
//!   the agent only once each subscriber took the chunk), and the first `output_limit` bytes per node
//!   are kept (the rest counted);
//! - if the link drops, the node keeps running the command: the thread waits for the link and sends
//!   the same `Exec` again, which attaches (protocol: "Jobs outlive connections"); a node that does not
//!   come back within the command's timeout plus a grace ends `lost`;
//! - the end (state, exit, kept output) is written durably, and only then is the agent told `Done`.
//!
//! HTTP answers are subscribers ([`Jobs::subscribe`]) or waiters ([`Job::wait`]); a client going away
//! detaches, it never cancels. [`Jobs::cancel`] does: queued parts never run, running ones are killed
//! on the node.
//!
//! # Restarts
//!
//! [`Jobs::resume`] reloads every job not ended: queued parts go back in their lanes in arrival
//! order; parts that were running (or being delivered) are sent again when their node links, which
//! attaches to the running command or gets its kept outcome; the agent's ledger of job ids makes sure a
//! command never runs twice.

mod part;
pub mod persist;
mod sched;
pub mod state;
mod stdin;
pub mod target;
mod transfer;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use burrow_core::protocol::{stream, ExecSpec, ExitStatus};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::bus::{Bus, RequestHandle};
use crate::refusal::{Kind, Refusal};
use crate::registry::{now, Registry};
use crate::store::Store;
use state::NodeState;
use target::Target;

/// The gateway waits this much longer than a command's own timeout before it gives up on the node.
pub const GRACE: Duration = Duration::from_secs(15);
/// Commands a node runs at once until its agent says its own limit.
pub const DEFAULT_NODE_LIMIT: usize = 64;
/// Parts that were queued when the gateway stopped wait this long for their node to link again.
const RESTART_GRACE_S: u64 = 60;
/// Events a subscriber may have waiting before it paces the command.
const SUBSCRIBER_BACKLOG: usize = 64;
/// Retention of ended jobs.
const KEEP_JOBS: usize = 10_000;
const KEEP_DAYS: u64 = 30;

/// What a job does on each node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum JobKind {
    Exec {
        spec: ExecSpec,
        /// Fixed standard input (from the request body), sent once the command started.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
        stdin: Option<Vec<u8>>,
        /// Standard input comes from `PUT /api/v1/jobs/{id}/stdin` (one node only).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stdin_stream: bool,
    },
    /// A file pushed to the nodes (the upload is the source: run by the uploader's request).
    Put {
        path: String,
        mode: u32,
        /// Bytes announced by the uploader, if it said.
        size: Option<u64>,
    },
    /// A file read from one node.
    Get { path: String },
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Exec { .. } => "exec",
            JobKind::Put { .. } => "put",
            JobKind::Get { .. } => "get",
        }
    }

    fn timeout(&self) -> Duration {
        match self {
            JobKind::Exec { spec, .. } => Duration::from_secs(spec.timeout_s),
            JobKind::Put { .. } | JobKind::Get { .. } => Duration::from_secs(3600),
        }
    }
}

/// What never changes about a job.
#[derive(Debug, Clone)]
pub struct JobMeta {
    pub id: String,
    /// Arrival order (lanes start in it, listings page by it).
    pub seq: u64,
    pub kind: JobKind,
    pub created_at: u64,
    pub actor: String,
    /// The target as given, for people.
    pub target: String,
    pub lane: String,
    pub queue_ttl_s: Option<u64>,
    /// At most this many nodes of the job run at once.
    pub batch: Option<usize>,
    /// `any:` targets: the candidates, of which exactly one runs it.
    pub any_of: Option<Vec<String>>,
}

/// What a submitter asks for.
pub struct Submit {
    pub kind: JobKind,
    pub actor: String,
    pub target: Target,
    pub target_text: String,
    pub lane: String,
    pub queue_ttl_s: Option<u64>,
    pub batch: Option<Batch>,
    /// The caller is told the job id before the job ends (`async`, streaming): the job must be
    /// durable first. A caller answered only with the job's end needs no commit of its own: the
    /// job's row then rides on the commit of its first end.
    pub acknowledged_at_once: bool,
    /// The caller waits for the whole answer on its own thread ([`Job::wait`]): a one-node job whose
    /// part can start at once runs it there, instead of on a thread of its own (no thread to start,
    /// no hand-over of the `Exec` and of the end between threads: the single-node hot path).
    pub run_in_waiter: bool,
}

/// A batch window: a number of nodes, or a share of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Nodes(usize),
    Percent(u8),
}

/// The first bytes of one output stream, and a count of the rest.
#[derive(Debug, Clone, Default)]
pub struct Capped {
    pub kept: Vec<u8>,
    pub dropped: u64,
}

impl Capped {
    fn push(&mut self, data: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.kept.len()).min(data.len());
        self.kept.extend_from_slice(&data[..room]);
        self.dropped += (data.len() - room) as u64;
    }
}

/// One node's part of a job.
#[derive(Debug, Clone)]
pub struct NodeResult {
    pub node: String,
    pub state: NodeState,
    pub exit: Option<ExitStatus>,
    /// (code, message) when it did not end with an exit status of its own.
    pub error: Option<(String, String)>,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    /// stdout, stderr.
    pub output: [Capped; 2],
    /// A file transfer's bytes and SHA-256 (hex).
    pub transfer: Option<Transfer>,
}

/// What a file transfer moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub bytes: u64,
    pub sha256: String,
}

impl NodeResult {
    pub fn new(node: String) -> NodeResult {
        NodeResult {
            node,
            state: NodeState::Queued,
            exit: None,
            error: None,
            started_at: None,
            ended_at: None,
            output: Default::default(),
            transfer: None,
        }
    }
}

/// What subscribers receive, in order.
#[derive(Debug, Clone)]
pub enum Ev {
    Start {
        node: String,
    },
    Output {
        node: String,
        stream: u32,
        data: Vec<u8>,
    },
    /// A node's part ended (its result as it is now).
    End {
        result: Box<NodeResult>,
    },
    /// Every part ended.
    Finished,
}

struct Subscriber {
    id: u64,
    tx: Sender<Arc<Ev>>,
}

struct Live {
    results: Vec<NodeResult>,
    /// Replay for late subscribers: starts, kept output, ends.
    log: Vec<Arc<Ev>>,
    subscribers: Vec<Subscriber>,
    cancelled: bool,
    /// The gateway is stopping: waiters and subscribers let go (the job goes on on its nodes).
    stopped: bool,
    handles: HashMap<usize, RequestHandle>,
}

/// A job in memory (while not ended, or loaded from the store to be shown).
pub struct Job {
    pub meta: JobMeta,
    /// Streamed stdin: the uploader's end (taken by the one `PUT …/stdin`) and the command's end.
    stdin_tx: Mutex<Option<Sender<Vec<u8>>>>,
    stdin_rx: Mutex<Option<Receiver<Vec<u8>>>>,
    live: Mutex<Live>,
    /// Held while an event is appended and sent, and while a part's end is decided and sent: events
    /// reach every subscriber in the order of the log, and `Finished` comes after every `End`.
    emitting: Mutex<()>,
    changed: Condvar,
    /// Parts running now (for the batch window).
    running: AtomicUsize,
    /// A part started for the caller of [`Jobs::submit`] to run in [`Job::wait`]
    /// ([`Submit::run_in_waiter`]).
    for_waiter: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// When this process made it (for the exec latency of `/metrics`: [`Job::since_submit`]).
    created: Instant,
}

impl Job {
    fn new(meta: JobMeta, results: Vec<NodeResult>) -> Job {
        let streamed = matches!(
            meta.kind,
            JobKind::Exec {
                stdin_stream: true,
                ..
            }
        );
        let (tx, rx) = if streamed {
            let (tx, rx) = bounded(4);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Job {
            for_waiter: Mutex::new(None),
            stdin_tx: Mutex::new(tx),
            stdin_rx: Mutex::new(rx),
            meta,
            live: Mutex::new(Live {
                results,
                log: Vec::new(),
                subscribers: Vec::new(),
                cancelled: false,
                stopped: false,
                handles: HashMap::new(),
            }),
            emitting: Mutex::new(()),
            changed: Condvar::new(),
            running: AtomicUsize::new(0),
            created: Instant::now(),
        }
    }

    /// How long ago the job was submitted, for a job submitted to this process; `None` for one
    /// loaded from the store (resumed after a restart: its submission is older than this run).
    pub fn since_submit(&self) -> Option<Duration> {
        let age = self.created.elapsed();
        let wall = now().saturating_sub(self.meta.created_at);
        (wall <= age.as_secs() + 1).then_some(age)
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        lock(&self.live)
    }

    /// Every node's result as it is now.
    pub fn results(&self) -> Vec<NodeResult> {
        self.live().results.clone()
    }

    pub fn state(&self) -> NodeState {
        state::job_state(self.live().results.iter().map(|r| r.state))
    }

    /// The sending end of a streamed stdin, once: `None` if the job takes none or it is taken.
    pub fn take_stdin(&self) -> Option<Sender<Vec<u8>>> {
        lock(&self.stdin_tx).take()
    }

    /// Whether the gateway stopped following it (shutting down).
    pub fn is_stopped(&self) -> bool {
        self.live().stopped
    }

    pub fn is_finished(&self) -> bool {
        self.live().results.iter().all(|r| r.state.is_final())
    }

    /// Waits until every part ended or `deadline` passes; returns whether it ended. A part kept for
    /// the waiter ([`Submit::run_in_waiter`]) runs here first, to its end.
    pub fn wait(&self, deadline: Instant) -> bool {
        let part = lock(&self.for_waiter).take();
        if let Some(part) = part {
            part();
        }
        let mut live = self.live();
        loop {
            if live.results.iter().all(|r| r.state.is_final()) {
                return true;
            }
            if live.stopped {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            live = self
                .changed
                .wait_timeout(live, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends `ev` to every subscriber (waiting for the slow ones until `deadline`: that is the
    /// backpressure) and keeps it for replay if `keep`.
    fn emit(&self, ev: Ev, keep: bool, deadline: Instant) {
        let _order = lock(&self.emitting);
        self.emit_in_order(ev, keep, deadline);
    }

    /// [`Job::emit`] for a caller that holds `emitting`.
    fn emit_in_order(&self, ev: Ev, keep: bool, deadline: Instant) {
        let ev = Arc::new(ev);
        let subs: Vec<(u64, Sender<Arc<Ev>>)> = {
            let mut live = self.live();
            if keep {
                live.log.push(ev.clone());
            }
            live.subscribers
                .iter()
                .map(|s| (s.id, s.tx.clone()))
                .collect()
        };
        let mut gone = Vec::new();
        for (id, tx) in subs {
            let wait = deadline.saturating_duration_since(Instant::now());
            if tx.send_timeout(ev.clone(), wait).is_err() {
                gone.push(id);
            }
        }
        if !gone.is_empty() {
            self.live().subscribers.retain(|s| !gone.contains(&s.id));
        }
    }
}

/// A subscription: what was kept so far, then what comes.
pub struct Subscription {
    pub replay: Vec<Arc<Ev>>,
    pub live: Option<Receiver<Arc<Ev>>>,
}

struct Entry {
    job: Arc<Job>,
    idx: usize,
    /// Unix time it entered the queue (for `queue_ttl_s`).
    queued_at: u64,
    /// A part restored after a restart waits at least this long for its node.
    wait_until: u64,
}

#[derive(Default)]
struct NodeQueue {
    lanes: BTreeMap<String, VecDeque<Entry>>,
    busy_lanes: HashSet<String>,
    running: usize,
}

struct Sched {
    active: HashMap<String, Arc<Job>>,
    nodes: HashMap<String, NodeQueue>,
    next_seq: u64,
}

/// Limits of the engine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Output bytes kept per node and stream.
    pub output_per_node: usize,
}

/// The job engine.
pub struct Jobs {
    bus: Arc<Bus>,
    registry: Arc<Registry>,
    store: Arc<Store>,
    limits: Limits,
    sched: Mutex<Sched>,
    stopping: AtomicBool,
    next_subscriber: AtomicUsize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Ends whose agent waits for `Done` until they are durable (see [`Jobs::confirm`]).
    confirmations: Sender<Confirmation>,
    /// Itself, for work that outlives a call ([`Jobs::leaver`]).
    me: std::sync::Weak<Jobs>,
    /// Runs once when a job's last part ends, before waiters hear of it ([`Jobs::on_end`]).
    on_end: std::sync::OnceLock<EndHook>,
}

/// See [`Jobs::on_end`].
pub type EndHook = Box<dyn Fn(&Job) + Send + Sync>;

/// An end being committed, the request to tell `Done` once it is, and what else waits for it.
struct Confirmation {
    pending: crate::store::Pending<()>,
    request: crate::bus::Request,
    what: String,
    then: Option<Box<dyn FnOnce() + Send>>,
}

impl Jobs {
    pub fn new(
        bus: Arc<Bus>,
        registry: Arc<Registry>,
        store: Arc<Store>,
        limits: Limits,
    ) -> anyhow::Result<Arc<Jobs>> {
        let next_seq = store.read(persist::max_seq)? + 1;
        let (confirmations, to_confirm) = crossbeam_channel::unbounded::<Confirmation>();
        // Commits end in the order they were queued, so one thread waiting on each in turn tells
        // every agent `Done` as soon as its end is durable. It ends when `Jobs` is dropped.
        std::thread::Builder::new()
            .name("jobs-confirm".into())
            .spawn(move || {
                for c in to_confirm {
                    match c.pending.wait() {
                        Ok(()) => c.request.done(),
                        Err(e) => log::error!("storing the end of {}: {e:#}", c.what),
                    }
                    if let Some(then) = c.then {
                        then();
                    }
                }
            })?;
        let jobs = Arc::new_cyclic(|me| Jobs {
            me: me.clone(),
            bus: bus.clone(),
            registry,
            store,
            limits,
            sched: Mutex::new(Sched {
                active: HashMap::new(),
                nodes: HashMap::new(),
                next_seq,
            }),
            stopping: AtomicBool::new(false),
            next_subscriber: AtomicUsize::new(1),
            threads: Mutex::new(Vec::new()),
            confirmations,
            on_end: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&jobs);
        bus.on_link(Box::new(move |_node| {
            if let Some(jobs) = weak.upgrade() {
                jobs.pump();
            }
        }));
        Ok(jobs)
    }

    /// Tells the agent behind `request` `Done` once `pending` (the end it holds) is durable, then
    /// runs `then`, on the "jobs-confirm" thread: the part's own thread (or the waiter running it)
    /// goes on at once.
    fn confirm(
        &self,
        pending: crate::store::Pending<()>,
        request: crate::bus::Request,
        what: String,
        then: Option<Box<dyn FnOnce() + Send>>,
    ) {
        let c = Confirmation {
            pending,
            request,
            what,
            then,
        };
        if let Err(e) = self.confirmations.send(c) {
            // Only if the thread is gone: then wait here.
            let c = e.into_inner();
            if c.pending.wait().is_ok() {
                c.request.done();
            }
            if let Some(then) = c.then {
                then();
            }
        }
    }

    /// Sets what runs when a job's last part has ended (the audit log's end entry), on the thread
    /// that ended it and before a waiter is woken: a whole answer goes out only after it returns.
    pub fn on_end(&self, hook: EndHook) {
        if self.on_end.set(hook).is_err() {
            log::error!("a second job end hook was ignored");
        }
    }

    fn ended(&self, job: &Job) {
        if let Some(hook) = self.on_end.get() {
            hook(job);
        }
    }

    /// What takes an ended job out of memory (run once its last end is durable).
    fn leaver(&self, job: &Arc<Job>) -> Box<dyn FnOnce() + Send> {
        let me = self.me.clone();
        let id = job.meta.id.clone();
        Box::new(move || {
            if let Some(jobs) = me.upgrade() {
                lock(&jobs.sched).active.remove(&id);
            }
        })
    }

    /// Starts the scheduler's clock (expiry, retention) and resumes the jobs a previous run left.
    pub fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        self.resume()?;
        let weak = Arc::downgrade(self);
        let handle = std::thread::Builder::new()
            .name("jobs-clock".into())
            .spawn(move || {
                let mut ticks = 0u64;
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(jobs) = weak.upgrade() else { return };
                    if jobs.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    jobs.pump();
                    ticks += 1;
                    if ticks % 600 == 1 {
                        jobs.prune();
                    }
                }
            })?;
        lock(&self.threads).push(handle);
        Ok(())
    }

    /// Stops starting anything; running parts stay running on their nodes (a restart attaches).
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let active: Vec<Arc<Job>> = lock(&self.sched).active.values().cloned().collect();
        for job in active {
            let mut live = job.live();
            live.stopped = true;
            live.subscribers.clear();
            drop(live);
            job.changed.notify_all();
        }
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }

    /// Parts running now, on every node.
    pub fn running(&self) -> usize {
        lock(&self.sched).nodes.values().map(|q| q.running).sum()
    }

    /// Parts waiting in their lanes, on every node (`/metrics`, `/api/v1/status`).
    pub fn queue_depth(&self) -> usize {
        lock(&self.sched)
            .nodes
            .values()
            .flat_map(|q| q.lanes.values())
            .map(VecDeque::len)
            .sum()
    }

    fn prune(&self) {
        let older = now().saturating_sub(KEEP_DAYS * 86_400);
        match self
            .store
            .write(move |tx| persist::prune(tx, KEEP_JOBS, older))
        {
            Ok(0) => {}
            Ok(n) => log::info!("retention: dropped {n} old jobs"),
            Err(e) => log::error!("retention: {e:#}"),
        }
    }

    /// A new job's row for `node`: `queued`, or `offline` at once when the node is not linked and
    /// the job may not wait for it.
    fn first_result(&self, node: &str, may_wait: bool, t: u64) -> NodeResult {
        let mut r = NodeResult::new(node.to_string());
        if !may_wait && !self.bus.is_linked(node) {
            let why = self.bus.why_unavailable(node);
            r.state = NodeState::Offline;
            r.error = Some((why.kind.code().into(), why.message));
            r.ended_at = Some(t);
        }
        r
    }

    /// The next job's arrival number.
    fn next_seq(&self) -> u64 {
        let mut s = lock(&self.sched);
        s.next_seq += 1;
        s.next_seq - 1
    }

    /// Creates a job and queues its parts; answers once it is durable.
    pub fn submit(self: &Arc<Self>, submit: Submit) -> Result<Arc<Job>, Refusal> {
        let nodes = {
            let state = self.registry.read();
            submit.target.resolve(state.nodes.values())?
        };
        let any_of = submit.target.is_any().then(|| nodes.clone());
        let chosen: Vec<String> = match &any_of {
            Some(candidates) => match self.least_loaded(candidates, &[]) {
                Some(n) => vec![n],
                None => candidates.first().cloned().into_iter().collect(),
            },
            None => nodes,
        };
        if chosen.is_empty() {
            return Err(Refusal::new(
                Kind::NotFound,
                format!("target {:?} matches no node", submit.target_text),
            ));
        }
        if matches!(&submit.kind, JobKind::Exec { spec, .. } if spec.tty.is_some())
            && chosen.len() != 1
        {
            return Err(crate::refusal::bad_request(
                "\"tty\" is for one node: the target matches several",
            ));
        }
        if matches!(
            submit.kind,
            JobKind::Exec {
                stdin_stream: true,
                ..
            }
        ) && chosen.len() != 1
        {
            return Err(crate::refusal::bad_request(
                "stdin_stream is for one node; for many, send \"stdin\" or \"stdin_b64\"",
            ));
        }
        let batch = submit.batch.map(|b| match b {
            Batch::Nodes(n) => n.max(1),
            Batch::Percent(p) => (chosen.len() * usize::from(p)).div_ceil(100).max(1),
        });
        let t = now();
        let may_wait = submit.queue_ttl_s.is_some();
        let results: Vec<NodeResult> = chosen
            .iter()
            .map(|node| self.first_result(node, may_wait, t))
            .collect();
        let meta = JobMeta {
            id: crate::bus::new_job_id(),
            seq: self.next_seq(),
            kind: submit.kind,
            created_at: t,
            actor: submit.actor,
            target: submit.target_text,
            lane: submit.lane,
            queue_ttl_s: submit.queue_ttl_s,
            batch,
            any_of,
        };
        // The commit runs while the parts start (the `Exec` may go out meanwhile); the caller is
        // answered only once it is durable. Writes about the parts queue after it.
        let stored =
            {
                let (meta, results) = (meta.clone(), results.clone());
                let insert = move |tx: &rusqlite::Transaction| persist::insert(tx, &meta, &results);
                if submit.acknowledged_at_once {
                    Some(self.store.queue(insert).map_err(|e| {
                        Refusal::new(Kind::Internal, format!("storing the job: {e:#}"))
                    })?)
                } else {
                    self.store.write_lazy(insert);
                    None
                }
            };
        let job = Arc::new(Job::new(meta, results));
        {
            let mut live = job.live();
            let ended: Vec<Arc<Ev>> = live
                .results
                .iter()
                .filter(|r| r.state.is_final())
                .map(|r| {
                    Arc::new(Ev::End {
                        result: Box::new(r.clone()),
                    })
                })
                .collect();
            live.log.extend(ended);
            if live.results.iter().all(|r| r.state.is_final()) {
                live.log.push(Arc::new(Ev::Finished));
            }
        }
        if job.is_finished() {
            self.ended(&job);
        }
        {
            let mut s = lock(&self.sched);
            let mut queued = false;
            for (idx, r) in job.results().iter().enumerate() {
                if r.state == NodeState::Queued {
                    queued = true;
                    s.nodes
                        .entry(r.node.clone())
                        .or_default()
                        .lanes
                        .entry(job.meta.lane.clone())
                        .or_default()
                        .push_back(Entry {
                            job: job.clone(),
                            idx,
                            queued_at: t,
                            wait_until: 0,
                        });
                }
            }
            if queued {
                s.active.insert(job.meta.id.clone(), job.clone());
            }
        }
        if let Some((job, idx, node, resumed)) =
            self.pump_keeping(submit.run_in_waiter.then_some(&job))
        {
            let jobs = self.clone();
            let part = job.clone();
            *lock(&job.for_waiter) =
                Some(Box::new(move || jobs.run_part(&part, idx, &node, resumed)));
        }
        if let Some(stored) = stored {
            stored
                .wait()
                .map_err(|e| Refusal::new(Kind::Internal, format!("storing the job: {e:#}")))?;
        }
        Ok(job)
    }

    /// A job by id: the live one, or as stored.
    pub fn get(&self, id: &str) -> Result<Arc<Job>, Refusal> {
        if let Some(job) = lock(&self.sched).active.get(id) {
            return Ok(job.clone());
        }
        let id_owned = id.to_string();
        let loaded = self
            .store
            .read(move |c| persist::load(c, &id_owned))
            .map_err(|e| Refusal::new(Kind::Internal, format!("reading the job: {e:#}")))?;
        let (meta, results) =
            loaded.ok_or_else(|| crate::refusal::not_found(format!("no job {id:?}")))?;
        let job = Job::new(meta, results);
        {
            let mut live = job.live();
            let mut log = Vec::new();
            for r in &live.results {
                if r.started_at.is_some() {
                    log.push(Arc::new(Ev::Start {
                        node: r.node.clone(),
                    }));
                }
                for (i, s) in [stream::STDOUT, stream::STDERR].into_iter().enumerate() {
                    if !r.output[i].kept.is_empty() {
                        log.push(Arc::new(Ev::Output {
                            node: r.node.clone(),
                            stream: s,
                            data: r.output[i].kept.clone(),
                        }));
                    }
                }
                if r.state.is_final() {
                    log.push(Arc::new(Ev::End {
                        result: Box::new(r.clone()),
                    }));
                }
            }
            if live.results.iter().all(|r| r.state.is_final()) {
                log.push(Arc::new(Ev::Finished));
            }
            live.log = log;
        }
        Ok(Arc::new(job))
    }

    /// Jobs matching `filter`, newest first.
    pub fn list(&self, filter: persist::Filter) -> Result<Vec<Arc<Job>>, Refusal> {
        let internal = |e: anyhow::Error| Refusal::new(Kind::Internal, format!("{e:#}"));
        let ids = self
            .store
            .read({
                let f = filter.clone();
                move |c| persist::list(c, &f)
            })
            .map_err(internal)?;
        let mut out = Vec::new();
        for id in ids {
            let job = self.get(&id)?;
            if filter.state.is_none_or(|s| job.state() == s) {
                out.push(job);
            }
        }
        Ok(out)
    }

    pub fn seq_of(&self, id: &str) -> Result<Option<u64>, Refusal> {
        let id = id.to_string();
        self.store
            .read(move |c| persist::seq_of(c, &id))
            .map_err(|e| Refusal::new(Kind::Internal, format!("{e:#}")))
    }

    /// Attaches to a job: what was kept so far, then live events (none if it has ended).
    pub fn subscribe(&self, job: &Job) -> Subscription {
        let mut live = job.live();
        let replay = live.log.clone();
        if live.log.last().is_some_and(|e| matches!(**e, Ev::Finished)) {
            return Subscription { replay, live: None };
        }
        let (tx, rx) = bounded(SUBSCRIBER_BACKLOG);
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed) as u64;
        live.subscribers.push(Subscriber { id, tx });
        Subscription {
            replay,
            live: Some(rx),
        }
    }

    /// A node lost its access for good (rejected, revoked): what ran there ends `lost` now (the
    /// agent was told to stop it), what waited for it ends `offline`, instead of waiting for a
    /// link that will not come back.
    pub fn cut_off(self: &Arc<Self>, node: &str) {
        let (queued, active): (Vec<Entry>, Vec<Arc<Job>>) = {
            let mut s = lock(&self.sched);
            let queued = s
                .nodes
                .get_mut(node)
                .map(|q| q.lanes.values_mut().flat_map(|l| l.drain(..)).collect())
                .unwrap_or_default();
            (queued, s.active.values().cloned().collect())
        };
        let why = self.bus.why_unavailable(node);
        for e in queued {
            self.finish(&e.job, e.idx, NodeState::Offline, None, Some(why.clone()));
        }
        for job in active {
            let running: Vec<usize> = job
                .results()
                .iter()
                .enumerate()
                .filter(|(_, r)| r.node == node && r.state == NodeState::Running)
                .map(|(i, _)| i)
                .collect();
            for idx in running {
                let lost = Refusal::new(
                    Kind::NodeLost,
                    format!(
                        "{node} was cut off while it ran the command: {}",
                        why.message
                    ),
                );
                self.finish(&job, idx, NodeState::Lost, None, Some(lost));
            }
        }
    }

    /// Resizes a running tty job's terminal (`Message::Resize`), or signals its foreground
    /// process group (`Message::Signal`); 409 when it has no terminal, has not started or ended.
    pub fn terminal(&self, id: &str, act: impl Fn(&RequestHandle)) -> Result<Arc<Job>, Refusal> {
        let job = self.get(id)?;
        if !matches!(&job.meta.kind, JobKind::Exec { spec, .. } if spec.tty.is_some()) {
            return Err(Refusal::new(
                Kind::Conflict,
                format!("job {id} has no terminal (create it with \"tty\")"),
            ));
        }
        if job.is_finished() {
            return Err(Refusal::new(Kind::Conflict, format!("job {id} has ended")));
        }
        let handles: Vec<RequestHandle> = job.live().handles.values().cloned().collect();
        if handles.is_empty() {
            return Err(Refusal::new(
                Kind::Conflict,
                format!("job {id} is not running on its node yet"),
            ));
        }
        handles.iter().for_each(act);
        Ok(job)
    }

    /// Cancels a job: queued parts never run, running ones are killed on their nodes.
    pub fn cancel(self: &Arc<Self>, id: &str) -> Result<Arc<Job>, Refusal> {
        let job = self.get(id)?;
        log::info!("job {id}: cancel asked");
        let handles: Vec<RequestHandle> = {
            let mut live = job.live();
            live.cancelled = true;
            live.handles.values().cloned().collect()
        };
        for h in handles {
            h.cancel();
        }
        let mut dropped = Vec::new();
        {
            let mut s = lock(&self.sched);
            for q in s.nodes.values_mut() {
                for entries in q.lanes.values_mut() {
                    entries.retain(|e| {
                        if e.job.meta.id == id {
                            dropped.push(e.idx);
                            false
                        } else {
                            true
                        }
                    });
                }
            }
        }
        for idx in dropped {
            let why = Refusal::new(Kind::Conflict, "cancelled before it started");
            self.finish(&job, idx, NodeState::Cancelled, None, Some(why));
        }
        self.pump();
        Ok(job)
    }

    /// Reloads the jobs a previous run of the gateway left unfinished.
    fn resume(self: &Arc<Self>) -> anyhow::Result<()> {
        let open = self.store.read(persist::open_jobs)?;
        if open.is_empty() {
            return Ok(());
        }
        let t = now();
        let mut resumed = 0;
        for (meta, results) in open {
            let job = Arc::new(Job::new(meta, results));
            lock(&self.sched)
                .active
                .insert(job.meta.id.clone(), job.clone());
            if !matches!(job.meta.kind, JobKind::Exec { .. }) {
                // A transfer's source or sink was the request that ran it, gone with the gateway.
                for (idx, r) in job.results().into_iter().enumerate() {
                    if !r.state.is_final() {
                        let why = Refusal::new(
                            Kind::NodeLost,
                            "the gateway restarted during the transfer; send the file again",
                        );
                        self.finish(&job, idx, NodeState::Lost, None, Some(why));
                    }
                }
                continue;
            }
            for (idx, r) in job.results().into_iter().enumerate() {
                match r.state {
                    NodeState::Queued => self.enqueue(&job, idx, &r.node, t + RESTART_GRACE_S),
                    NodeState::Running => {
                        {
                            let mut s = lock(&self.sched);
                            let q = s.nodes.entry(r.node.clone()).or_default();
                            q.running += 1;
                            q.busy_lanes.insert(job.meta.lane.clone());
                        }
                        job.running.fetch_add(1, Ordering::Relaxed);
                        self.spawn_part(job.clone(), idx, r.node.clone(), true);
                    }
                    _ => {}
                }
                resumed += 1;
            }
        }
        log::info!("resumed {resumed} unfinished job parts from the store");
        self.pump();
        Ok(())
    }
}

mod opt_b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
