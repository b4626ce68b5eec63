//! The handle on the managed sshd: [`Supervisor::start`] waits until sshd listens, [`Supervisor::status`]
//! reports on it, [`Supervisor::cut_off`] ends one node's access, [`Supervisor::stop`] (or drop) takes
//! it down with all its sessions. The work happens on the `sshd-supervisor` thread (see
//! [`super::watch`]).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burrow_core::identity::PublicKey;

use super::sessions::{kill_sessions, kill_stale_sessions};
use super::watch::{self, FirstStart, Shared};
use super::{ensure_privsep_dir, remove_key_lines, SshdSettings, SshdStatus};

/// How long [`Supervisor::start`] waits for sshd to listen.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// [`Supervisor::cut_off`] sweeps again after this long, for a login that read its key line just
/// before the line went and whose log line the supervisor thread had not read yet.
const SECOND_SWEEP: Duration = Duration::from_millis(300);

/// Runs sshd and keeps it running; see the module doc. Stops on [`Supervisor::stop`] or drop.
pub struct Supervisor {
    shared: Arc<Shared>,
    /// Write end of the wake pipe. Nobody writes to it: dropping it hangs up the read end, which wakes
    /// the supervisor thread's poll(2) and tells it to stop.
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    listen: SocketAddr,
    settings: SshdSettings,
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
        let thread = watch::spawn(settings.clone(), shared.clone(), wake_rx)?;
        // From here on, dropping `supervisor` (any error below) stops the thread and kills sshd.
        let supervisor = Supervisor {
            shared,
            wake: Some(wake_tx),
            thread: Some(thread),
            listen,
            settings,
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

    /// Ends `key`'s access through this sshd at once, for a node being rejected or revoked: its
    /// lines leave both key files (no new login), then every session that logged in with it or
    /// listens on one of `ports` (its forwards, whichever key holds them) is killed with its
    /// process group, so the client loses its connection and its listeners together. Call it after
    /// the registry no longer approves the node and `Pairing::sync_keys` ran: the line is then gone
    /// already and the files are not touched here (removing it here is a safety net, and a rewrite
    /// racing a concurrent sync could drop another node's fresh line). Returns how many sessions
    /// were killed.
    pub fn cut_off(&self, key: &PublicKey, ports: &[u16]) -> Result<usize> {
        remove_key_lines(&self.settings, key)?;
        let fingerprint = key.fingerprint();
        let sweep = || {
            let (inodes, listener, peers) = {
                let state = self.shared.lock();
                (
                    state.inodes.clone(),
                    state.pid,
                    state.logins.peers_of(&fingerprint),
                )
            };
            let killed = kill_sessions(&inodes, listener, self.listen.port(), &peers, ports);
            self.shared.lock().logins.forget(&peers);
            killed
        };
        let first = sweep();
        std::thread::sleep(SECOND_SWEEP);
        let killed = first + sweep();
        log::info!("cut off {fingerprint}: {killed} sshd session(s) killed");
        Ok(killed)
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
    use std::fs;
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

    /// Whether something listens on 127.0.0.1:`port`.
    fn listening(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    /// `ssh -N -R 127.0.0.1:<port>:127.0.0.1:1` as root with `key`: a node holding its forward.
    fn forward(s: &SshdSettings, key: &Path, port: u16) -> std::process::Child {
        login(
            s,
            key,
            "root",
            &["-R", &format!("127.0.0.1:{port}:127.0.0.1:1")],
        )
    }

    /// `ssh -N` as `user` with `key`, holding the session open.
    fn login(s: &SshdSettings, key: &Path, user: &str, options: &[&str]) -> std::process::Child {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o"])
            .args(["UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o"])
            .args(["IdentitiesOnly=yes", "-o", "ExitOnForwardFailure=yes", "-i"])
            .arg(key)
            .arg("-N")
            .args(options)
            .args(["-p", &s.listen.port().to_string(), "-l", user, "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Regression: a rejected node kept its sshd session and listener indefinitely. `cut_off` ends
    /// the sessions of the node's key (found by its login) and of its ports within 2 s, its key can
    /// no longer log in, and another node's session is left alone.
    #[test]
    fn cut_off_kills_the_node_sessions_and_leaves_the_others() {
        let dir = TempDir::new("cutoff");
        let s = settings(&dir);
        write_config(&s).unwrap();
        let nodes: Vec<(Identity, std::path::PathBuf, u16)> = ["a", "b"]
            .iter()
            .map(|name| {
                let id = Identity::generate(name);
                let key = dir.0.join(format!("{name}_key"));
                id.save(&key).unwrap();
                (id, key, crate::testing::free_port())
            })
            .collect();
        let lines: Vec<String> = (nodes.iter())
            .map(|(id, _, port)| {
                format!(
                    "restrict,port-forwarding,command=\"/bin/false\",permitlisten=\"127.0.0.1:{port}\" {}",
                    id.public_line()
                )
            })
            .collect();
        write_authorized_keys(&s, &lines, &[]).unwrap();
        let sshd = Supervisor::start(s.clone()).unwrap();
        let (a, b) = (&nodes[0], &nodes[1]);
        let mut a_ssh = forward(&s, &a.1, a.2);
        let mut b_ssh = forward(&s, &b.1, b.2);
        wait_until("both nodes listen", || listening(a.2) && listening(b.2));
        let a_fingerprint = a.0.public().fingerprint();
        wait_until("a's login is in sshd's log", || {
            sshd.shared.lock().logins.peers_of(&a_fingerprint).len() == 1
        });

        // By key alone (no ports given): the login is what finds the session.
        let called = Instant::now();
        assert_eq!(sshd.cut_off(&a.0.public(), &[]).unwrap(), 1);
        let within = |child: &mut std::process::Child| {
            while child.try_wait().unwrap().is_none() {
                if called.elapsed() > Duration::from_secs(2) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        };
        assert!(
            within(&mut a_ssh),
            "a's ssh still connected 2 s after cut_off"
        );
        assert!(!listening(a.2), "a's forward outlived its session");
        let keys = fs::read_to_string(s.authorized_keys_path()).unwrap();
        assert!(!keys.contains(&a.0.public().openssh()) && keys.contains(&b.0.public().openssh()));
        // It cannot come back: the key is refused (255) ...
        let mut again = forward(&s, &a.1, a.2);
        assert_eq!(again.wait().unwrap().code(), Some(255));
        // ... while b never noticed.
        assert!(b_ssh.try_wait().unwrap().is_none() && listening(b.2));

        // A pending node's session, logged in as the enrollment user (its processes run partly as
        // that user), is found and cut the same way.
        let pending = Identity::generate("pending");
        let pending_key = dir.0.join("pending_key");
        pending.save(&pending_key).unwrap();
        let enrollment = format!(
            "restrict,port-forwarding,command=\"/bin/false\",permitopen=\"127.0.0.1:1\" {}",
            pending.public_line()
        );
        write_authorized_keys(&s, &lines[1..], &[enrollment]).unwrap();
        // As the gateway does at start: the account must exist for sshd to log it in.
        let enroll_user = super::super::managed_enroll_user().unwrap().unwrap();
        assert_eq!(s.enroll_user.as_ref(), Some(&enroll_user));
        let mut pending_ssh = login(&s, &pending_key, &enroll_user, &[]);
        let pending_fingerprint = pending.public().fingerprint();
        wait_until("the pending login is in sshd's log", || {
            sshd.shared
                .lock()
                .logins
                .peers_of(&pending_fingerprint)
                .len()
                == 1
        });
        let called = Instant::now();
        assert_eq!(sshd.cut_off(&pending.public(), &[]).unwrap(), 1);
        while pending_ssh.try_wait().unwrap().is_none() {
            assert!(
                called.elapsed() < Duration::from_secs(2),
                "pending session not cut"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!fs::read_to_string(s.enroll_keys_path())
            .unwrap()
            .contains(&pending.public().openssh()));
        assert!(b_ssh.try_wait().unwrap().is_none() && listening(b.2));

        // By port alone (a key with no login): whoever holds the node's forward is cut.
        let stranger = Identity::generate("stranger");
        let called = Instant::now();
        assert_eq!(sshd.cut_off(&stranger.public(), &[b.2]).unwrap(), 1);
        let mut b_within = || {
            while b_ssh.try_wait().unwrap().is_none() {
                if called.elapsed() > Duration::from_secs(2) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        };
        assert!(
            b_within(),
            "b's ssh still connected 2 s after cut_off by port"
        );
        assert!(!listening(b.2));
        assert!(sshd.status().running, "the listener itself was hit");
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
