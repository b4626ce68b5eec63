//! The store's writer thread: the one connection that writes, and group commit.
//!
//! Callers queue [`Change`]s on a bounded channel. The thread takes what is queued (up to
//! [`MAX_BATCH`]), runs each change inside `SAVEPOINT change` of one `BEGIN IMMEDIATE` transaction
//! (released if it succeeds, rolled back to if it fails, so a failing change undoes only itself),
//! commits once (with `synchronous=FULL`: one WAL fsync for the whole batch), then answers every
//! change of the batch with the commit's outcome. While it commits, new changes queue up and form
//! the next batch: the more callers, the more changes share one fsync.
//!
//! If a failing change takes the whole transaction down with it (SQLite rolls back the transaction by
//! itself on some errors, e.g. a full disk), the changes before it in the batch are answered with that
//! error, since none of them will be committed, and the rest start a fresh transaction.
//!
//! Shutdown: dropping the [`Writer`] drops the queue's sender; the thread finishes what is queued,
//! sees the channel closed and returns, and is joined (a panic in it is logged there).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context};
use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, Transaction, TransactionBehavior};

/// At most this many changes share one transaction, so one commit's answers cannot wait on an
/// unbounded amount of work.
const MAX_BATCH: usize = 512;

/// A batch of only lazy changes waits this long for a durable one to share its commit: a command's
/// "started" row then rides on the commit of its end instead of costing an fsync of its own.
pub(super) const LAZY_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// Queued changes; a caller blocks (backpressure) only when the writer is this far behind.
const QUEUE: usize = 8192;

/// Answers a change that succeeded once its transaction has ended: `Ok` after the commit, or the
/// commit's (or the transaction's) error.
pub(super) type Answer = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Runs a change on the writer thread inside its savepoint: `Some(answer)` if it succeeded (the
/// answer waits for the commit), `None` if it failed (it has answered its caller already).
pub(super) type Apply = Box<dyn FnOnce(&Transaction) -> Option<Answer> + Send>;

/// One queued change.
pub(super) struct Change {
    /// The change itself.
    pub apply: Apply,
    /// Answers the caller when the change could not even be run (the transaction did not begin).
    pub fail: Box<dyn FnOnce(String) + Send>,
    /// Nobody waits for its commit ([`super::Store::write_lazy`]).
    pub lazy: bool,
}

/// The handle of the writer thread.
pub(super) struct Writer {
    tx: Option<Sender<Change>>,
    thread: Option<JoinHandle<()>>,
    /// Transactions committed (or attempted) so far: how many fsyncs the batches cost.
    #[cfg_attr(not(test), allow(dead_code, reason = "see Store::commits"))]
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the "store-writer" thread, which owns `conn` from now on.
    pub fn start(conn: Connection, path: PathBuf) -> anyhow::Result<Writer> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(conn, rx, path, &counter))
            .context("starting the store's writer thread")?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
            commits,
        })
    }

    /// Transactions committed so far.
    #[cfg_attr(not(test), allow(dead_code, reason = "see Store::commits"))]
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Changes waiting in the queue (not yet taken into a batch).
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
    }

    /// Queues a change (waits only while the queue is full).
    pub fn submit(&self, change: Change) -> anyhow::Result<()> {
        self.tx
            .as_ref()
            .ok_or_else(|| anyhow!("the store is closed"))?
            .send(change)
            .map_err(|_| anyhow!("the store's writer thread stopped"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue is what ends the thread's `recv` loop.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the store's writer thread panicked");
            }
        }
    }
}

fn run(conn: Connection, rx: Receiver<Change>, path: PathBuf, commits: &AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
        // Nobody waits for lazy changes: give a durable one a moment to come and share the fsync.
        let deadline = std::time::Instant::now() + LAZY_LINGER;
        while batch.len() < MAX_BATCH && batch.iter().all(|c| c.lazy) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
        commit_batch(&conn, batch, &path, commits);
    }
}

/// Runs `batch` in one transaction (a savepoint per change) and answers every change.
fn commit_batch(
    conn: &Connection,
    batch: Vec<Change>,
    path: &std::path::Path,
    commits: &AtomicU64,
) {
    let shown = path.display();
    let mut changes = batch.into_iter();
    // Succeeded changes waiting for the commit.
    let mut waiting: Vec<Answer> = Vec::new();
    let mut tx = match begin(conn) {
        Ok(tx) => tx,
        Err(e) => {
            let e = format!("starting a transaction on {shown}: {e}");
            changes.for_each(|c| (c.fail)(e.clone()));
            return;
        }
    };
    while let Some(change) = changes.next() {
        if let Err(e) = tx.execute_batch("SAVEPOINT change") {
            (change.fail)(format!("writing {shown}: {e}"));
            continue;
        }
        match (change.apply)(&tx) {
            Some(answer) => match tx.execute_batch("RELEASE change") {
                Ok(()) => waiting.push(answer),
                Err(e) => {
                    undo(&tx, &shown);
                    answer(Err(format!("writing {shown}: {e}")))
                }
            },
            None if conn.is_autocommit() => {
                // SQLite ended the whole transaction: nothing before this change will be committed.
                let e = format!(
                    "writing {shown}: the transaction was rolled back by a failing change in the same batch"
                );
                waiting.drain(..).for_each(|a| a(Err(e.clone())));
                drop(tx);
                tx = match begin(conn) {
                    Ok(tx) => tx,
                    Err(e) => {
                        let e = format!("starting a transaction on {shown}: {e}");
                        changes.for_each(|c| (c.fail)(e.clone()));
                        return;
                    }
                };
            }
            None => undo(&tx, &shown),
        }
    }
    let committed = tx
        .commit()
        .map_err(|e| format!("committing to {shown}: {e}"));
    // Counted before anyone hears of the commit, so an answered caller sees its commit counted.
    commits.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = &committed {
        log::error!("{e}");
    }
    for answer in waiting {
        answer(committed.clone());
    }
}

/// Undoes the current change (back to its savepoint).
fn undo(tx: &Transaction, shown: &std::path::Display) {
    if let Err(e) = tx.execute_batch("ROLLBACK TO change; RELEASE change") {
        log::error!("undoing a failed change to {shown}: {e}");
    }
}

fn begin(conn: &Connection) -> rusqlite::Result<Transaction<'_>> {
    // IMMEDIATE: take the write lock now, so no change fails half-way on a busy database.
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}
