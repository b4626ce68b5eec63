//! The gateway's managed OpenSSH sshd: the only public port of a gateway host.
//!
//! This module owns everything under `<data>/sshd`: the Ed25519 host key, a locked-down `sshd_config`
//! and the key files that pairing rewrites (sshd re-reads them on every authentication, so a new node
//! needs no reload): `authorized_keys` for approved nodes, `enroll_keys` for join tokens and pending
//! nodes, who log in as the enrollment user (see [`users`]). Running it is split by job:
//! - [`supervisor`]: the [`Supervisor`] handle: start (wait until sshd listens), status, stop;
//! - [`watch`]: the `sshd-supervisor` thread: spawns sshd, forwards its log, restarts it, kills it;
//! - [`config`]: the text of `sshd_config`, and the enrollment user's `Match` block;
//! - [`sessions`]: finds sshd's per-connection processes, which its process group does not hold;
//! - [`logins`]: which key each connection logged in with, from sshd's log;
//! - [`users`]: the node and enrollment accounts.

mod config;
mod logins;
mod sessions;
mod supervisor;
mod users;
mod watch;

pub use config::{client_alive, enroll_block, plain_user};
pub use supervisor::Supervisor;
pub use users::{
    current_user, managed_enroll_user, required_enroll_user, useradd_command, ENROLL_USER,
};

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use burrow_core::atomic_file;
use burrow_core::identity::{Identity, PublicKey};

/// Where and how the managed sshd runs.
#[derive(Clone, Debug)]
pub struct SshdSettings {
    /// Absolute directory holding the host key, config and authorized_keys (created 0700).
    pub dir: PathBuf,
    /// The one address sshd listens on, e.g. `0.0.0.0:2222`.
    pub listen: SocketAddr,
    /// Absolute path of the sshd binary, normally `/usr/sbin/sshd`.
    pub binary: PathBuf,
    /// Expected number of node sessions: sizes `MaxStartups` so a reconnect storm is not refused.
    pub max_sessions_hint: u32,
    /// The one account nodes log in as (`AllowUsers`): `AuthorizedKeysFile` is an absolute path, so
    /// without this the node keys would be valid for every account on the host.
    pub login_user: String,
    /// The account enrollment keys log in as, whose `Match User` block forbids listening; `None` when
    /// sshd runs unprivileged and can log in `login_user` only (see [`users`]).
    pub enroll_user: Option<String>,
    /// The API port on 127.0.0.1: the one place enrollment logins may open a channel to.
    pub api_port: u16,
    /// The gateway's dead-link bound (`--dead-after`): sshd reaps silent sessions within it too.
    pub dead_after: std::time::Duration,
}

impl SshdSettings {
    /// The `authorized_keys` file of the node user: approved nodes.
    pub fn authorized_keys_path(&self) -> PathBuf {
        self.dir.join("authorized_keys")
    }

    /// The keys of the enrollment user: join tokens and pending nodes.
    pub fn enroll_keys_path(&self) -> PathBuf {
        self.dir.join("enroll_keys")
    }

    /// The Ed25519 host key (OpenSSH format; the public line is next to it with `.pub`).
    pub fn host_key_path(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }

    /// The generated `sshd_config`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("sshd_config")
    }

    /// Inode numbers of our sshds' stderr pipes, which every session inherits: how a restarted gateway
    /// finds sessions left behind by one that was SIGKILLed (see `sessions`).
    fn pipes_path(&self) -> PathBuf {
        self.dir.join("sshd.pipes")
    }

    fn check(&self) -> Result<()> {
        if !self.dir.is_absolute() {
            bail!(
                "sshd directory {} must be an absolute path",
                self.dir.display()
            );
        }
        if !self.binary.is_absolute() {
            // sshd re-executes itself for every connection and refuses to run from a relative path.
            bail!(
                "sshd binary {} must be an absolute path",
                self.binary.display()
            );
        }
        if !self.binary.is_file() {
            bail!(
                "sshd not found at {}: install openssh-server (apt-get install -y openssh-server)",
                self.binary.display()
            );
        }
        Ok(())
    }
}

