//! The agent's command service: the protocol server for one gateway connection arriving through the
//! reverse tunnel. It runs the v2 handshake ([`burrow_core::secure`]: the agent proves its key, the
//! gateway proves the pinned key, both derive the session keys), then serves the sealed frames
//! (`Exec`, `Open`, `Data`, `Eof`, `Reset`, `Credit`, `Cancel`, `Done`, `Ping`, `Bye`) until the
//! connection ends; [`crate::jobs`] keeps the jobs, [`crate::exec`] runs them, [`crate::files`]
//! serves transfers. It also sends the node's heartbeats (version, metrics, `max_jobs`, `running`,
//! faults) on the connection, at once and then every [`Liveness::heartbeat`] (30 s by default) give
//! or take [`HEARTBEAT_JITTER`], drawn anew for each beat so a fleet started together does not beat
//! in lockstep: the handshake authenticated the node, so they need no token and no API call.
//!
//! # Unauthenticated connections
//!
//! Anyone on the gateway host can connect to the node's port. A connection must finish the handshake
//! within [`HANDSHAKE_TIMEOUT`], and at most [`MAX_UNAUTHENTICATED`] may be in their handshake at once
//! ([`HandshakeSlots`]; the accept loop closes extra ones at once), so idle connections cannot pile up
//! threads on a small node.
//!
//! # Liveness
//!
//! The read side sets its read timeout to the next thing it must do (at most [`Liveness::tick`]).
//! When nothing has arrived from the gateway for [`Liveness::ping_after`] (5 s by default) the agent
//! pings it, and again every `ping_after`; when nothing has arrived for [`Liveness::dead_after`]
//! (`--dead-after`, 20 s by default) the connection is dropped. A frozen gateway, a cut network, or a
//! path that passes the agent's output but stalls the gateway's frames (its `Cancel` and `Credit`)
//! is thereby cut within `dead_after`; the gateway does the same the other way (`Bus::probe`). Only
//! this thread reads, and it never waits for a job or for the metrics of a beat (those are sampled
//! on the connection's `svc-heartbeat` thread), so a busy node still answers the gateway's pings at
//! once: a slow node is not a dead one.
//!
//! # Requests
//!
//! An `Exec` attaches its request to a job of [`crate::jobs`] (a new one, or one that runs or ended
//! earlier, perhaps on another connection); a file `Open` starts a transfer ([`crate::files`]). The
//! connection maps request ids to those, hands them `Credit`, `Data`, `Eof`, `Reset` and `Cancel`,
//! and remembers which job's outcome each finished request delivered until the gateway says `Done`.
//!
//! # Threads
//!
//! - The caller's thread reads and dispatches frames. It never waits for a command, so `Credit` and
//!   `Cancel` are handled while commands run.
//! - `svc-heartbeat` samples and queues the heartbeats (it ends with the connection).
//! - `svc-writer` owns the write half and the channel's `Sealer`: every frame goes through it via a
//!   bounded channel, so frames never interleave and a slow link backpressures the requests producing
//!   output (not the agent's memory).
//! - `exec-<id>` per attached request: sends the job's output within the request's credit and its
//!   last frame; `file-<id>` per transfer. The jobs themselves run on threads of their own
//!   ([`crate::exec`]), whatever happens to the connection.
//!
//! # Shutdown
//!
//! A `Bye` saying the node was revoked or rejected cancels every running job first: nobody may
//! collect them any more. Any other end of the connection leaves them running.
//!
//! When the read side ends (clean close, error, a frame that fails to open, a protocol violation or
//! the liveness bound), every attached job is detached (it runs on, and keeps its output and outcome
//! for a later request), every transfer is aborted, and outcomes sent without a `Done` yet are kept
//! on disk. A request thread blocked on the full channel is woken by dropping the `shutdown` sender,
//! which nothing ever sends on. The request threads are joined, then the last channel sender is
//! dropped and the writer drains and is joined. The writer itself can only be woken by its transport:
//! a write blocked on a peer that keeps the connection open but stops reading ends when the tunnel
//! closes the channel.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use burrow_core::api::Heartbeat;
use burrow_core::identity::{Identity, PublicKey};
use burrow_core::protocol::{bye, stream, Message, Role};
use burrow_core::secure::{handshake, Opener, Sealer};
use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::files;
use crate::jobs::Jobs;
use crate::services;

