//! The ledger of job ids: every job id the agent accepted, on disk before its command starts, so that
//! an `Exec` with a job id seen before never runs again, across connections and agent restarts.
//!
//! `<data>/jobs/ledger` holds one line per event:
//!
//! ```text
//! R <job id>     accepted: written and fdatasync'ed before the command is spawned
//! E <job id>     ended: its outcome was known (written without a sync: losing it only turns a later
//!                answer "forgotten" into "interrupted", both of which mean "cannot tell")
//! I <job id>     interrupted: written by compaction for an `R` without `E` found at start
//! ```
//!
//! The last line of a job wins. At start, a job whose last line is `R` was running when the agent
//! died: it is interrupted. The ledger remembers the newest `cap` job ids (plus every job still running
//! or whose outcome is kept, whatever its age); when the file has more than twice that many lines it is
//! rewritten with only those (temp file, fsync, rename: [`burrow_core::atomic_file`]). A line torn by a
//! crash (no newline) is dropped at load and the file rewritten before anything is appended.
//!
//! # Why the file is full of zeros
//!
//! The `R` line's fdatasync is on every command's path, so it must be cheap. Appending grows the file,
//! and then fdatasync must also commit the new size through the filesystem's journal: on this
//! project's test VM under load that took 1.4–2.5 ms at the median, against 0.10–0.12 ms for the same
//! line written over space that already holds zeros (ext4; an SD card's journal commit is slower
//! still). So the file is kept [`SEGMENT`]-aligned and zero-filled past its last line, the way
//! databases preallocate their write-ahead logs: a line is written in place at the end of the text
//! (the first NUL byte), which changes no size and allocates no block, and only every few thousand
//! lines does a new segment of zeros get written (and synced) once. Job ids never contain NUL.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

/// What the ledger knows of a job id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Accepted in this run (running, or ended with its `E` line to come).
    Accepted,
    /// Ended; its outcome was known then.
    Ended,
    /// Was running when a previous run of the agent stopped.
    Interrupted,
}

impl Seen {
    fn tag(self) -> char {
        match self {
            Seen::Accepted => 'R',
            Seen::Ended => 'E',
            Seen::Interrupted => 'I',
        }
    }
}

/// The file grows by this many zero bytes at a time (see the module doc).
pub const SEGMENT: u64 = 64 * 1024;

/// The job ids the agent has accepted (see the module doc).
pub struct Ledger {
    path: PathBuf,
    file: File,
    /// Where the text ends (the next line goes here) and how much of the file holds zeros after it.
    end: u64,
    size: u64,
    /// Oldest first; each id is stored once, shared with `seen` (4096 ids on a Pi's memory).
    order: VecDeque<Arc<str>>,
    seen: HashMap<Arc<str>, Seen>,
    /// Lines in the file.
    lines: usize,
    cap: usize,
}

