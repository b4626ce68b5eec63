//! A cgroup (v2) per job, so that cancel and timeout also kill what left the job's process group
//! (`setsid`, a daemonizing child): the process group is the fallback, not the only fence.
//!
//! # When
//!
//! [`Cgroups::detect`] decides once, at start, and logs why not if not:
//!
//! - the agent runs as root (effective uid 0);
//! - `/sys/fs/cgroup` is a cgroup2 file system (not cgroup v1, not a hybrid tmpfs);
//! - the agent's own cgroup (the `0::` line of `/proc/self/cgroup`) is a writable directory there.
//!
//! Otherwise every job runs in its process group only: cancel and timeout kill the group, and a
//! process that called `setsid` survives them (it is still cut off from the job's pipes after
//! [`crate::exec::KILL_GRACE`]). Under systemd, such an escapee is still killed when the agent's
//! service stops or restarts (`KillMode=control-group`, the default).
//!
//! The unit `agent install` writes has `ProtectControlGroups=yes`: `/sys/fs/cgroup` is read-only to
//! the agent, so its jobs have process groups only (the start log says so). Per-job cgroups need a
//! drop-in that lets the agent manage its own subtree and nothing above it (untested here: this
//! machine has no systemd and cgroup v1):
//!
//! ```text
//! [Service]
//! Delegate=yes
//! ReadWritePaths=/sys/fs/cgroup/system.slice/burrow-agent.service
//! ```
//!
//! # How
//!
//! Each job gets `<agent cgroup>/job-<n>` (`n`: the job's sequence number in this run). The child
//! must be *born* there: a shell forks its children within microseconds of its exec, before the
//! agent could move it (measured here: `sh -c 'setsid … & sleep 100'` had forked both children
//! before a move right after the spawn). std has no `CLONE_INTO_CGROUP` and the agent has no
//! `unsafe` for a `pre_exec` hook, so the agent steps into the job's cgroup itself for the spawn
//! and back out right after ([`Cgroups::spawn_in`], one spawn at a time); the child inherits the
//! cgroup at fork. Killing writes `1` to `cgroup.kill` (Linux ≥ 5.14), else sends SIGKILL to every
//! pid listed in `cgroup.procs`; either way never while the agent itself is in that cgroup (a
//! failed step back out is logged, and the job is then killed pid by pid, the agent spared). The
//! cgroup is removed when the job is over, if empty; a background process that outlives its job
//! (`nohup … &`) keeps it until it exits, and empty leftovers are removed at the next start.
//!
//! A cgroup with processes cannot also have children that hold controllers ("no internal
//! processes"), so where the agent's cgroup refuses a write with `EBUSY`, the agent first moves
//! itself into `<agent cgroup>/agent`, once, and returns there after each spawn.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use rustix::process::Pid;

/// `statfs` type of cgroup2 (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_MAGIC: i64 = 0x6367_7270;

/// Where the job cgroups go, when this machine allows them.
#[derive(Debug)]
pub struct Cgroups {
    /// The directory the `job-<n>` cgroups are created in.
    parent: PathBuf,
    /// Where the agent itself lives (`parent`, or `parent/agent`); also serializes spawns.
    home: Mutex<PathBuf>,
}

/// One job's cgroup.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
}

/// What [`Cgroups::detect`] looks at, so the decision can be tested anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Effective uid 0.
    pub root: bool,
    /// `statfs("/sys/fs/cgroup")` type, if it could be read.
    pub fs_type: Option<i64>,
    /// The content of `/proc/self/cgroup`.
    pub self_cgroup: String,
}

/// The agent's own cgroup directory under `mount`, or why job cgroups cannot be used.
pub fn decide(facts: &Facts, mount: &Path) -> Result<PathBuf, String> {
    if !facts.root {
        return Err("the agent does not run as root".into());
    }
    match facts.fs_type {
        Some(CGROUP2_MAGIC) => {}
        Some(_) => {
            return Err(format!(
                "{} is not a cgroup2 file system (cgroup v1 or hybrid)",
                mount.display()
            ))
        }
        None => return Err(format!("{} cannot be inspected", mount.display())),
    }
    let Some(own) = facts
        .self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
    else {
        return Err("/proc/self/cgroup has no cgroup2 entry".into());
    };
    let own = own.trim().trim_start_matches('/');
    if own.split('/').any(|part| part == "..") {
        return Err(format!("unexpected cgroup path {own:?}"));
    }
    Ok(if own.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(own)
    })
}

impl Cgroups {
    /// Job cgroups under the agent's own cgroup, or `None` (logged once, with why).
    pub fn detect() -> Option<Cgroups> {
        let mount = Path::new("/sys/fs/cgroup");
        let facts = Facts {
            root: rustix::process::geteuid().is_root(),
            fs_type: fs_type(mount),
            self_cgroup: std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        };
        let chosen = decide(&facts, mount).and_then(|dir| {
            let probe = dir.join("cgroup.procs");
            match std::fs::OpenOptions::new().write(true).open(&probe) {
                Ok(_) => Ok(dir),
                Err(e) => Err(format!("{} is not writable: {e}", probe.display())),
            }
        });
        match chosen {
            Ok(parent) => {
                log::info!(
                    "each job runs in its own cgroup under {}: cancel and timeout also kill processes that left the job's process group",
                    parent.display()
                );
                let cgroups = Cgroups::at(parent);
                cgroups.remove_empty_leftovers();
                Some(cgroups)
            }
            Err(why) => {
                log::info!(
                    "jobs run in their process group only ({why}): cancel and timeout do not reach a process that called setsid"
                );
                None
            }
        }
    }

