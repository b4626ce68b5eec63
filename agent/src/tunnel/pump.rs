//! The pump thread: after `Tunnel::connect`, the only code that touches the libssh2 session.
//!
//! THE RULE: libssh2 is not re-entrant. A session is one internal mutex, and a blocking call on any
//! channel or listener (a blocking `accept()`, say) stalls every other call on it. So the pump thread
//! owns the `Session`, its `Listener` and every `Channel`, keeps the session non-blocking, and drives all
//! of them in one loop: accept forwarded connections, move bytes between channels and their [`Stream`]s,
//! send EOF/close, open direct-tcpip channels other threads ask for, send keepalives and liveness probes.
//! Other threads reach it only through bounded crossbeam channels plus the wake pipe; it sleeps in
//! `poll(2)` on the session socket and that pipe.
//!
//! libssh2's non-blocking contract, as measured (see DESIGN.md):
//! - EAGAIN is `ssh2::Error` code -37 on accept/open/close/eof/keepalive and `WouldBlock` on Read/Write.
//!   The same call must be retried: a call that stopped half way through sending a packet is the only
//!   one that can finish it, every other send answers EAGAIN until it does. So a write that would block
//!   is retried before its data is given up, and EOF/close are retried from the same call site.
//! - A read on one channel pulls every pending packet off the socket, including other channels' data,
//!   so every channel is read before sleeping, and something reads the socket whenever it is readable.
//! - `Ok(0)` from a read is EOF (or, once, the end of a key re-exchange: see `Chan::pump_in`).
//! - A `Channel` is dropped only after `close()` returned: dropping an open one in non-blocking mode
//!   can leak it. Teardown shuts the socket down first, so libssh2's frees cannot block or leak.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use ssh2::{BlockDirections, Channel, Listener, Session};

use super::channel::{code_of, describe, is_eagain, is_fatal, Chan, Failure};
use super::stream::{self, Stream, Waker, CHUNK};
use super::Shared;

/// Forwarded connections delivered but not yet taken by the agent before the pump stops accepting.
pub(super) const INCOMING_QUEUE: usize = 32;

/// The pump's clocks; tests shorten them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timings {
    /// Longest sleep in `poll(2)`, so timers run.
    pub(super) tick: Duration,
    /// SSH keepalive interval (libssh2's keepalives never ask for a reply: they keep NAT state alive).
    pub(super) keepalive: Duration,
    /// Silence after which the pump checks the link is alive by opening and closing a "session" channel:
    /// sshd answers (yes or no), which libssh2's keepalives cannot give us.
    pub(super) probe_idle: Duration,
    /// No answer to a probe within this is a dead link (e.g. a NAT dropped it without a reset).
    pub(super) probe_timeout: Duration,
    /// No answer to a direct-tcpip open within this is a dead link too.
    pub(super) open_timeout: Duration,
}

impl Timings {
    /// Timings under which a link that stops answering is declared dead within `dead_after`: a probe
    /// after 30 % of it without a word from the server (a little later than the service's ping at
    /// 25 %, whose answer usually makes the probe unneeded), and the rest of the bound, less a tick,
    /// for the answer. A direct-tcpip open gets the whole bound.
    pub(super) fn for_dead_after(dead_after: Duration) -> Timings {
        let tick = Duration::from_secs(1).min(dead_after / 10);
        let probe_idle = dead_after.mul_f64(0.3);
        Timings {
            tick,
            keepalive: Duration::from_secs(15),
            probe_idle,
            probe_timeout: dead_after.saturating_sub(probe_idle + tick),
            open_timeout: dead_after,
        }
    }
}

impl Default for Timings {
    /// [`Timings::for_dead_after`] the agent's default bound (20 s): probe after 6 s of silence,
    /// dead 13 s after an unanswered probe.
    fn default() -> Timings {
        Timings::for_dead_after(crate::service::DEFAULT_DEAD_AFTER)
    }
}

/// Work other threads hand to the pump.
pub(super) enum Request {
    /// Open a direct-tcpip channel to host:port as seen from the gateway host.
    Open {
        host: String,
        port: u16,
        reply: Sender<Result<Stream, String>>,
    },
}

/// Everything `Tunnel::connect` hands to the pump thread.
pub(super) struct Setup {
    pub(super) session: Session,
    /// A dup of the session's socket, for `poll(2)` and the final shutdown.
    pub(super) socket: TcpStream,
    pub(super) listener: Option<Listener>,
    pub(super) wake_rx: UnixStream,
    pub(super) waker: Waker,
    pub(super) requests: Receiver<Request>,
    pub(super) incoming: Sender<Stream>,
    pub(super) shared: Arc<Shared>,
    pub(super) timings: Timings,
    /// "host:port" of the gateway, for messages.
    pub(super) peer: String,
}

