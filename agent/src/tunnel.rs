//! The agent's one SSH session to the gateway's sshd, and the channels that ride on it.
//!
//! Why: the node sits behind NAT, so the agent dials out. Over a single libssh2 session it keeps a
//! reverse forward (`ssh -R 127.0.0.1:<node port>`), whose connections carry the gateway's commands, and
//! opens direct-tcpip channels (`ssh -L`) to reach the gateway's API. The agent never listens on the node.
//!
//! What it owns: the TCP connection, the handshake with the host-key pin checked before any
//! authentication, public-key auth from memory, the reverse forward (bound to `127.0.0.1` explicitly,
//! because sshd's `permitlisten` matches the host literally), and the pump thread (`pump.rs`) that owns
//! the session afterwards, since libssh2 must not be called from two threads. Channels reach the rest
//! of the agent as [`Stream`]s (`stream.rs`). Reconnecting is the caller's job: [`Tunnel::wait_closed`].

mod channel;
mod pump;
mod stream;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use ssh2::{MethodType, Session};

use burrow_core::identity::fingerprint_of_blob;

pub use stream::Stream;
#[allow(
    unused_imports,
    reason = "part of the module's API; callers so far name them only via split()"
)]
pub use stream::{StreamReader, StreamWriter};

/// The fastest cipher libssh2 offers here (measured); the remaining defaults stay as fallbacks.
const PREFERRED_CIPHER: &str = "chacha20-poly1305@openssh.com";
/// Pending `open_direct` requests before callers wait.
const REQUEST_QUEUE: usize = 16;

/// Where and as whom to connect, and what to forward.
pub struct TunnelConfig {
    /// "host:port" of the gateway's OpenSSH sshd.
    pub addr: String,
    /// The SSH user.
    pub user: String,
    /// `SHA256:` fingerprint of the sshd host key, as `fingerprint_of_blob` computes it.
    pub host_key_pin: String,
    /// Unencrypted `openssh-key-v1` Ed25519 PEM.
    pub private_key_pem: String,
    /// "ssh-ed25519 AAAA... comment".
    pub public_key_line: String,
    /// Reverse-forward ports to try in order on the gateway's 127.0.0.1; empty: no reverse forward.
    pub listen_ports: Vec<u16>,
    /// Bounds the TCP connect and each blocking step of the handshake and authentication.
    pub connect_timeout: Duration,
}

