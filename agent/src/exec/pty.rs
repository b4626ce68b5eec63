//! Pseudo-terminals for jobs whose spec asks for one ([`burrow_core::protocol::Tty`]): open the
//! pair, size it, and make the child a session leader with the terminal as its controlling
//! terminal. The agent's one `unsafe` block lives here ([`controlling_terminal`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::fs::{Mode, OFlags};
use rustix::process::{kill_process_group, Signal};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetpgrp, tcsetwinsize, Winsize};

/// `TERM` when the spec names none.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// Both ends of a fresh pseudo-terminal.
pub struct Pair {
    /// The agent's end: reads what the command prints, writes what it reads.
    pub master: OwnedFd,
    /// The command's end (its stdin, stdout and stderr).
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal of `rows` × `cols`.
pub fn open(rows: u16, cols: u16) -> io::Result<Pair> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    resize(&master, rows, cols)?;
    Ok(Pair { master, slave })
}

/// Sets the terminal's size; the kernel sends `SIGWINCH` to its foreground process group.
pub fn resize(master: impl AsFd, rows: u16, cols: u16) -> io::Result<()> {
    tcsetwinsize(
        master,
        Winsize {
            ws_row: rows.max(1),
            ws_col: cols.max(1),
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// Sends `signal` to the terminal's foreground process group (the session's leader when the
/// terminal has none).
pub fn signal(master: impl AsFd, session: rustix::process::Pid, signal: i32) -> io::Result<()> {
    let signal = Signal::from_named_raw(signal)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown signal"))?;
    let group = tcgetpgrp(master).unwrap_or(session);
    kill_process_group(group, signal)?;
    Ok(())
}

/// Makes the child the leader of a new session whose controlling terminal is its stdin (the slave,
/// already in place when `pre_exec` runs). Not with `process_group(0)`: a group leader cannot
/// `setsid`, and the session id is the group id anyway.
#[allow(unsafe_code)]
pub fn controlling_terminal(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it makes two raw syscalls (setsid, ioctl TIOCSCTTY) through rustix, which
    // allocate nothing and take no locks. fd 0 is open there: std dup2'ed the slave onto it before
    // running pre_exec closures, so borrowing it is sound for the duration of the call.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
            Ok(())
        });
    }
}
