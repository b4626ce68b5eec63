//! The test side of the command service: a gateway on one end of a `UnixStream` pair (the
//! in-memory twin of the tunnel) running the real handshake, with `serve` on the other end, and a
//! node (data dir and service context) that such gateways connect to and that can be "restarted".

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use burrow_core::identity::{Identity, PublicKey};
use burrow_core::protocol::{stream, ExecSpec, ExitStatus, Message, Role};
use burrow_core::secure::{handshake, Opener, Sealer};

use crate::jobs::{Jobs, Limits};
use crate::service::{serve, HandshakeSlots, HeartbeatSource, Liveness, ServiceContext};

pub(crate) struct TestGateway {
    pub stream: UnixStream,
    pub sealer: Sealer,
    pub opener: Opener,
    pub agent: Option<JoinHandle<anyhow::Result<()>>>,
    /// Keeps the node's data dir while the connection lives.
    pub _node: Option<Arc<tempfile::TempDir>>,
}

/// Everything one request sent.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Option<ExitStatus>,
    pub failed: Option<String>,
}

impl Outcome {
    pub fn exit(&self) -> &ExitStatus {
        match (&self.status, &self.failed) {
            (Some(status), _) => status,
            (None, failed) => panic!("request failed: {failed:?}"),
        }
    }
}

/// A node (agent data dir and service context) that test gateways connect to; [`TestNode::restart`]
/// is a new agent process on the same data dir.
pub(crate) struct TestNode {
    pub ctx: Arc<ServiceContext>,
    pub gateway: Identity,
    pub dir: Arc<tempfile::TempDir>,
    limits: Limits,
}

impl TestNode {
    pub fn new(max_concurrent: usize) -> TestNode {
        TestNode::with_limits(Limits::new(max_concurrent))
    }

    pub fn with_limits(limits: Limits) -> TestNode {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let gateway = Identity::generate("gateway");
        let ctx = context(
            &gateway.public(),
            dir.path(),
            limits,
            Liveness::default(),
            None,
        );
        TestNode {
            ctx,
            gateway,
            dir,
            limits,
        }
    }

    /// A node whose jobs each get a cgroup under `parent` (a directory in a cgroup2 mount).
    pub fn with_cgroups(max_concurrent: usize, parent: std::path::PathBuf) -> TestNode {
        let node = TestNode::new(max_concurrent);
        let jobs = Jobs::open(
            node.dir.path(),
            node.limits,
            Some(crate::cgroup::Cgroups::at(parent)),
        )
        .unwrap();
        let ctx = ServiceContext {
            identity: Identity::generate("node"),
            gateway_key: node.gateway.public(),
            jobs: Arc::new(jobs),
            services: no_services(),
            liveness: Liveness::default(),
            revoked: Default::default(),
            heartbeat: None,
            last_contact: Mutex::new(Instant::now()),
        };
        TestNode {
            ctx: Arc::new(ctx),
            ..node
        }
    }

    /// A node whose connections send a heartbeat at once and then every `every`.
    pub fn with_heartbeats(max_concurrent: usize, every: Duration) -> TestNode {
        let node = TestNode::new(max_concurrent);
        let liveness = Liveness {
            tick: Duration::from_millis(20),
            heartbeat: every,
            ..Liveness::default()
        };
        let beat: HeartbeatSource = Box::new(burrow_core::api::Heartbeat::default);
        TestNode {
            ctx: context(
                &node.gateway.public(),
                node.dir.path(),
                node.limits,
                liveness,
                Some(beat),
            ),
            ..node
        }
    }

    /// A node that declares `services`, at most `max_streams` streams at once.
    pub fn with_services(services: Vec<crate::services::Declared>, max_streams: usize) -> TestNode {
        let node = TestNode::new(4);
        let mut ctx = context(
            &node.gateway.public(),
            node.dir.path(),
            node.limits,
            Liveness::default(),
            None,
        );
        Arc::get_mut(&mut ctx).expect("fresh context").services =
            Arc::new(crate::services::Services::new(services, max_streams).unwrap());
        TestNode { ctx, ..node }
    }