/// Why the loop ended.
enum Exit {
    /// The `Tunnel` was dropped: disconnect politely.
    Stop,
    /// The session is unusable; the reason is what `wait_closed` reports.
    Dead(String),
}

/// Runs the pump until the session dies or the tunnel is dropped; then tears everything down.
pub(super) fn run(setup: Setup) {
    // However this thread ends, even by a panic, the tunnel reads as closed and waiters wake up.
    let _closed = ClosedOnExit(setup.shared.clone());
    let mut pump = Pump::new(setup);
    let exit = pump.run_loop();
    pump.teardown(exit);
}

struct ClosedOnExit(Arc<Shared>);

impl Drop for ClosedOnExit {
    fn drop(&mut self) {
        let reason = if std::thread::panicking() {
            "the tunnel pump thread panicked"
        } else {
            "the tunnel pump stopped"
        };
        self.0.set_closed(reason.to_string());
    }
}

/// An open direct-tcpip channel or probe: libssh2 can only have one open in flight per session.
struct Opening {
    kind: OpenKind,
    started: Instant,
}

enum OpenKind {
    Direct {
        host: String,
        port: u16,
        reply: Sender<Result<Stream, String>>,
    },
    Probe,
}

struct Pump {
    session: Session,
    socket: TcpStream,
    listener: Option<Listener>,
    wake_rx: UnixStream,
    waker: Waker,
    requests: Receiver<Request>,
    /// `None` once the agent dropped its receiver: forwarded connections are then closed on arrival.
    incoming: Option<Sender<Stream>>,
    /// Accepted streams the agent has no room for yet; while any wait, the pump accepts no more.
    unclaimed: VecDeque<Stream>,
    shared: Arc<Shared>,
    timings: Timings,
    peer: String,
    chans: Vec<Chan>,
    /// Channels whose `close()` has not completed yet (they must not be dropped before it does).
    closing: Vec<Channel>,
    opening: Option<Opening>,
    /// Last time the server demonstrably answered (data, a new channel, an open reply, a close).
    last_heard: Instant,
    last_probe: Instant,
    next_keepalive: Instant,
    /// The last poll saw the socket readable: something must read it this turn, or poll spins.
    socket_readable: bool,
    /// The last poll saw the peer's FIN: read what is left this turn, then the session is over.
    peer_hung_up: bool,
    /// A libssh2 call this turn read from the socket.
    touched: bool,
    buf: Vec<u8>,
}

impl Pump {
    fn new(s: Setup) -> Pump {
        let now = Instant::now();
        Pump {
            session: s.session,
            socket: s.socket,
            listener: s.listener,
            wake_rx: s.wake_rx,
            waker: s.waker,
            requests: s.requests,
            incoming: Some(s.incoming),
            unclaimed: VecDeque::new(),
            shared: s.shared,
            timings: s.timings,
            peer: s.peer,
            chans: Vec::new(),
            closing: Vec::new(),
            opening: None,
            last_heard: now,
            last_probe: now,
            next_keepalive: now + s.timings.keepalive,
            socket_readable: false,
            peer_hung_up: false,
            touched: false,
            buf: vec![0; CHUNK],
        }
    }

