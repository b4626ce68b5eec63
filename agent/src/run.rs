//! `agent run`: keep one SSH session to the gateway up for as long as the agent lives.
//!
//! Each session: connect with the node key, listen on the node's port on the gateway's 127.0.0.1,
//! serve every forwarded connection in its own thread ("conn-N", the protocol in `service`), and
//! heartbeat every 30 s over a direct-tcpip channel. When the session dies (or heartbeats keep
//! failing) the agent first asks whether the gateway is reachable at all (a bare TCP connect to its
//! sshd). If not, it probes again every 1–2 s (jittered) and reconnects as soon as the port answers,
//! so a node is back within seconds of the gateway, however long the outage. If the gateway answers
//! and the session still fails (key refused, protocol error), it backs off exponentially with jitter:
//! retrying those quickly would only hammer a gateway that is up and saying no.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use burrow_core::api::{Heartbeat, HeartbeatReply};
use burrow_core::identity::{Identity, PublicKey};

use crate::cli::Profile;
use crate::gateway_api::{ApiChannel, ApiError};
use crate::metrics::Sampler;
use crate::pairing::{self, tunnel_config};
use crate::service::{serve, ServiceContext};
use crate::state::{AgentState, DataDir};
use crate::tunnel::Tunnel;

const HEARTBEAT: Duration = Duration::from_secs(30);
/// Consecutive failed heartbeats after which the session is considered dead.
const MAX_MISSED: u32 = 3;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A session that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
/// While the gateway's port does not answer, it is probed this often (jittered to 1–2 s). A probe is
/// one TCP handshake; a fleet probing at this rate costs sshd nothing until it listens again.
const PROBE: Duration = Duration::from_secs(2);

pub fn run(dir: &DataDir, join: Option<&str>, profile: &Profile) -> anyhow::Result<()> {
    let identity = dir.identity()?;
    // Before anything can run: what a crashed run left is killed, and a stop signal kills commands.
    crate::reaper::init(dir.path())?;
    let mut state = match (dir.load()?, join) {
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
        max_concurrent: 64,
    });
    let mut sampler = Sampler::new();
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        match session(dir, &identity, &mut state, &ctx, &mut sampler) {
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

/// Runs one session until it dies; returns why.
fn session(
    dir: &DataDir,
    identity: &Identity,
    state: &mut AgentState,
    ctx: &Arc<ServiceContext>,
    sampler: &mut Sampler,
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
    let ctx = ctx.clone();
    let acceptor: JoinHandle<()> =
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                // Ends when the tunnel dies and drops its sender.
                for (n, stream) in incoming.into_iter().enumerate() {
                    let ctx = ctx.clone();
                    let (reader, writer) = stream.split();
                    let spawned =
                        std::thread::Builder::new()
                            .name(format!("conn-{n}"))
                            .spawn(move || {
                                if let Err(e) = serve(reader, writer, ctx) {
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
    let mut missed = 0;
    let reason = loop {
        match heartbeat(&tunnel, dir, identity, state, port, sampler) {
            Ok(()) => missed = 0,
            Err(e) => {
                missed += 1;
                log::warn!("heartbeat failed ({missed}/{MAX_MISSED}): {e:#}");
                if missed >= MAX_MISSED {
                    break "heartbeats keep failing".to_string();
                }
            }
        }
        if let Some(reason) = tunnel.wait_closed(HEARTBEAT) {
            break reason;
        }
    };
    tunnel.shutdown();
    let _ = acceptor.join();
    Ok(reason)
}

fn heartbeat(
    tunnel: &Tunnel,
    dir: &DataDir,
    identity: &Identity,
    state: &mut AgentState,
    port: u16,
    sampler: &mut Sampler,
) -> anyhow::Result<()> {
    let gateway_key = PublicKey::from_base64(&state.gateway.gateway_key)?;
    let mut api = ApiChannel::open(tunnel, state.gateway.api_port, &gateway_key)?;
    let beat = Heartbeat {
        port,
        version: burrow_core::VERSION.into(),
        metrics: sampler.sample(),
    };
    let token = state.token.clone().unwrap_or_default();
    let reply: anyhow::Result<HeartbeatReply> =
        api.post("/api/v1/agent/heartbeat", Some(&token), &beat);
    let fresh = match reply {
        Ok(r) => r.token,
        // An expired or revoked token: prove our key again for a new one.
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == 401) =>
        {
            log::info!("node token refused ({e}); asking for a new one");
            pairing::request(state, identity, None)?.token
        }
        Err(e) => return Err(e),
    };
    if let Some(token) = fresh {
        state.token = Some(token);
        dir.save(state)?;
    }
    Ok(())
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
