//! Running one command for the gateway: spawn it in its own process group, stream its stdout and
//! stderr as protocol frames within each stream's credit, enforce its timeout, and say how it
//! ended. [`crate::service`] owns the connection; this module owns one request's processes.
//!
//! # Threads of one request
//!
//! [`run`] is called on the request's own thread (`exec-<id>`, started by the service). It spawns the
//! child, then supervises: it sleeps on the request's [`Control`] until the command is over, its deadline
//! passes, the gateway cancels it or the connection is lost, and it is the only place that kills the
//! process group. Around it, as scoped threads joined before [`run`] returns (so the final `Exit` is always
//! sent after the last output frame):
//!
//! - `exec-<id>-out` and `exec-<id>-err` read one pipe each and send every chunk as soon as it is read:
//!   streaming matters more than fewer frames. They never send more payload than the credit the gateway
//!   granted; while it is exhausted they block on the `Control`'s condition variable and stop reading, so
//!   the command blocks on its own full pipe rather than filling the agent's memory.
//! - `exec-<id>-wait` reaps the main process (std has no wait-with-timeout).
//!
//! # When a request is over
//!
//! When the main process has exited *and* both pipes are closed: `sleep 100 & echo x` has exited but its
//! background child still holds the pipes and may still write, so the request stays open (and the output
//! keeps flowing) until the pipes close or the deadline passes; then the group is killed and the request
//! reported as timed out.
//!
//! The group is killed only on timeout, cancel or loss of the connection, never after a normal end. As
//! with ssh, a background job that let go of the pipes (`nohup job >/dev/null 2>&1 &`) outlives the
//! request; that is the only way to start something long-running through burrow, and killing it would
//! make `command &` behave unlike it does everywhere else.
//!
//! A process that left the group (`setsid`) cannot be killed with it; if it still holds the pipes after
//! [`KILL_GRACE`], the pipe readers are told to give up through a stop pipe, so the request still ends.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Scope};
use std::time::{Duration, Instant};

use burrow_core::protocol::{stream, ExecSpec, ExitStatus, Message, INITIAL_WINDOW, MAX_CHUNK};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{kill_process_group, Pid, Signal};

/// Used when a request says `timeout_s: 0`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the pipes may stay open after the group was killed before their readers give up.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// The helper threads are shallow; a small stack keeps 64 requests × 3 helpers cheap on a 32-bit Pi.
const HELPER_STACK: usize = 256 * 1024;
/// The signal reported when burrow killed the request (timeout, cancel).
const SIGKILL: i32 = 9;

/// Where a request's frames go: returns `false` once the connection is gone, so the request stops.
pub type Sink<'a> = dyn Fn(Message) -> bool + Sync + 'a;

/// The shared state of one request: its output credit and what the gateway or the connection asked of
/// it. The service holds it to deliver `Credit` and `Cancel`; the request's threads wait on it.
pub struct Control {
    state: Mutex<State>,
    /// Notified on every change of `state`; every waiter re-checks its own condition.
    changed: Condvar,
}

struct State {
    /// Payload bytes the agent may still send on stdout and stderr (each stream has its own window;
    /// u64: the gateway may grant more than 4 GiB in total).
    credit: [u64; 2],
    cancelled: bool,
    /// The connection is gone: send nothing more, kill the group.
    lost: bool,
    /// The group was killed: output readers stop waiting for credit.
    killed: bool,
    /// The main process was reaped, with its status if `wait` worked.
    reaped: Option<Option<std::process::ExitStatus>>,
    /// Pipe readers still running.
    open_pipes: u8,
}

/// Why supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finished,
    TimedOut,
    Cancelled,
    Lost,
}

impl Control {
    /// A fresh request with [`INITIAL_WINDOW`] bytes of credit on each output stream.
    pub fn new() -> Control {
        Control {
            state: Mutex::new(State {
                credit: [INITIAL_WINDOW.into(); 2],
                cancelled: false,
                lost: false,
                killed: false,
                reaped: None,
                open_pipes: 2,
            }),
            changed: Condvar::new(),
        }
    }

    /// The gateway handed on output of `stream`: `bytes` more may be sent on it. Credit for a stream
    /// this request does not send on is ignored.
    pub fn add_credit(&self, stream: u32, bytes: u32) {
        if let Some(i) = Stream::of(stream) {
            self.update(|s| {
                s.credit[i as usize] = s.credit[i as usize].saturating_add(bytes.into())
            });
        }
    }

    /// The gateway wants the request stopped; its process group is killed.
    pub fn cancel(&self) {
        self.update(|s| s.cancelled = true);
    }

