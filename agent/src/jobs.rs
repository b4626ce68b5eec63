//! The agent's table of jobs, independent of connections: jobs outlive connections, and a job id
//! runs at most once (protocol doc, "Jobs outlive connections (at most once)").
//!
//! An `Exec` names a job id. [`Jobs::exec`] looks it up:
//!
//! - running, or ended with its outcome still kept: the request **attaches** to it (kept output first,
//!   then live output, then the `Exit`/`Failed`);
//! - in the [`ledger`] but not kept: `Unknown` ([`unknown::INTERRUPTED`] if it was running when a
//!   previous run of the agent stopped, [`unknown::FORGOTTEN`] otherwise);
//! - new: recorded in the ledger (synced) before its command is spawned, on the job's own thread.
//!
//! A refused `Exec` (too many jobs running, a bad job id) is *not* recorded: the gateway may send it
//! again later.
//!
//! # Outcomes
//!
//! When a job has ended its outcome (the `Exit` or `Failed`, and what output no request took) is kept
//! until the gateway says `Done` for a request that received it ([`Jobs::forget`]). It is written to
//! `<data>/jobs/<name>.json` (crash-safe) when no connection can deliver it: the job ended detached,
//! or the connection dropped before `Done`. Kept outcomes are loaded at start; at most
//! [`Limits::kept_outcomes`] and [`Limits::kept_bytes`] are kept, the oldest evicted first (a later
//! `Exec` for it gets `Unknown` [`unknown::FORGOTTEN`]).
//!
//! # On disk
//!
//! ```text
//! <data>/jobs/                 0700
//! <data>/jobs/ledger           job ids (see ledger)
//! <data>/jobs/<name>.json      a kept outcome: {"job", "ended_at_ms", "exit" | "failed",
//!                              "stdout", "stderr" (base64), "dropped_stdout", "dropped_stderr"}
//! ```
//!
//! `<name>` is the job id when it is 1–200 characters of `A-Z a-z 0-9 . _ -` not starting with a dot,
//! otherwise `sha256-<hex of the job id>`.

pub mod ledger;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use burrow_core::protocol::{unknown, ExecSpec, ExitStatus, Message};
use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroups;
use crate::exec;
use crate::job::{Ending, Job, Pending, Sink};
use ledger::{Ledger, Seen};

/// How much the table remembers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Jobs and file transfers running at once (`--max-concurrent`).
    pub max_running: usize,
    /// Job ids the ledger remembers.
    pub ledger_ids: usize,
    /// Outcomes kept at most.
    pub kept_outcomes: usize,
    /// Bytes of kept outcomes (output and a little more each) at most.
    pub kept_bytes: usize,
}

impl Limits {
    /// The bounds for a node running at most `max_running` jobs at once.
    pub fn new(max_running: usize) -> Limits {
        Limits {
            max_running,
            ledger_ids: 4096,
            kept_outcomes: 256,
            kept_bytes: 16 << 20,
        }
    }
}

/// What a kept outcome costs beyond its output, for [`Limits::kept_bytes`].
const OUTCOME_OVERHEAD: usize = 256;

/// The jobs of this agent (see the module doc).
pub struct Jobs {
    dir: PathBuf,
    limits: Limits,
    table: Mutex<Table>,
    /// Taken after `table` when both are needed.
    ledger: Mutex<Ledger>,
    cgroups: Option<Cgroups>,
    next_seq: AtomicU64,
}

#[derive(Default)]
struct Table {
    /// Running jobs and ended ones whose outcome is kept.
    jobs: HashMap<String, Arc<Job>>,
    /// Ended jobs with their accounted size, oldest first.
    kept: VecDeque<(Arc<Job>, usize)>,
    kept_bytes: usize,
    /// Running jobs and transfers.
    running: usize,
    threads: Vec<JoinHandle<()>>,
}

/// A slot of the concurrency limit, for a file transfer; given back when dropped.
pub struct TransferSlot(Arc<Jobs>);

impl Drop for TransferSlot {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
    }
}