/// A snapshot of the managed sshd.
#[derive(Clone, Debug)]
pub struct SshdStatus {
    /// The listening sshd's pid (also its process group), while it is alive.
    pub pid: Option<u32>,
    /// sshd is alive and has said that it listens.
    pub running: bool,
    /// How many times sshd was started again after it exited.
    pub restarts: u32,
    /// The address it listens on.
    pub listen: SocketAddr,
}

/// Loads or creates the ed25519 host key and returns its `SHA256:` fingerprint (as `ssh-keygen -l`).
pub fn ensure_host_key(settings: &SshdSettings) -> Result<String> {
    let path = settings.host_key_path();
    atomic_file::private_dir(&settings.dir)?;
    let (identity, created) = Identity::load_or_generate(&path, "burrow-gateway-host")
        .with_context(|| format!("loading sshd host key {}", path.display()))?;
    let fingerprint = identity.public().fingerprint();
    if created {
        log::info!("created sshd host key {} ({fingerprint})", path.display());
    }
    Ok(fingerprint)
}

/// Writes `sshd_config` crash-safely and creates empty key files (0600) if missing.
///
/// Also creates the host key if missing (sshd cannot check a config without one) and, as root,
/// `/run/sshd`. The new config is checked with `sshd -t` *before* it replaces the old one, so a
/// rejected config never reaches the supervisor's next restart.
pub fn write_config(settings: &SshdSettings) -> Result<()> {
    settings.check()?;
    ensure_host_key(settings)?;
    for keys in [settings.authorized_keys_path(), settings.enroll_keys_path()] {
        if !keys.exists() {
            atomic_file::write(&keys, AUTHORIZED_KEYS_HEADER.as_bytes(), 0o600)?;
        }
    }
    ensure_privsep_dir()?;
    let strict = strict_modes_hold(&settings.dir);
    if !strict {
        log::warn!(
            "{} lies under a directory others can write (such as /tmp), where sshd's StrictModes would \
             refuse every key file, so it runs with StrictModes no; a data dir under a root-owned path \
             (e.g. /var/lib/burrow, the default) keeps the check on",
            settings.dir.display()
        );
    }
    let text = config::render(settings, strict, users::use_pam())?;
    let path = settings.config_path();
    let candidate = settings.dir.join("sshd_config.new");
    atomic_file::write(&candidate, text.as_bytes(), 0o600)?;
    let out = Command::new(&settings.binary)
        .arg("-t")
        .arg("-f")
        .arg(&candidate)
        .output()
        .with_context(|| format!("running {} -t", settings.binary.display()))?;
    let said = String::from_utf8_lossy(&out.stderr)
        .trim()
        .replace('\r', "");
    if !out.status.success() {
        let _ = fs::remove_file(&candidate);
        bail!(
            "sshd rejected the generated config ({}): {said}",
            out.status
        );
    }
    if !said.is_empty() {
        log::warn!("sshd -t: {said}");
    }
    fs::rename(&candidate, &path)
        .and_then(|()| File::open(&settings.dir)?.sync_all())
        .with_context(|| format!("replacing {}", path.display()))
}

