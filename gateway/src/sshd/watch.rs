//! The `sshd-supervisor` thread: starts sshd, forwards its log lines to `log`, restarts it with backoff
//! when it dies, and on stop makes sure neither sshd nor any of its sessions survives.
//!
//! - Stopping kills sshd's process group, then every process still holding sshd's stderr pipe (its
//!   sessions, see [`super::sessions`]), until the pipe reports end of file: nobody holds it any more.
//! - sshd must die with the gateway even on SIGKILL. `PR_SET_PDEATHSIG` needs code between fork and exec
//!   (`pre_exec`, i.e. `unsafe`), so util-linux's `setpriv --pdeathsig KILL` sets it and execs sshd.
//!   Sessions have no death signal; a restarted gateway kills those a SIGKILLed one left behind
//!   ([`super::sessions::kill_stale_sessions`]).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burrow_core::atomic_file;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal};

use super::logins::Logins;
use super::sessions::pipe_holders;
use super::SshdSettings;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// An sshd that stayed up this long is healthy again: its next restart starts from `BACKOFF_MIN`.
const STABLE_UPTIME: Duration = Duration::from_secs(30);
/// How long stopping waits for sshd's sessions to die before giving up on them.
const KILL_DEADLINE: Duration = Duration::from_secs(5);
/// sshd's last stderr lines, quoted in start errors.
const STDERR_TAIL: usize = 20;
const SETPRIV: [&str; 2] = ["/usr/bin/setpriv", "/bin/setpriv"];
/// Lines about connections and logins: `info`, the trail of who came in with which key.
const CONNECTION_WORDS: &[&str] = &[
    "Connection ",
    "Accepted ",
    "Failed ",
    "Invalid user",
    "isconnect",
    "Server listening",
    "Timeout",
    "not allowed",
    "Starting session",
    "Close session",
    "MaxStartups",
    "Received signal",
];
/// Lines that mean sshd or a login is misconfigured or failing: `warn`.
const TROUBLE_WORDS: &[&str] = &[
    "fatal",
    "error",
    "Bind to port",
    "Cannot bind",
    "Bad configuration",
    "Unsupported option",
    "host key",
    "hostkeys",
    "Missing privilege separation",
    "Authentication refused",
    "terminating",
];

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
}

pub(super) struct State {
    pub(super) pid: Option<u32>,
    pub(super) running: bool,
    pub(super) restarts: u32,
    pub(super) first: FirstStart,
    /// The current sshd's last stderr lines.
    pub(super) tail: VecDeque<String>,
    /// Who is logged in with which key, from every sshd's log.
    pub(super) logins: Logins,
    /// Inodes of the stderr pipes of our sshds and their sessions (see `sessions`).
    pub(super) inodes: Vec<u64>,
}

