//! Faults a node reports about itself in each heartbeat ([`burrow_core::api::fault`]): the gateway
//! puts a node with any in `error`.
//!
//! The data dir check writes nothing: `faccessat(W_OK)` with the agent's effective ids answers
//! `EROFS` on a read-only filesystem (also for root, which permission bits do not stop), `EACCES` on
//! a directory the agent may not write, `EPERM` on an immutable one; `statvfs` then says whether a
//! block and an inode are left. A probe file created and removed every beat would say the same and
//! cost an SD card a metadata write every 30 s.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burrow_core::api::{fault, Fault};
use rustix::fs::{Access, AtFlags, CWD};

/// One more check, run on every beat: `Some` while the fault holds.
pub type Check = Box<dyn Fn() -> Option<Fault> + Send + Sync>;

/// The checks behind a beat's `faults`, and what the last beat reported (to log changes once).
pub struct Faults {
    data_dir: PathBuf,
    /// The policy file's check ([`crate::policy::fault`]) is here ([`fault::POLICY_INVALID`]).
    extra: Vec<Check>,
    last: Mutex<Vec<Fault>>,
}

impl Faults {
    /// Checks `data_dir`, where the agent keeps its job ledger, results and state.
    pub fn new(data_dir: &Path) -> Faults {
        Faults {
            data_dir: data_dir.to_path_buf(),
            extra: Vec::new(),
            last: Mutex::new(Vec::new()),
        }
    }

    /// Adds a check run after the built-in ones.
    pub fn with_check(mut self, check: Check) -> Faults {
        self.extra.push(check);
        self
    }

    /// The faults that hold now; a fault that appears or clears is logged once.
    pub fn check(&self) -> Vec<Fault> {
        let mut now: Vec<Fault> = data_dir(&self.data_dir).into_iter().collect();
        now.extend(self.extra.iter().filter_map(|check| check()));
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for f in now.iter().filter(|f| !last.contains(f)) {
            log::warn!("fault {}: {}", f.code, f.message);
        }
        for f in last
            .iter()
            .filter(|f| !now.iter().any(|n| n.code == f.code))
        {
            log::info!("fault {} cleared", f.code);
        }
        *last = now.clone();
        now
    }
}

/// [`fault::DATA_DIR_NOT_WRITABLE`] when the agent cannot create a file in `dir` now.
pub fn data_dir(dir: &Path) -> Option<Fault> {
    let not_writable = |why: String| {
        Some(Fault {
            code: fault::DATA_DIR_NOT_WRITABLE.into(),
            message: format!("cannot write to the data dir {}: {why}", dir.display()),
        })
    };
    if let Err(e) = rustix::fs::accessat(
        CWD,
        dir,
        Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    ) {
        return not_writable(std::io::Error::from(e).to_string());
    }
    let Ok(s) = rustix::fs::statvfs(dir) else {
        // accessat just found it: a race with its removal, which the next beat sees.
        return None;
    };
    // Root may use the blocks reserved for it; everyone else only the available ones.
    let blocks = if rustix::process::geteuid().is_root() {
        s.f_bfree
    } else {
        s.f_bavail
    };
    if blocks == 0 {
        return not_writable("no space left on its filesystem".into());
    }
    if s.f_files > 0 && s.f_favail == 0 {
        return not_writable("no inodes left on its filesystem".into());
    }
    None
}
