//! Running one job's command: spawn it in its own process group (and cgroup where possible, see
//! [`crate::cgroup`]), keep its stdout and stderr, feed its stdin, enforce its timeout, and say how it
//! ended. [`crate::jobs`] owns the table of jobs and their lifetimes; [`crate::service`] owns the
//! connections that attach to them. This module owns one job's processes and buffers.
//!
//! # A job and the requests attached to it
//!
//! A job runs whether or not a connection is there to watch. Its output goes into one buffer per
//! stream ([`Pending`]); the request attached to the job (at most one: [`Job::attach`]) takes from
//! there, within the credit the gateway granted on that request ([`Job::serve_attached`]):
//!
//! - **attached**: a pipe reader stops reading while its buffer holds [`ATTACHED_BUFFER`] bytes or
//!   more, so a command whose output the gateway does not take blocks on its own full pipe (credit is
//!   backpressure, as before jobs outlived connections);
//! - **detached** (the connection dropped): the readers never stop, so the command is never blocked; the
//!   first [`DETACHED_KEEP`] bytes per stream wait in the buffer (allocated only as output comes), the
//!   rest is counted and dropped. A later request attaching gets the buffer first, then live output.
//!
//! # Threads of one job
//!
//! [`run`] is called on the job's own thread (`job-<n>`, started by [`crate::jobs`]). It spawns the
//! child, then supervises: it sleeps on the job's condition variable until the command is over, its
//! deadline passes or the gateway cancels it, and it is the only place that kills the process group.
//! Around it, as scoped threads joined before [`run`] returns (so the ending is always recorded after
//! the last output):
//!
//! - `job-<n>-out` and `job-<n>-err` read one pipe each into the job's buffers;
//! - `job-<n>-in` (only with [`ExecSpec::stdin`]) writes what the gateway sent on `STDIN` into the
//!   command's stdin pipe, and grants the gateway credit for every byte written (or dropped, once the
//!   command closed its end); `Eof` closes the pipe. The connection's reader never blocks on it: what
//!   arrives waits in a queue the credit bounds to [`INITIAL_WINDOW`]. stdin does not survive a
//!   connection: when the job is detached its stdin is closed (the command reads end of file);
//! - `job-<n>-wait` reaps the main process (std has no wait-with-timeout).
//!
//! # When a job is over
//!
//! When the main process has exited *and* both pipes are closed: `sleep 100 & echo x` has exited but
//! its background child still holds the pipes and may still write, so the job stays open until the
//! pipes close or the deadline passes; then the group is killed and the job reported as timed out.
//!
//! The group is killed only on timeout or cancel, never after a normal end (nor when a connection
//! drops). As with ssh, a background job that let go of the pipes (`nohup job >/dev/null 2>&1 &`)
//! outlives the job; killing it would make `command &` behave unlike it does everywhere else.
//!
//! A process that left the group (`setsid`) cannot be killed with it (its cgroup, where there is one,
//! does kill it); if it still holds the pipes after [`KILL_GRACE`], the pipe readers are told to give
//! up through a stop pipe, so the job still ends.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Scope};
use std::time::{Duration, Instant};

use burrow_core::protocol::{stream, ExecSpec, ExitStatus, Message, INITIAL_WINDOW, MAX_CHUNK};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{kill_process_group, Pid, Signal};

use crate::cgroup::{Cgroups, JobCgroup};

/// Used when a request says `timeout_s: 0`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the pipes may stay open after the group was killed before their readers give up.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// The helper threads are shallow; a small stack keeps 64 jobs × 4 helpers cheap on a 32-bit Pi.
pub(crate) const HELPER_STACK: usize = 256 * 1024;
/// The signal reported when burrow killed the job (timeout, cancel).
const SIGKILL: i32 = 9;
/// While attached, a pipe reader stops reading once this much output of its stream waits unsent.
pub const ATTACHED_BUFFER: usize = 2 * MAX_CHUNK;
/// While detached, this much output per stream is kept for the next request; the rest is counted.
pub const DETACHED_KEEP: usize = 1 << 20;
/// At most this much stdin is taken from the queue per write into the pipe.
const STDIN_CHUNK: usize = 64 * 1024;

/// Where a request's frames go: returns `false` once the connection is gone.
pub type Sink = Arc<dyn Fn(Message) -> bool + Send + Sync>;