pub(super) enum FirstStart {
    Pending,
    Listening,
    Failed(String),
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            state: Mutex::new(State {
                pid: None,
                running: false,
                restarts: 0,
                first: FirstStart::Pending,
                tail: VecDeque::new(),
                logins: Logins::default(),
                inodes: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }
}

/// Starts the `sshd-supervisor` thread, which starts sshd at once. It publishes into `shared` and
/// stops when the write end of `wake` is dropped.
pub(super) fn spawn(
    settings: SshdSettings,
    shared: Arc<Shared>,
    wake: OwnedFd,
) -> Result<JoinHandle<()>> {
    let mut run = Run {
        launch: Launch::new(&settings),
        settings,
        shared,
        wake,
        sshd: None,
        streams: Vec::new(),
        restart_at: Some(Instant::now()),
        backoff: BACKOFF_MIN,
        started_once: false,
    };
    thread::Builder::new()
        .name("sshd-supervisor".into())
        .spawn(move || run.supervise())
        .context("spawning the sshd-supervisor thread")
}

/// The command that starts sshd: through `setpriv --pdeathsig KILL` when util-linux has it.
struct Launch {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Launch {
    fn new(s: &SshdSettings) -> Launch {
        let mut args: Vec<OsString> = vec!["--pdeathsig".into(), "KILL".into(), "--".into()];
        args.extend(
            [
                s.binary.as_os_str(),
                "-D".as_ref(),
                "-e".as_ref(),
                "-f".as_ref(),
            ]
            .map(Into::into),
        );
        args.push(s.config_path().into());
        let setpriv = SETPRIV.iter().map(Path::new).find(|p| {
            // --pdeathsig arrived in util-linux 2.33; an older setpriv would refuse to start sshd at all.
            let help = Command::new(p).arg("--help").stderr(Stdio::null()).output();
            help.is_ok_and(|h| String::from_utf8_lossy(&h.stdout).contains("--pdeathsig"))
        });
        if let Some(setpriv) = setpriv {
            return Launch {
                program: setpriv.to_path_buf(),
                args,
            };
        }
        log::warn!(
            "setpriv with --pdeathsig not found (util-linux): sshd will outlive the gateway if the \
             gateway is SIGKILLed"
        );
        Launch {
            program: s.binary.clone(),
            args: args.split_off(4),
        }
    }
}

/// The supervisor thread's state; it alone owns the sshd child.
struct Run {
    settings: SshdSettings,
    launch: Launch,
    shared: Arc<Shared>,
    wake: OwnedFd,
    sshd: Option<Sshd>,
    /// stderr pipes of the current sshd and of dead ones whose sessions still live (see module doc).
    streams: Vec<Stream>,
    /// When to start sshd (again); `None` while one runs.
    restart_at: Option<Instant>,
    backoff: Duration,
    started_once: bool,
}

struct Sshd {
    child: Child,
    /// Readable once sshd exits, so its death wakes poll(2) at once.
    pidfd: Option<OwnedFd>,
    started: Instant,
}

struct Stream {
    pipe: ChildStderr,
    inode: u64,
    partial: Vec<u8>,
    /// Belongs to the running sshd (its lines feed readiness and the error tail).
    current: bool,
}

impl Run {
    fn supervise(&mut self) {
        loop {
            if self.sshd.is_none() && self.restart_at.is_some_and(|at| at <= Instant::now()) {
                if let Err(e) = self.spawn() {
                    let why = format!("starting {}: {e}", self.launch.program.display());
                    if self.first_pending() {
                        self.shared.update(|s| s.first = FirstStart::Failed(why));
                        break;
                    }
                    log::warn!("{why}; retrying in {:?}", self.backoff);
                    self.schedule_restart();
                }
            }
            let ready = match self.wait(None, true) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("sshd supervisor: poll failed ({e}); stopping sshd");
                    break;
                }
            };
            if ready.wake {
                break;
            }
            self.read_streams(&ready.streams);
            if self.reap() {
                break;
            }
        }
        self.kill_all();
    }

    /// Sleeps in poll(2) until a stderr pipe, sshd's exit or (with `wake`) the wake pipe needs
    /// attention, the next restart is due, or `deadline`.
    fn wait(&self, deadline: Option<Instant>, wake: bool) -> rustix::io::Result<Ready> {
        let now = Instant::now();
        let mut timeout = deadline.map(|d| d.saturating_duration_since(now));
        let mut limit = |d: Duration| timeout = Some(timeout.map_or(d, |t| t.min(d)));
        match &self.sshd {
            // Without a pidfd (kernels before 5.3) sshd's exit is noticed by checking often.
            Some(sshd) if sshd.pidfd.is_none() => limit(Duration::from_millis(100)),
            Some(_) => {}
            None => {
                if let Some(at) = self.restart_at {
                    limit(at.saturating_duration_since(now));
                }
            }
        }
        let mut fds: Vec<PollFd> = (self.streams.iter())
            .map(|s| PollFd::new(&s.pipe, PollFlags::IN))
            .collect();
        // Once stopping, the hung-up wake pipe would make every poll return at once.
        if wake {
            fds.push(PollFd::new(&self.wake, PollFlags::IN));
        }
        if let Some(pidfd) = self.sshd.as_ref().and_then(|s| s.pidfd.as_ref()) {
            fds.push(PollFd::new(pidfd, PollFlags::IN));
        }
        let timeout = timeout.and_then(|t| Timespec::try_from(t).ok());
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        let n = self.streams.len();
        Ok(Ready {
            wake: wake && ready[n],
            streams: ready[..n].to_vec(),
        })
    }