/// Drops every line for `key` (`ssh-ed25519 AAAA…`) from both key files, through
/// [`write_authorized_keys`]; returns how many lines went. Every other line stays as it was.
pub fn remove_key_lines(settings: &SshdSettings, key: &PublicKey) -> Result<usize> {
    let key = key.openssh();
    let read = |path: PathBuf| -> Result<Vec<String>> {
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect())
    };
    let (nodes, enrollment) = (
        read(settings.authorized_keys_path())?,
        read(settings.enroll_keys_path())?,
    );
    // Options come first and hold no spaces outside quotes, and ours never hold key text; the key
    // is the `type base64` pair, followed by a comment or the end of the line.
    let holds = |l: &String| {
        l.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| format!("{} {}", w[0], w[1]) == key)
    };
    let before = nodes.len() + enrollment.len();
    let nodes: Vec<String> = nodes.into_iter().filter(|l| !holds(l)).collect();
    let enrollment: Vec<String> = enrollment.into_iter().filter(|l| !holds(l)).collect();
    let removed = before - nodes.len() - enrollment.len();
    if removed > 0 {
        // Without an enrollment user, the node file already holds every line.
        write_authorized_keys(settings, &nodes, &enrollment)?;
    }
    Ok(removed)
}

/// Ends `key`'s access through sshd, whichever sshd runs; what `nodes reject`/`revoke` call after
/// the registry stopped approving the node (else the next key sync writes its line back). With the
/// managed sshd see [`Supervisor::cut_off`]. With the system's (`supervisor` is `None`) the key's
/// lines leave the key files, so it cannot log in again, but its live sessions stay until their
/// clients leave: they are not the gateway's processes, and sshd makes their children non-dumpable,
/// so an unprivileged gateway cannot even see which sockets they hold. Returns the sessions killed.
pub fn cut_off(
    settings: &SshdSettings,
    supervisor: Option<&Supervisor>,
    key: &PublicKey,
    ports: &[u16],
) -> Result<usize> {
    match supervisor {
        Some(supervisor) => supervisor.cut_off(key, ports),
        None => {
            if remove_key_lines(settings, key)? > 0 {
                log::warn!(
                    "{} can no longer log in; sessions it holds on the system's sshd last until                      they end (systemctl restart ssh ends them all)",
                    key.fingerprint()
                );
            }
            Ok(0)
        }
    }
}

pub(super) const AUTHORIZED_KEYS_HEADER: &str =
    "# Generated by burrow: rewritten whenever nodes change.\n";

/// Replaces the key files atomically (0600): `nodes` for the node user, `enrollment` for the
/// enrollment user, or, without one, appended to the node user's file. sshd reads them on every
/// authentication.
pub fn write_authorized_keys(
    settings: &SshdSettings,
    nodes: &[String],
    enrollment: &[String],
) -> Result<()> {
    if let Some(bad) = nodes
        .iter()
        .chain(enrollment)
        .find(|l| l.contains(['\n', '\r']))
    {
        // One key per line is what keeps one node's options from applying to another's key.
        bail!("authorized_keys line contains a line break: {bad:?}");
    }
    atomic_file::private_dir(&settings.dir)?;
    let render = |lines: &mut dyn Iterator<Item = &String>| {
        let mut text = String::from(AUTHORIZED_KEYS_HEADER);
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    };
    let (node_text, enroll_text) = match settings.enroll_user {
        Some(_) => (render(&mut nodes.iter()), render(&mut enrollment.iter())),
        None => (
            render(&mut nodes.iter().chain(enrollment)),
            render(&mut [].iter()),
        ),
    };
    // Enrollment first: a pending node that was just approved never finds its key in both files.
    atomic_file::write(&settings.enroll_keys_path(), enroll_text.as_bytes(), 0o600)?;
    Ok(atomic_file::write(
        &settings.authorized_keys_path(),
        node_text.as_bytes(),
        0o600,
    )?)
}

/// Whether sshd's StrictModes checks pass for files in `dir`: every directory from `dir` up to `/`
/// belongs to root or us and is not group/world-writable (sshd refuses keys under e.g. /tmp otherwise).
fn strict_modes_hold(dir: &Path) -> bool {
    let uid = rustix::process::getuid().as_raw();
    let Ok(dir) = fs::canonicalize(dir) else {
        return false;
    };
    dir.ancestors().all(|d| match fs::metadata(d) {
        Ok(m) => m.mode() & 0o022 == 0 && (m.uid() == 0 || m.uid() == uid),
        Err(_) => false,
    })
}