/// How a job ended: the last frame of every request attached to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The command ran and ended (`Exit`).
    Exit(ExitStatus),
    /// It could not be started (`Failed`).
    Failed(String),
}

impl Ending {
    /// The frame for request `id`.
    pub fn message(&self, id: u32) -> Message {
        match self {
            Ending::Exit(status) => Message::Exit {
                id,
                status: status.clone(),
            },
            Ending::Failed(message) => Message::Failed {
                id,
                message: message.clone(),
            },
        }
    }
}

/// One stream's output not yet sent, and what was dropped while detached.
#[derive(Debug, Default)]
pub struct Pending {
    /// Bytes waiting for a request (and its credit).
    pub data: VecDeque<u8>,
    /// Bytes dropped because [`DETACHED_KEEP`] was full.
    pub dropped: u64,
}

/// One job: a command started for a job id, its buffers, and the request attached to it.
pub struct Job {
    /// The gateway's job id.
    pub id: String,
    /// A short number for thread names and cgroup names (job ids are long).
    pub seq: u64,
    state: Mutex<JobState>,
    /// Notified on every change of `state`; every waiter re-checks its own condition.
    changed: Condvar,
}

/// What [`Job`] guards; [`crate::jobs`] reads and writes the ending and the disk flags.
pub struct JobState {
    /// stdout, stderr.
    pub out: [Pending; 2],
    /// `Some` once the job ended.
    pub ending: Option<Ending>,
    /// The ending and kept output are in the data dir.
    pub on_disk: bool,
    /// Forgotten (`Done`, or evicted): never written to disk again.
    pub forgotten: bool,
    attach: Option<Attachment>,
    next_gen: u64,
    stdin: Option<StdinQueue>,
    cancelled: bool,
    /// The group was killed: readers stop holding back.
    killed: bool,
    /// The main process was reaped, with its status if `wait` worked.
    reaped: Option<Option<std::process::ExitStatus>>,
    /// Pipe readers still running.
    open_pipes: u8,
}

/// The request a job's output goes to.
struct Attachment {
    request: u32,
    gen: u64,
    /// Payload bytes the agent may still send on stdout and stderr.
    credit: [u64; 2],
    sink: Sink,
}

/// stdin from the gateway, waiting for the pipe.
#[derive(Default)]
struct StdinQueue {
    queue: VecDeque<u8>,
    /// Received and not yet credited back (queued or being written).
    uncredited: usize,
    /// The gateway sent `Eof`.
    eof: bool,
    /// No more writing: detached, reset, or the job is over.
    closed: bool,
    /// The command closed its end: what comes is dropped (and credited).
    broken: bool,
}

/// Why supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finished,
    TimedOut,
    Cancelled,
}

impl Job {
    /// A job about to run; `stdin`: its standard input comes from the gateway.
    pub fn new(id: String, seq: u64, stdin: bool) -> Job {
        Job::with_state(
            id,
            seq,
            JobState {
                stdin: stdin.then(StdinQueue::default),
                open_pipes: 2,
                ..JobState::empty()
            },
        )
    }

    /// A job that ended earlier (an outcome kept in the data dir).
    pub fn ended(id: String, seq: u64, ending: Ending, out: [Pending; 2]) -> Job {
        Job::with_state(
            id,
            seq,
            JobState {
                out,
                ending: Some(ending),
                on_disk: true,
                ..JobState::empty()
            },
        )
    }

    fn with_state(id: String, seq: u64, state: JobState) -> Job {
        Job {
            id,
            seq,
            state: Mutex::new(state),
            changed: Condvar::new(),
        }
    }

