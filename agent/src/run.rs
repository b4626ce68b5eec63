//! `agent run`: keep one SSH session to the gateway up for as long as the agent lives.
//!
//! Each session: connect with the node key, listen on the node's port on the gateway's 127.0.0.1,
//! serve every forwarded connection in its own thread ("conn-N", the protocol in `service`, which
//! also carries the heartbeats). A dead link is noticed within `--dead-after` (20 s by default) at
//! both levels: the tunnel's pump probes a silent sshd (`tunnel/pump.rs`), the service pings a silent
//! gateway and drops the connection (`service.rs`). A session whose tunnel stays up but that no
//! gateway dials for [`Link::silent_limit`] (three bounds) is redialed too.
//!
//! When the session dies the agent first asks whether the gateway is reachable at all (a bare TCP
//! connect to its sshd). If not, it probes again every 0.5–1 s (jittered, each probe bounded by
//! [`PROBE_TIMEOUT`]) and reconnects as soon as the port answers, so a node is back within seconds
//! of its network, however long the outage. If the gateway answers and the session still fails (key
//! refused, protocol error), it backs off exponentially with jitter: retrying those quickly would
//! only hammer a gateway that is up and saying no.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use burrow_core::api::Heartbeat;
use burrow_core::identity::{Identity, PublicKey};

use crate::cgroup::Cgroups;
use crate::cli::{Link, Profile};
use crate::jobs::{Jobs, Limits};
use crate::metrics::{Faults, Sampler};
use crate::pairing::{self, tunnel_config};
use crate::service::{serve, HandshakeSlots, Liveness, ServiceContext, MAX_UNAUTHENTICATED};
use crate::state::{AgentState, DataDir};
use crate::tunnel::Tunnel;

/// How often the session checks that the gateway still talks to it and has not revoked the node
/// (a revoked agent stops within this of the gateway's `Bye`, even if its tunnel stays up).
const CHECK_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A session that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
/// While the gateway's port does not answer, it is probed this often (jittered to 0.5–1 s). A probe
/// is one TCP handshake; a fleet probing at this rate costs sshd nothing until it listens again.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe whose SYN is not answered within this is a miss (one SYN per probe: Linux would only
/// retransmit after 1 s). With [`PROBE_EVERY`], the port is seen again at most 2 s after it answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Link {
    /// A session whose tunnel answers but on which no frame came from the gateway for this long is
    /// redialed. Longer than the bound: a frozen gateway is noticed by the connection's liveness
    /// (the tunnel to a live sshd stays, so a gateway that wakes up dials straight in); this catches
    /// a forward the gateway cannot reach (say, sshd still routing the port to a stale session).
    pub fn silent_limit(&self) -> Duration {
        (self.dead_after * 3).max(STABLE)
    }
}

/// Jobs and transfers the agent runs at once when `--max-concurrent` is not given.
pub const DEFAULT_MAX_CONCURRENT: u16 = 64;

/// What the node serves: how many jobs at once, under which policy, and which services.
pub struct Serving<'a> {
    pub max_concurrent: usize,
    pub policy: Option<&'a Path>,
    pub services: crate::services::Services,
}

pub fn run(
    dir: &DataDir,
    join: Option<&str>,
    profile: &Profile,
    serving: Serving<'_>,
    link: Link,
) -> anyhow::Result<()> {
    let Serving {
        max_concurrent,
        policy,
        services,
    } = serving;
    let services = Arc::new(services);
    let identity = dir.identity()?;
    // The owner's policy before anything can run: a bad file stops the agent here.
    crate::policy::install(policy, dir.path())?;
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
    let liveness = Liveness::new(link.dead_after, link.heartbeat_interval);
    let ctx = Arc::new(ServiceContext {
        identity: identity.clone(),
        gateway_key,
        jobs: Arc::new(Jobs::open(
            dir.path(),
            Limits::new(max_concurrent.max(1)),
            Cgroups::detect(),
        )?),
        services: services.clone(),
        liveness,
        revoked: Default::default(),
        heartbeat: Some(heartbeat_source(dir.path(), &liveness, services)),
        last_contact: Mutex::new(Instant::now()),
    });
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let outcome = session(&identity, &state, &ctx, link);
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
        if started.elapsed() >= STABLE {
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
    link: Link,
) -> anyhow::Result<String> {
    let ports = state
        .ports
        .ok_or_else(|| anyhow!("no ports assigned; re-join"))?;
    let (tunnel, incoming) = Tunnel::connect_within(
        &tunnel_config(&state.gateway, identity, ports.to_vec()),
        link.dead_after,
    )?;
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
        if quiet >= link.silent_limit() {
            break format!(
                "no frame from the gateway for {}s although its sshd answers",
                quiet.as_secs()
            );
        }
    };
    tunnel.shutdown();
    let _ = acceptor.join();
    Ok(reason)
}

