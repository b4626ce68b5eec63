//! The one thread that owns `audit.log`: group commit, rotation and retention.
//!
//! Group commit: a recorder queues its entry with a reply channel and waits. The writer takes every
//! entry queued by then, seals them into lines in order, writes them with one `write` and one
//! `fdatasync`, and only then answers each waiter: an entry is acknowledged once it is durable, and
//! eight concurrent recorders cost one fsync per group, not one each. A failed write or fsync is cut
//! off again, its waiters hear `false`, and the chain does not advance.
//!
//! Rotation: once the file passes `max_bytes`, `audit.log.N` become `audit.log.N+1` (highest first),
//! `audit.log` becomes `audit.log.1`, and a new `audit.log` starts; the chain goes on across the
//! files (the first line of the new file links to the last of the old). Retention then deletes
//! rotated files beyond `keep`, and those whose newest entry is older than `max_age`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;

use super::chain::Link;
use super::denied::Denied;
use super::files;
use super::head::{Head, HeadStore};

/// Entries sealed into one group at most (bounds the buffer of one write).
const MAX_GROUP: usize = 4096;

/// Rotation and retention (`serve --audit-max-bytes`, `--audit-keep`, `--audit-max-age`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `audit.log` is rotated once it is at least this large.
    pub max_bytes: u64,
    /// Rotated files kept (at least 1, so the chain's start before the current file is kept).
    pub keep: usize,
    /// Rotated files whose newest entry is older than this are deleted.
    pub max_age: Option<Duration>,
    /// How often the denied-request counts are written out.
    pub denied_every: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
            max_age: None,
            denied_every: Duration::from_secs(60),
        }
    }
}

/// 8 MiB per file, 8 rotated files: at most ~72 MiB of audit trail on a small VM's disk.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;
pub const DEFAULT_KEEP: usize = 8;

/// One entry waiting to be written; `done` hears whether it is durable.
pub struct Queued {
    pub entry: Value,
    pub done: Option<Sender<bool>>,
}

/// The append-only file under the writer: an append is durable once this returns Ok.
pub trait Durable {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Cuts the file back to `len` bytes after a failed append.
    fn cut(&mut self, len: u64) -> std::io::Result<()>;
}

impl Durable for File {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)?;
        self.sync_data()
    }

    fn cut(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)?;
        self.sync_data()
    }
}

/// The writer's side of the chain: the file, its durable length, the last durable link.
pub struct Writer<F> {
    pub file: F,
    pub len: u64,
    pub link: Link,
    pub shown: PathBuf,
    /// Groups written (each one fsync), for the benchmark and tests.
    pub groups: u64,
}

impl<F: Durable> Writer<F> {
    /// Seals and writes `batch` with one fsync; answers every waiter. Returns whether it is durable.
    pub fn write_group(&mut self, batch: Vec<Queued>) -> bool {
        let mut buf = String::new();
        let mut link = self.link.clone();
        for q in &batch {
            let (line, next) = link.seal(q.entry.clone());
            buf.push_str(&line);
            link = next;
        }
        let ok = match self.file.append(buf.as_bytes()) {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.link = link;
                self.groups += 1;
                true
            }
            Err(e) => {
                // Not acknowledged: keep the entries in the gateway's log, and take any partial
                // line back out so the next entry starts on a line of its own.
                log::error!(
                    "writing audit log {}: {e}; {} entries not recorded:\n{}",
                    self.shown.display(),
                    batch.len(),
                    buf.trim_end()
                );
                if let Err(e) = self.file.cut(self.len) {
                    log::error!("cutting a failed append off {}: {e}", self.shown.display());
                }
                false
            }
        };
        for q in batch {
            if let Some(done) = q.done {
                let _ = done.send(ok);
            }
        }
        ok
    }
}