/// The shortest read timeout the reader sets (so a deadline a hair away does not spin it).
const MIN_READ_TIMEOUT: Duration = Duration::from_millis(10);
/// Frames queued for the writer: at most this many output chunks (32 KiB each) wait in memory.
const OUTBOX_DEPTH: usize = 64;
/// A connection that has not finished the handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections allowed in their handshake at once; the accept loop closes extra ones at once.
pub const MAX_UNAUTHENTICATED: usize = 8;
/// After `Bye` revoked or rejected, how long the cancelled jobs get to end before the connection
/// goes on closing (a revoked agent exits next and must not leave them running).
const CUT_OFF_GRACE: Duration = Duration::from_secs(3);

/// What every connection needs to know.
pub struct ServiceContext {
    /// The node's own key, proved in every handshake.
    pub identity: Identity,
    /// The gateway key pinned at join time; any other peer is refused before a command runs.
    pub gateway_key: PublicKey,
    /// The node's jobs, shared by all connections; also holds the concurrency limit.
    pub jobs: Arc<Jobs>,
    /// The services the node declares (`--service`), and the streams open to them.
    pub services: Arc<crate::services::Services>,
    /// When to ping a quiet gateway, when to give up on it, how often to send heartbeats.
    pub liveness: Liveness,
    /// Set when the gateway said `Bye` with [`bye::REVOKED`]: why. The agent then stops for good.
    pub revoked: Mutex<Option<String>>,
    /// Makes the heartbeat (version and metrics) sent on every authenticated connection at once and
    /// every [`Liveness::heartbeat`]; `None` sends none.
    pub heartbeat: Option<HeartbeatSource>,
    /// When a frame last came from the gateway on any connection: the session uses it to notice a
    /// tunnel that looks up but carries nothing.
    pub last_contact: Mutex<Instant>,
}

/// Builds one heartbeat.
pub type HeartbeatSource = Box<dyn Fn() -> Heartbeat + Send + Sync>;

impl ServiceContext {
    /// How long since a frame last came from the gateway.
    pub fn quiet_for(&self) -> Duration {
        lock(&self.last_contact).elapsed()
    }

    /// Counts as word from the gateway (a frame, or a fresh session that has yet to be dialed).
    pub fn heard_from_gateway(&self) {
        *lock(&self.last_contact) = Instant::now();
    }
}

/// The liveness bounds of an authenticated connection.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Ping the gateway when nothing came from it for this long.
    pub ping_after: Duration,
    /// Drop the connection when nothing came from it for this long.
    pub dead_after: Duration,
    /// The longest the reader sleeps in one read (it wakes sooner when a ping or the bound is due).
    pub tick: Duration,
    /// How often a heartbeat goes to the gateway (each one jittered by [`HEARTBEAT_JITTER`]).
    pub heartbeat: Duration,
}

/// `--dead-after` when not given: the bound issue 8 sets for noticing a dead link on either side.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(20);
/// `--heartbeat-interval` when not given.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// Each heartbeat interval is the configured one times a factor drawn from 1 ± this.
pub const HEARTBEAT_JITTER: f64 = 0.1;

impl Liveness {
    /// Drops a connection silent for `dead_after`, pinging it after a quarter of that; a heartbeat
    /// every `heartbeat`.
    pub fn new(dead_after: Duration, heartbeat: Duration) -> Liveness {
        Liveness {
            ping_after: dead_after / 4,
            dead_after,
            tick: Duration::from_secs(5).min(dead_after / 4),
            heartbeat,
        }
    }

    /// How long until the beat after this one: `heartbeat` times a fresh factor in 1 ± jitter.
    pub fn next_beat(&self) -> Duration {
        let r = u32::from_be_bytes(burrow_core::random_bytes()) as f64 / (u32::MAX as f64 + 1.0);
        jittered(self.heartbeat, r)
    }

    /// The longest gap between two beats, in whole seconds (rounded up): what a beat announces as
    /// `interval_s`, so the gateway knows when one is late.
    pub fn latest_beat_s(&self) -> u32 {
        let latest = self.heartbeat.mul_f64(1.0 + HEARTBEAT_JITTER);
        u32::try_from(latest.as_millis().div_ceil(1000)).unwrap_or(u32::MAX)
    }
}

/// `base` scaled by `1 - J + 2J·r` for `r` in [0, 1): within `base` ± [`HEARTBEAT_JITTER`].
fn jittered(base: Duration, r: f64) -> Duration {
    base.mul_f64(1.0 - HEARTBEAT_JITTER + 2.0 * HEARTBEAT_JITTER * r.clamp(0.0, 1.0))
}