/// The node's heartbeats: version, metrics, faults, when it was sent and when the next one is due at
/// the latest. The figures are sampled when the beat is made (on the connection's heartbeat thread).
fn heartbeat_source(
    data_dir: &Path,
    liveness: &Liveness,
    services: Arc<crate::services::Services>,
) -> crate::service::HeartbeatSource {
    let sampler = Mutex::new(Sampler::new());
    let faults = Faults::new(data_dir).with_check(Box::new(crate::policy::fault));
    let interval_s = liveness.latest_beat_s();
    Box::new(move || {
        let metrics = sampler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sample();
        Heartbeat {
            version: burrow_core::VERSION.into(),
            metrics,
            faults: faults.check(),
            interval_s,
            sent_at_ms: unix_ms(SystemTime::now()),
            // Filled in by the service, which knows the job table.
            max_jobs: 0,
            running: 0,
            policy: Some(Box::new(crate::policy::summary())),
            services: services.info(),
        }
    })
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether the gateway's sshd accepts a TCP connection now (closed at once, before SSH starts).
fn reachable(addr: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let Ok(addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, PROBE_TIMEOUT).is_ok())
}

/// Probes every 0.5–1 s until the gateway's port answers.
fn wait_until_reachable(addr: &str) {
    log::info!("gateway {addr} is unreachable; probing every second until it answers");
    let down = Instant::now();
    loop {
        // Nothing else to do while the gateway is away.
        std::thread::sleep(jitter(PROBE_EVERY));
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

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use super::*;

    /// Issue 8: after a cut is restored the node is linked again within 5 s. The agent's part: it
    /// sees the gateway's port answer again within two seconds (one probe timeout plus one wait),
    /// probing at most about once a second meanwhile (never in a tight loop).
    #[test]
    fn an_unreachable_gateway_is_seen_again_within_two_seconds() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        assert!(!reachable(&addr), "nothing listens yet");
        let outage = Duration::from_millis(1500);
        let opener = std::thread::spawn(move || {
            // The outage itself, not a synchronisation: the port opens 1.5 s into the wait.
            std::thread::sleep(outage);
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            (listener, Instant::now())
        });
        let waiting = Instant::now();
        wait_until_reachable(&addr);
        let seen = Instant::now();
        let (_listener, opened) = opener.join().unwrap();
        assert!(seen >= opened, "returned before the port opened");
        assert!(
            seen - opened <= Duration::from_secs(2),
            "{:?}",
            seen - opened
        );
        assert!(seen - waiting >= outage);
    }

    #[test]
    fn redial_waits_are_jittered_and_bounded() {
        for _ in 0..200 {
            let wait = jitter(PROBE_EVERY);
            assert!(wait >= PROBE_EVERY / 2 && wait < PROBE_EVERY, "{wait:?}");
        }
        let link = Link {
            dead_after: Duration::from_secs(20),
            heartbeat_interval: Duration::from_secs(30),
        };
        assert_eq!(link.silent_limit(), Duration::from_secs(60));
    }

    fn no_services() -> Arc<crate::services::Services> {
        Arc::new(crate::services::Services::new(Vec::new(), 1).unwrap())
    }

    /// A beat says when it was sent (the gateway's clock offset) and when the next is due at the
    /// latest, and carries the data dir's faults.
    #[test]
    fn heartbeats_carry_clock_interval_and_faults() {
        let dir = tempfile::tempdir().unwrap();
        let live = Liveness::new(Duration::from_secs(20), Duration::from_secs(30));
        let before = unix_ms(SystemTime::now());
        let beat = heartbeat_source(dir.path(), &live, no_services())();
        let after = unix_ms(SystemTime::now());
        assert!(
            (before..=after).contains(&beat.sent_at_ms),
            "{}",
            beat.sent_at_ms
        );
        assert_eq!(beat.interval_s, 33);
        assert_eq!(beat.faults, []);
        assert_eq!(beat.version, burrow_core::VERSION);
        assert!(beat.metrics.mem_total > 0 && !beat.metrics.filesystems.is_empty());

        let gone = dir.path().join("gone");
        let beat = heartbeat_source(&gone, &live, no_services())();
        assert_eq!(beat.faults.len(), 1, "{:?}", beat.faults);
        assert_eq!(
            beat.faults[0].code,
            burrow_core::api::fault::DATA_DIR_NOT_WRITABLE
        );
    }
}