    /// The connection ended: kill the group and send nothing more.
    pub fn connection_lost(&self) {
        self.update(|s| s.lost = true);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking request thread must not take the others down with a poisoned lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until `done` holds or `deadline` passes; returns the state and whether `done` holds.
    fn wait_for(
        &self,
        deadline: Option<Instant>,
        mut done: impl FnMut(&State) -> bool,
    ) -> (MutexGuard<'_, State>, bool) {
        let mut state = self.lock();
        loop {
            if done(&state) {
                return (state, true);
            }
            state = match deadline {
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return (state, false);
                    }
                    let (state, _) = self
                        .changed
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner);
                    state
                }
            };
        }
    }

    fn wait_for_end(&self, deadline: Option<Instant>) -> End {
        let (state, _) = self.wait_for(deadline, |s| s.is_over() || s.lost || s.cancelled);
        // A command that finished as the cancel arrived has nothing left to kill.
        if state.is_over() {
            End::Finished
        } else if state.lost {
            End::Lost
        } else if state.cancelled {
            End::Cancelled
        } else {
            End::TimedOut
        }
    }

    /// Takes up to `want` bytes of credit, blocking while there is none. `None`: send nothing more
    /// (the connection is gone, or the group was killed and the credit is spent).
    fn take_credit(&self, stream: Stream, want: usize) -> Option<usize> {
        let i = stream as usize;
        let (mut state, _) = self.wait_for(None, |s| s.lost || s.credit[i] > 0 || s.killed);
        if state.lost || state.credit[i] == 0 {
            return None;
        }
        let n = state.credit[i].min(want as u64);
        state.credit[i] -= n;
        Some(n as usize)
    }
}

impl State {
    fn is_over(&self) -> bool {
        self.reaped.is_some() && self.open_pipes == 0
    }
}

/// Runs `spec` as request `id`, sending its output through `sink`, and returns the request's last frame:
/// `Exit`, or `Failed` when it could not be started. The caller sends it (after forgetting the request,
/// so the gateway may reuse the id as soon as it sees the frame).
pub fn run(id: u32, spec: &ExecSpec, control: &Control, sink: &Sink<'_>) -> Message {
    let failed = |message: String| Message::Failed { id, message };
    let mut command = match build(spec) {
        Ok(command) => command,
        Err(message) => return failed(message),
    };
    // CLOEXEC, so no child inherits the write end: one that did would keep the stop signal from firing.
    let (stop_reader, stop_writer) = match pipe_with(PipeFlags::CLOEXEC) {
        Ok(pair) => pair,
        Err(e) => return failed(format!("creating a pipe: {e}")),
    };
    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let program = command.get_program().to_string_lossy();
            return failed(format!("spawning `{program}`: {}", describe(&e)));
        }
    };
    // `process_group(0)` makes the child the leader of a new group whose id is its pid.
    let group = Pid::from_child(&child);
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(group);
        let _ = child.wait();
        return failed("the command's pipes were not created".into());
    };
    log::debug!("request {id}: started process group {group}");
    crate::reaper::track(group);
    let child = Mutex::new(child);
    let mut stop_writer = Some(stop_writer);

    let end = thread::scope(|scope| {
        let stop = stop_reader.as_fd();
        let child = &child;
        let helpers = spawn_helper(scope, format!("exec-{id}-out"), move || {
            pump(stdout, Stream::Stdout, id, control, stop, sink)
        })
        .and_then(|()| {
            spawn_helper(scope, format!("exec-{id}-err"), move || {
                pump(stderr, Stream::Stderr, id, control, stop, sink)
            })
        })
        .and_then(|()| {
            spawn_helper(scope, format!("exec-{id}-wait"), move || {
                reap(child, control)
            })
        });
        if let Err(e) = helpers {
            // Kill first: the helpers that did start then see their pipe close or the stop signal.
            kill_group(group);
            control.update(|s| s.killed = true);
            drop(stop_writer.take());
            let _ = child.lock().unwrap_or_else(PoisonError::into_inner).wait();
            return Err(format!("starting a thread for the command: {e}"));
        }

        let deadline = started.checked_add(match spec.timeout_s {
            0 => DEFAULT_TIMEOUT,
            s => Duration::from_secs(s),
        });
        let end = control.wait_for_end(deadline);
        if end != End::Finished {
            kill_group(group);
            control.update(|s| s.killed = true);
            let (state, drained) =
                control.wait_for(Some(Instant::now() + KILL_GRACE), State::is_over);
            drop(state);
            if !drained {
                log::warn!(
                    "request {id}: output pipes still open {KILL_GRACE:?} after killing process group \
                     {group}; a process that left the group holds them; no longer reading them"
                );
                // Closing the write end wakes both readers' poll (POLLHUP on the read end).
                drop(stop_writer.take());
            }
        }
        Ok(end)
    });
    crate::reaper::untrack(group);
    let end = match end {
        Ok(end) => end,
        Err(message) => return failed(message),
    };

    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let status = match end {
        End::Finished => {
            let reaped = control.lock().reaped.flatten();
            ExitStatus {
                exit_code: reaped.and_then(|s| s.code()),
                signal: reaped.and_then(|s| s.signal()),
                timed_out: false,
                duration_ms,
            }
        }
        // burrow killed the request: report that, even if the main process had already exited on its
        // own while a background child held the pipes.
        End::TimedOut | End::Cancelled | End::Lost => ExitStatus {
            exit_code: None,
            signal: Some(SIGKILL),
            timed_out: end == End::TimedOut,
            duration_ms,
        },
    };
    log::debug!("request {id}: ended ({end:?}) {status:?}");
    Message::Exit { id, status }
}

