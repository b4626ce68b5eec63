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
pub(crate) mod tests {
    //! A test-side gateway on one end of a `UnixStream` pair (the in-memory twin of the tunnel), with
    //! `serve` on the other; [`crate::exec`]'s tests use it too.

    use super::*;
    use burrow_core::protocol::{write_message, ExitStatus};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    pub(crate) struct TestGateway {
        stream: UnixStream,
        agent: Option<JoinHandle<anyhow::Result<()>>>,
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

    /// Starts `serve` on a thread; returns the gateway end and the agent thread.
    fn spawn_agent(
        gateway_key: PublicKey,
        max_concurrent: usize,
    ) -> (UnixStream, JoinHandle<anyhow::Result<()>>) {
        let (gateway_end, agent_end) = UnixStream::pair().unwrap();
        let ctx = Arc::new(ServiceContext {
            identity: Identity::generate("node"),
            gateway_key,
            max_concurrent,
        });
        let agent = thread::spawn(move || {
            let reader = agent_end.try_clone().unwrap();
            serve(reader, agent_end, ctx)
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
            let gateway = Identity::generate("gateway");
            let (mut stream, agent) = spawn_agent(gateway.public(), max_concurrent);
            handshake(&mut stream, &gateway, Role::Gateway, |_| true).unwrap();
            TestGateway {
                stream,
                agent: Some(agent),
            }
        }

        pub fn send(&mut self, message: &Message) {
            write_message(&mut self.stream, message).unwrap();
        }

        pub fn send_raw(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).unwrap();
        }

        pub fn recv(&mut self) -> Message {
            read_message(&mut self.stream).expect("a frame from the agent")
        }

        /// Waits at most `wait` for a frame; `None` if none came.
        pub fn recv_within(&mut self, wait: Duration) -> Option<Message> {
            self.stream.set_read_timeout(Some(wait)).unwrap();
            let got = read_message(&mut self.stream);
            self.stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            match got {
                Ok(message) => Some(message),
                Err(burrow_core::Error::Io { source, .. })
                    if matches!(
                        source.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    None
                }
                Err(e) => panic!("reading from the agent: {e}"),
            }
        }

        pub fn exec(&mut self, id: u32, spec: ExecSpec) {
            self.send(&Message::Exec { id, spec });
        }

        /// Collects request `id`'s frames up to its last one; any other request's frame is a failure.
        pub fn collect(&mut self, id: u32) -> Outcome {
            let mut outcome = Outcome::default();
            loop {
                match self.recv() {
                    Message::Stdout { id: i, data } if i == id => outcome.stdout.extend(data),
                    Message::Stderr { id: i, data } if i == id => outcome.stderr.extend(data),
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
                Message::Stdout { id: i, data } if i == id => stdout.extend(data),
                other => panic!("expected the pid on stdout, got {other:?}"),
            }
        }
        let end = stdout.iter().position(|&b| b == b'\n').unwrap();
        let rest = stdout.split_off(end + 1);
        let number = String::from_utf8(stdout).unwrap().trim().parse().unwrap();
        (number, rest)
    }

    #[test]
    fn pinned_gateway_is_served() {
        let mut gateway = TestGateway::start();
        gateway.send(&Message::Ping(7));
        assert_eq!(gateway.recv(), Message::Pong(7));
        gateway.finish().unwrap();
    }

    #[test]
    fn other_gateway_key_is_refused_and_runs_nothing() {
        let marker = std::env::temp_dir().join(format!(
            "burrow-agent-refused-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let (mut stream, agent) = spawn_agent(Identity::generate("pinned").public(), 8);
        let impostor = Identity::generate("impostor");
        assert!(handshake(&mut stream, &impostor, Role::Gateway, |_| true).is_err());
        // Whatever it sends next must not run.
        let _ = write_message(
            &mut stream,
            &Message::Exec {
                id: 1,
                spec: command(&format!("touch {}", marker.display())),
            },
        );
        let err = agent.join().unwrap().unwrap_err();
        assert!(format!("{err:#}").contains("handshake"), "{err:#}");
        assert!(!marker.exists());
    }

    #[test]
    fn garbage_after_handshake_ends_the_connection_and_its_commands() {
        let mut gateway = TestGateway::start();
        gateway.exec(1, command("echo $$; sleep 100"));
        let (group, _) = first_number(&mut gateway, 1);
        // A length prefix far beyond MAX_FRAME.
        gateway.send_raw(&[0xff; 16]);
        let err = gateway.finish().unwrap_err();
        assert!(format!("{err:#}").contains("exceeds"), "{err:#}");
        assert!(wait_until(Duration::from_secs(5), || live_members(group).is_empty()));
    }

    #[test]
    fn malformed_exec_payload_is_a_protocol_error() {
        let mut gateway = TestGateway::start();
        // kind 3 (Exec), id 1, payload "{"
        gateway.send_raw(&[0, 0, 0, 6, 3, 0, 0, 0, 1, b'{']);
        let err = gateway.finish().unwrap_err();
        assert!(format!("{err:#}").contains("bad Exec payload"), "{err:#}");
    }

    #[test]
    fn second_hello_is_a_protocol_error() {
        let mut gateway = TestGateway::start();
        gateway.send(&Message::Hello {
            version: 1,
            role: Role::Gateway,
            key: [1; 32],
            nonce: [2; 32],
        });
        // The agent hangs up: the gateway end sees the stream close.
        assert!(matches!(
            read_message(&mut gateway.stream),
            Err(burrow_core::Error::Closed)
        ));
        let err = gateway.finish().unwrap_err();
        assert!(format!("{err:#}").contains("unexpected Hello"), "{err:#}");
    }

    #[test]
    fn closing_the_connection_kills_its_commands() {
        let mut gateway = TestGateway::start();
        gateway.exec(1, command("echo $$; sleep 100"));
        let (group, _) = first_number(&mut gateway, 1);
        assert!(!live_members(group).is_empty());
        gateway.finish().unwrap();
        assert!(wait_until(Duration::from_secs(5), || live_members(group).is_empty()));
    }

    #[test]
    fn chatty_command_does_not_block_a_quick_one() {
        let mut gateway = TestGateway::start();
        gateway.exec(1, command("yes"));
        let mut chatty = 0usize;
        let mut quick: Option<Outcome> = None;
        let started = Instant::now();
        // Act like a real gateway: hand every byte of `yes` on at once, so it floods the connection.
        while quick.as_ref().is_none_or(|q| q.status.is_none()) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "echo hi never finished"
            );
            match gateway.recv() {
                Message::Stdout { id: 1, data } => {
                    chatty += data.len();
                    let bytes = data.len() as u32;
                    gateway.send(&Message::Credit { id: 1, bytes });
                    if quick.is_none() && chatty > 1_000_000 {
                        gateway.exec(2, command("echo hi"));
                        quick = Some(Outcome::default());
                    }
                }
                Message::Stdout { id: 2, data } => quick.as_mut().unwrap().stdout.extend(data),
                Message::Exit { id: 2, status } => quick.as_mut().unwrap().status = Some(status),
                other => panic!("unexpected {other:?}"),
            }
        }
        let quick = quick.unwrap();
        assert_eq!(quick.stdout, b"hi\n");
        assert_eq!(quick.exit().exit_code, Some(0));
        gateway.send(&Message::Cancel { id: 1 });
        let rest = gateway.collect(1);
        assert_eq!(rest.exit().signal, Some(9));
    }

    #[test]
    fn refusals_are_failed_frames() {
        let mut gateway = TestGateway::start_with(1);
        gateway.exec(0, command("true"));
        assert!(
            matches!(gateway.recv(), Message::Failed { id: 0, message } if message.contains("reserved"))
        );
        gateway.exec(1, command("echo $$; sleep 100"));
        first_number(&mut gateway, 1);
        gateway.exec(1, command("true"));
        assert!(
            matches!(gateway.recv(), Message::Failed { id: 1, message } if message.contains("already running"))
        );
        gateway.exec(2, command("true"));
        assert!(
            matches!(gateway.recv(), Message::Failed { id: 2, message } if message.contains("too many"))
        );
        // Credit and Cancel for unknown ids cross finished requests on the wire: ignored.
        gateway.send(&Message::Credit { id: 9, bytes: 1 });
        gateway.send(&Message::Cancel { id: 9 });
        gateway.send(&Message::Ping(1));
        assert_eq!(gateway.recv(), Message::Pong(1));
        gateway.send(&Message::Cancel { id: 1 });
        assert_eq!(gateway.collect(1).exit().signal, Some(9));
        // The slot is free again, and the id may be reused.
        assert_eq!(gateway.run(command("echo again")).stdout, b"again\n");
    }
}