impl Jobs {
    /// Opens the job table in `<data_dir>/jobs`: loads the ledger and the kept outcomes.
    pub fn open(data_dir: &Path, limits: Limits, cgroups: Option<Cgroups>) -> anyhow::Result<Jobs> {
        let dir = data_dir.join("jobs");
        burrow_core::atomic_file::private_dir(&dir)?;
        let ledger = Ledger::open(&dir.join("ledger"), limits.ledger_ids)?;
        let jobs = Jobs {
            dir,
            limits,
            table: Mutex::new(Table::default()),
            ledger: Mutex::new(ledger),
            cgroups,
            next_seq: AtomicU64::new(1),
        };
        jobs.load_kept()?;
        Ok(jobs)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The concurrency limit.
    pub fn max_running(&self) -> usize {
        self.limits.max_running
    }

    /// Jobs and transfers running now (attached or not).
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Serves `Exec{request, job, spec}`: `Ok` with the job and the attachment's generation (the
    /// request is now attached to it, frames to `sink`), or `Err` with the request's only frame.
    pub fn exec(
        self: &Arc<Self>,
        request: u32,
        job: String,
        spec: ExecSpec,
        sink: Sink,
    ) -> Result<(Arc<Job>, u64), Box<Message>> {
        let failed = |message: String| {
            Box::new(Message::Failed {
                id: request,
                message,
            })
        };
        if let Err(why) = check_job_id(&job) {
            return Err(failed(why));
        }
        let mut table = self.lock();
        table.join_finished();
        if let Some(known) = table.jobs.get(&job) {
            log::debug!("request {request}: attaching to job {job}");
            let gen = known.attach(request, sink);
            return Ok((known.clone(), gen));
        }
        let mut ledger = self.ledger();
        let unknown = |code: &str, reason: String| {
            Box::new(Message::Unknown {
                id: request,
                code: code.into(),
                reason,
            })
        };
        match ledger.get(&job) {
            Some(Seen::Interrupted) => {
                return Err(unknown(
                    unknown::INTERRUPTED,
                    format!(
                        "job {job} was running when the agent stopped (crash or restart); its processes were killed then"
                    ),
                ))
            }
            Some(_) => {
                return Err(unknown(
                    unknown::FORGOTTEN,
                    format!("job {job} ran here, but its outcome is no longer kept"),
                ))
            }
            None => {}
        }
        if table.running >= self.limits.max_running {
            return Err(failed(format!(
                "too many jobs running on this node (at most {}); job {job} was not started",
                self.limits.max_running
            )));
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Job::new(job.clone(), seq, spec.stdin || spec.tty.is_some()));
        let gen = entry.attach(request, sink);
        let jobs = Arc::clone(self);
        let running = Arc::clone(&entry);
        let spawned = thread::Builder::new()
            .name(format!("job-{seq}"))
            .stack_size(exec::HELPER_STACK)
            .spawn(move || jobs.run_job(&running, &spec));
        match spawned {
            Ok(thread) => {
                ledger.admit(&job, &|j| table.jobs.contains_key(j));
                table.jobs.insert(job, entry.clone());
                table.running += 1;
                table.threads.push(thread);
                Ok((entry, gen))
            }
            Err(e) => Err(failed(format!("starting a thread for job {job}: {e}"))),
        }
    }

    /// The job's own thread: record, run, keep the outcome.
    fn run_job(&self, job: &Arc<Job>, spec: &ExecSpec) {
        // Admitted in memory by `exec` before this thread could run: wait for that (it holds the table).
        drop(self.lock());
        let accepted = self.ledger().record_accepted(&job.id);
        let ending = match accepted {
            Ok(()) => exec::run(job, spec, self.cgroups.as_ref()),
            Err(e) => {
                log::error!("job {}: not started: {e:#}", job.id);
                Ending::Failed(format!(
                    "the agent could not record job id {} durably, so it did not run it: {e:#}",
                    job.id
                ))
            }
        };
        let (detached, evicted) = {
            let mut table = self.lock();
            table.running -= 1;
            let detached = job.finish(ending);
            let size =
                OUTCOME_OVERHEAD + job.lock().out.iter().map(|p| p.data.len()).sum::<usize>();
            table.kept.push_back((job.clone(), size));
            table.kept_bytes += size;
            (detached, table.evict(&self.limits))
        };
        if detached {
            // No request can deliver it now. A request attaching meanwhile may already have had it
            // and its `Done`: `persist` checks that under the job's lock.
            self.persist(job);
        }
        for old in evicted {
            self.drop_outcome(&old);
        }
        self.ledger().record_ended(&job.id);
    }

    /// A connection dropped while request `gen` was attached to `job`: it runs on detached, and an
    /// outcome it already has is written to disk.
    pub fn detach(&self, job: &Job, gen: u64) {
        if job.detach(gen) && !job.is_running() {
            self.persist(job);
        }
    }

    /// A connection dropped before `Done` for `job`'s outcome: keep it on disk.
    pub fn undelivered(&self, job: &Job) {
        self.persist(job);
    }

    /// `Done` for a request that received `job`'s outcome: forget it.
    pub fn forget(&self, job: &Arc<Job>) {
        {
            let mut table = self.lock();
            if table.jobs.get(&job.id).is_some_and(|j| Arc::ptr_eq(j, job)) {
                table.jobs.remove(&job.id);
            }
            if let Some(at) = table.kept.iter().position(|(j, _)| Arc::ptr_eq(j, job)) {
                if let Some((_, size)) = table.kept.remove(at) {
                    table.kept_bytes -= size;
                }
            }
        }
        self.drop_outcome(job);
    }

    /// Cancels every running job and waits up to `grace` for them to end; returns how many there were.
    pub fn cancel_all(&self, grace: std::time::Duration) -> usize {
        let running: Vec<Arc<Job>> = self
            .lock()
            .jobs
            .values()
            .filter(|j| j.is_running())
            .cloned()
            .collect();
        let deadline = std::time::Instant::now() + grace;
        for job in &running {
            job.cancel();
        }
        for job in &running {
            if !job.wait_ended(deadline) {
                log::warn!("job {}: still running {grace:?} after its cancel", job.id);
            }
        }
        running.len()
    }

    /// Takes a slot of the concurrency limit for a file transfer, or says why not.
    pub fn transfer_slot(self: &Arc<Self>) -> Result<TransferSlot, String> {
        let mut table = self.lock();
        if table.running >= self.limits.max_running {
            return Err(format!(
                "too many jobs running on this node (at most {}); the transfer was not started",
                self.limits.max_running
            ));
        }
        table.running += 1;
        Ok(TransferSlot(Arc::clone(self)))
    }

    /// Marks `job`'s outcome forgotten and removes its file.
    fn drop_outcome(&self, job: &Job) {
        let mut state = job.lock();
        state.forgotten = true;
        if state.on_disk {
            let path = self.kept_path(&job.id);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("removing {}: {e}", path.display());
                }
            }
            state.on_disk = false;
        }
    }

    /// Writes `job`'s outcome to disk unless it is there, forgotten, or not ended.
    fn persist(&self, job: &Job) {
        let mut state = job.lock();
        let Some(ending) = &state.ending else {
            return;
        };
        if state.on_disk || state.forgotten {
            return;
        }
        let b64 = |p: &Pending| {
            let (a, b) = p.data.as_slices();
            base64::engine::general_purpose::STANDARD.encode([a, b].concat())
        };
        let file = KeptFile {
            job: job.id.clone(),
            ended_at_ms: now_ms(),
            exit: match ending {
                Ending::Exit(status) => Some(status.clone()),
                Ending::Failed(_) => None,
            },
            failed: match ending {
                Ending::Failed(message) => Some(message.clone()),
                Ending::Exit(_) => None,
            },
            stdout: b64(&state.out[0]),
            stderr: b64(&state.out[1]),
            dropped_stdout: state.out[0].dropped,
            dropped_stderr: state.out[1].dropped,
        };
        let path = self.kept_path(&job.id);
        let written = serde_json::to_vec(&file)
            .map_err(anyhow::Error::from)
            .and_then(|json| Ok(burrow_core::atomic_file::write(&path, &json, 0o600)?));
        match written {
            Ok(()) => state.on_disk = true,
            Err(e) => log::warn!(
                "job {}: keeping its outcome in memory only, writing {} failed: {e:#}",
                job.id,
                path.display()
            ),
        }
    }

    fn kept_path(&self, job: &str) -> PathBuf {
        self.dir.join(format!("{}.json", file_name(job)))
    }

    fn load_kept(&self) -> anyhow::Result<()> {
        let entries = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?;
        let mut loaded = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') && name.contains(".tmp-") {
                // A write cut short by a crash.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match read_kept(&path) {
                Ok(file) if file_name(&file.job) + ".json" == name => loaded.push(file),
                Ok(_) => log::warn!(
                    "ignoring {}: its job id does not match its name",
                    path.display()
                ),
                Err(e) => log::warn!("ignoring unreadable kept outcome {}: {e:#}", path.display()),
            }
        }
        loaded.sort_by_key(|f| f.ended_at_ms);
        let mut table = self.lock();
        for file in loaded {
            let decode = |s: &str| {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .unwrap_or_default()
            };
            let ending = match (file.exit, file.failed) {
                (Some(status), _) => Ending::Exit(status),
                (None, failed) => Ending::Failed(failed.unwrap_or_default()),
            };
            let out = [
                Pending {
                    data: decode(&file.stdout).into(),
                    dropped: file.dropped_stdout,
                },
                Pending {
                    data: decode(&file.stderr).into(),
                    dropped: file.dropped_stderr,
                },
            ];
            let size = OUTCOME_OVERHEAD + out.iter().map(|p| p.data.len()).sum::<usize>();
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let job = Arc::new(Job::ended(file.job.clone(), seq, ending, out));
            table.jobs.insert(file.job, job.clone());
            table.kept.push_back((job, size));
            table.kept_bytes += size;
        }
        let evicted = table.evict(&self.limits);
        drop(table);
        for old in evicted {
            self.drop_outcome(&old);
        }
        Ok(())
    }
}