/// Turns the request into a `Command`, or says why it cannot run.
fn build(spec: &ExecSpec) -> Result<Command, String> {
    let mut command = match (&spec.command, &spec.argv) {
        (Some(line), None) => {
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(line);
            command
        }
        (None, Some(argv)) => match argv.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args);
                command
            }
            None => return Err("`argv` is empty".into()),
        },
        (Some(_), Some(_)) => return Err("give either `command` or `argv`, not both".into()),
        (None, None) => return Err("nothing to run: give `command` or `argv`".into()),
    };
    for (name, value) in &spec.env {
        // A name with `=` would smuggle in a different variable than the one named.
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        if value.contains('\0') {
            return Err(format!("environment variable {name} contains a NUL byte"));
        }
    }
    command.envs(&spec.env);
    if let Some(cwd) = &spec.cwd {
        // Checked here because a failed chdir in the child is reported like a failed exec.
        match std::fs::metadata(cwd) {
            Err(e) => return Err(format!("cwd {cwd}: {}", describe(&e))),
            Ok(meta) if !meta.is_dir() => return Err(format!("cwd {cwd}: Not a directory")),
            Ok(_) => {}
        }
        command.current_dir(cwd);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    Ok(command)
}

/// The OS's wording for `e`, without std's " (os error N)" suffix.
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

fn spawn_helper<'scope>(
    scope: &'scope Scope<'scope, '_>,
    name: String,
    work: impl FnOnce() + Send + 'scope,
) -> io::Result<()> {
    thread::Builder::new()
        .name(name)
        .stack_size(HELPER_STACK)
        .spawn_scoped(scope, work)
        .map(drop)
}

fn kill_group(group: Pid) {
    match kill_process_group(group, Signal::KILL) {
        // Already gone: the whole group exited and was reaped.
        Ok(()) | Err(Errno::SRCH) => {}
        Err(e) => log::warn!("killing process group {group}: {e}"),
    }
}

fn reap(child: &Mutex<Child>, control: &Control) {
    let status = child.lock().unwrap_or_else(PoisonError::into_inner).wait();
    if let Err(e) = &status {
        log::error!("waiting for process: {e}");
    }
    control.update(|s| s.reaped = Some(status.ok()));
}

/// The two output streams, as indexes into the credit windows.
#[derive(Clone, Copy)]
enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    fn of(id: u32) -> Option<Stream> {
        match id {
            stream::STDOUT => Some(Stream::Stdout),
            stream::STDERR => Some(Stream::Stderr),
            _ => None,
        }
    }

    fn id(self) -> u32 {
        match self {
            Stream::Stdout => stream::STDOUT,
            Stream::Stderr => stream::STDERR,
        }
    }
}

/// Forwards one pipe to the gateway until it closes, the stop pipe fires, or sending must end.
fn pump<P: Read + AsFd>(
    mut pipe: P,
    stream: Stream,
    id: u32,
    control: &Control,
    stop: BorrowedFd<'_>,
    sink: &Sink<'_>,
) {
    // Counted down even if this thread panics, so supervision is not left waiting for the deadline.
    struct Closed<'a>(&'a Control);
    impl Drop for Closed<'_> {
        fn drop(&mut self) {
            self.0.update(|s| s.open_pipes -= 1);
        }
    }
    let _closed = Closed(control);

    let mut buf = vec![0u8; MAX_CHUNK];
    while let Some(n) = read_chunk(&mut pipe, stop, &mut buf) {
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let Some(allowed) = control.take_credit(stream, rest.len()) else {
                // Dropping the pipe is fine: the group is being killed, or nobody is listening.
                return;
            };
            let (now, later) = rest.split_at(allowed);
            let frame = Message::Data {
                id,
                stream: stream.id(),
                data: now.to_vec(),
            };
            if !sink(frame) {
                control.connection_lost();
                return;
            }
            rest = later;
        }
    }
}

/// Reads what the pipe has (at most `buf.len()` bytes); `None` at end of file, on error, or when the
/// stop pipe's write end has been closed.
fn read_chunk<P: Read + AsFd>(pipe: &mut P, stop: BorrowedFd<'_>, buf: &mut [u8]) -> Option<usize> {
    loop {
        let (readable, stopped) = {
            let mut fds = [
                PollFd::new(&*pipe, PollFlags::IN),
                PollFd::from_borrowed_fd(stop, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => (!fds[0].revents().is_empty(), !fds[1].revents().is_empty()),
                Err(Errno::INTR) => continue,
                Err(e) => {
                    log::warn!("polling a command's pipe: {e}");
                    return None;
                }
            }
        };
        if stopped {
            return None;
        }
        if !readable {
            continue;
        }
        // Poll said readable (data or hang-up) and only this thread reads the pipe: this won't block.
        match pipe.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("reading a command's output: {e}");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests;