impl Ledger {
    /// Loads `path` (creating it), keeping the newest `cap` ids.
    pub fn open(path: &Path, cap: usize) -> anyhow::Result<Ledger> {
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // The text ends at the first NUL; anything but zeros after it is a torn write too.
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let garbage = text[end..].iter().any(|&b| b != 0);
        let text = &text[..end];
        let torn = garbage || (!text.is_empty() && !text.ends_with(b"\n"));
        let mut ledger = Ledger {
            path: path.to_path_buf(),
            file: open_rw(path)?,
            end: end as u64,
            size: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            order: VecDeque::new(),
            seen: HashMap::new(),
            lines: 0,
            cap: cap.max(1),
        };
        let mut interrupted = false;
        // Complete lines only: a torn last one was never synced, so its command never started.
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if torn && line.as_ptr_range().end == text.as_ptr_range().end {
                break;
            }
            ledger.lines += 1;
            let (tag, job) = match (line.first(), line.get(2..)) {
                (Some(&tag), Some(job)) if line.get(1) == Some(&b' ') => (tag, job),
                _ => continue,
            };
            let Ok(job) = std::str::from_utf8(job) else {
                continue;
            };
            let seen = match tag {
                b'R' => Seen::Accepted,
                b'E' => Seen::Ended,
                b'I' => Seen::Interrupted,
                _ => continue,
            };
            ledger.note(job, seen, &|_| false);
        }
        for seen in ledger.seen.values_mut() {
            if *seen == Seen::Accepted {
                *seen = Seen::Interrupted;
                interrupted = true;
            }
        }
        // An unpadded file (new, or written before the padding) is rewritten padded, too.
        let unpadded =
            ledger.size < ledger.end + SEGMENT / 2 || !ledger.size.is_multiple_of(SEGMENT);
        if torn || interrupted || unpadded || ledger.lines > 2 * ledger.cap {
            ledger.compact()?;
        }
        Ok(ledger)
    }

    /// What the ledger knows of `job`.
    pub fn get(&self, job: &str) -> Option<Seen> {
        self.seen.get(job).copied()
    }

    /// Job ids it remembers.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Notes in memory that `job` is accepted; the oldest id not `pinned` is forgotten beyond the cap.
    pub fn admit(&mut self, job: &str, pinned: &dyn Fn(&str) -> bool) {
        self.note(job, Seen::Accepted, pinned);
    }

    /// Writes `R job` and syncs it: after this returns, the job id is never run again.
    pub fn record_accepted(&mut self, job: &str) -> anyhow::Result<()> {
        self.append(Seen::Accepted, job, true)
    }

    /// Notes that `job` ended (`E job`, not synced).
    pub fn record_ended(&mut self, job: &str) {
        if let Some(seen) = self.seen.get_mut(job) {
            *seen = Seen::Ended;
        }
        if let Err(e) = self.append(Seen::Ended, job, false) {
            log::warn!("recording the end of job {job}: {e:#}");
        }
    }

    fn note(&mut self, job: &str, seen: Seen, pinned: &dyn Fn(&str) -> bool) {
        match self.seen.get_mut(job) {
            Some(known) => *known = seen,
            None => {
                let id: Arc<str> = Arc::from(job);
                self.seen.insert(id.clone(), seen);
                self.order.push_back(id);
            }
        }
        while self.order.len() > self.cap {
            // Never forget a job that runs now: a crash would then let it run again.
            let Some(at) = self.order.iter().position(|j| {
                self.seen.get(j) != Some(&Seen::Accepted) && &**j != job && !pinned(j)
            }) else {
                break;
            };
            if let Some(old) = self.order.remove(at) {
                self.seen.remove(&old);
            }
        }
    }

    fn append(&mut self, seen: Seen, job: &str, sync: bool) -> anyhow::Result<()> {
        let line = format!("{} {job}\n", seen.tag());
        let len = line.len() as u64;
        let shown = self.path.display();
        if self.end + len > self.size {
            // Rare: a new segment of zeros, synced once, so later lines are written in place.
            let zeros = vec![0u8; SEGMENT as usize];
            self.file
                .write_all_at(&zeros, self.size)
                .and_then(|()| self.file.sync_data())
                .with_context(|| format!("growing {shown}"))?;
            self.size += SEGMENT;
        }
        self.file
            .write_all_at(line.as_bytes(), self.end)
            .with_context(|| format!("writing to {shown}"))?;
        if sync {
            self.file
                .sync_data()
                .with_context(|| format!("syncing {shown}"))?;
        }
        self.end += len;
        self.lines += 1;
        if self.lines > 2 * self.cap {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with what is in memory, followed by zeros up to a segment boundary at least
    /// half a segment away.
    fn compact(&mut self) -> anyhow::Result<()> {
        let mut text = String::new();
        for job in &self.order {
            if let Some(seen) = self.seen.get(&**job) {
                text.push(seen.tag());
                text.push(' ');
                text.push_str(job);
                text.push('\n');
            }
        }
        let end = text.len() as u64;
        let size = (end + SEGMENT / 2).div_ceil(SEGMENT) * SEGMENT;
        let mut bytes = text.into_bytes();
        bytes.resize(size as usize, 0);
        burrow_core::atomic_file::write(&self.path, &bytes, 0o600)?;
        self.file = open_rw(&self.path)?;
        self.end = end;
        self.size = size;
        self.lines = self.order.len();
        Ok(())
    }
}

fn open_rw(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_ids_survive_a_reopen_and_running_ones_become_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let mut ledger = Ledger::open(&path, 16).unwrap();
        for job in ["a", "b"] {
            ledger.admit(job, &|_| false);
            ledger.record_accepted(job).unwrap();
        }
        ledger.record_ended("a");
        drop(ledger);
        let ledger = Ledger::open(&path, 16).unwrap();
        assert_eq!(ledger.get("a"), Some(Seen::Ended));
        assert_eq!(ledger.get("b"), Some(Seen::Interrupted));
        assert_eq!(ledger.get("c"), None);
        // Still interrupted after another restart (compaction wrote it down as such).
        drop(ledger);
        assert_eq!(
            Ledger::open(&path, 16).unwrap().get("b"),
            Some(Seen::Interrupted)
        );
    }

    #[test]
    fn ledger_stays_bounded_and_compacts_past_twice_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let mut ledger = Ledger::open(&path, 4).unwrap();
        for i in 0..20 {
            let job = format!("job-{i}");
            ledger.admit(&job, &|j| j == "job-0");
            ledger.record_accepted(&job).unwrap();
            ledger.record_ended(&job);
        }
        assert_eq!(ledger.len(), 4);
        // Pinned (its outcome kept) ids are not forgotten, however old.
        assert_eq!(ledger.get("job-0"), Some(Seen::Ended));
        assert_eq!(ledger.get("job-1"), None);
        assert_eq!(ledger.get("job-19"), Some(Seen::Ended));
        let bytes = std::fs::read(&path).unwrap();
        let text_end = bytes.iter().position(|&b| b == 0).unwrap();
        let lines = bytes[..text_end].iter().filter(|&&b| b == b'\n').count();
        assert!(lines <= 8, "{lines} lines");
    }

    /// A crash mid-append leaves a line without its newline: it is dropped, not glued to the next.
    #[test]
    fn a_torn_last_line_is_dropped_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        std::fs::write(&path, "E done\nR half-writ").unwrap();
        let mut ledger = Ledger::open(&path, 16).unwrap();
        assert_eq!(ledger.get("half-writ"), None);
        ledger.admit("next", &|_| false);
        ledger.record_accepted("next").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let text_end = bytes.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&bytes[..text_end], b"E done\nR next\n");
    }

    /// The `R` line's fdatasync was an append, which also commits the new file size through the
    /// journal (1.4–2.5 ms under load here, on every command's path). Lines now go over zeros already
    /// on disk: accepting a job changes neither the file's size nor its allocation, until a segment
    /// fills.
    #[test]
    fn accepting_a_job_writes_over_preallocated_zeros_without_growing_the_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let mut ledger = Ledger::open(&path, 4096).unwrap();
        let before = std::fs::metadata(&path).unwrap();
        assert!(before.len().is_multiple_of(SEGMENT));
        assert!(before.len() >= SEGMENT);
        // Real zeros, not a hole: a hole would be allocated (metadata) by the first sync into it.
        assert!(
            before.blocks() * 512 >= before.len(),
            "{} blocks",
            before.blocks()
        );
        for i in 0..100 {
            let job = format!("job-{i:04}");
            ledger.admit(&job, &|_| false);
            ledger.record_accepted(&job).unwrap();
        }
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (after.len(), after.blocks()),
            (before.len(), before.blocks())
        );
        let bytes = std::fs::read(&path).unwrap();
        let text_end = bytes.iter().position(|&b| b == 0).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes[..text_end])
                .unwrap()
                .lines()
                .count(),
            100
        );
        assert!(bytes[text_end..].iter().all(|&b| b == 0));
    }

    /// Past a segment the file grows by one more segment of zeros, and every id survives a reopen.
    #[test]
    fn the_ledger_grows_by_whole_segments_and_keeps_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let mut ledger = Ledger::open(&path, 100_000).unwrap();
        let first = std::fs::metadata(&path).unwrap().len();
        // Ids of 60 bytes: a segment holds about a thousand lines.
        let ids: Vec<String> = (0..3000).map(|i| format!("{i:060}")).collect();
        for id in &ids {
            ledger.admit(id, &|_| false);
            ledger.record_accepted(id).unwrap();
        }
        let grown = std::fs::metadata(&path).unwrap().len();
        assert!(
            grown > first && grown.is_multiple_of(SEGMENT),
            "{first} -> {grown}"
        );
        drop(ledger);
        let ledger = Ledger::open(&path, 100_000).unwrap();
        assert!(ids
            .iter()
            .all(|id| ledger.get(id) == Some(Seen::Interrupted)));
    }

    /// A crash while a line was written over the zeros leaves part of it, then zeros: dropped.
    #[test]
    fn a_torn_line_before_the_zeros_is_dropped_and_the_file_repadded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let mut bytes = b"E done\nR half-wr".to_vec();
        bytes.resize(SEGMENT as usize, 0);
        std::fs::write(&path, &bytes).unwrap();
        let mut ledger = Ledger::open(&path, 16).unwrap();
        assert_eq!(ledger.get("done"), Some(Seen::Ended));
        assert_eq!(ledger.get("half-wr"), None);
        ledger.admit("next", &|_| false);
        ledger.record_accepted("next").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let text_end = bytes.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&bytes[..text_end], b"E done\nR next\n");
        assert!((bytes.len() as u64).is_multiple_of(SEGMENT));
    }
}