/// sshd's privilege separation directory, required when it runs as root.
fn ensure_privsep_dir() -> Result<()> {
    let dir = Path::new("/run/sshd");
    if rustix::process::getuid().is_root() && !dir.is_dir() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting permissions of {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;

    /// A unique directory under /tmp, removed on drop.
    pub(in crate::sshd) struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("burrow-sshd-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Settings for a test sshd in `dir` on a free loopback port.
    pub(in crate::sshd) fn settings(dir: &TempDir) -> SshdSettings {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        SshdSettings {
            dir: dir.0.join("sshd"),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            binary: PathBuf::from("/usr/sbin/sshd"),
            max_sessions_hint: 100,
            login_user: "root".into(),
            enroll_user: Some(users::ENROLL_USER.into()),
            api_port: 18789,
            dead_after: Duration::from_secs(20),
        }
    }

    pub(in crate::sshd) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects and reads sshd's identification line. The connection is returned so that it (and the
    /// sshd child serving it) can be kept open.
    pub(in crate::sshd) fn banner(addr: SocketAddr) -> (String, TcpStream) {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") && stream.read(&mut byte).unwrap() == 1 {
            line.push(byte[0]);
        }
        (String::from_utf8_lossy(&line).into_owned(), stream)
    }

    /// (pid, ppid, pgrp) of every live (not zombie) process.
    pub(in crate::sshd) fn processes() -> Vec<(u32, u32, u32)> {
        let entries = fs::read_dir("/proc").unwrap().filter_map(|e| e.ok());
        let parse = |name: String| -> Option<(u32, u32, u32)> {
            let stat = fs::read_to_string(format!("/proc/{name}/stat")).ok()?;
            let mut f = stat.rsplit_once(')')?.1.split_whitespace();
            let state = f.next()?;
            let (ppid, pgrp) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
            (state != "Z").then_some((name.parse().ok()?, ppid, pgrp))
        };
        entries
            .filter_map(|e| parse(e.file_name().into_string().ok()?))
            .collect()
    }

    pub(in crate::sshd) fn children_of(pid: u32) -> Vec<u32> {
        processes()
            .into_iter()
            .filter(|p| p.1 == pid)
            .map(|p| p.0)
            .collect()
    }

    /// No live process is any of `pids` or in the process group of any of them.
    pub(in crate::sshd) fn all_gone(pids: &[u32]) -> bool {
        processes()
            .iter()
            .all(|p| !pids.contains(&p.0) && !pids.contains(&p.2))
    }

    #[test]
    fn config_is_locked_down_and_strict_modes_follow_the_directory() {
        let dir = TempDir::new("config");
        let s = settings(&dir);
        write_config(&s).unwrap();
        let config = fs::read_to_string(s.config_path()).unwrap();
        for line in [
            "StrictModes no",
            "PidFile none",
            "PasswordAuthentication no",
            "PermitTTY no",
            "AuthenticationMethods publickey",
            "MaxStartups 100:30:400",
            &format!("ListenAddress {}", s.listen),
            &format!(
                "AuthorizedKeysFile \"{}\"",
                s.authorized_keys_path().display()
            ),
        ] {
            assert!(
                config.lines().any(|l| l == line),
                "missing {line:?} in\n{config}"
            );
        }
        assert!(config.starts_with("# Generated by burrow"));
        assert!(!config.lines().any(|l| l.starts_with("Subsystem")));
        assert!(!s.dir.join("sshd_config.new").exists());
        assert_eq!(
            fs::read_to_string(s.authorized_keys_path()).unwrap(),
            AUTHORIZED_KEYS_HEADER
        );
        assert_eq!(fs::metadata(&s.dir).unwrap().mode() & 0o777, 0o700);
        assert!(!strict_modes_hold(&s.dir), "/tmp is world-writable");
        let root = fs::metadata("/").unwrap();
        if root.uid() == 0 && root.mode() & 0o022 == 0 {
            assert!(strict_modes_hold(Path::new("/")));
        }
        let strict = config::render(&s, true, false).unwrap();
        assert!(strict.contains("\nStrictModes yes\n") && strict.contains("\nUsePAM no\n"));
        let mut odd = s.clone();
        odd.dir = PathBuf::from("/tmp/100%");
        assert!(config::render(&odd, true, false).is_err());
        // Writing again (a gateway restart) keeps the host key and replaces the config in place.
        let fingerprint = ensure_host_key(&s).unwrap();
        write_config(&s).unwrap();
        assert_eq!(ensure_host_key(&s).unwrap(), fingerprint);
    }

    /// Without a supervisor (system sshd), cutting a key off still removes its lines from both
    /// files, and only its lines.
    #[test]
    fn cut_off_without_supervisor_removes_only_that_keys_lines() {
        let dir = TempDir::new("remove");
        let s = settings(&dir);
        let (gone, kept) = (Identity::generate("gone"), Identity::generate("kept"));
        let line = |opts: &str, id: &Identity| format!("{opts} {} c", id.public().openssh());
        let nodes = vec![line("restrict", &gone), line("restrict", &kept)];
        let enrollment = vec![line("restrict,permitopen=\"127.0.0.1:1\"", &gone)];
        write_authorized_keys(&s, &nodes, &enrollment).unwrap();
        assert_eq!(cut_off(&s, None, &gone.public(), &[]).unwrap(), 0);
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(
            read(s.authorized_keys_path()),
            format!("{AUTHORIZED_KEYS_HEADER}{}\n", nodes[1])
        );
        assert_eq!(read(s.enroll_keys_path()), AUTHORIZED_KEYS_HEADER);
        assert_eq!(remove_key_lines(&s, &gone.public()).unwrap(), 0);
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let dir = TempDir::new("nobinary");
        let mut s = settings(&dir);
        s.binary = PathBuf::from("/nonexistent/sshd");
        let expected = "sshd not found at /nonexistent/sshd: install openssh-server \
                        (apt-get install -y openssh-server)";
        assert_eq!(write_config(&s).unwrap_err().to_string(), expected);
        assert_eq!(Supervisor::start(s).err().unwrap().to_string(), expected);
    }

    #[test]
    fn authorized_keys_refuses_line_breaks_and_keeps_enrollment_apart() {
        let dir = TempDir::new("keys");
        let mut s = settings(&dir);
        let two = "ssh-ed25519 AAAA a\nssh-ed25519 BBBB b".to_string();
        assert!(write_authorized_keys(&s, std::slice::from_ref(&two), &[]).is_err());
        assert!(write_authorized_keys(&s, &[], &[two]).is_err());
        let (nodes, enrolls) = (
            vec!["ssh-ed25519 AAAA a".to_string()],
            vec!["ssh-ed25519 EEEE e".to_string()],
        );
        let (node, enroll) = (&nodes[0], &enrolls[0]);
        write_authorized_keys(&s, &nodes, &enrolls).unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(
            read(s.authorized_keys_path()),
            format!("{AUTHORIZED_KEYS_HEADER}{node}\n")
        );
        assert_eq!(
            read(s.enroll_keys_path()),
            format!("{AUTHORIZED_KEYS_HEADER}{enroll}\n")
        );
        for path in [s.authorized_keys_path(), s.enroll_keys_path()] {
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        }
        // Without an enrollment user (unprivileged sshd) the node user's file holds both.
        s.enroll_user = None;
        write_authorized_keys(&s, &nodes, &enrolls).unwrap();
        assert_eq!(
            read(s.authorized_keys_path()),
            format!("{AUTHORIZED_KEYS_HEADER}{node}\n{enroll}\n")
        );
        assert_eq!(read(s.enroll_keys_path()), AUTHORIZED_KEYS_HEADER);
    }
}
