//! The agent's command service: the protocol server for one gateway connection arriving through the
//! reverse tunnel. It proves the agent's key and checks the gateway's ([`burrow_core::handshake`]), then
//! serves `Exec`, `Credit`, `Cancel` and `Ping` until the connection ends; [`crate::exec`] runs each
//! command.
//!
//! # Threads
//!
//! - The caller's thread reads and dispatches frames. It never waits for a command, so `Credit` and
//!   `Cancel` are handled while commands run.
//! - `svc-writer` owns the write half: every frame goes through it via a bounded channel, so frames never
//!   interleave and a slow link backpressures the commands producing output (not the agent's memory).
//! - `exec-<id>` per request (plus its helpers, see [`crate::exec`]).
//!
//! # Shutdown
//!
//! When the read side ends (clean close, error or a protocol violation), every request is told the
//! connection is lost: its process group is killed and it sends nothing more. A request thread blocked on
//! the full channel is woken by dropping the `shutdown` sender, which nothing ever sends on. The request
//! threads are joined, then the last channel sender is dropped and the writer drains and is joined. The
//! writer itself can only be woken by its transport: a write blocked on a peer that keeps the connection
//! open but stops reading ends when the tunnel closes the channel.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use anyhow::{anyhow, bail, Context};
use burrow_core::handshake::handshake;
use burrow_core::identity::{Identity, PublicKey};
use burrow_core::protocol::{read_message, ExecSpec, Message, Role};
use crossbeam_channel::{bounded, select, Receiver, Sender, TryRecvError};

use crate::exec::{self, Control};

/// Frames queued for the writer: at most this many output chunks (32 KiB each) wait in memory.
const OUTBOX_DEPTH: usize = 64;

/// What every connection needs to know.
pub struct ServiceContext {
    /// The node's own key, proved in every handshake.
    pub identity: Identity,
    /// The gateway key pinned at join time; any other peer is refused before a command runs.
    pub gateway_key: PublicKey,
    /// Requests that may run at once on one connection; more are answered with `Failed`.
    pub max_concurrent: usize,
}

/// Serves one gateway connection until it closes: runs the handshake as [`Role::Agent`] accepting only
/// `ctx.gateway_key`, then dispatches requests. Returns `Ok(())` on clean close, `Err` on handshake or
/// protocol failure (the caller logs it). All processes started on this connection are killed (process
/// group) when it ends.
pub fn serve<R, W>(mut reader: R, mut writer: W, ctx: Arc<ServiceContext>) -> anyhow::Result<()>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    // No thread exists before the peer has proved the pinned key: a refused peer leaves nothing behind.
    let mut both = Duplex {
        reader: &mut reader,
        writer: &mut writer,
    };
    handshake(&mut both, &ctx.identity, Role::Agent, |key| {
        *key == ctx.gateway_key
    })
    .context("handshake with the gateway")?;

    let (frames, queued) = bounded(OUTBOX_DEPTH);
    let writer = thread::Builder::new()
        .name("svc-writer".into())
        .spawn(move || write_frames(writer, queued))
        .context("starting the writer thread")?;
    let (shutdown, shutdown_seen) = bounded::<()>(0);
    let mut connection = Connection {
        max_concurrent: ctx.max_concurrent,
        outbox: Outbox {
            frames,
            shutdown: shutdown_seen,
        },
        requests: Registry::default(),
        threads: Vec::new(),
    };
    let result = connection.read_loop(&mut reader);

    drop(shutdown);
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

/// Gives the handshake, which wants one `Read + Write` stream, both halves of the connection.
struct Duplex<'a, R, W> {
    reader: &'a mut R,
    writer: &'a mut W,
}

impl<R: Read, W> Read for Duplex<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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

/// Requests in flight, by id; an entry is removed just before the request's last frame is sent.
type Registry = Arc<Mutex<HashMap<u32, Arc<Control>>>>;

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
    max_concurrent: usize,
    outbox: Outbox,
    requests: Registry,
    /// Request threads, joined as they finish and at shutdown.
    threads: Vec<JoinHandle<()>>,
}

