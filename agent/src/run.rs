//! `agent run`: keep one SSH session to the gateway up for as long as the agent lives.
//!
//! Each session: connect with the node key, listen on the node's port on the gateway's 127.0.0.1,
//! serve every forwarded connection in its own thread ("conn-N", the protocol in `service`, which
//! also carries the heartbeats). When the session dies (or no frame has come from the gateway for
//! [`SILENT_LIMIT`]) the agent first asks whether the gateway is reachable at all (a bare TCP connect
//! to its sshd). If not, it probes again every 1–2 s (jittered) and reconnects as soon as the port
//! answers, so a node is back within seconds of the gateway, however long the outage. If the gateway
//! answers and the session still fails (key refused, protocol error), it backs off exponentially with
//! jitter: retrying those quickly would only hammer a gateway that is up and saying no.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use burrow_core::api::Heartbeat;
use burrow_core::identity::{Identity, PublicKey};

use crate::cgroup::Cgroups;
use crate::cli::Profile;
use crate::jobs::{Jobs, Limits};
use crate::metrics::Sampler;
use crate::pairing::{self, tunnel_config};
use crate::service::{serve, HandshakeSlots, Liveness, ServiceContext, MAX_UNAUTHENTICATED};
use crate::state::{AgentState, DataDir};
use crate::tunnel::Tunnel;

/// How often the session checks that the gateway still talks to it and has not revoked the node
/// (a revoked agent stops within this of the gateway's `Bye`, even if its tunnel stays up).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A session on which no frame came from the gateway for this long is considered dead (libssh2's
/// keepalives never check replies). The gateway dials within seconds and pings every 15 s of quiet.
const SILENT_LIMIT: Duration = Duration::from_secs(90);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A session that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
/// While the gateway's port does not answer, it is probed this often (jittered to 1–2 s). A probe is
/// one TCP handshake; a fleet probing at this rate costs sshd nothing until it listens again.
const PROBE: Duration = Duration::from_secs(2);

/// Jobs and transfers the agent runs at once when `--max-concurrent` is not given.
pub const DEFAULT_MAX_CONCURRENT: u16 = 64;