    /// The job's state, for [`crate::jobs`].
    pub fn lock(&self) -> MutexGuard<'_, JobState> {
        // A panicking job thread must not take the others down with a poisoned lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update<T>(&self, change: impl FnOnce(&mut JobState) -> T) -> T {
        let out = change(&mut self.lock());
        self.changed.notify_all();
        out
    }

    /// Waits until `done` holds or `deadline` passes; returns the state and whether `done` holds.
    fn wait_for(
        &self,
        deadline: Option<Instant>,
        mut done: impl FnMut(&JobState) -> bool,
    ) -> (MutexGuard<'_, JobState>, bool) {
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
                    self.changed
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Attaches request `request` (frames to `sink`), with [`INITIAL_WINDOW`] of credit per stream;
    /// a request attached before is superseded. Returns the attachment's generation.
    pub fn attach(&self, request: u32, sink: Sink) -> u64 {
        self.update(|s| {
            s.next_gen += 1;
            let gen = s.next_gen;
            s.attach = Some(Attachment {
                request,
                gen,
                credit: [INITIAL_WINDOW.into(); 2],
                sink,
            });
            gen
        })
    }

    /// The request of generation `gen` is gone (its connection dropped): the job runs on detached
    /// and its stdin is closed. Returns whether it was still attached.
    pub fn detach(&self, gen: u64) -> bool {
        self.update(|s| {
            if s.attach.as_ref().is_none_or(|a| a.gen != gen) {
                return false;
            }
            s.attach = None;
            if let Some(stdin) = &mut s.stdin {
                stdin.closed = true;
            }
            true
        })
    }

    /// Credit from the gateway for the request of generation `gen`.
    pub fn add_credit(&self, gen: u64, stream: u32, bytes: u32) {
        let Some(i) = output_index(stream) else {
            return;
        };
        self.update(|s| {
            if let Some(a) = s.attach.as_mut().filter(|a| a.gen == gen) {
                a.credit[i] = a.credit[i].saturating_add(bytes.into());
            }
        });
    }

    /// The gateway wants the job stopped; its process group is killed.
    pub fn cancel(&self) {
        self.update(|s| s.cancelled = true);
    }

    /// stdin bytes from the gateway. `Err`: the gateway sent beyond the credit it holds.
    pub fn stdin_data(&self, gen: u64, data: &[u8]) -> Result<(), String> {
        self.update(|s| {
            let attached = s.attach.as_ref().is_some_and(|a| a.gen == gen);
            let Some(stdin) = s.stdin.as_mut().filter(|q| attached && !q.closed && !q.eof) else {
                // Crossed a reset, the end of the job or a newer request: nothing to do.
                return Ok(());
            };
            if stdin.uncredited + data.len() > INITIAL_WINDOW as usize {
                return Err(format!(
                    "the gateway sent {} bytes of stdin beyond its credit",
                    stdin.uncredited + data.len() - INITIAL_WINDOW as usize
                ));
            }
            stdin.uncredited += data.len();
            stdin.queue.extend(data);
            Ok(())
        })
    }

    /// The gateway ended stdin (`Eof`), or aborted it (`Reset`, `abort`: what is queued is dropped).
    pub fn stdin_end(&self, gen: u64, abort: bool) {
        self.update(|s| {
            let attached = s.attach.as_ref().is_some_and(|a| a.gen == gen);
            if let Some(stdin) = s.stdin.as_mut().filter(|_| attached) {
                stdin.eof = true;
                stdin.closed |= abort;
            }
        });
    }

    /// Whether the command is still running.
    pub fn is_running(&self) -> bool {
        self.lock().ending.is_none()
    }

    /// Records how the job ended and wakes the attached request, which then sends what is left and
    /// the ending. Returns whether no request is attached (the caller then keeps it on disk).
    pub fn finish(&self, ending: Ending) -> bool {
        self.update(|s| {
            s.ending = Some(ending);
            s.attach.is_none()
        })
    }

    /// Serves the request of generation `gen` (request id `request`): sends the kept and live output
    /// within its credit, and returns its last frame once the job has ended and all output went out.
    /// `None`: the connection is gone (the caller detaches the job); a newer request took the job
    /// over: a `Failed` saying so.
    pub fn serve_attached(&self, gen: u64, request: u32) -> Option<Message> {
        let mut state = self.lock();
        loop {
            let JobState {
                attach,
                out,
                ending,
                ..
            } = &mut *state;
            let attachment = match attach {
                Some(a) if a.gen == gen => a,
                Some(_) => {
                    return Some(Message::Failed {
                        id: request,
                        message: format!(
                            "job {} was attached to a newer request; this one ends here",
                            self.id
                        ),
                    })
                }
                None => return None,
            };
            let mut frame = None;
            for (i, pending) in out.iter_mut().enumerate() {
                let credit = usize::try_from(attachment.credit[i]).unwrap_or(usize::MAX);
                let n = pending.data.len().min(credit).min(MAX_CHUNK);
                if n > 0 {
                    attachment.credit[i] -= n as u64;
                    let data: Vec<u8> = pending.data.drain(..n).collect();
                    if pending.data.is_empty() && pending.data.capacity() > 2 * ATTACHED_BUFFER {
                        // What a detached spell left behind: give it back.
                        pending.data = VecDeque::new();
                    }
                    frame = Some(Message::Data {
                        id: request,
                        stream: output_stream(i),
                        data,
                    });
                    break;
                }
            }
            if let Some(frame) = frame {
                let sink = attachment.sink.clone();
                drop(state);
                // A reader may be waiting for room in the buffer.
                self.changed.notify_all();
                if !sink(frame) {
                    return None;
                }
                state = self.lock();
                continue;
            }
            if let Some(ending) = ending {
                if out.iter().all(|p| p.data.is_empty()) {
                    return Some(ending.message(request));
                }
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl JobState {
    fn empty() -> JobState {
        JobState {
            out: Default::default(),
            ending: None,
            on_disk: false,
            forgotten: false,
            attach: None,
            next_gen: 0,
            stdin: None,
            cancelled: false,
            killed: false,
            reaped: None,
            open_pipes: 0,
        }
    }

    fn is_over(&self) -> bool {
        self.reaped.is_some() && self.open_pipes == 0
    }

    /// Reader `i` must wait before reading more: attached, and the request has not taken enough.
    fn held_back(&self, i: usize) -> bool {
        self.attach.is_some() && !self.killed && self.out[i].data.len() >= ATTACHED_BUFFER
    }

    fn keep_output(&mut self, i: usize, bytes: &[u8]) {
        let limit = if self.attach.is_some() && !self.killed {
            usize::MAX
        } else {
            DETACHED_KEEP
        };
        let pending = &mut self.out[i];
        let n = limit.saturating_sub(pending.data.len()).min(bytes.len());
        pending.data.extend(&bytes[..n]);
        pending.dropped += (bytes.len() - n) as u64;
    }
}

fn output_index(stream: u32) -> Option<usize> {
    match stream {
        stream::STDOUT => Some(0),
        stream::STDERR => Some(1),
        _ => None,
    }
}

fn output_stream(i: usize) -> u32 {
    if i == 0 {
        stream::STDOUT
    } else {
        stream::STDERR
    }
}

/// Runs `spec` as `job` until it ends, and says how it ended (the caller records it with
/// [`Job::finish`]). `cgroups`: where to put the job's own cgroup, if this machine allows it.
pub fn run(job: &Job, spec: &ExecSpec, cgroups: Option<&Cgroups>) -> Ending {
    let n = job.seq;
    let mut command = match build(spec) {
        Ok(command) => command,
        Err(message) => return Ending::Failed(message),
    };
    // CLOEXEC, so no child inherits the write ends: one that did would keep the stop signals from firing.
    let (Ok((stop_reader, stop_writer)), Ok((stdin_stop_reader, stdin_stop_writer))) =
        (pipe_with(PipeFlags::CLOEXEC), pipe_with(PipeFlags::CLOEXEC))
    else {
        return Ending::Failed("creating a pipe failed".into());
    };
    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let program = command.get_program().to_string_lossy();
            return Ending::Failed(format!("spawning `{program}`: {}", describe(&e)));
        }
    };
    // `process_group(0)` makes the child the leader of a new group whose id is its pid.
    let group = Pid::from_child(&child);
    let cgroup = cgroups.and_then(|c| c.enter(n, group));
    let stdin = child.stdin.take();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_all(group, cgroup.as_ref());
        let _ = child.wait();
        return Ending::Failed("the command's pipes were not created".into());
    };
    log::debug!("job {}: started process group {group}", job.id);
    crate::reaper::track(group);
    let child = Mutex::new(child);
    let mut stop_writer = Some(stop_writer);
    let mut stdin_stop_writer = Some(stdin_stop_writer);

    let end = thread::scope(|scope| {
        let stop = stop_reader.as_fd();
        let stdin_stop = stdin_stop_reader.as_fd();
        let child = &child;
        let mut helpers = spawn_helper(scope, format!("job-{n}-out"), move || {
            pump(stdout, 0, job, stop)
        })
        .and_then(|()| {
            spawn_helper(scope, format!("job-{n}-err"), move || {
                pump(stderr, 1, job, stop)
            })
        })
        .and_then(|()| spawn_helper(scope, format!("job-{n}-wait"), move || reap(child, job)));
        if let (Ok(()), Some(stdin)) = (&helpers, stdin) {
            helpers = spawn_helper(scope, format!("job-{n}-in"), move || {
                feed_stdin(stdin, job, stdin_stop)
            });
        }
        if let Err(e) = helpers {
            // Kill first: the helpers that did start then see their pipe close or the stop signal.
            kill_all(group, cgroup.as_ref());
            job.update(|s| s.killed = true);
            drop(stop_writer.take());
            drop(stdin_stop_writer.take());
            let _ = child.lock().unwrap_or_else(PoisonError::into_inner).wait();
            return Err(format!("starting a thread for the command: {e}"));
        }

        let deadline = started.checked_add(match spec.timeout_s {
            0 => DEFAULT_TIMEOUT,
            s => Duration::from_secs(s),
        });
        let (state, _) = job.wait_for(deadline, |s| s.is_over() || s.cancelled);
        // A command that finished as the cancel arrived has nothing left to kill.
        let end = if state.is_over() {
            End::Finished
        } else if state.cancelled {
            End::Cancelled
        } else {
            End::TimedOut
        };
        drop(state);
        // The feeder ends with the command.
        job.update(|s| {
            if let Some(stdin) = &mut s.stdin {
                stdin.closed = true;
            }
        });
        drop(stdin_stop_writer.take());
        if end != End::Finished {
            kill_all(group, cgroup.as_ref());
            job.update(|s| s.killed = true);
            let (state, drained) =
                job.wait_for(Some(Instant::now() + KILL_GRACE), JobState::is_over);
            drop(state);
            if !drained {
                log::warn!(
                    "job {}: output pipes still open {KILL_GRACE:?} after killing process group \
                     {group}; a process that left the group holds them; no longer reading them",
                    job.id
                );
                // Closing the write end wakes both readers' poll (POLLHUP on the read end).
                drop(stop_writer.take());
            }
        }
        Ok(end)
    });
    crate::reaper::untrack(group);
    if let Some(cgroup) = cgroup {
        cgroup.remove();
    }
    let end = match end {
        Ok(end) => end,
        Err(message) => return Ending::Failed(message),
    };

    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let status = match end {
        End::Finished => {
            let reaped = job.lock().reaped.flatten();
            ExitStatus {
                exit_code: reaped.and_then(|s| s.code()),
                signal: reaped.and_then(|s| s.signal()),
                timed_out: false,
                duration_ms,
            }
        }
        // burrow killed the job: report that, even if the main process had already exited on its
        // own while a background child held the pipes.
        End::TimedOut | End::Cancelled => ExitStatus {
            exit_code: None,
            signal: Some(SIGKILL),
            timed_out: end == End::TimedOut,
            duration_ms,
        },
    };
    if end == End::Cancelled {
        // Whoever cancelled wants it stopped, not the output it had not taken yet.
        job.update(|s| s.out = Default::default());
    }
    log::debug!("job {}: ended ({end:?}) {status:?}", job.id);
    Ending::Exit(status)
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
        .stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    Ok(command)
}

/// The OS's wording for `e`, without std's " (os error N)" suffix.
pub(crate) fn describe(e: &io::Error) -> String {
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

/// Kills the job's cgroup (which also holds `setsid` children) and its process group.
fn kill_all(group: Pid, cgroup: Option<&JobCgroup>) {
    if let Some(cgroup) = cgroup {
        cgroup.kill();
    }
    match kill_process_group(group, Signal::KILL) {
        // Already gone: the whole group exited and was reaped.
        Ok(()) | Err(Errno::SRCH) => {}
        Err(e) => log::warn!("killing process group {group}: {e}"),
    }
}

fn reap(child: &Mutex<Child>, job: &Job) {
    let status = child.lock().unwrap_or_else(PoisonError::into_inner).wait();
    if let Err(e) = &status {
        log::error!("waiting for process: {e}");
    }
    job.update(|s| s.reaped = Some(status.ok()));
}

/// Reads one pipe into the job's buffer `i` until it closes or the stop pipe fires.
fn pump<P: Read + AsFd>(mut pipe: P, i: usize, job: &Job, stop: BorrowedFd<'_>) {
    // Counted down even if this thread panics, so supervision is not left waiting for the deadline.
    struct Closed<'a>(&'a Job);
    impl Drop for Closed<'_> {
        fn drop(&mut self) {
            self.0.update(|s| s.open_pipes -= 1);
        }
    }
    let _closed = Closed(job);

    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        drop(job.wait_for(None, |s| !s.held_back(i)));
        let Some(n) = read_chunk(&mut pipe, stop, &mut buf) else {
            return;
        };
        job.update(|s| s.keep_output(i, &buf[..n]));
    }
}