/// What the writer thread owns besides the file.
pub struct Thread {
    pub writer: Writer<File>,
    pub path: PathBuf,
    pub settings: Settings,
    pub head: Option<Arc<dyn HeadStore>>,
    /// The oldest seq still in a file (after retention), for the head.
    pub first_seq: u64,
    pub denied: Arc<Mutex<Denied>>,
    /// Held for writing while files are renamed, so a reader lists and opens them consistently.
    pub rotating: Arc<RwLock<()>>,
}

impl Thread {
    pub fn run(mut self, rx: Receiver<Queued>) {
        let mut flush_at = Instant::now() + self.settings.denied_every;
        loop {
            let wait = flush_at.saturating_duration_since(Instant::now());
            let mut batch = Vec::new();
            match rx.recv_timeout(wait) {
                Ok(q) => batch.push(q),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            batch.extend(rx.try_iter().take(MAX_GROUP));
            if Instant::now() >= flush_at {
                batch.extend(self.denied_entries());
                flush_at = Instant::now() + self.settings.denied_every;
            }
            self.commit(batch);
        }
        // Shutdown: what was counted since the last interval is written too.
        let last = self.denied_entries();
        self.commit(last);
    }

    fn denied_entries(&self) -> Vec<Queued> {
        let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        denied
            .take()
            .into_iter()
            .map(|entry| Queued { entry, done: None })
            .collect()
    }

    fn commit(&mut self, batch: Vec<Queued>) {
        if batch.is_empty() || !self.writer.write_group(batch) {
            return;
        }
        if self.writer.len >= self.settings.max_bytes {
            if let Err(e) = self.rotate() {
                log::error!("rotating {}: {e:#}", self.path.display());
            }
        }
        if let Some(head) = &self.head {
            head.save(Head {
                seq: self.writer.link.seq,
                hash: self.writer.link.hash.clone(),
                first_seq: self.first_seq,
            });
        }
    }

    /// `audit.log` → `audit.log.1` (older ones shifted up), a new `audit.log`, then retention.
    fn rotate(&mut self) -> anyhow::Result<()> {
        let rotating = self.rotating.clone();
        let _held = rotating.write().unwrap_or_else(|e| e.into_inner());
        let rotated = files::rotated(&self.path)?;
        for (n, from) in rotated.iter().rev() {
            let to = files::nth(&self.path, n + 1);
            std::fs::rename(from, &to)
                .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
        }
        let first = files::nth(&self.path, 1);
        std::fs::rename(&self.path, &first)
            .with_context(|| format!("renaming {} to {}", self.path.display(), first.display()))?;
        self.writer.file = open_append(&self.path)?;
        self.writer.len = 0;
        sync_dir(&self.path)?;
        log::info!(
            "audit log rotated at seq {}: {} is now {}",
            self.writer.link.seq,
            self.path.display(),
            first.display()
        );
        self.retain()
    }

    /// Deletes rotated files beyond `keep` and older than `max_age`; updates `first_seq`.
    fn retain(&mut self) -> anyhow::Result<()> {
        let rotated = files::rotated(&self.path)?;
        let now = SystemTime::now();
        let mut removed = false;
        for (n, file) in &rotated {
            let too_many = *n > self.settings.keep.max(1);
            let too_old = self.settings.max_age.is_some_and(|age| {
                std::fs::metadata(file)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > age)
            });
            // The newest rotated file stays: the chain's link into the current file is in it.
            if (too_many || too_old) && *n > 1 {
                std::fs::remove_file(file)
                    .with_context(|| format!("removing {}", file.display()))?;
                log::info!("audit retention: removed {}", file.display());
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.path)?;
            self.first_seq = files::first_seq(&self.path)?.unwrap_or(self.writer.link.seq + 1);
        }
        Ok(())
    }
}

/// Opens (creating it 0600) the log for appending.
pub fn open_append(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // `mode` applies at creation only (and through the umask): also tighten an older file.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    Ok(file)
}

/// Makes renames and creations in the log's directory durable.
fn sync_dir(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}