    /// Job cgroups under `parent`, the agent's own cgroup (tests: a directory in a cgroup2 mount).
    pub fn at(parent: PathBuf) -> Cgroups {
        Cgroups {
            home: Mutex::new(parent.clone()),
            parent,
        }
    }

    /// Runs `spawn` with the agent inside job `n`'s new cgroup, so the child is born there; returns
    /// what `spawn` returned and the cgroup (`None`, logged, if it could not be used: the job then has
    /// its process group only).
    pub fn spawn_in<T>(&self, n: u64, spawn: impl FnOnce() -> T) -> (T, Option<JobCgroup>) {
        let mut home = self.home.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = self.parent.join(format!("job-{n}"));
        let entered = (|| {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            enter(&dir)
        })();
        if let Err(e) = entered {
            log::warn!(
                "job {n}: not using cgroup {} ({e}); it has its process group only",
                dir.display()
            );
            let _ = std::fs::remove_dir(&dir);
            return (spawn(), None);
        }
        let spawned = spawn();
        let back = match enter(&home) {
            // The agent's cgroup holds controllers for its children: it must not hold processes.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                self.move_aside(&mut home)
            }
            other => other,
        };
        if let Err(e) = back {
            log::error!(
                "could not move the agent back from {} into {} ({e}); that job will be killed pid by pid, sparing the agent",
                dir.display(),
                home.display()
            );
        }
        (spawned, Some(JobCgroup { dir }))
    }

    /// Moves the agent into `<parent>/agent` (see the module doc) and makes that its home.
    fn move_aside(&self, home: &mut PathBuf) -> io::Result<()> {
        let own = self.parent.join("agent");
        match std::fs::create_dir(&own) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        enter(&own)?;
        log::info!(
            "moved the agent into {} so that job cgroups can sit beside it",
            own.display()
        );
        *home = own;
        Ok(())
    }

    fn remove_empty_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.parent) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("job-") {
                // Fails (EBUSY) while a process is left in it: then it stays.
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// The file system type of `path` (`statfs`).
fn fs_type(path: &Path) -> Option<i64> {
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 here, but i32 or u32 on 32-bit targets such as the Pi's armv7"
    )]
    rustix::fs::statfs(path).ok().map(|s| s.f_type as i64)
}

/// Moves the agent (all its threads) into cgroup `dir`.
fn enter(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

impl JobCgroup {
    /// Kills every process in the cgroup (but never the agent, should it be stuck in there).
    pub fn kill(&self) {
        let me = std::process::id() as i32;
        let pids = self.pids();
        if !pids.iter().any(|p| p.as_raw_nonzero().get() == me) {
            match std::fs::write(self.dir.join("cgroup.kill"), "1") {
                Ok(()) => return,
                // Before Linux 5.14: one by one.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("writing {}/cgroup.kill: {e}", self.dir.display()),
            }
        }
        for pid in pids.into_iter().filter(|p| p.as_raw_nonzero().get() != me) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    fn pids(&self) -> Vec<Pid> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter_map(Pid::from_raw)
            .collect()
    }

    /// Removes the cgroup once no process is left in it. After a kill (`killed`) the killed
    /// processes take a moment to exit and leave `cgroup.procs`, so it waits for that, up to a
    /// second; otherwise a process still there outlived a job that ended by itself (a background
    /// process), and the cgroup stays until the next start cleans it up.
    pub fn remove(self, killed: bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) if std::time::Instant::now() >= deadline => return,
                // Emptied (or being emptied by the kill), but the kernel has not let go yet.
                Err(_) if killed || self.pids().is_empty() => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(root: bool, fs_type: Option<i64>, self_cgroup: &str) -> Facts {
        Facts {
            root,
            fs_type,
            self_cgroup: self_cgroup.into(),
        }
    }

    #[test]
    fn job_cgroups_need_root_cgroup2_and_an_own_cgroup() {
        let mount = Path::new("/sys/fs/cgroup");
        let v2 = Some(CGROUP2_MAGIC);
        assert_eq!(
            decide(
                &facts(true, v2, "0::/system.slice/burrow-agent.service\n"),
                mount
            ),
            Ok(PathBuf::from(
                "/sys/fs/cgroup/system.slice/burrow-agent.service"
            ))
        );
        assert_eq!(
            decide(&facts(true, v2, "0::/\n"), mount),
            Ok(mount.to_path_buf())
        );
        let not_root = decide(&facts(false, v2, "0::/\n"), mount).unwrap_err();
        assert!(not_root.contains("root"), "{not_root}");
        // tmpfs: what this test machine has (cgroup v1 hybrid).
        let v1 = decide(
            &facts(true, Some(0x0102_1994), "4:memory:/x\n0::/\n"),
            mount,
        )
        .unwrap_err();
        assert!(v1.contains("not a cgroup2"), "{v1}");
        let none = decide(&facts(true, v2, "4:memory:/x\n"), mount).unwrap_err();
        assert!(none.contains("no cgroup2 entry"), "{none}");
        let sneaky = decide(&facts(true, v2, "0::/../../etc\n"), mount).unwrap_err();
        assert!(sneaky.contains("unexpected"), "{sneaky}");
    }

    /// Detection on this machine gives an answer either way, and never panics.
    #[test]
    fn detection_on_this_machine_decides() {
        let here = Cgroups::detect();
        let v2 = fs_type(Path::new("/sys/fs/cgroup")) == Some(CGROUP2_MAGIC);
        if !v2 {
            assert!(here.is_none(), "no cgroup2 here, yet {here:?}");
        }
    }
}
