//! One job as the connections see it: its output buffers, the request attached to it and that
//! request's credit, its stdin queue, and how it ended. [`crate::exec`] runs the job's processes and
//! fills the buffers; [`crate::jobs`] keeps the table of jobs; [`crate::service`] attaches requests.
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

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use burrow_core::protocol::{stream, ExitStatus, Message, INITIAL_WINDOW, MAX_CHUNK};

/// While attached, a pipe reader stops reading once this much output of its stream waits unsent.
pub const ATTACHED_BUFFER: usize = 2 * MAX_CHUNK;
/// While detached, this much output per stream is kept for the next request; the rest is counted.
pub const DETACHED_KEEP: usize = 1 << 20;

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

/// How [`Job::serve_attached`] ended.
#[derive(Debug)]
pub enum Served {
    /// The job's outcome (`Exit` or `Failed`): the request's last frame, kept until `Done`.
    Outcome(Message),
    /// A newer request took the job over: this request's last frame says so (not the outcome).
    Superseded(Message),
    /// The connection is gone: the caller detaches the job.
    Gone,
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
    pub(crate) attach: Option<Attachment>,
    pub(crate) next_gen: u64,
    pub(crate) stdin: Option<StdinQueue>,
    pub(crate) cancelled: bool,
    /// The group was killed: readers stop holding back.
    pub(crate) killed: bool,
    /// The main process was reaped, with its status if `wait` worked.
    pub(crate) reaped: Option<Option<std::process::ExitStatus>>,
    /// Pipe readers still running.
    pub(crate) open_pipes: u8,
    /// The job's pseudo-terminal, while it runs on one.
    pub(crate) tty: Option<Terminal>,
}

/// A running job's pseudo-terminal.
pub(crate) struct Terminal {
    pub(crate) master: std::os::fd::OwnedFd,
    /// The session's (and its leader's process group's) id.
    pub(crate) session: rustix::process::Pid,
}

/// The request a job's output goes to.
pub(crate) struct Attachment {
    pub(crate) request: u32,
    pub(crate) gen: u64,
    /// Payload bytes the agent may still send on stdout and stderr.
    pub(crate) credit: [u64; 2],
    pub(crate) sink: Sink,
}

/// stdin from the gateway, waiting for the pipe.
#[derive(Default)]
pub(crate) struct StdinQueue {
    pub(crate) queue: VecDeque<u8>,
    /// Received and not yet credited back (queued or being written).
    pub(crate) uncredited: usize,
    /// The gateway sent `Eof`.
    pub(crate) eof: bool,
    /// No more writing: detached, reset, or the job is over.
    pub(crate) closed: bool,
    /// The command closed its end: what comes is dropped (and credited).
    pub(crate) broken: bool,
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

    pub(crate) fn update<T>(&self, change: impl FnOnce(&mut JobState) -> T) -> T {
        let out = change(&mut self.lock());
        self.changed.notify_all();
        out
    }

    /// Waits until `done` holds or `deadline` passes; returns the state and whether `done` holds.
    pub(crate) fn wait_for(
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
    /// a request attached before is superseded (and the job's stdin, which belonged to it, closed).
    /// Returns the attachment's generation.
    pub fn attach(&self, request: u32, sink: Sink) -> u64 {
        self.update(|s| {
            if let (Some(_), Some(stdin)) = (&s.attach, &mut s.stdin) {
                stdin.closed = true;
            }
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

    /// The gateway resized the job's terminal; a job without one ignores it.
    pub fn resize(&self, rows: u16, cols: u16) {
        let state = self.lock();
        if let Some(tty) = state.tty.as_ref().filter(|_| state.ending.is_none()) {
            if let Err(e) = crate::exec::resize_terminal(&tty.master, rows, cols) {
                log::debug!("job {}: resizing its terminal: {e}", self.id);
            }
        }
    }

    /// The gateway signals the job: its terminal's foreground process group, or (without a
    /// terminal) its process group.
    pub fn signal(&self, signal: i32) {
        let state = self.lock();
        if state.ending.is_some() {
            return;
        }
        let sent = match &state.tty {
            Some(tty) => crate::exec::signal_terminal(&tty.master, tty.session, signal),
            None => Ok(()),
        };
        if let Err(e) = sent {
            log::debug!("job {}: signal {signal}: {e}", self.id);
        }
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
            // A terminal has no end of input (Ctrl-D is a byte): only a reset stops it.
            let terminal = s.tty.is_some() && !abort;
            if let Some(stdin) = s.stdin.as_mut().filter(|_| attached && !terminal) {
                stdin.eof = true;
                stdin.closed |= abort;
            }
        });
    }

    /// Waits until the job has ended or `deadline` passes; whether it ended.
    pub fn wait_ended(&self, deadline: Instant) -> bool {
        self.wait_for(Some(deadline), |s| s.ending.is_some()).1
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
    /// within its credit until the job has ended and all output went out.
    pub fn serve_attached(&self, gen: u64, request: u32) -> Served {
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
                    return Served::Superseded(Message::Failed {
                        id: request,
                        message: format!(
                            "job {} was attached to a newer request; this one ends here",
                            self.id
                        ),
                    })
                }
                None => return Served::Gone,
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
                    return Served::Gone;
                }
                state = self.lock();
                continue;
            }
            if let Some(ending) = ending {
                if out.iter().all(|p| p.data.is_empty()) {
                    return Served::Outcome(ending.message(request));
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
            tty: None,
        }
    }

    pub(crate) fn is_over(&self) -> bool {
        self.reaped.is_some() && self.open_pipes == 0
    }

    /// Reader `i` must wait before reading more: attached, and the request has not taken enough.
    pub(crate) fn held_back(&self, i: usize) -> bool {
        self.attach.is_some() && !self.killed && self.out[i].data.len() >= ATTACHED_BUFFER
    }

    pub(crate) fn keep_output(&mut self, i: usize, bytes: &[u8]) {
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
