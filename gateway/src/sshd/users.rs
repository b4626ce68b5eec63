//! The accounts nodes log in as: the node user (the gateway's own user, which reads the key files) and
//! the enrollment user, whose `Match User` block lets join-token keys and pending nodes reach the API
//! port and nothing else.
//!
//! Why a second account: OpenSSH 9.2 has no key option that forbids listening (`permitlisten` only
//! allows, and `PermitListen none` exists only in sshd_config, where `Match` cannot select by key), and
//! an sshd running as root lets a root login listen even on port 1. So enrollment keys are authorized
//! for `burrow-enroll` alone, and its block says `AllowTcpForwarding local` and `PermitListen none`.
//!
//! sshd's rules for the account: it must exist in /etc/passwd with a shell that exists; with
//! `UsePAM no` (the managed sshd as root) sshd refuses it if its password is locked (`!` in
//! /etc/shadow), so it is created with the password `*` (no password matches, not "locked"). An sshd
//! that does not run as root can log in only its own user: then there is no enrollment user and
//! enrollment keys keep their `permitlisten="127.0.0.1:1"`, which an unprivileged sshd cannot bind.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The enrollment account's name.
pub const ENROLL_USER: &str = "burrow-enroll";

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

/// The enrollment user for the managed sshd: as root, [`ENROLL_USER`] (created if missing); otherwise
/// none, because an unprivileged sshd logs in only its own user (see the module doc).
pub fn managed_enroll_user() -> Result<Option<String>> {
    if !rustix::process::getuid().is_root() {
        log::warn!(
            "sshd runs unprivileged: enrollment keys log in as the node user and are kept from \
             listening only because an unprivileged sshd cannot bind port 1. Run the gateway as root \
             to give them their own account ({ENROLL_USER}) that cannot listen at all"
        );
        return Ok(None);
    }
    ensure(ENROLL_USER, false)?;
    Ok(Some(ENROLL_USER.to_string()))
}

/// The enrollment user where it must exist (the system's sshd, `gateway install`): as root the
/// gateway creates it, otherwise the error says how.
pub fn required_enroll_user() -> Result<String> {
    ensure(ENROLL_USER, true)?;
    Ok(ENROLL_USER.to_string())
}

/// The `useradd` line that creates the enrollment account as sshd needs it.
pub fn useradd_command(name: &str) -> String {
    format!(
        "useradd --system --no-create-home --home-dir /nonexistent --shell {} --password '*' \
         --comment 'burrow enrollment' {name}",
        nologin()
    )
}

fn nologin() -> &'static str {
    ["/usr/sbin/nologin", "/sbin/nologin"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("/bin/false")
}

/// One account's /etc/passwd and /etc/shadow facts.
struct Account {
    shell: String,
    /// The shadow password field; `None` where /etc/shadow is unreadable (not root).
    password: Option<String>,
}

fn account(name: &str) -> Result<Option<Account>> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let Some(fields) = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[0] == name)
    else {
        return Ok(None);
    };
    let shadow = fs::read_to_string("/etc/shadow").ok();
    let password = shadow.and_then(|s| {
        s.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 1 && f[0] == name)
            .map(|f| f[1].to_string())
    });
    let shell = match fields[6] {
        "" => "/bin/sh".to_string(),
        s => s.to_string(),
    };
    Ok(Some(Account { shell, password }))
}

/// Creates `name` with `useradd` and returns it. Gateways starting together (tests, or a fleet of
/// data dirs on one host) race here: useradd fails while another holds /etc/passwd's lock, so that
/// failure is retried for a few seconds.
fn create(name: &str) -> Result<Account> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", nologin(), "--password", "*"])
            .args(["--comment", "burrow enrollment", name])
            .output()
            .context("running useradd (package passwd)")?;
        if let Some(account) = account(name)? {
            if out.status.success() {
                log::info!("created the enrollment account {name}");
            }
            return Ok(account);
        }
        let said = String::from_utf8_lossy(&out.stderr);
        if !said.contains("lock") || Instant::now() >= deadline {
            bail!(
                "creating the enrollment account {name} failed ({}): {}; create it with: {}",
                out.status,
                said.trim(),
                useradd_command(name)
            );
        }
        // Another useradd holds the lock: it finishes in milliseconds.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes sure `name` exists and sshd will log it in (see the module doc); creates it as root.
/// `system`: a system sshd with unknown `UsePAM`, so a locked password is only a warning.
fn ensure(name: &str, system: bool) -> Result<()> {
    let root = rustix::process::getuid().is_root();
    let found = match account(name)? {
        Some(a) => a,
        None if root => create(name)?,
        None => bail!(
            "the enrollment account {name} does not exist: nodes log in as {name} to pair. As root, \
             create it with: {}",
            useradd_command(name)
        ),
    };
    if !Path::new(&found.shell).is_file() {
        bail!(
            "the shell {} of {name} does not exist, so sshd refuses {name}: usermod --shell {} {name}",
            found.shell,
            nologin()
        );
    }
    if found
        .password
        .as_deref()
        .is_some_and(|p| p.starts_with('!'))
    {
        let why = format!(
            "the account {name} is locked (its password in /etc/shadow starts with '!'), and an sshd \
             with UsePAM no refuses locked accounts: usermod --password '*' {name} \
             ('*' matches no password but is not a lock)"
        );
        if system {
            log::warn!("{why}");
        } else {
            bail!("{why}");
        }
    }
    Ok(())
}

/// `UsePAM no` as root (no PAM session stack needed to forward ports). As another user sshd can only
/// log in that user, and without PAM it refuses the account if its password is locked (`!` in
/// /etc/shadow). sshd sees /etc/shadow exactly as we do, so we turn PAM on only when we can see the lock.
pub(super) fn use_pam() -> bool {
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
    let Ok(shadow) = fs::read_to_string("/etc/shadow") else {
        // Unreadable (the usual case for an unprivileged user): sshd cannot read it either and, with
        // UsePAM no, takes the account for locked ("User nobody not allowed because account is
        // locked", measured with OpenSSH 9.2 as nobody, whose password is `*`). PAM asks its helper.
        return true;
    };
    let prefix = format!("{user}:!");
    shadow.lines().any(|l| l.starts_with(&prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root the gateway makes the account itself, as sshd with `UsePAM no` accepts it.
    #[test]
    fn enrollment_account_exists_unlocked_with_a_real_shell() {
        if !rustix::process::getuid().is_root() {
            return;
        }
        assert_eq!(managed_enroll_user().unwrap().as_deref(), Some(ENROLL_USER));
        let a = account(ENROLL_USER).unwrap().unwrap();
        assert!(Path::new(&a.shell).is_file());
        assert!(!a.password.unwrap().starts_with('!'));
        assert!(account("no-such-user-burrow").unwrap().is_none());
        assert!(useradd_command("x").contains("--password '*'"));
    }
}