    /// The same data dir served by a fresh agent (what a restart, or a kill -9, leaves on disk).
    pub fn restart(&self) -> TestNode {
        TestNode {
            ctx: context(
                &self.gateway.public(),
                self.dir.path(),
                self.limits,
                Liveness::default(),
                None,
            ),
            gateway: self.gateway.clone(),
            dir: self.dir.clone(),
            limits: self.limits,
        }
    }

    pub fn jobs_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("jobs")
    }

    pub fn connect(&self) -> TestGateway {
        let (mut stream, agent) = spawn_agent_on(self.ctx.clone());
        let channel = handshake(&mut stream, &self.gateway, Role::Gateway, |_| true).unwrap();
        TestGateway {
            stream,
            sealer: channel.sealer,
            opener: channel.opener,
            agent: Some(agent),
            _node: Some(self.dir.clone()),
        }
    }
}

fn no_services() -> Arc<crate::services::Services> {
    Arc::new(crate::services::Services::new(Vec::new(), 1).unwrap())
}

fn context(
    gateway_key: &PublicKey,
    data: &std::path::Path,
    limits: Limits,
    liveness: Liveness,
    heartbeat: Option<HeartbeatSource>,
) -> Arc<ServiceContext> {
    Arc::new(ServiceContext {
        identity: Identity::generate("node"),
        gateway_key: *gateway_key,
        jobs: Arc::new(Jobs::open(data, limits, None).unwrap()),
        services: no_services(),
        liveness,
        revoked: Default::default(),
        heartbeat,
        last_contact: Mutex::new(Instant::now()),
    })
}

/// The gateway end, the agent thread, and the node's data dir (removed when the last holder drops it).
pub(crate) type Spawned = (
    UnixStream,
    JoinHandle<anyhow::Result<()>>,
    Arc<tempfile::TempDir>,
);

pub(crate) fn spawn_agent(gateway_key: PublicKey, max_concurrent: usize) -> Spawned {
    spawn_agent_with(gateway_key, max_concurrent, Liveness::default(), None)
}

pub(crate) fn spawn_agent_with(
    gateway_key: PublicKey,
    max_concurrent: usize,
    liveness: Liveness,
    heartbeat: Option<HeartbeatSource>,
) -> Spawned {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let ctx = context(
        &gateway_key,
        dir.path(),
        Limits::new(max_concurrent),
        liveness,
        heartbeat,
    );
    let (stream, agent) = spawn_agent_on(ctx);
    (stream, agent, dir)
}

pub(crate) fn spawn_agent_on(
    ctx: Arc<ServiceContext>,
) -> (UnixStream, JoinHandle<anyhow::Result<()>>) {
    let (gateway_end, agent_end) = UnixStream::pair().unwrap();
    let slot = HandshakeSlots::new(1).try_take().unwrap();
    let agent = thread::spawn(move || {
        let reader = agent_end.try_clone().unwrap();
        serve(reader, agent_end, ctx, slot)
    });
    // A hung test fails with a message instead of hanging the suite.
    gateway_end
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    (gateway_end, agent)
}

impl TestGateway {
    pub fn start() -> TestGateway {
        TestGateway::start_with(8)
    }

    pub fn start_with(max_concurrent: usize) -> TestGateway {
        TestNode::new(max_concurrent).connect()
    }

    pub fn send(&mut self, message: &Message) {
        self.sealer
            .write_message(&mut self.stream, message)
            .unwrap();
    }

    /// Sends unless the agent has hung up.
    pub fn try_send(&mut self, message: &Message) -> bool {
        self.sealer.write_message(&mut self.stream, message).is_ok()
    }

