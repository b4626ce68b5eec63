//! The handle on the managed sshd: [`Supervisor::start`] waits until sshd listens, [`Supervisor::status`]
//! reports on it, [`Supervisor::stop`] (or drop) takes it down with all its sessions. The work happens
//! on the `sshd-supervisor` thread (see [`super::watch`]).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::sessions::kill_stale_sessions;
use super::watch::{self, FirstStart, Shared};
use super::{ensure_privsep_dir, SshdSettings, SshdStatus};

/// How long [`Supervisor::start`] waits for sshd to listen.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// Runs sshd and keeps it running; see the module doc. Stops on [`Supervisor::stop`] or drop.
pub struct Supervisor {
    shared: Arc<Shared>,
    /// Write end of the wake pipe. Nobody writes to it: dropping it hangs up the read end, which wakes
    /// the supervisor thread's poll(2) and tells it to stop.
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    listen: SocketAddr,
}

impl Supervisor {
    /// Starts sshd under a thread named `sshd-supervisor` and returns once it listens on
    /// `settings.listen`: sshd prints "Server listening" right after listen(2), from when the kernel
    /// accepts connections. Errors quote sshd's stderr. Call [`super::write_config`] first.
    pub fn start(settings: SshdSettings) -> Result<Supervisor> {
        settings.check()?;
        let config = settings.config_path();
        if !config.is_file() {
            bail!(
                "{} is missing: write_config must run first",
                config.display()
            );
        }
        ensure_privsep_dir()?;
        kill_stale_sessions(&settings.pipes_path());
        let (wake_rx, wake_tx) = rustix::pipe::pipe().context("creating the sshd wake pipe")?;
        let shared = Arc::new(Shared::new());
        let listen = settings.listen;
        let thread = watch::spawn(settings, shared.clone(), wake_rx)?;
        // From here on, dropping `supervisor` (any error below) stops the thread and kills sshd.
        let supervisor = Supervisor {
            shared,
            wake: Some(wake_tx),
            thread: Some(thread),
            listen,
        };
        let deadline = Instant::now() + READY_DEADLINE;
        let mut state = supervisor.shared.lock();
        loop {
            let why = match &state.first {
                FirstStart::Listening => break,
                FirstStart::Failed(why) => why.clone(),
                FirstStart::Pending if Instant::now() >= deadline => {
                    format!("sshd did not listen on {listen} within {READY_DEADLINE:?}")
                }
                FirstStart::Pending => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let waited = supervisor.shared.changed.wait_timeout(state, left);
                    state = waited.unwrap_or_else(PoisonError::into_inner).0;
                    continue;
                }
            };
            let said: Vec<&str> = state.tail.iter().map(String::as_str).collect();
            bail!("{why}; sshd said:\n  {}", said.join("\n  "));
        }
        drop(state);
        Ok(supervisor)
    }

    /// The current pid, liveness and restart count.
    pub fn status(&self) -> SshdStatus {
        let state = self.shared.lock();
        SshdStatus {
            pid: state.pid,
            running: state.running,
            restarts: state.restarts,
            listen: self.listen,
        }
    }

    /// Stops supervising and kills sshd with all its sessions (also done on drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the sshd-supervisor thread panicked; sshd died with it (pdeathsig)");
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::net::{TcpListener, TcpStream};
    use std::path::Path;
    use std::process::Command;

    use burrow_core::identity::Identity;
    use rustix::process::{Pid, Signal};

    use super::super::tests::{all_gone, banner, children_of, settings, wait_until, TempDir};
    use super::super::{ensure_host_key, write_authorized_keys, write_config};
    use super::*;

    fn started(dir: &TempDir) -> Supervisor {
        let s = settings(dir);
        write_config(&s).unwrap();
        Supervisor::start(s).unwrap()
    }

    #[test]
    fn start_serves_banner_and_host_key_matches_ssh_keygen() {
        let dir = TempDir::new("banner");
        let s = settings(&dir);
        let fingerprint = ensure_host_key(&s).unwrap();
        write_config(&s).unwrap();
        let sshd = Supervisor::start(s.clone()).unwrap();
        let status = sshd.status();
        assert!(
            status.running && status.pid.is_some() && status.restarts == 0,
            "{status:?}"
        );
        assert_eq!(status.listen, s.listen);
        assert!(banner(s.listen).0.starts_with("SSH-2.0-OpenSSH"));
        let mut public = s.host_key_path().into_os_string();
        public.push(".pub");
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&public)
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            printed.split_whitespace().nth(1),
            Some(fingerprint.as_str()),
            "{printed}"
        );
        sshd.stop();
    }

    #[test]
    fn restarts_after_sigkill_and_stop_also_kills_the_old_sessions() {
        let dir = TempDir::new("restart");
        let sshd = started(&dir);
        let listen = sshd.status().listen;
        let first = sshd.status().pid.unwrap();
        // A session of the first sshd survives its death (as with a system sshd) until stop().
        let (_, old_connection) = banner(listen);
        let old_sessions = children_of(first);
        assert!(!old_sessions.is_empty());
        rustix::process::kill_process(Pid::from_raw(first as i32).unwrap(), Signal::KILL).unwrap();
        wait_until("sshd restarted", || {
            let s = sshd.status();
            s.restarts == 1 && s.running && s.pid.is_some_and(|p| p != first)
        });
        let second = sshd.status().pid.unwrap();
        assert!(banner(listen).0.starts_with("SSH-2.0-OpenSSH"));
        assert!(
            !all_gone(&old_sessions),
            "the old session died with its sshd"
        );
        sshd.stop();
        wait_until("sshd and all sessions are gone", || {
            all_gone(&[first, second]) && all_gone(&old_sessions)
        });
        drop(old_connection);
    }

    #[test]
    fn stop_closes_port_and_kills_sshd_with_its_sessions() {
        let dir = TempDir::new("stop");
        let sshd = started(&dir);
        let status = sshd.status();
        let pid = status.pid.unwrap();
        let (_, connection) = banner(status.listen);
        let sessions = children_of(pid);
        assert!(!sessions.is_empty());
        let pipes_file = settings(&dir).dir.join("sshd.pipes");
        assert!(pipes_file.exists());
        sshd.stop();
        let refused = TcpStream::connect(status.listen).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        wait_until("sshd and its session are gone", || {
            all_gone(&[pid]) && all_gone(&sessions)
        });
        assert!(!pipes_file.exists());
        drop(connection);
    }

    #[test]
    fn forced_command_keeps_a_key_from_running_commands() {
        let dir = TempDir::new("lockdown");
        let s = settings(&dir);
        write_config(&s).unwrap();
        let node = Identity::generate("node@test");
        let key = dir.0.join("node_key");
        node.save(&key).unwrap();
        let line = format!(
            "restrict,port-forwarding,command=\"/bin/false\",permitopen=\"127.0.0.1:1\" {}",
            node.public_line()
        );
        write_authorized_keys(&s, &[line], &[]).unwrap();
        let sshd = Supervisor::start(s.clone()).unwrap();
        let ssh = |key: &Path| {
            let out = Command::new("ssh")
                .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o"])
                .args(["UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o"])
                .args(["IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-i"])
                .arg(key)
                .args([
                    "-p",
                    &s.listen.port().to_string(),
                    "root@127.0.0.1",
                    "echo",
                    "hi",
                ])
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        // Exit 1 is /bin/false: the key was accepted and its forced command replaced `echo hi`.
        let (code, stdout) = ssh(&key);
        assert_eq!((code, stdout.contains("hi")), (Some(1), false), "{stdout}");
        // Control: an unlisted key is refused (255), so the exit 1 above did come from a login.
        let stranger = dir.0.join("stranger_key");
        Identity::generate("stranger").save(&stranger).unwrap();
        assert_eq!(ssh(&stranger).0, Some(255));
        sshd.stop();
    }

    #[test]
    fn occupied_port_error_quotes_sshd() {
        let dir = TempDir::new("occupied");
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = settings(&dir);
        s.listen = squatter.local_addr().unwrap();
        write_config(&s).unwrap();
        let err = format!("{:#}", Supervisor::start(s.clone()).err().unwrap());
        assert!(
            err.contains("before listening on") && err.contains("Address already in use"),
            "{err}"
        );
        assert!(
            !s.pipes_path().exists(),
            "a failed start leaves nothing to clean up"
        );
    }
}