impl Default for Liveness {
    /// [`DEFAULT_DEAD_AFTER`] and [`DEFAULT_HEARTBEAT`]: a ping after 5 s of quiet, dropped after
    /// 20 s, a heartbeat every 30 s ± 3 s.
    fn default() -> Liveness {
        Liveness::new(DEFAULT_DEAD_AFTER, DEFAULT_HEARTBEAT)
    }
}

/// A reader with a settable read timeout (the tunnel's stream, or a socket in tests): the handshake
/// deadline and the liveness checks need one.
pub trait TimedRead: Read {
    /// Reads fail with `TimedOut` or `WouldBlock` after `timeout` without a byte (`None`: never).
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

impl TimedRead for crate::tunnel::StreamReader {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout);
        Ok(())
    }
}

impl TimedRead for std::os::unix::net::UnixStream {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

/// Counts connections still in their handshake, up to a cap.
#[derive(Clone)]
pub struct HandshakeSlots {
    taken: Arc<AtomicUsize>,
    max: usize,
}

/// One connection's place among the unauthenticated ones; given back when dropped.
pub struct Slot(Arc<AtomicUsize>);

impl HandshakeSlots {
    /// At most `max` connections in their handshake at once.
    pub fn new(max: usize) -> HandshakeSlots {
        HandshakeSlots {
            taken: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, or `None` when `max` connections are already in their handshake.
    pub fn try_take(&self) -> Option<Slot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.taken.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one gateway connection until it closes: runs the handshake as [`Role::Agent`] accepting only
/// `ctx.gateway_key` within [`HANDSHAKE_TIMEOUT`] (giving `slot` back once it is over), then
/// dispatches requests. Returns `Ok(())` on clean close, `Err` on handshake or protocol failure (the
/// caller logs it). Jobs attached to this connection run on when it ends (see the module doc).
pub fn serve<R, W>(
    mut reader: R,
    mut writer: W,
    ctx: Arc<ServiceContext>,
    slot: Slot,
) -> anyhow::Result<()>
where
    R: TimedRead + Send + 'static,
    W: Write + Send + 'static,
{
    // No thread exists before the peer has proved the pinned key: a refused peer leaves nothing behind.
    let channel = {
        let mut both = Duplex {
            reader: &mut reader,
            writer: &mut writer,
            deadline: Instant::now() + HANDSHAKE_TIMEOUT,
        };
        handshake(&mut both, &ctx.identity, Role::Agent, |key| {
            *key == ctx.gateway_key
        })
        .context("handshake with the gateway")?
    };
    drop(slot);
    ctx.heard_from_gateway();
    let mut opener = channel.opener;
    let sealer = channel.sealer;

    let (frames, queued) = bounded(OUTBOX_DEPTH);
    let writer = thread::Builder::new()
        .name("svc-writer".into())
        .spawn(move || write_frames(writer, sealer, queued))
        .context("starting the writer thread")?;
    let (shutdown, shutdown_seen) = bounded::<()>(0);
    let outbox = Outbox {
        frames,
        shutdown: shutdown_seen,
    };
    let heartbeats = if ctx.heartbeat.is_some() {
        Some(spawn_heartbeats(ctx.clone(), outbox.clone())?)
    } else {
        None
    };
    let mut connection = Connection {
        ctx: ctx.clone(),
        outbox,
        requests: Registry::default(),
        delivered: Delivered::default(),
        threads: Vec::new(),
    };
    let result = connection.read_loop(&mut reader, &mut opener);

    drop(shutdown);
    if let Some(thread) = heartbeats {
        if thread.join().is_err() {
            log::error!("the heartbeat thread panicked");
        }
    }
    connection.shut_down();
    // Drops the last sender once the request threads are gone: the writer drains what is queued and ends.
    drop(connection);
    match writer.join() {
        Ok(Ok(())) => {}
        // Usually the peer hung up with frames still queued; the read side tells the real story.
        Ok(Err(e)) => log::debug!("gateway connection writer: {e:#}"),
        Err(_) => {
            result?;
            bail!("the gateway connection's writer thread panicked");
        }
    }
    result
}

/// Sends a heartbeat at once and then every [`Liveness::next_beat`] until the connection shuts down
/// (its `shutdown` sender is dropped, which wakes the wait between beats).
fn spawn_heartbeats(ctx: Arc<ServiceContext>, outbox: Outbox) -> anyhow::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("svc-heartbeat".into())
        .spawn(move || {
            let Some(beat) = &ctx.heartbeat else {
                return;
            };
            loop {
                let mut heartbeat = beat();
                heartbeat.max_jobs = u32::try_from(ctx.jobs.max_running()).unwrap_or(u32::MAX);
                heartbeat.running = u32::try_from(ctx.jobs.running()).unwrap_or(u32::MAX);
                if !outbox.send(Message::Heartbeat(heartbeat)) {
                    return;
                }
                match outbox.shutdown.recv_timeout(ctx.liveness.next_beat()) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })
        .context("starting the heartbeat thread")
}

/// Gives the handshake, which wants one `Read + Write` stream, both halves of the connection, and
/// holds every read to the handshake's deadline (so a peer trickling bytes cannot stretch it).
struct Duplex<'a, R, W> {
    reader: &'a mut R,
    writer: &'a mut W,
    deadline: Instant,
}

impl<R: TimedRead, W> Read for Duplex<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the handshake did not finish within {HANDSHAKE_TIMEOUT:?}"),
            ));
        }
        self.reader.set_timeout(Some(left))?;
        self.reader.read(buf)
    }
}