pub fn run(
    dir: &DataDir,
    join: Option<&str>,
    profile: &Profile,
    max_concurrent: usize,
) -> anyhow::Result<()> {
    let identity = dir.identity()?;
    // Before anything can run: what a crashed run left is killed, and a stop signal kills commands.
    crate::reaper::init(dir.path())?;
    let mut state = match (dir.load()?, join) {
        (Some(s), None) if s.status == REVOKED => return Err(Revoked(
            "the gateway revoked this node earlier; join again: agent run --join <new join string>"
                .into(),
        )
        .into()),
        (Some(s), _) if s.status == "approved" => s,
        (_, Some(j)) => pairing::join(dir, j, profile)?,
        (Some(s), None) => pairing::join_pending(dir, &s)?,
        (None, None) => {
            bail!("this node is not paired yet: pass --join <string from `gateway join create`>")
        }
    };
    let gateway_key = PublicKey::from_base64(&state.gateway.gateway_key)?;
    let ctx = Arc::new(ServiceContext {
        identity: identity.clone(),
        gateway_key,
        jobs: Arc::new(Jobs::open(
            dir.path(),
            Limits::new(max_concurrent.max(1)),
            Cgroups::detect(),
        )?),
        liveness: Liveness::default(),
        revoked: Default::default(),
        heartbeat: Some(heartbeat_source()),
        last_contact: Mutex::new(Instant::now()),
    });
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let outcome = session(&identity, &state, &ctx);
        if let Some(reason) = lock_revoked(&ctx).take() {
            // Remembered, so a restart (systemd's, or by hand) does not start retrying again. Said
            // once, by `main`, as the error `agent run` ends with.
            state.status = REVOKED.into();
            state.token = None;
            dir.save(&state)?;
            return Err(Revoked(format!("the gateway removed this node: {reason}")).into());
        }
        match outcome {
            Ok(reason) => log::warn!("session to {} ended: {reason}", state.gateway.ssh),
            Err(e) => log::warn!("session to {} failed: {e:#}", state.gateway.ssh),
        }
        if started.elapsed() > STABLE {
            backoff = BACKOFF_MIN;
        }
        if !reachable(&state.gateway.ssh) {
            wait_until_reachable(&state.gateway.ssh);
            // An outage says nothing against our key or protocol: start over at once.
            backoff = BACKOFF_MIN;
            continue;
        }
        let wait = jitter(backoff);
        log::info!("reconnecting in {:.1}s", wait.as_secs_f32());
        // The agent has nothing else to do until the next attempt.
        std::thread::sleep(wait);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn lock_revoked(ctx: &ServiceContext) -> std::sync::MutexGuard<'_, Option<String>> {
    ctx.revoked.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `agent.json`'s status once the gateway has revoked the node.
const REVOKED: &str = "revoked";

/// The gateway removed this node for good (`gateway nodes revoke`): `agent run` stops, with
/// [`Revoked::EXIT_CODE`], which the systemd unit does not restart (`RestartPreventExitStatus`).
#[derive(Debug)]
pub struct Revoked(String);

impl Revoked {
    pub const EXIT_CODE: u8 = 3;
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Revoked {}

/// Runs one session until it dies; returns why.
fn session(
    identity: &Identity,
    state: &AgentState,
    ctx: &Arc<ServiceContext>,
) -> anyhow::Result<String> {
    let ports = state
        .ports
        .ok_or_else(|| anyhow!("no ports assigned; re-join"))?;
    let (tunnel, incoming) =
        Tunnel::connect(&tunnel_config(&state.gateway, identity, ports.to_vec()))?;
    let port = tunnel.listen_port().unwrap_or(ports[0]);
    log::info!(
        "connected to {} as {:?}, serving on gateway port {port}",
        state.gateway.ssh,
        state.name
    );
    // A fresh session has yet to be dialed: the silence limit counts from now.
    ctx.heard_from_gateway();
    let watch = ctx.clone();
    let ctx = ctx.clone();
    let acceptor: JoinHandle<()> =
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                // Anyone on the gateway host can connect: only a few may be unauthenticated at once.
                let slots = HandshakeSlots::new(MAX_UNAUTHENTICATED);
                // Ends when the tunnel dies and drops its sender.
                for (n, stream) in incoming.into_iter().enumerate() {
                    let Some(slot) = slots.try_take() else {
                        log::warn!(
                            "closing connection {n} at once: {MAX_UNAUTHENTICATED} others are still in their handshake"
                        );
                        // Dropping the stream closes its channel.
                        drop(stream);
                        continue;
                    };
                    let ctx = ctx.clone();
                    let (reader, writer) = stream.split();
                    let spawned =
                        std::thread::Builder::new()
                            .name(format!("conn-{n}"))
                            .spawn(move || {
                                if let Err(e) = serve(reader, writer, ctx, slot) {
                                    log::warn!("gateway connection ended: {e:#}");
                                }
                            });
                    match spawned {
                        Ok(h) => conns.push(h),
                        Err(e) => log::error!("spawning a connection thread: {e}"),
                    }
                    conns.retain(|h| !h.is_finished());
                }
                for h in conns {
                    let _ = h.join();
                }
            })?;
    let reason = loop {
        if let Some(reason) = tunnel.wait_closed(CHECK_EVERY) {
            break reason;
        }
        if lock_revoked(&watch).is_some() {
            break "the gateway ended the link for good".to_string();
        }
        let quiet = watch.quiet_for();
        if quiet >= SILENT_LIMIT {
            break format!("no frame from the gateway for {}s", quiet.as_secs());
        }
    };
    tunnel.shutdown();
    let _ = acceptor.join();
    Ok(reason)
}

/// The node's heartbeats: version and metrics, sent on each authenticated connection.
fn heartbeat_source() -> crate::service::HeartbeatSource {
    let sampler = Mutex::new(Sampler::new());
    Box::new(move || Heartbeat {
        version: burrow_core::VERSION.into(),
        metrics: sampler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sample(),
        // Filled in by the service, which knows the job table.
        max_jobs: 0,
        running: 0,
        ..Heartbeat::default()
    })
}

/// Whether the gateway's sshd accepts a TCP connection now (closed at once, before SSH starts).
fn reachable(addr: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let Ok(addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, PROBE).is_ok())
}

/// Probes every 1–2 s until the gateway's port answers.
fn wait_until_reachable(addr: &str) {
    log::info!("gateway {addr} is unreachable; probing every 1-2 s until it answers");
    let down = Instant::now();
    loop {
        // Nothing else to do while the gateway is away.
        std::thread::sleep(jitter(PROBE));
        if reachable(addr) {
            log::info!(
                "gateway {addr} answers again after {:.0}s; reconnecting",
                down.elapsed().as_secs_f32()
            );
            return;
        }
    }
}

/// `base` scaled by a random factor in [0.5, 1.0), so a fleet does not reconnect in lockstep.
fn jitter(base: Duration) -> Duration {
    let r = u16::from_be_bytes(burrow_core::random_bytes::<2>()) as f64 / 65536.0;
    base.mul_f64(0.5 + r / 2.0)
}
