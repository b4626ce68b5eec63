//! Commands must not outlive their agent (they outlive connections, not the agent process): the
//! process groups of running jobs, kept in memory and in `running-groups.json` in the data dir, are
//! killed when the agent is told to stop (SIGTERM, SIGINT) and, after a crash or SIGKILL, at the
//! next start (those jobs then answer `Unknown` interrupted, see [`crate::jobs`]).
//!
//! `exec` calls [`track`] when it has started a job's process group and [`untrack`] when the job is
//! over (a background process that let go of its pipes after a normal end is not running a job any
//! more and is left alone, as `exec` documents). Until [`init`] runs (`agent join`, unit tests) both
//! do nothing.
//!
//! Killing a recorded group after a crash must not hit an unrelated group that reused the id. Linux
//! does not hand out a pid while it is still some group's id, so while any process of our group is
//! alive its id is ours. The record keeps the boot id (nothing survives a reboot) and the leader's start
//! time: a leader with that start time is ours; with another one, the id was reused after our group
//! had died, and nothing is killed. With the leader gone, the group's remaining members are ours.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::io::Errno;
use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};
use serde::{Deserialize, Serialize};

const FILE: &str = "running-groups.json";
/// How long groups get after SIGTERM before SIGKILL, and requests to report their end after that.
const GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    boot_id: String,
    /// Process group id → the leader's start time (clock ticks after boot, /proc/PID/stat field 22).
    groups: BTreeMap<i32, u64>,
}

struct Reaper {
    path: PathBuf,
    record: Mutex<Record>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// Kills what a previous run left behind, starts recording into `data_dir`, and makes SIGTERM/SIGINT
/// kill the running groups before the agent exits.
pub fn init(data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(FILE);
    let boot_id = boot_id();
    if let Ok(bytes) = std::fs::read(&path) {
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(old) if old.boot_id == boot_id => {
                for (&group, &start) in &old.groups {
                    kill_leftover(group, start);
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("ignoring unreadable {}: {e}", path.display()),
        }
    }
    let reaper = Reaper {
        path,
        record: Mutex::new(Record {
            boot_id,
            groups: BTreeMap::new(),
        }),
    };
    reaper.save(&reaper.lock())?;
    if REAPER.set(reaper).is_err() {
        anyhow::bail!("the process-group reaper was started twice");
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // Runs for the life of the process; ends it on the first signal.
            if let Some(sig) = signals.forever().next() {
                stop(sig);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// A request's process group is running.
pub fn track(group: Pid) {
    if let Some(r) = REAPER.get() {
        let start = start_time(group.as_raw_nonzero().get()).unwrap_or(0);
        let mut record = r.lock();
        record.groups.insert(group.as_raw_nonzero().get(), start);
        if let Err(e) = r.save(&record) {
            log::warn!("recording process group {group}: {e:#}");
        }
    }
}

/// A request is over; its group is not ours to kill any more.
pub fn untrack(group: Pid) {
    if let Some(r) = REAPER.get() {
        let mut record = r.lock();
        if record
            .groups
            .remove(&group.as_raw_nonzero().get())
            .is_some()
        {
            if let Err(e) = r.save(&record) {
                log::warn!("recording process group {group}: {e:#}");
            }
        }
    }
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the file by rename, without fsync: the record only has to outlive the agent process,
    /// not the machine (after a reboot no group is left, and the boot id discards the record), and
    /// the kernel keeps a finished write across a process crash. Two fsyncs per command would cost
    /// every exec tens of milliseconds on a Pi's SD card. Called under the record's lock, so one temp
    /// name suffices.
    fn save(&self, record: &Record) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let json = serde_json::to_vec(record).expect("record serializes");
        let tmp = self.path.with_extension("json.tmp");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&json))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        written.with_context(|| format!("writing {}", self.path.display()))
    }

    fn groups(&self) -> Vec<Pid> {
        self.lock()
            .groups
            .keys()
            .filter_map(|&g| Pid::from_raw(g))
            .collect()
    }
}

/// SIGTERM/SIGINT: TERM every running group, KILL what is left after [`GRACE`], give the requests
/// [`GRACE`] to report their end over the link if it is up, then exit.
fn stop(sig: i32) -> ! {
    let Some(r) = REAPER.get() else {
        std::process::exit(0)
    };
    let groups = r.groups();
    log::info!(
        "received signal {sig}: stopping {} running command(s)",
        groups.len()
    );
    signal_all(&groups, Signal::TERM);
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && groups.iter().any(|&g| alive(g)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_all(&groups, Signal::KILL);
    // `exec` untracks a group once its request is over; the request's last frame follows at once.
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && !r.groups().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::exit(0)
}

fn signal_all(groups: &[Pid], signal: Signal) {
    for &g in groups {
        match kill_process_group(g, signal) {
            Ok(()) | Err(Errno::SRCH) => {}
            Err(e) => log::warn!("signalling process group {g}: {e}"),
        }
    }
}

fn alive(group: Pid) -> bool {
    test_kill_process_group(group).is_ok()
}

/// Kills a group recorded by a previous run if it is still that run's (see the module doc).
fn kill_leftover(group: i32, start: u64) {
    let Some(pid) = Pid::from_raw(group) else {
        return;
    };
    let ours = match (start_time(group), group_of(group)) {
        // The leader still runs: ours if it is the same process.
        (Some(now), Some(g)) if g == group => now == start,
        // The id is now some other process's pid outside the group: our group is long gone.
        (Some(_), _) => false,
        // The leader is gone; members left in the group are ours.
        (None, _) => alive(pid),
    };
    if ours {
        log::warn!("killing process group {group}, left running by a previous run of the agent");
        signal_all(&[pid], Signal::KILL);
    }
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`, counted after the `(comm)` field.
fn stat_field(pid: i32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    // `after` starts at field 3.
    after.split_whitespace().nth(n - 3)?.parse().ok()
}

fn start_time(pid: i32) -> Option<u64> {
    stat_field(pid, 22)
}

fn group_of(pid: i32) -> Option<i32> {
    stat_field(pid, 5).and_then(|g| i32::try_from(g).ok())
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn reads_own_start_time_and_group() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some_and(|t| t > 0));
        assert!(group_of(me).is_some());
        assert_eq!(start_time(i32::MAX), None);
    }

    /// A recorded group whose id now belongs to another process (start time differs) is spared.
    #[test]
    fn a_reused_group_id_is_not_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid).unwrap();
        kill_leftover(pid, start + 1);
        assert!(child.try_wait().unwrap().is_none(), "spared");
        kill_leftover(pid, start);
        assert!(child.wait().unwrap().code().is_none(), "killed");
    }
}