impl<R, W: Write> Write for Duplex<'_, R, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

use requests::{Delivered, Registry, Request};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The way to the writer thread, for request threads.
#[derive(Clone)]
struct Outbox {
    frames: Sender<Message>,
    /// Disconnected when the connection is being torn down; never carries a value.
    shutdown: Receiver<()>,
}

impl Outbox {
    /// Queues `message`, waiting while the queue is full; `false` once the connection is going away.
    fn send(&self, message: Message) -> bool {
        // `select!` picks at random among ready arms: check the shutdown first so that nothing more is
        // queued once it has begun.
        if let Err(TryRecvError::Disconnected) = self.shutdown.try_recv() {
            return false;
        }
        select! {
            send(self.frames, message) -> sent => sent.is_ok(),
            recv(self.shutdown) -> _ => false,
        }
    }
}

struct Connection {
    ctx: Arc<ServiceContext>,
    outbox: Outbox,
    requests: Registry,
    delivered: Delivered,
    /// Request threads, joined as they finish and at shutdown.
    threads: Vec<JoinHandle<()>>,
}

impl Connection {
    fn read_loop(
        &mut self,
        reader: &mut impl TimedRead,
        opener: &mut Opener,
    ) -> anyhow::Result<()> {
        let live = self.ctx.liveness;
        let mut last_rx = Instant::now();
        let mut last_ping: Option<Instant> = None;
        reader
            .set_timeout(Some(live.tick.min(live.ping_after).max(MIN_READ_TIMEOUT)))
            .context("setting the connection's read timeout")?;
        loop {
            let message = match opener.read_message(reader) {
                Ok(message) => message,
                Err(e) if e.is_timeout() => {
                    let now = Instant::now();
                    let quiet = now.duration_since(last_rx);
                    if quiet >= live.dead_after {
                        bail!(
                            "nothing from the gateway for {:.1}s (liveness bound {}s): dropping the connection",
                            quiet.as_secs_f32(),
                            live.dead_after.as_secs_f32()
                        );
                    }
                    if quiet >= live.ping_after
                        && last_ping.is_none_or(|t| now.duration_since(t) >= live.ping_after)
                    {
                        self.reply(Message::Ping(u64::from(rand_u32())))?;
                        last_ping = Some(now);
                    }
                    // Wake for the next ping or the bound, whichever comes first.
                    let next_ping = last_ping.map_or(last_rx, |t| t.max(last_rx)) + live.ping_after;
                    let next = next_ping.min(last_rx + live.dead_after);
                    let wait = next.saturating_duration_since(Instant::now());
                    reader
                        .set_timeout(Some(wait.clamp(MIN_READ_TIMEOUT, live.tick)))
                        .context("setting the connection's read timeout")?;
                    continue;
                }
                Err(burrow_core::Error::Closed) => return Ok(()),
                Err(e) => return Err(e).context("reading from the gateway"),
            };
            last_rx = Instant::now();
            last_ping = None;
            self.ctx.heard_from_gateway();
            match message {
                Message::Ping(value) => self.reply(Message::Pong(value))?,
                Message::Pong(_) => {}
                Message::Exec { id, job, spec } => self.exec(id, job, spec)?,
                Message::Open {
                    id,
                    stream,
                    purpose,
                    params,
                } => self.open(id, stream, purpose, params)?,
                // Credit, Data, Cancel… may cross the request's last frame on the wire: not an error.
                Message::Credit { id, stream, bytes } => match self.request(id) {
                    Some(Request::Exec { job, gen }) => job.add_credit(gen, stream, bytes),
                    Some(Request::File(t)) if stream == files::STREAM => t.add_credit(bytes),
                    Some(Request::Service(f)) if stream == services::STREAM => f.add_credit(bytes),
                    _ => {}
                },
                Message::Data { id, stream, data } => match self.request(id) {
                    Some(Request::Exec { job, gen }) if stream == stream::STDIN => job
                        .stdin_data(gen, &data)
                        .map_err(|e| anyhow!("protocol error: request {id}: {e}"))?,
                    Some(Request::File(t)) if stream == files::STREAM => t
                        .data(data)
                        .map_err(|e| anyhow!("protocol error: request {id}: {e}"))?,
                    Some(Request::Service(f)) if stream == services::STREAM => f
                        .data(data)
                        .map_err(|e| anyhow!("protocol error: request {id}: {e}"))?,
                    _ => log::debug!("request {id}: ignoring data on stream {stream}"),
                },
                Message::Eof { id, stream } => match self.request(id) {
                    Some(Request::Exec { job, gen }) if stream == stream::STDIN => {
                        job.stdin_end(gen, false)
                    }
                    Some(Request::File(t)) if stream == files::STREAM => t.eof(),
                    Some(Request::Service(f)) if stream == services::STREAM => f.eof(),
                    _ => {}
                },
                Message::Reset { id, stream, reason } => match self.request(id) {
                    Some(Request::Exec { job, gen }) if stream == stream::STDIN => {
                        job.stdin_end(gen, true)
                    }
                    Some(Request::File(t)) if stream == files::STREAM => {
                        t.abort(Some(format!("the gateway reset the transfer: {reason}")))
                    }
                    Some(Request::Service(f)) if stream == services::STREAM => f.abort(),
                    _ => {}
                },
                Message::Cancel { id } => match self.request(id) {
                    Some(Request::Exec { job, .. }) => job.cancel(),
                    Some(Request::File(t)) => t.abort(Some("cancelled".into())),
                    Some(Request::Service(f)) => f.abort(),
                    None => log::debug!("cancel for request {id}, which is not running"),
                },
                Message::Done { id } => {
                    let delivered = lock(&self.delivered).remove(&id);
                    match delivered {
                        Some(job) => self.ctx.jobs.forget(&job),
                        None => log::debug!("done for request {id}, which delivered no outcome"),
                    }
                }
                Message::Bye { code, reason } => {
                    if code == bye::REVOKED || code == bye::REJECTED {
                        // Cut off: nobody may collect these jobs, so they must not run on.
                        let stopped = self.ctx.jobs.cancel_all(CUT_OFF_GRACE);
                        if stopped > 0 {
                            // The reason itself is logged once, where the link ends.
                            log::warn!(
                                "cancelled {stopped} running job(s): this node lost its access"
                            );
                        }
                    }
                    if code == bye::REVOKED {
                        // Logged once, by `run`, which stops the agent.
                        *lock(&self.ctx.revoked) = Some(reason);
                    } else {
                        log::warn!("the gateway closed the link ({code}): {reason}");
                    }
                    return Ok(());
                }
                Message::Resize { id, rows, cols } => match self.request(id) {
                    Some(Request::Exec { job, .. }) => job.resize(rows, cols),
                    _ => log::debug!("request {id}: ignoring Resize"),
                },
                Message::Signal { id, signal } => match self.request(id) {
                    Some(Request::Exec { job, .. }) => job.signal(signal),
                    _ => log::debug!("request {id}: ignoring Signal"),
                },
                other => bail!(
                    "protocol error: unexpected {} from the gateway",
                    other.kind_name()
                ),
            }
        }
    }

    /// A frame from the reading thread itself.
    fn reply(&self, message: Message) -> anyhow::Result<()> {
        self.outbox
            .frames
            .send(message)
            .map_err(|_| anyhow!("the gateway connection's writer has stopped"))
    }
}

fn write_frames<W: Write>(
    mut writer: W,
    mut sealer: Sealer,
    queued: Receiver<Message>,
) -> anyhow::Result<()> {
    for message in queued.iter() {
        let frame = sealer.seal(&message).context("sealing a frame")?;
        writer.write_all(&frame).context("writing to the gateway")?;
        // Flush when nothing else is waiting: no added latency when idle, fewer flushes under load.
        if queued.is_empty() {
            writer.flush().context("writing to the gateway")?;
        }
    }
    Ok(())
}

/// A ping value; only echoed back.
fn rand_u32() -> u32 {
    u32::from_be_bytes(burrow_core::random_bytes())
}

mod requests;
#[cfg(test)]
pub(crate) mod tests;
