//! Finding the processes of our sshd, sessions included, by the stderr pipe they all hold.
//!
//! sshd calls setsid() in every per-connection child, so sshd's process group holds only the listener
//! and a group kill leaves sessions running. With `-e` every sshd process logs to the stderr pipe the
//! gateway gave it, and no other process has that pipe: its inode (`pipe:[N]` in `/proc/<pid>/fd`) marks
//! ours. `<dir>/sshd.pipes` records the inodes, so a gateway restarted after a SIGKILL can find the
//! sessions its predecessor left behind.
//!
//! [`kill_sessions`] ends chosen sessions: those holding given TCP connections (a node's logins, see
//! [`super::logins`]) or listening on given ports (its forwards). Each session is a process group of
//! its own (setsid), so killing the group ends its privilege-separated children too.

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// One line of `/proc/net/tcp{,6}`.
struct TcpSocket {
    local: SocketAddr,
    remote: SocketAddr,
    listening: bool,
    inode: u64,
}

/// Every TCP socket of this network namespace, IPv4-mapped IPv6 addresses shown as IPv4.
fn tcp_sockets() -> Vec<TcpSocket> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some(local), Some(remote), Ok(inode)) =
                (proc_addr(f[1], v6), proc_addr(f[2], v6), f[9].parse())
            else {
                continue;
            };
            out.push(TcpSocket {
                local,
                remote,
                listening: f[3] == "0A",
                inode,
            });
        }
    }
    out
}

/// `0100007F:0016` (the kernel prints each 32-bit word of the address in host byte order) → address.
fn proc_addr(text: &str, v6: bool) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = if v6 {
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        let ip = Ipv6Addr::from(bytes);
        ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)
    } else {
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some(SocketAddr::new(ip, port))
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(ip) => ip
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    }
}

/// The socket inodes a process holds (`socket:[N]` in `/proc/<pid>/fd`).
fn socket_inodes(pid: Pid) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{}/fd", pid.as_raw_nonzero())) else {
        return Vec::new();
    };
    fds.filter_map(|fd| {
        let link = fs::read_link(fd.ok()?.path()).ok()?;
        let text = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
        text.parse().ok()
    })
    .collect()
}

/// (process group, session) of a process.
fn group_and_session(pid: Pid) -> Option<(i32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    let mut f = stat.rsplit_once(')')?.1.split_whitespace();
    let (_state, _ppid) = (f.next()?, f.next()?);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Kills every session of our sshd (processes holding one of the stderr pipes `inodes`) that holds a
/// connection from one of `peers` to `sshd_port`, or listens on one of `ports`; never `listener`, the
/// sshd that accepts new connections. Returns how many sessions were killed.
pub(super) fn kill_sessions(
    inodes: &[u64],
    listener: Option<u32>,
    sshd_port: u16,
    peers: &[SocketAddr],
    ports: &[u16],
) -> usize {
    let peers: Vec<SocketAddr> = peers.iter().copied().map(unmapped).collect();
    let targets: BTreeSet<u64> = tcp_sockets()
        .into_iter()
        .filter(|s| {
            let login = !s.listening && s.local.port() == sshd_port && peers.contains(&s.remote);
            let forward = s.listening && ports.contains(&s.local.port());
            login || forward
        })
        .map(|s| s.inode)
        .collect();
    if targets.is_empty() {
        return 0;
    }
    let listener = listener.and_then(|p| i32::try_from(p).ok());
    let mut groups = BTreeSet::new();
    for holder in pipe_holders(inodes) {
        if holder.comm != "sshd"
            || !socket_inodes(holder.pid)
                .iter()
                .any(|i| targets.contains(i))
        {
            continue;
        }
        // A per-connection sshd leads its own session (setsid); the listener never qualifies.
        match group_and_session(holder.pid) {
            Some((group, session)) if group == session && Some(group) != listener && group > 1 => {
                groups.insert(group);
            }
            _ => {}
        }
    }
    for group in &groups {
        if let Some(pid) = Pid::from_raw(*group) {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }
    groups.len()
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::{Command, Stdio};

    use super::super::tests::{all_gone, banner, children_of, settings, wait_until, TempDir};
    use super::super::{write_config, Supervisor};
    use super::*;

    #[test]
    fn proc_net_tcp_addresses_parse() {
        let v4 = proc_addr("0100007F:0016", false).unwrap();
        assert_eq!(v4, "127.0.0.1:22".parse().unwrap());
        let v6 = proc_addr("00000000000000000000000001000000:1F90", true).unwrap();
        assert_eq!(v6, "[::1]:8080".parse().unwrap());
        let mapped = proc_addr("0000000000000000FFFF00000100007F:0016", true).unwrap();
        assert_eq!(mapped, "127.0.0.1:22".parse().unwrap());
        assert!(proc_addr("zz", false).is_none());
        // This very test's listener shows up as listening, with its inode.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = tcp_sockets()
            .into_iter()
            .find(|s| s.listening && s.local.port() == port);
        let me = Pid::from_raw(std::process::id() as i32).unwrap();
        assert!(found.is_some_and(|s| socket_inodes(me).contains(&s.inode)));
    }

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