    /// Seals a raw frame body (one no `Message` encodes to) and sends it.
    pub fn send_body(&mut self, body: &[u8]) {
        let frame = self.sealer.seal_body(body).unwrap();
        self.stream.write_all(&frame).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame from the agent, answering its `Ping`s on the way as a gateway's reader does
    /// (a test that waits longer than the agent's `ping_after` would otherwise see them).
    pub fn recv(&mut self) -> Message {
        loop {
            match self.recv_any() {
                Message::Ping(value) => self.send(&Message::Pong(value)),
                message => return message,
            }
        }
    }

    /// The next frame from the agent, `Ping`s included.
    pub fn recv_any(&mut self) -> Message {
        self.opener
            .read_message(&mut self.stream)
            .expect("a frame from the agent")
    }

    /// Waits at most `wait` for a frame; `None` if none came.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Message> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let got = self.opener.read_message(&mut self.stream);
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        match got {
            Ok(message) => Some(message),
            Err(e) if e.is_timeout() => None,
            Err(e) => panic!("reading from the agent: {e}"),
        }
    }

    /// Sends `Exec` with a job id of its own.
    pub fn exec(&mut self, id: u32, spec: ExecSpec) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.exec_job(
            id,
            &format!("test-job-{}-{n}-{id}", std::process::id()),
            spec,
        );
    }

    /// Sends `Exec` for job id `job`.
    pub fn exec_job(&mut self, id: u32, job: &str, spec: ExecSpec) {
        self.send(&Message::Exec {
            id,
            job: job.into(),
            spec,
        });
    }

    /// Collects request `id`'s frames up to its last one; any other request's frame is a failure.
    pub fn collect(&mut self, id: u32) -> Outcome {
        let mut outcome = Outcome::default();
        loop {
            match self.recv() {
                Message::Data {
                    id: i,
                    stream: stream::STDOUT,
                    data,
                } if i == id => outcome.stdout.extend(data),
                Message::Data {
                    id: i,
                    stream: stream::STDERR,
                    data,
                } if i == id => outcome.stderr.extend(data),
                Message::Exit { id: i, status } if i == id => {
                    outcome.status = Some(status);
                    return outcome;
                }
                Message::Failed { id: i, message } if i == id => {
                    outcome.failed = Some(message);
                    return outcome;
                }
                other => panic!("unexpected frame while collecting request {id}: {other:?}"),
            }
        }
    }

    pub fn run(&mut self, spec: ExecSpec) -> Outcome {
        self.exec(1, spec);
        self.collect(1)
    }

    /// Closes the gateway end and returns what `serve` returned.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let agent = self.agent.take().unwrap();
        drop(self);
        agent.join().expect("serve does not panic")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(agent) = self.agent.take() {
            let _ = agent.join();
        }
    }
}

pub(crate) fn command(line: &str) -> ExecSpec {
    ExecSpec {
        command: Some(line.into()),
        ..ExecSpec::default()
    }
}

pub(crate) fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// Live (not zombie) processes of process group `group`, as (pid, command name).
pub(crate) fn live_members(group: i32) -> Vec<(i32, String)> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == group.to_string() {
            members.push((pid, stat[open + 1..close].to_string()));
        }
    }
    members
}

/// Reads request `id`'s first line of stdout as a number (tests print `$$` first); returns it and any
/// output that came in the same frames after that line.
pub(crate) fn first_number(gateway: &mut TestGateway, id: u32) -> (i32, Vec<u8>) {
    let mut stdout = Vec::new();
    while !stdout.contains(&b'\n') {
        match gateway.recv() {
            Message::Data {
                id: i,
                stream: stream::STDOUT,
                data,
            } if i == id => stdout.extend(data),
            other => panic!("expected the pid on stdout, got {other:?}"),
        }
    }
    let end = stdout.iter().position(|&b| b == b'\n').unwrap();
    let rest = stdout.split_off(end + 1);
    let number = String::from_utf8(stdout).unwrap().trim().parse().unwrap();
    (number, rest)
}