    fn run_loop(&mut self) -> Exit {
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return Exit::Stop;
            }
            // Clear before looking at the queues: a wake after this point writes a new byte.
            self.waker.clear();
            self.drain_wake_pipe();
            let hung_up = self.peer_hung_up;
            let progress = match self.step() {
                Ok(progress) => progress,
                Err(exit) => return exit,
            };
            if hung_up {
                return Exit::Dead(format!("{} closed the connection", self.peer));
            }
            if !progress {
                if let Err(exit) = self.sleep() {
                    return exit;
                }
            }
        }
    }

    /// One turn over everything; true if anything moved (then the pump goes round again at once).
    fn step(&mut self) -> Result<bool, Exit> {
        let now = Instant::now();
        self.touched = false;
        let mut progress = self.step_open(now)?;
        progress |= self.step_accept()?;
        progress |= self.step_channels()?;
        progress |= self.step_closing()?;
        if self.socket_readable && !self.touched {
            self.drain_transport(now)?;
        }
        self.socket_readable = false;
        self.step_keepalive(now)?;
        let open = self.chans.len() + self.closing.len();
        self.shared.channels.store(open, Ordering::Relaxed);
        Ok(progress)
    }

    fn dead(&self, what: &str, e: &dyn std::fmt::Display, code: i32) -> Exit {
        Exit::Dead(format!(
            "lost the SSH session to {}: {} ({what}: {e})",
            self.peer,
            describe(code)
        ))
    }

    /// Session-fatal errors end the pump; anything else only ends the channel it happened on.
    fn classify(&self, failure: &Failure) -> Result<(), Exit> {
        let (code, text) = match failure {
            Failure::Ssh(e) => (code_of(e), e.to_string()),
            // Read/Write errors lose libssh2's code on the way to io::Error; the session still has it.
            Failure::Io(e) => (
                ssh2::Error::last_session_error(&self.session)
                    .map(|e| code_of(&e))
                    .unwrap_or(0),
                e.to_string(),
            ),
        };
        if is_fatal(code) {
            return Err(self.dead("channel I/O", &text, code));
        }
        log::debug!("SSH channel failed: {text} (code {code})");
        Ok(())
    }

    fn new_chan(&mut self, ch: Channel) -> Stream {
        let (stream, ends) = stream::pair(&self.waker);
        self.chans.push(Chan::new(ch, ends));
        stream
    }

    /// Starts or continues the one open libssh2 allows in flight: a direct-tcpip request or a probe.
    fn step_open(&mut self, now: Instant) -> Result<bool, Exit> {
        if self.opening.is_none() {
            let idle = now.duration_since(self.last_heard) >= self.timings.probe_idle
                && now.duration_since(self.last_probe) >= self.timings.probe_idle;
            if idle {
                self.last_probe = now;
                self.opening = Some(Opening {
                    kind: OpenKind::Probe,
                    started: now,
                });
            } else {
                match self.requests.try_recv() {
                    Ok(Request::Open { host, port, reply }) => {
                        self.opening = Some(Opening {
                            kind: OpenKind::Direct { host, port, reply },
                            started: now,
                        })
                    }
                    Err(TryRecvError::Empty) => return Ok(false),
                    Err(TryRecvError::Disconnected) => return Err(Exit::Stop),
                }
            }
        }
        let Some(opening) = self.opening.as_ref() else {
            return Ok(false);
        };
        self.touched = true;
        let result = match &opening.kind {
            OpenKind::Direct { host, port, .. } => {
                self.session.channel_direct_tcpip(host, *port, None)
            }
            OpenKind::Probe => self.session.channel_session(),
        };
        let limit = match opening.kind {
            OpenKind::Direct { .. } => self.timings.open_timeout,
            OpenKind::Probe => self.timings.probe_timeout,
        };
        match result {
            Err(e) if is_eagain(&e) => {
                // Counted from the later of the request and the last word from the server: a server
                // still sending is alive, only slow to answer behind what is queued.
                if now.duration_since(opening.started.max(self.last_heard)) > limit {
                    return Err(Exit::Dead(format!(
                        "{} did not answer for {limit:?}: the link is dead",
                        self.peer
                    )));
                }
                return Ok(false);
            }
            Err(e) if is_fatal(code_of(&e)) => {
                return Err(self.dead("opening a channel", &e, code_of(&e)))
            }
            _ => {}
        }
        // Any answer, yes or no, shows the server is alive.
        self.last_heard = now;
        let opening = self.opening.take().expect("checked above");
        match (opening.kind, result) {
            (OpenKind::Direct { reply, .. }, Ok(ch)) => {
                let stream = self.new_chan(ch);
                // If the caller gave up waiting, the stream drops here and its channel closes.
                let _ = reply.try_send(Ok(stream));
            }
            (OpenKind::Direct { reply, .. }, Err(e)) => {
                let _ = reply.try_send(Err(e.message().to_string()));
            }
            (OpenKind::Probe, Ok(ch)) => {
                self.shared.probes.fetch_add(1, Ordering::Relaxed);
                self.closing.push(ch);
            }
            (OpenKind::Probe, Err(e)) => {
                self.shared.probes.fetch_add(1, Ordering::Relaxed);
                log::debug!("liveness probe answered with a refusal: {e}");
            }
        }
        Ok(true)
    }

    /// Accepts forwarded connections and hands them to the agent, holding back when it falls behind.
    fn step_accept(&mut self) -> Result<bool, Exit> {
        let mut progress = false;
        for _ in 0..INCOMING_QUEUE {
            while let Some(stream) = self.unclaimed.pop_front() {
                let Some(incoming) = &self.incoming else {
                    break; // the agent stopped listening: the stream drops and its channel closes
                };
                match incoming.try_send(stream) {
                    Ok(()) => progress = true,
                    Err(TrySendError::Full(stream)) => {
                        self.unclaimed.push_front(stream);
                        return Ok(progress);
                    }
                    Err(TrySendError::Disconnected(_)) => self.incoming = None,
                }
            }
            let Some(listener) = self.listener.as_mut() else {
                break;
            };
            self.touched = true;
            match listener.accept() {
                Ok(ch) => {
                    progress = true;
                    self.last_heard = Instant::now();
                    let stream = self.new_chan(ch);
                    self.unclaimed.push_back(stream);
                }
                // libssh2 reports "nothing queued" as EAGAIN, and a transport failure as "channel
                // unknown" without its code; a dead transport shows up on the socket and channels.
                Err(e) if is_fatal(code_of(&e)) => {
                    return Err(self.dead("accepting", &e, code_of(&e)))
                }
                Err(_) => break,
            }
        }
        Ok(progress)
    }

    fn step_channels(&mut self) -> Result<bool, Exit> {
        let mut progress = false;
        let mut i = 0;
        while i < self.chans.len() {
            let chan = &mut self.chans[i];
            self.touched |= chan.reads_transport();
            match chan.pump(&self.session, &mut self.buf, &mut self.last_heard) {
                Ok(moved) => progress |= moved,
                Err(failure) => {
                    self.classify(&failure)?;
                    self.chans[i].fail();
                    progress = true;
                }
            }
            if self.chans[i].finished() {
                let chan = self.chans.swap_remove(i);
                self.closing.push(chan.retire());
                progress = true;
            } else {
                i += 1;
            }
        }
        Ok(progress)
    }

    /// Finishes `close()` on retired channels; each is dropped only once libssh2 is done with it.
    fn step_closing(&mut self) -> Result<bool, Exit> {
        let mut progress = false;
        let mut i = 0;
        while i < self.closing.len() {
            self.touched = true;
            match self.closing[i].close() {
                Err(e) if is_eagain(&e) => i += 1,
                Err(e) if is_fatal(code_of(&e)) => {
                    return Err(self.dead("closing a channel", &e, code_of(&e)))
                }
                _ => {
                    self.closing.swap_remove(i);
                    self.last_heard = Instant::now();
                    progress = true;
                }
            }
        }
        Ok(progress)
    }

    /// The socket is readable but nothing this turn read it (no listener, every channel stalled or
    /// finished reading): let libssh2 process what arrived, or poll would return at once forever.
    fn drain_transport(&mut self, now: Instant) -> Result<(), Exit> {
        if let Some(chan) = self.chans.first() {
            // Forwarded channels never carry extended data, so reading stream 1 only runs the transport
            // and leaves a stalled channel's own data where it is.
            let mut scratch = [0u8; 256];
            match chan.ch.stream(1).read(&mut scratch) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                    self.classify(&Failure::Io(e))?;
                }
                _ => {}
            }
        } else if self.opening.is_none() {
            // Nothing to read with: a probe's open reads the socket while it waits for the answer.
            self.last_probe = now;
            self.opening = Some(Opening {
                kind: OpenKind::Probe,
                started: now,
            });
            self.step_open(now)?;
        }
        Ok(())
    }

    fn step_keepalive(&mut self, now: Instant) -> Result<(), Exit> {
        if now < self.next_keepalive {
            return Ok(());
        }
        // libssh2 sends the keepalive from a stack buffer, so if it stopped half way no later call
        // could finish it and every send would stall until the next keepalive. Send only when the
        // socket has room for the whole (tiny) packet.
        if !self.socket_has_room() {
            self.next_keepalive = now + self.timings.tick;
            return Ok(());
        }
        match self.session.keepalive_send() {
            Ok(secs) => {
                self.next_keepalive = now + Duration::from_secs(u64::from(secs.max(1)));
            }
            Err(e) if is_fatal(code_of(&e)) => {
                return Err(self.dead("sending a keepalive", &e, code_of(&e)))
            }
            Err(_) => self.next_keepalive = now + self.timings.tick,
        }
        Ok(())
    }

    fn socket_has_room(&self) -> bool {
        let mut fds = [PollFd::new(&self.socket, PollFlags::OUT)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&zero)), Ok(1)) && fds[0].revents().contains(PollFlags::OUT)
    }

    fn drain_wake_pipe(&mut self) {
        let mut sink = [0u8; 64];
        while matches!(self.wake_rx.read(&mut sink), Ok(n) if n > 0) {}
    }

    /// Sleeps until the socket (or, when libssh2 waits to send, its send buffer) or the wake pipe is
    /// ready, or a tick passes.
    fn sleep(&mut self) -> Result<(), Exit> {
        let mut events = PollFlags::IN | PollFlags::RDHUP;
        let outbound = matches!(
            self.session.block_directions(),
            BlockDirections::Outbound | BlockDirections::Both
        );
        if outbound || self.chans.iter().any(Chan::wants_out) {
            events |= PollFlags::OUT;
        }
        let timeout = Timespec::try_from(self.sleep_for()).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [
            PollFd::new(&self.socket, events),
            PollFd::new(&self.wake_rx, PollFlags::IN),
        ];
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(Exit::Dead(format!("poll(2) on the SSH socket failed: {e}"))),
        }
        let revents = fds[0].revents();
        if revents.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
            return Err(Exit::Dead(format!(
                "lost the SSH session to {}: the connection was reset",
                self.peer
            )));
        }
        self.socket_readable = revents.contains(PollFlags::IN);
        if self.socket_readable {
            // Bytes from the server, of any kind (window adjusts, its keepalives, channel data): the
            // link and sshd are alive, even if no channel read has surfaced anything yet.
            self.last_heard = Instant::now();
            // ACK what arrives at once. sshd does not set TCP_NODELAY on a session without a tty, so
            // its second small packet (an `Exec` after a `Done` the agent does not answer) waits for
            // the ACK of the first: 40 ms of delayed ACK per command otherwise. Linux drops quick-ACK
            // mode by itself, so it is set again on every wake-up with data.
            let _ = rustix::net::sockopt::set_tcp_quickack(&self.socket, true);
        }
        self.peer_hung_up = revents.contains(PollFlags::RDHUP);
        Ok(())
    }

    /// Until the next timer (keepalive, probe, open deadline), at most a tick.
    fn sleep_for(&self) -> Duration {
        // Accepted streams waiting for the agent have no wake-up of their own: look again soon.
        if !self.unclaimed.is_empty() {
            return Duration::from_millis(20);
        }
        let t = &self.timings;
        let mut next = self.next_keepalive;
        match &self.opening {
            None => next = next.min(self.last_heard.max(self.last_probe) + t.probe_idle),
            Some(opening) => {
                let limit = match opening.kind {
                    OpenKind::Direct { .. } => t.open_timeout,
                    OpenKind::Probe => t.probe_timeout,
                };
                // Just past the deadline, so the check after waking sees it expired.
                let since = opening.started.max(self.last_heard);
                next = next.min(since + limit + Duration::from_millis(1));
            }
        }
        next.saturating_duration_since(Instant::now()).min(t.tick)
    }

    /// Ends the session: says goodbye if it is still alive, then frees everything without blocking.
    fn teardown(mut self, exit: Exit) {
        let reason = match exit {
            Exit::Stop => {
                self.disconnect();
                "the tunnel was shut down".to_string()
            }
            Exit::Dead(reason) => reason,
        };
        log::debug!("tunnel pump exiting: {reason}");
        self.shared.set_closed(reason);
        // With the socket shut down every libssh2 send/recv fails at once, so the frees that follow
        // (channels, listener, session) neither block nor stop half way on EAGAIN.
        let _ = self.socket.shutdown(Shutdown::Both);
        for chan in &self.chans {
            chan.shared.broken.store(true, Ordering::Release);
        }
        // Dropping the pump's queue ends gives readers EOF and writers BrokenPipe.
        self.chans.clear();
        self.unclaimed.clear();
        self.incoming = None;
        self.opening = None;
        self.closing.clear();
        self.listener = None;
    }

    /// Best-effort SSH disconnect, for at most a second.
    fn disconnect(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self
                .session
                .disconnect(None, "burrow agent shutting down", None)
            {
                Err(e) if is_eagain(&e) && Instant::now() < deadline => {
                    let mut fds = [PollFd::new(&self.socket, PollFlags::OUT)];
                    let wait = Timespec {
                        tv_sec: 0,
                        tv_nsec: 50_000_000,
                    };
                    let _ = poll(&mut fds, Some(&wait));
                }
                _ => return,
            }
        }
    }
}
