//! The gateway's managed OpenSSH sshd: the only public port of a gateway host.
//!
//! This module owns everything under `<data>/sshd`: the Ed25519 host key, a locked-down `sshd_config`
//! and the `authorized_keys` file that pairing rewrites (sshd re-reads it on every authentication, so a
//! new node needs no reload). Running it is split by job:
//! - [`supervisor`]: the [`Supervisor`] handle: start (wait until sshd listens), status, stop;
//! - [`watch`]: the `sshd-supervisor` thread: spawns sshd, forwards its log, restarts it, kills it;
//! - [`sessions`]: finds sshd's per-connection processes, which its process group does not hold.

mod sessions;
mod supervisor;
mod watch;

pub use supervisor::Supervisor;

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use burrow_core::atomic_file;
use burrow_core::identity::Identity;

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
}

impl SshdSettings {
    /// The `authorized_keys` file sshd reads for every account.
    pub fn authorized_keys_path(&self) -> PathBuf {
        self.dir.join("authorized_keys")
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

/// Writes `sshd_config` crash-safely and creates an empty `authorized_keys` (0600) if missing.
///
/// Also creates the host key if missing (sshd cannot check a config without one) and, as root,
/// `/run/sshd`. The new config is checked with `sshd -t` *before* it replaces the old one, so a
/// rejected config never reaches the supervisor's next restart.
pub fn write_config(settings: &SshdSettings) -> Result<()> {
    settings.check()?;
    ensure_host_key(settings)?;
    let keys = settings.authorized_keys_path();
    if !keys.exists() {
        atomic_file::write(&keys, AUTHORIZED_KEYS_HEADER.as_bytes(), 0o600)?;
    }
    ensure_privsep_dir()?;
    let strict = strict_modes_hold(&settings.dir);
    if !strict {
        log::warn!(
            "{} lies under a group- or world-writable directory; sshd runs with StrictModes no. \
             Keep the data dir in a root-owned path (e.g. /var/lib/burrow) to get StrictModes yes",
            settings.dir.display()
        );
    }
    let text = render_config(settings, strict, use_pam())?;
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

const AUTHORIZED_KEYS_HEADER: &str = "# Generated by burrow: rewritten whenever nodes change.\n";

/// Replaces `authorized_keys` atomically (0600) with `lines`; sshd reads it on every authentication.
pub fn write_authorized_keys(settings: &SshdSettings, lines: &[String]) -> Result<()> {
    if let Some(bad) = lines.iter().find(|l| l.contains(['\n', '\r'])) {
        // One key per line is what keeps one node's options from applying to another's key.
        bail!("authorized_keys line contains a line break: {bad:?}");
    }
    atomic_file::private_dir(&settings.dir)?;
    let mut text = String::from(AUTHORIZED_KEYS_HEADER);
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    Ok(atomic_file::write(
        &settings.authorized_keys_path(),
        text.as_bytes(),
        0o600,
    )?)
}

fn render_config(s: &SshdSettings, strict_modes: bool, use_pam: bool) -> Result<String> {
    let host_key = quoted(&s.host_key_path())?;
    let keys = quoted(&s.authorized_keys_path())?;
    let port = s.listen.port();
    let address = match s.listen {
        SocketAddr::V4(a) => format!("{}:{port}", a.ip()),
        SocketAddr::V6(a) => format!("[{}]:{port}", a.ip()),
    };
    // start:rate:full — refuse nothing below the expected node count, then drop 30 % of new
    // unauthenticated connections up to four times that.
    let start = s.max_sessions_hint.max(10);
    let full = start.saturating_mul(4).max(100);
    let strict = if strict_modes { "yes" } else { "no" };
    let pam = if use_pam { "yes" } else { "no" };
    let user = &s.login_user;
    if user.is_empty()
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!("login user {user:?} cannot be written into sshd_config");
    }
    Ok(format!(
        "# Generated by burrow for its managed sshd. Do not edit: burrow overwrites this file.
Port {port}
ListenAddress {address}
HostKey {host_key}
PidFile none
AuthorizedKeysFile {keys}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
HostbasedAuthentication no
PermitRootLogin prohibit-password
AllowUsers {user}
UsePAM {pam}
StrictModes {strict}
# Nodes only forward ports; every key line adds restrict and a forced command on top of this.
PermitTTY no
X11Forwarding no
AllowAgentForwarding no
AllowStreamLocalForwarding no
PermitTunnel no
PermitUserEnvironment no
AllowTcpForwarding yes
GatewayPorts no
# No Subsystem line: no sftp.
# Reap sessions of nodes that vanished, so their forwarded ports free up.
ClientAliveInterval 15
ClientAliveCountMax 3
LoginGraceTime 20
MaxAuthTries 3
MaxStartups {start}:30:{full}
Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr
# VERBOSE logs the key fingerprint of every login; burrow forwards it to its log.
LogLevel VERBOSE
"
    ))
}

/// A path as an sshd_config argument; refuses what sshd would misread (quotes, line breaks, `%` tokens).
fn quoted(path: &Path) -> Result<String> {
    match path.to_str() {
        Some(p) if !p.contains(['"', '\n', '\r', '%']) => Ok(format!("\"{p}\"")),
        _ => bail!(
            "{} cannot be written into sshd_config; choose a plainer path",
            path.display()
        ),
    }
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

/// `UsePAM no` as root (no PAM session stack needed to forward ports). As another user sshd can only
/// log in that user, and without PAM it refuses the account if its password is locked (`!` in
/// /etc/shadow). sshd sees /etc/shadow exactly as we do, so we turn PAM on only when we can see the lock.
fn use_pam() -> bool {
    let uid = rustix::process::getuid();
    if uid.is_root() {
        return false;
    }
    let uid = uid.as_raw().to_string();
    let Ok(passwd) = fs::read_to_string("/etc/passwd") else {
        return false;
    };
    let Some(user) = passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then_some(name)
    }) else {
        return false;
    };
    let shadow = fs::read_to_string("/etc/shadow").unwrap_or_default();
    let prefix = format!("{user}:!");
    shadow.lines().any(|l| l.starts_with(&prefix))
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

/// The login name of this process's user: who nodes log in as, to the managed sshd or through the
/// system sshd's `Match User` block.
pub fn current_user() -> Result<String> {
    let uid = rustix::process::getuid().as_raw().to_string();
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
        })
        .with_context(|| format!("uid {uid} is not in /etc/passwd"))
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
        let strict = render_config(&s, true, false).unwrap();
        assert!(strict.contains("\nStrictModes yes\n") && strict.contains("\nUsePAM no\n"));
        let mut odd = s.clone();
        odd.dir = PathBuf::from("/tmp/100%");
        assert!(render_config(&odd, true, false).is_err());
        // Writing again (a gateway restart) keeps the host key and replaces the config in place.
        let fingerprint = ensure_host_key(&s).unwrap();
        write_config(&s).unwrap();
        assert_eq!(ensure_host_key(&s).unwrap(), fingerprint);
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
    fn authorized_keys_refuses_line_breaks() {
        let dir = TempDir::new("keys");
        let s = settings(&dir);
        let two = "ssh-ed25519 AAAA a\nssh-ed25519 BBBB b".to_string();
        assert!(write_authorized_keys(&s, &[two]).is_err());
        write_authorized_keys(&s, &["ssh-ed25519 AAAA a".into()]).unwrap();
        let path = s.authorized_keys_path();
        assert!(fs::read_to_string(&path)
            .unwrap()
            .ends_with("\nssh-ed25519 AAAA a\n"));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }
}