impl Connection {
    fn read_loop(&mut self, reader: &mut impl Read) -> anyhow::Result<()> {
        loop {
            let message = match read_message(reader) {
                Ok(message) => message,
                Err(burrow_core::Error::Closed) => return Ok(()),
                Err(e) => return Err(e).context("reading from the gateway"),
            };
            match message {
                Message::Ping(value) => self.reply(Message::Pong(value))?,
                Message::Exec { id, spec } => self.start(id, spec)?,
                // Credit and Cancel may cross the request's last frame on the wire: not an error.
                Message::Credit { id, bytes } => {
                    if let Some(control) = lock(&self.requests).get(&id) {
                        control.add_credit(bytes);
                    }
                }
                Message::Cancel { id } => match lock(&self.requests).get(&id) {
                    Some(control) => control.cancel(),
                    None => log::debug!("cancel for request {id}, which is not running"),
                },
                other => bail!(
                    "protocol error: unexpected {} from the gateway",
                    kind_name(&other)
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

    fn start(&mut self, id: u32, spec: ExecSpec) -> anyhow::Result<()> {
        self.join_finished();
        let control = Arc::new(Control::new());
        {
            let mut requests = lock(&self.requests);
            let refusal = if id == 0 {
                Some("request id 0 is reserved".to_string())
            } else if requests.contains_key(&id) {
                Some(format!("request {id} is already running"))
            } else if requests.len() >= self.max_concurrent {
                Some(format!(
                    "too many requests in flight on this connection (at most {})",
                    self.max_concurrent
                ))
            } else {
                None
            };
            if let Some(message) = refusal {
                drop(requests);
                return self.reply(Message::Failed { id, message });
            }
            requests.insert(id, Arc::clone(&control));
        }
        let outbox = self.outbox.clone();
        let requests = Arc::clone(&self.requests);
        let spawned = thread::Builder::new()
            .name(format!("exec-{id}"))
            .spawn(move || {
                let registered = Registered { requests, id };
                let last = exec::run(id, &spec, &control, &|frame| outbox.send(frame));
                // Forget the id first: the gateway may reuse it as soon as it reads the last frame.
                drop(registered);
                outbox.send(last);
            });
        match spawned {
            Ok(thread) => {
                self.threads.push(thread);
                Ok(())
            }
            Err(e) => {
                lock(&self.requests).remove(&id);
                self.reply(Message::Failed {
                    id,
                    message: format!("starting a thread for the request: {e}"),
                })
            }
        }
    }

    fn join_finished(&mut self) {
        let (finished, running) = std::mem::take(&mut self.threads)
            .into_iter()
            .partition(|thread| thread.is_finished());
        self.threads = running;
        finished.into_iter().for_each(join_request);
    }

    fn shut_down(&mut self) {
        for control in lock(&self.requests).values() {
            control.connection_lost();
        }
        self.threads.drain(..).for_each(join_request);
    }
}

/// Removes a request from the registry when its thread is done, even if it panicked.
struct Registered {
    requests: Registry,
    id: u32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.requests).remove(&self.id);
    }
}

fn join_request(thread: JoinHandle<()>) {
    let name = thread.thread().name().unwrap_or("exec").to_string();
    if thread.join().is_err() {
        log::error!("thread {name} panicked");
    }
}

fn write_frames<W: Write>(mut writer: W, queued: Receiver<Message>) -> anyhow::Result<()> {
    for message in queued.iter() {
        writer
            .write_all(&message.encode())
            .context("writing to the gateway")?;
        // Flush when nothing else is waiting: no added latency when idle, fewer flushes under load.
        if queued.is_empty() {
            writer.flush().context("writing to the gateway")?;
        }
    }
    Ok(())
}

/// Names a message for an error without printing its payload (which may be megabytes of output).
fn kind_name(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "Hello",
        Message::Auth { .. } => "Auth",
        Message::Exec { .. } => "Exec",
        Message::Stdout { .. } => "Stdout",
        Message::Stderr { .. } => "Stderr",
        Message::Exit { .. } => "Exit",
        Message::Failed { .. } => "Failed",
        Message::Credit { .. } => "Credit",
        Message::Cancel { .. } => "Cancel",
        Message::Ping(_) => "Ping",
        Message::Pong(_) => "Pong",
    }
}

#[cfg(test)]
pub(crate) mod tests;