impl Table {
    /// Drops the oldest kept outcomes beyond the limits; returns them (their files go next).
    fn evict(&mut self, limits: &Limits) -> Vec<Arc<Job>> {
        let mut evicted = Vec::new();
        while self.kept.len() > limits.kept_outcomes
            || (self.kept_bytes > limits.kept_bytes && self.kept.len() > 1)
        {
            let Some((job, size)) = self.kept.pop_front() else {
                break;
            };
            self.kept_bytes -= size;
            if self.jobs.get(&job.id).is_some_and(|j| Arc::ptr_eq(j, &job)) {
                self.jobs.remove(&job.id);
            }
            log::info!(
                "forgetting the outcome of job {}: too many outcomes kept",
                job.id
            );
            evicted.push(job);
        }
        evicted
    }

    fn join_finished(&mut self) {
        let (finished, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.threads)
            .into_iter()
            .partition(|t| t.is_finished());
        self.threads = running;
        for thread in finished {
            let name = thread.thread().name().unwrap_or("job").to_string();
            if thread.join().is_err() {
                log::error!("thread {name} panicked");
            }
        }
    }
}

/// A kept outcome on disk (see the module doc).
#[derive(Debug, Serialize, Deserialize)]
struct KeptFile {
    job: String,
    ended_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit: Option<ExitStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
    #[serde(default)]
    dropped_stdout: u64,
    #[serde(default)]
    dropped_stderr: u64,
}

fn read_kept(path: &Path) -> anyhow::Result<KeptFile> {
    let bytes = std::fs::read(path)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The kept outcome's file name (without `.json`) for `job` (see the module doc).
pub fn file_name(job: &str) -> String {
    let plain = !job.is_empty()
        && job.len() <= 200
        && !job.starts_with('.')
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        job.to_string()
    } else {
        use sha2::Digest;
        format!(
            "sha256-{}",
            burrow_core::join::hex(&sha2::Sha256::digest(job.as_bytes()))
        )
    }
}

/// Job ids are 1–255 bytes without control characters (the ledger is one line per id).
fn check_job_id(job: &str) -> Result<(), String> {
    if job.is_empty() || job.len() > 255 {
        return Err(format!(
            "job id must be 1 to 255 bytes, got {} bytes",
            job.len()
        ));
    }
    if job.chars().any(char::is_control) {
        return Err(format!("job id {job:?} contains a control character"));
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