/// Reads what the pipe has (at most `buf.len()` bytes); `None` at end of file, on error, or when the
/// stop pipe's write end has been closed.
fn read_chunk<P: Read + AsFd>(pipe: &mut P, stop: BorrowedFd<'_>, buf: &mut [u8]) -> Option<usize> {
    loop {
        if !wait_ready(pipe.as_fd(), PollFlags::IN, stop)? {
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

/// Polls `fd` for `flags` and `stop` for hang-up: `Some(true)` when `fd` is ready, `Some(false)` to
/// poll again, `None` when the stop pipe fired or poll failed.
fn wait_ready(fd: BorrowedFd<'_>, flags: PollFlags, stop: BorrowedFd<'_>) -> Option<bool> {
    let mut fds = [
        PollFd::from_borrowed_fd(fd, flags),
        PollFd::from_borrowed_fd(stop, PollFlags::IN),
    ];
    match poll(&mut fds, None) {
        Ok(_) if !fds[1].revents().is_empty() => None,
        Ok(_) => Some(!fds[0].revents().is_empty()),
        Err(Errno::INTR) => Some(false),
        Err(e) => {
            log::warn!("polling a command's pipe: {e}");
            None
        }
    }
}

/// Writes the gateway's stdin into the command's pipe, granting credit as it goes; closes the pipe
/// at `Eof`, when the job is detached or over.
fn feed_stdin(pipe: ChildStdin, job: &Job, stop: BorrowedFd<'_>) {
    let pipe: OwnedFd = pipe.into();
    // Non-blocking, so a command that never reads its stdin cannot pin this thread past the job.
    if let Err(e) = rustix::fs::fcntl_getfl(&pipe)
        .and_then(|flags| rustix::fs::fcntl_setfl(&pipe, flags | rustix::fs::OFlags::NONBLOCK))
    {
        log::warn!("job {}: making the stdin pipe non-blocking: {e}", job.id);
    }
    let mut pipe = std::fs::File::from(pipe);
    loop {
        let (chunk, broken) = {
            let (mut state, _) = job.wait_for(None, |s| {
                s.stdin
                    .as_ref()
                    .is_none_or(|q| q.closed || q.eof || !q.queue.is_empty())
            });
            let Some(stdin) = state.stdin.as_mut() else {
                return;
            };
            if stdin.closed || stdin.queue.is_empty() {
                // Eof with nothing queued, detached, or over: dropping the pipe closes it.
                return;
            }
            let n = stdin.queue.len().min(STDIN_CHUNK);
            let chunk: Vec<u8> = stdin.queue.drain(..n).collect();
            (chunk, stdin.broken)
        };
        if !broken && !write_all_polled(&mut pipe, &chunk, stop) {
            // The command closed its stdin (or is being stopped): drop the rest, but keep granting
            // credit so the gateway is not left waiting.
            job.update(|s| {
                if let Some(q) = &mut s.stdin {
                    q.broken = true
                }
            });
        }
        let grant = job.update(|s| {
            if let Some(q) = &mut s.stdin {
                q.uncredited -= chunk.len();
            }
            s.attach.as_ref().map(|a| (a.sink.clone(), a.request))
        });
        if let Some((sink, id)) = grant {
            sink(Message::Credit {
                id,
                stream: stream::STDIN,
                bytes: chunk.len() as u32,
            });
        }
    }
}

/// Writes all of `data` into the non-blocking pipe; `false` if the reader went away or the stop pipe
/// fired.
fn write_all_polled(pipe: &mut std::fs::File, mut data: &[u8], stop: BorrowedFd<'_>) -> bool {
    while !data.is_empty() {
        match pipe.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if wait_ready(pipe.as_fd(), PollFlags::OUT, stop).is_none() {
                    return false;
                }
            }
            // EPIPE: the command does not read its stdin any more.
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests;