/// Why [`Tunnel::connect`] failed.
#[derive(Debug)]
pub enum TunnelError {
    /// The sshd presented a host key other than the pinned one; nothing was sent to it.
    HostKeyMismatch { expected: String, got: String },
    /// The sshd did not accept our key.
    AuthRejected(String),
    /// The sshd refused every reverse-forward port.
    ListenRefused(String),
    /// Network or SSH protocol failure.
    Io(String),
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelError::HostKeyMismatch { expected, got } => write!(
                f,
                "gateway host key {got} does not match the pinned {expected}: refusing to connect \
                 (possible man-in-the-middle, or the gateway was reinstalled; re-join)"
            ),
            TunnelError::AuthRejected(why) => {
                write!(f, "the gateway's sshd rejected our key: {why}")
            }
            TunnelError::ListenRefused(why) => {
                write!(f, "the gateway's sshd refused the reverse forward: {why}")
            }
            TunnelError::Io(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for TunnelError {}

/// State the pump shares with the [`Tunnel`] handle.
struct Shared {
    /// Why the session ended; `None` while it is alive.
    closed: Mutex<Option<String>>,
    cond: Condvar,
    /// Set when the handle is dropped; the pump disconnects and exits.
    stop: AtomicBool,
    /// Liveness probes the server answered (for logs and tests).
    probes: AtomicU64,
    /// Channels open on the session, including those still closing (for logs and tests).
    channels: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<String>> {
        // A panicking pump is reported through the reason it leaves; the data itself stays valid.
        self.closed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the first reason only and wakes every `wait_closed`.
    fn set_closed(&self, reason: String) {
        let mut closed = self.lock();
        if closed.is_none() {
            *closed = Some(reason);
        }
        self.cond.notify_all();
    }
}

/// A live SSH session to the gateway: a handle to the pump thread that drives it.
pub struct Tunnel {
    /// Dropped on shutdown, together with `shared.stop`, so the pump sees it is alone.
    requests: Option<Sender<pump::Request>>,
    waker: stream::Waker,
    shared: Arc<Shared>,
    pump: Option<JoinHandle<()>>,
    listen_port: Option<u16>,
}

impl Tunnel {
    /// TCP connect (with timeout), SSH handshake, host-key pin check before auth, public-key auth from
    /// memory and, if `listen_ports` is not empty, a reverse forward on 127.0.0.1 at the first port sshd
    /// accepts. Returns the tunnel and a receiver of the forwarded connections.
    pub fn connect(cfg: &TunnelConfig) -> Result<(Tunnel, Receiver<Stream>), TunnelError> {
        Tunnel::connect_with(cfg, pump::Timings::default())
    }

    /// As [`Tunnel::connect`], with the session declared dead once the server has not answered for
    /// `dead_after` (`--dead-after`): the pump probes a silent link (see `pump::Timings`).
    pub fn connect_within(
        cfg: &TunnelConfig,
        dead_after: Duration,
    ) -> Result<(Tunnel, Receiver<Stream>), TunnelError> {
        Tunnel::connect_with(cfg, pump::Timings::for_dead_after(dead_after))
    }

    fn connect_with(
        cfg: &TunnelConfig,
        timings: pump::Timings,
    ) -> Result<(Tunnel, Receiver<Stream>), TunnelError> {
        let tcp = dial(&cfg.addr, cfg.connect_timeout)?;
        let io = |what: &str, e: &dyn fmt::Display| {
            TunnelError::Io(format!("{what} with {}: {e}", cfg.addr))
        };
        let socket = tcp
            .try_clone()
            .map_err(|e| io("duplicating the socket", &e))?;
        let mut session = Session::new().map_err(|e| io("creating an SSH session", &e))?;
        session.set_tcp_stream(tcp);
        // Blocking until the pump takes over; the timeout bounds each step.
        session.set_blocking(true);
        session.set_timeout(u32::try_from(cfg.connect_timeout.as_millis()).unwrap_or(u32::MAX));
        pin_host_key_type(&session)?;
        prefer_fast_cipher(&session);
        session.handshake().map_err(|e| io("SSH handshake", &e))?;
        log::debug!(
            "SSH to {}: cipher {} / {}",
            cfg.addr,
            session.methods(MethodType::CryptCs).unwrap_or("?"),
            session.methods(MethodType::CryptSc).unwrap_or("?")
        );

        // The pin is checked before any authentication, so a wrong server learns nothing of our key.
        let got = session
            .host_key()
            .map(|(blob, _)| fingerprint_of_blob(blob))
            .ok_or_else(|| io("SSH handshake", &"no host key"))?;
        if got != cfg.host_key_pin.trim() {
            return Err(TunnelError::HostKeyMismatch {
                expected: cfg.host_key_pin.trim().to_string(),
                got,
            });
        }

        let auth = session.userauth_pubkey_memory(
            &cfg.user,
            Some(cfg.public_key_line.trim()),
            &cfg.private_key_pem,
            None,
        );
        match auth {
            Ok(()) if session.authenticated() => {}
            Ok(()) => {
                return Err(TunnelError::AuthRejected(format!(
                    "user {} is still not authenticated",
                    cfg.user
                )))
            }
            Err(e) if is_transport_error(&e) => return Err(io("SSH authentication", &e)),
            Err(e) => {
                return Err(TunnelError::AuthRejected(format!(
                    "user {} with key {}: {}",
                    cfg.user,
                    key_label(&cfg.public_key_line),
                    e.message()
                )))
            }
        }

        let (listener, listen_port) = if cfg.listen_ports.is_empty() {
            (None, None)
        } else {
            let (listener, port) = listen(&session, cfg)?;
            (Some(listener), Some(port))
        };

        session.set_keepalive(
            false,
            u32::try_from(timings.keepalive.as_secs()).unwrap_or(15),
        );
        session.set_blocking(false);
        let (wake_tx, wake_rx) =
            UnixStream::pair().map_err(|e| io("creating the wake pipe", &e))?;
        for end in [&wake_tx, &wake_rx] {
            end.set_nonblocking(true)
                .map_err(|e| io("creating the wake pipe", &e))?;
        }
        let waker = stream::Waker::new(wake_tx);
        let shared = Arc::new(Shared {
            closed: Mutex::new(None),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
            probes: AtomicU64::new(0),
            channels: AtomicUsize::new(0),
        });
        let (requests, requests_rx) = crossbeam_channel::bounded(REQUEST_QUEUE);
        let (incoming, incoming_rx) = crossbeam_channel::bounded(pump::INCOMING_QUEUE);
        let setup = pump::Setup {
            session,
            socket,
            listener,
            wake_rx,
            waker: waker.clone(),
            requests: requests_rx,
            incoming,
            shared: shared.clone(),
            timings,
            peer: cfg.addr.clone(),
        };
        let handle = thread::Builder::new()
            .name("tunnel-pump".into())
            .spawn(move || pump::run(setup))
            .map_err(|e| io("starting the tunnel thread", &e))?;
        let tunnel = Tunnel {
            requests: Some(requests),
            waker,
            shared,
            pump: Some(handle),
            listen_port,
        };
        Ok((tunnel, incoming_rx))
    }

    /// The gateway port the reverse forward is bound to (on its 127.0.0.1), if any.
    pub fn listen_port(&self) -> Option<u16> {
        self.listen_port
    }

    /// Opens a direct-tcpip channel (like `ssh -L`) to host:port as seen from the gateway host.
    pub fn open_direct(&self, host: &str, port: u16, timeout: Duration) -> anyhow::Result<Stream> {
        let deadline = Instant::now() + timeout;
        let closed = || {
            anyhow!(
                "cannot open {host}:{port} through the SSH tunnel: {}",
                self.close_reason()
                    .unwrap_or_else(|| "the session is closed".into())
            )
        };
        let requests = self.requests.as_ref().ok_or_else(closed)?;
        if self.is_closed() {
            return Err(closed());
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        let request = pump::Request::Open {
            host: host.to_string(),
            port,
            reply,
        };
        match requests.send_timeout(request, timeout) {
            Ok(()) => self.waker.wake(),
            Err(SendTimeoutError::Timeout(_)) => {
                bail!("timed out after {timeout:?} queueing a channel open to {host}:{port}")
            }
            Err(SendTimeoutError::Disconnected(_)) => return Err(closed()),
        }
        match answer.recv_deadline(deadline) {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(why)) => bail!("the gateway's sshd refused a channel to {host}:{port}: {why}"),
            Err(RecvTimeoutError::Timeout) => {
                bail!("timed out after {timeout:?} opening a channel to {host}:{port}")
            }
            Err(RecvTimeoutError::Disconnected) => Err(closed()),
        }
    }

    /// True once the session has died (socket error or EOF, sshd gone, no answer to a probe).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().is_some()
    }

    /// Why the session ended, if it has.
    pub fn close_reason(&self) -> Option<String> {
        self.shared.lock().clone()
    }

    /// Blocks until the session dies or `timeout` elapses; returns the reason if it died.
    pub fn wait_closed(&self, timeout: Duration) -> Option<String> {
        let guard = self.shared.lock();
        let (guard, _) = self
            .shared
            .cond
            .wait_timeout_while(guard, timeout, |closed| closed.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.clone()
    }

    /// Disconnects the session and joins the pump thread (also done on drop).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // The pump checks `stop` every turn; the wake gets it out of poll(2) now rather than at the tick.
        self.requests = None;
        self.shared.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(handle) = self.pump.take() {
            if handle.join().is_err() {
                log::error!("the tunnel pump thread panicked");
            }
        }
    }
}

/// TCP connect to the first address of `addr` that answers within `timeout`.
fn dial(addr: &str, timeout: Duration) -> Result<TcpStream, TunnelError> {
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| TunnelError::Io(format!("cannot resolve the gateway address {addr}: {e}")))?;
    let mut last = None;
    for sa in addrs {
        match TcpStream::connect_timeout(&sa, timeout) {
            Ok(tcp) => {
                // Commands are small request/response frames: latency over batching.
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(TunnelError::Io(match last {
        Some(e) => format!("cannot connect to the gateway's sshd at {addr}: {e}"),
        None => format!("the gateway address {addr} resolves to nothing"),
    }))
}

/// Asks only for the Ed25519 host key: that is the key whose fingerprint the join string pins (a
/// system sshd also offering RSA/ECDSA keys must not get to present one of those instead).
fn pin_host_key_type(session: &Session) -> Result<(), TunnelError> {
    session
        .method_pref(MethodType::HostKey, "ssh-ed25519")
        .map_err(|e| TunnelError::Io(format!("selecting the ssh-ed25519 host key type: {e}")))
}

/// Puts chacha20-poly1305 first in both directions, keeping libssh2's other ciphers as fallbacks.
fn prefer_fast_cipher(session: &Session) {
    for method in [MethodType::CryptCs, MethodType::CryptSc] {
        let Ok(supported) = session.supported_algs(method) else {
            continue;
        };
        if !supported.contains(&PREFERRED_CIPHER) {
            continue;
        }
        let mut prefs = vec![PREFERRED_CIPHER];
        prefs.extend(supported.iter().filter(|c| **c != PREFERRED_CIPHER));
        if let Err(e) = session.method_pref(method, &prefs.join(",")) {
            log::debug!("keeping libssh2's default cipher order: {e}");
        }
    }
}

/// The reverse forward on the first port sshd accepts, bound to 127.0.0.1 by name: `permitlisten`
/// compares the host literally, and libssh2's default host (0.0.0.0) would be denied.
fn listen(session: &Session, cfg: &TunnelConfig) -> Result<(ssh2::Listener, u16), TunnelError> {
    let mut refusals = Vec::new();
    for &port in &cfg.listen_ports {
        match session.channel_forward_listen(port, Some("127.0.0.1"), None) {
            // libssh2 only fills in the bound port when asked for port 0.
            Ok((listener, bound)) => return Ok((listener, if bound == 0 { port } else { bound })),
            Err(e) if is_transport_error(&e) => {
                return Err(TunnelError::Io(format!(
                    "asking {} for a reverse forward: {e}",
                    cfg.addr
                )))
            }
            Err(e) => refusals.push(format!("127.0.0.1:{port} ({})", e.message())),
        }
    }
    Err(TunnelError::ListenRefused(format!(
        "tried {} (port held by a stale session or another process, or not in this key's permitlisten)",
        refusals.join(", ")
    )))
}

/// Errors where the connection itself failed, as opposed to the server saying no.
fn is_transport_error(e: &ssh2::Error) -> bool {
    channel::is_fatal(channel::code_of(e))
}

/// "SHA256:..." of a public key line, for messages; the line itself if it does not parse.
fn key_label(line: &str) -> String {
    burrow_core::identity::PublicKey::from_openssh(line)
        .map(|k| k.fingerprint())
        .unwrap_or_else(|_| line.to_string())
}
