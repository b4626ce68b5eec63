//! Finding the processes of our sshd, sessions included, by the stderr pipe they all hold.
//!
//! sshd calls setsid() in every per-connection child, so sshd's process group holds only the listener
//! and a group kill leaves sessions running. With `-e` every sshd process logs to the stderr pipe the
//! gateway gave it, and no other process has that pipe: its inode (`pipe:[N]` in `/proc/<pid>/fd`) marks
//! ours. `<dir>/sshd.pipes` records the inodes, so a gateway restarted after a SIGKILL can find the
//! sessions its predecessor left behind.

use std::fs;
use std::path::Path;

use rustix::process::{Pid, Signal};

pub(super) struct Holder {
    pub(super) pid: Pid,
    comm: String,
}

/// Processes other than ours with a file descriptor on one of the pipes `inodes`.
pub(super) fn pipe_holders(inodes: &[u64]) -> Vec<Holder> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let me = std::process::id().to_string();
    let targets: Vec<String> = inodes.iter().map(|i| format!("pipe:[{i}]")).collect();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let holds = |pid: &str| -> Option<bool> {
        let mut fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        Some(fds.any(|fd| {
            let link = fd.ok().and_then(|fd| fs::read_link(fd.path()).ok());
            link.is_some_and(|l| targets.iter().any(|t| l.as_os_str() == t.as_str()))
        }))
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| *pid != me && holds(pid) == Some(true))
        .filter_map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some(Holder {
                pid: Pid::from_raw(pid.parse().ok()?)?,
                comm: comm.trim().to_string(),
            })
        })
        .collect()
}

/// Kills sessions that the sshds of a previous, SIGKILLed gateway left behind (pdeathsig took sshd
/// down, not its sessions, which would keep nodes' forwarded ports). They are the `sshd` processes that
/// still hold a stderr pipe recorded in `pipes_file`; the gateway that read those pipes is gone.
pub(super) fn kill_stale_sessions(pipes_file: &Path) {
    let Ok(text) = fs::read_to_string(pipes_file) else {
        return;
    };
    let inodes: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let holders = pipe_holders(&inodes);
    if let Some(reader) = holders.iter().find(|h| h.comm != "sshd") {
        // Most likely a gateway still running on this data dir; its sshd is not ours to kill.
        log::warn!(
            "{} (pid {}) still reads sshd's log pipe",
            reader.comm,
            reader.pid.as_raw_nonzero()
        );
        return;
    }
    let stale = holders;
    for holder in &stale {
        let _ = rustix::process::kill_process(holder.pid, Signal::KILL);
    }
    if !stale.is_empty() {
        log::warn!(
            "killed {} sshd session process(es) left by a previous gateway",
            stale.len()
        );
    }
    let _ = fs::remove_file(pipes_file);
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::{Command, Stdio};

    use super::super::tests::{all_gone, banner, children_of, settings, wait_until, TempDir};
    use super::super::{write_config, Supervisor};
    use super::*;

    /// Regression guard for sessions that outlive a SIGKILLed gateway (pdeathsig only kills sshd).
    #[test]
    fn start_kills_sessions_left_by_a_killed_gateway() {
        let dir = TempDir::new("stale");
        let s = settings(&dir);
        write_config(&s).unwrap();
        // Play the dead gateway: our own sshd, one session, then sshd and our pipe end die.
        let mut old = Command::new(&s.binary)
            .args(["-D", "-e", "-f"])
            .arg(s.config_path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = old.stderr.take().unwrap();
        let mut said = [0u8; 64];
        assert!(pipe.read(&mut said).unwrap() > 0, "sshd never spoke");
        let inode = rustix::fs::fstat(&pipe).unwrap().st_ino;
        fs::write(s.pipes_path(), format!("{inode}\n")).unwrap();
        let (_, connection) = banner(s.listen);
        let sessions = children_of(old.id());
        assert!(!sessions.is_empty());
        old.kill().unwrap();
        old.wait().unwrap();
        drop(pipe);
        let sshd = Supervisor::start(s).unwrap();
        wait_until("the stale session is gone", || all_gone(&sessions));
        sshd.stop();
        drop(connection);
    }
}
