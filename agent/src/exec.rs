//! Running one job's command: spawn it in its own process group (and cgroup where possible, see
//! [`crate::cgroup`]), keep its stdout and stderr, feed its stdin, enforce its timeout, and say how it
//! ended. [`crate::job`] holds the job's buffers and the request attached to it, [`crate::jobs`] the
//! table of jobs and their lifetimes, [`crate::service`] the connections. This module owns one job's
//! processes.
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
//!   arrives waits in a queue the credit bounds to `INITIAL_WINDOW`. stdin does not survive its
//!   request: when the job is detached or attached to a newer request, its stdin is closed (the
//!   command reads end of file);
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

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread::{self, Scope};
use std::time::{Duration, Instant};

use burrow_core::protocol::{stream, ExecSpec, ExitStatus, Message, MAX_CHUNK};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{kill_process_group, Pid, Signal};

use crate::cgroup::{Cgroups, JobCgroup};
use crate::job::{Ending, Job, JobState};
use crate::policy::Plan;

/// Used when a request says `timeout_s: 0`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the pipes may stay open after the group was killed before their readers give up.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// The helper threads are shallow; a small stack keeps 64 jobs × 4 helpers cheap on a 32-bit Pi.
pub(crate) const HELPER_STACK: usize = 256 * 1024;
/// The signal reported when burrow killed the job (timeout, cancel).
const SIGKILL: i32 = 9;
/// At most this much stdin is taken from the queue per write into the pipe.
const STDIN_CHUNK: usize = 64 * 1024;

/// Why supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finished,
    TimedOut,
    Cancelled,
}

/// Runs `spec` as `job` until it ends, and says how it ended (the caller records it with
/// [`Job::finish`]). `cgroups`: where to put the job's own cgroup, if this machine allows it.
pub fn run(job: &Job, spec: &ExecSpec, cgroups: Option<&Cgroups>) -> Ending {
    let n = job.seq;
    // The owner's policy first: a refusal ends the job `refused`, with the rule, before anything runs.
    let agent_path = std::env::var("PATH").ok();
    let plan =
        match crate::policy::current().check_exec(spec, DEFAULT_TIMEOUT, agent_path.as_deref()) {
            Ok(plan) => plan,
            Err(refused) => {
                crate::policy::record(
                    serde_json::json!({"job": job.id, "argv": spec.argv, "command": spec.command}),
                    &refused,
                );
                return Ending::Failed(refused.message());
            }
        };
    let pair = match &spec.tty {
        Some(tty) => match pty::open(tty.rows, tty.cols) {
            Ok(pair) => Some(pair),
            Err(e) => {
                return Ending::Failed(format!("opening a pseudo-terminal: {}", describe(&e)))
            }
        },
        None => None,
    };
    let mut command = match build(spec, &plan, pair.as_ref().map(|p| &p.slave)) {
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
    let (spawned, cgroup) = match cgroups {
        Some(cgroups) => cgroups.spawn_in(n, || command.spawn()),
        None => (command.spawn(), None),
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let program = command.get_program().to_string_lossy();
            return Ending::Failed(format!("spawning `{program}`: {}", describe(&e)));
        }
    };
    // `process_group(0)` (or `setsid` on a pty) makes the child the leader of a new group whose id
    // is its pid.
    let group = Pid::from_child(&child);
    // The command holds the slave's copies: dropped, the master reads EIO once the job lets go.
    drop(command);
    let ends = match pair {
        Some(pair) => terminal_ends(job, pair, group),
        None => pipe_ends(&mut child),
    };
    let Some((stdin, stdout, stderr)) = ends else {
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
        .and_then(|()| match stderr {
            Some(stderr) => spawn_helper(scope, format!("job-{n}-err"), move || {
                pump(stderr, 1, job, stop)
            }),
            None => Ok(()),
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

        let deadline = started.checked_add(plan.timeout);
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
        // Every way but finishing by itself went through `kill_all`.
        cgroup.remove(!matches!(end, Ok(End::Finished)));
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
fn build(spec: &ExecSpec, plan: &Plan, slave: Option<&OwnedFd>) -> Result<Command, String> {
    let mut command = match (&spec.command, &spec.argv) {
        // Checked by the allowlist: exactly the canonical program it matched, no PATH lookup.
        (None, Some(_)) if plan.arg0.is_some() => {
            let mut command = Command::new(&plan.program);
            command
                .arg0(plan.arg0.as_deref().unwrap_or_default())
                .args(&plan.args);
            command
        }
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
    if let Some(user) = &plan.run_as {
        // std clears the supplementary groups (setgroups(0)) when root sets a uid; then gid, uid.
        command.uid(user.uid).gid(user.gid);
        command
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    if let Some(tty) = &spec.tty {
        command.env("TERM", tty.term.as_deref().unwrap_or(pty::DEFAULT_TERM));
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
    if let Some(slave) = slave {
        let copy = || {
            slave
                .try_clone()
                .map(Stdio::from)
                .map_err(|e| format!("duplicating the terminal: {}", describe(&e)))
        };
        command.stdin(copy()?).stdout(copy()?).stderr(copy()?);
        pty::controlling_terminal(&mut command);
        return Ok(command);
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

/// What the helpers read and write: stdin (if fed), stdout, stderr (none on a terminal).
type Ends = (Option<OwnedFd>, File, Option<File>);

fn pipe_ends(child: &mut Child) -> Option<Ends> {
    let stdin = child.stdin.take().map(OwnedFd::from);
    let stdout = File::from(OwnedFd::from(child.stdout.take()?));
    let stderr = File::from(OwnedFd::from(child.stderr.take()?));
    Some((stdin, stdout, Some(stderr)))
}

/// A terminal job: everything goes through the master, which the job keeps for resize and signals.
fn terminal_ends(job: &Job, pair: pty::Pair, group: Pid) -> Option<Ends> {
    let reader = pair.master.try_clone().ok()?;
    let writer = pair.master.try_clone().ok()?;
    job.update(|s| {
        s.open_pipes = 1;
        s.tty = Some(crate::job::Terminal {
            master: pair.master,
            session: group,
        });
    });
    Some((Some(writer), File::from(reader), None))
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
            // A terminal's master shares its non-blocking flag with the stdin writer.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // A terminal's master once every process closed the slave: the end of output.
            Err(e) if e.raw_os_error() == Some(Errno::IO.raw_os_error()) => return None,
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
fn feed_stdin(pipe: OwnedFd, job: &Job, stop: BorrowedFd<'_>) {
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

mod pty;
pub use pty::{resize as resize_terminal, signal as signal_terminal};

#[cfg(test)]
mod tests;