    fn spawn(&mut self) -> io::Result<()> {
        // PR_SET_PDEATHSIG (set by setpriv) fires when the *thread* that forked the child exits, not
        // when the process does. So every sshd, the first one included, is spawned here on the
        // long-lived supervisor thread: spawned from a short-lived thread, sshd would be killed as soon
        // as that thread returned.
        let mut child = Command::new(&self.launch.program)
            .args(&self.launch.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own group: a Ctrl-C at the gateway's terminal reaches the gateway, which stops sshd.
            .process_group(0)
            .spawn()?;
        let pid = Pid::from_child(&child);
        let pipe = child.stderr.take().expect("stderr is piped");
        let inode = rustix::fs::fstat(&pipe)?.st_ino;
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok();
        for stream in &mut self.streams {
            stream.current = false;
        }
        self.streams.push(Stream {
            pipe,
            inode,
            partial: Vec::new(),
            current: true,
        });
        self.save_pipes();
        let restarted = std::mem::replace(&mut self.started_once, true);
        let id = child.id();
        if restarted {
            log::info!("sshd restarted (pid {id})");
        }
        self.shared.update(|s| {
            s.pid = Some(id);
            s.running = false;
            s.tail.clear();
            s.restarts += u32::from(restarted);
        });
        self.restart_at = None;
        self.sshd = Some(Sshd {
            child,
            pidfd,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Reads the streams marked ready; forgets those at end of file (no process holds them any more).
    fn read_streams(&mut self, ready: &[bool]) {
        let before = self.streams.len();
        for i in (0..ready.len()).rev() {
            if ready[i] && !self.read_stream(i) {
                self.streams.remove(i);
            }
        }
        if self.streams.len() != before {
            self.save_pipes();
        }
    }

    /// Reads what stream `i` has; false once it reached end of file.
    fn read_stream(&mut self, i: usize) -> bool {
        let mut buf = [0u8; 8192];
        let stream = &mut self.streams[i];
        let open = match stream.pipe.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                stream.partial.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) => e.kind() == io::ErrorKind::Interrupted,
        };
        let mut lines = Vec::new();
        while let Some(end) = stream.partial.iter().position(|&b| b == b'\n') {
            lines.push(stream.partial.drain(..=end).collect::<Vec<u8>>());
        }
        if !open && !stream.partial.is_empty() {
            lines.push(std::mem::take(&mut stream.partial));
        }
        let current = stream.current;
        for line in lines {
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if line.is_empty() {
                continue;
            }
            log_line(&line);
            self.shared.lock().logins.observe(&line);
            if current {
                self.shared.update(|s| {
                    if line.starts_with("Server listening on") {
                        s.running = true;
                        if matches!(s.first, FirstStart::Pending) {
                            s.first = FirstStart::Listening;
                        }
                    }
                    if s.tail.len() == STDERR_TAIL {
                        s.tail.pop_front();
                    }
                    s.tail.push_back(line);
                });
            }
        }
        open
    }

    /// Notices sshd's exit and schedules its restart; true if supervision must end because the first
    /// start failed (restarting would only repeat a config or port error).
    fn reap(&mut self) -> bool {
        let Some(sshd) = &mut self.sshd else {
            return false;
        };
        let status = match sshd.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return false,
            Err(e) => {
                log::error!("checking on sshd: {e}");
                return false;
            }
        };
        let (pid, uptime) = (sshd.child.id(), sshd.started.elapsed());
        self.sshd = None;
        self.shared.update(|s| {
            s.pid = None;
            s.running = false;
        });
        if self.first_pending() {
            // Its last words explain why; the pipe ends at once as no session can exist yet.
            self.drain(Instant::now() + Duration::from_secs(1));
            let why = format!(
                "sshd exited ({status}) before listening on {}",
                self.settings.listen
            );
            self.shared.update(|s| s.first = FirstStart::Failed(why));
            return true;
        }
        if uptime >= STABLE_UPTIME {
            self.backoff = BACKOFF_MIN;
        }
        log::warn!(
            "sshd (pid {pid}) exited ({status}) after {uptime:.1?}; restarting in {:?}",
            self.backoff
        );
        self.schedule_restart();
        false
    }

    fn schedule_restart(&mut self) {
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Reads every stream until all reach end of file or `deadline`; true if all did.
    fn drain(&mut self, deadline: Instant) -> bool {
        while !self.streams.is_empty() && Instant::now() < deadline {
            match self.wait(Some(deadline), false) {
                Ok(ready) => self.read_streams(&ready.streams),
                Err(_) => break,
            }
        }
        self.streams.is_empty()
    }

    fn first_pending(&self) -> bool {
        matches!(self.shared.lock().first, FirstStart::Pending)
    }

    fn save_pipes(&self) {
        self.shared.lock().inodes = self.streams.iter().map(|s| s.inode).collect();
        let path = self.settings.pipes_path();
        let saved = if self.streams.is_empty() {
            fs::remove_file(&path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
        } else {
            let text: String = self
                .streams
                .iter()
                .map(|s| format!("{}\n", s.inode))
                .collect();
            atomic_file::write(&path, text.as_bytes(), 0o600).map_err(io::Error::other)
        };
        if let Err(e) = saved {
            log::warn!("recording sshd's pipes in {}: {e}", path.display());
        }
    }

    /// Kills sshd's group, then every process still holding one of our stderr pipes (sessions, also
    /// those of sshds that died earlier), until the pipes report end of file.
    fn kill_all(&mut self) {
        if let Some(mut sshd) = self.sshd.take() {
            // Killing the listener first means no new session can fork while we sweep.
            let _ = rustix::process::kill_process_group(Pid::from_child(&sshd.child), Signal::KILL);
            match sshd.child.wait() {
                Ok(status) => log::info!("sshd (pid {}) stopped ({status})", sshd.child.id()),
                Err(e) => log::error!("waiting for sshd (pid {}): {e}", sshd.child.id()),
            }
        }
        let deadline = Instant::now() + KILL_DEADLINE;
        loop {
            let inodes: Vec<u64> = self.streams.iter().map(|s| s.inode).collect();
            for process in pipe_holders(&inodes) {
                let _ = rustix::process::kill_process(process.pid, Signal::KILL);
            }
            // A killed session may have forked just before; the next round catches its child.
            let round = (Instant::now() + Duration::from_millis(200)).min(deadline);
            if self.drain(round) || Instant::now() >= deadline {
                break;
            }
        }
        if !self.streams.is_empty() {
            log::warn!("some sshd session processes did not exit within {KILL_DEADLINE:?}");
        }
        self.save_pipes();
        self.shared.update(|s| {
            s.pid = None;
            s.running = false;
        });
    }
}

struct Ready {
    wake: bool,
    streams: Vec<bool>,
}

fn log_line(line: &str) {
    if TROUBLE_WORDS.iter().any(|w| line.contains(w)) {
        log::warn!("sshd: {line}");
    } else if CONNECTION_WORDS.iter().any(|w| line.contains(w)) {
        log::info!("sshd: {line}");
    } else {
        log::debug!("sshd: {line}");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::super::tests::{settings, TempDir};
    use super::super::write_config;
    use super::*;

    /// sshd dies with the gateway even on SIGKILL because its death signal fires when the thread that
    /// spawned it ends; this is also why `Run` spawns sshd from its own long-lived thread.
    #[test]
    fn sshd_dies_with_the_thread_that_spawned_it() {
        let dir = TempDir::new("pdeathsig");
        let s = settings(&dir);
        write_config(&s).unwrap();
        let launch = Launch::new(&s);
        assert!(launch.program.ends_with("setpriv"), "{:?}", launch.program);
        let (mut sshd, _stderr) = thread::spawn(move || {
            let mut child = Command::new(&launch.program)
                .args(&launch.args)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Once sshd speaks, setpriv has set the death signal and become sshd.
            let mut stderr = child.stderr.take().unwrap();
            assert!(stderr.read(&mut [0u8; 64]).unwrap() > 0);
            (child, stderr)
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let died = loop {
            match sshd.try_wait().unwrap() {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => break None,
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        if died.is_none() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        assert_eq!(
            died.and_then(|s| s.signal()),
            Some(9),
            "sshd outlived its thread"
        );
    }
}
