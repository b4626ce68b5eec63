//! The gateway's embedded store: everything that must survive a restart or a `kill -9` (registry,
//! and later jobs, results, queued commands) lives in one SQLite file, `<data>/burrow.db` (0600).
//!
//! Why SQLite, and how it is set up: WAL, so readers never block the writer and a backup can run while
//! the gateway writes; `synchronous=FULL`, so a committed transaction is on disk (WAL fsynced) before
//! [`Store::write`] returns: *acknowledged = durable*; `foreign_keys=ON`; a busy timeout, so a reader
//! in another process (`gateway backup`) makes the writer wait instead of failing.
//!
//! The interface is deliberately narrow (open, read, write, write_lazy) so that a Postgres store can
//! be put behind the same calls later without touching callers.
//!
//! Threads: one writer thread ("store-writer", [`writer`]) owns the only writing connection and
//! group-commits: every change queued while it commits runs in the next transaction, each change in
//! its own SAVEPOINT, then one commit (one fsync) answers them all. Reads use a small pool of reader
//! connections on the caller's thread. Dropping the [`Store`] closes the queue; the writer commits what
//! is queued and is joined.
//!
//! Schema: `PRAGMA user_version` is the schema version; [`migrations::MIGRATIONS`] brings a database up
//! to date, one transaction per migration. A database from a newer burrow is refused, never downgraded.

pub mod health;
mod migrations;
pub mod registry;
pub mod tokens;
mod writer;

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use rusqlite::{Connection, OpenFlags, Transaction};

#[cfg(test)]
use migrations::Migration;
pub use migrations::MIGRATIONS;
use writer::{Change, Writer};

/// The database's file name inside the data dir.
pub const DB_FILE: &str = "burrow.db";

/// How long a connection waits for a lock held by another connection (e.g. `gateway backup` in
/// another process starting its read) before it gives up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle reader connections kept for reuse; more are opened when needed and closed after use.
const MAX_IDLE_READERS: usize = 4;

/// The schema version this build writes (the last migration's number).
#[cfg_attr(
    not(test),
    allow(dead_code, reason = "for `gateway backup` and the status route")
)]
pub fn schema_version() -> u32 {
    migrations::latest(MIGRATIONS)
}

/// The store; share it as `Arc<Store>` (it is `Send + Sync`).
pub struct Store {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    writer: Writer,
}

impl Store {
    /// Opens (creating it 0600 if missing) `<data_dir>/burrow.db` and brings its schema up to date.
    /// A database written by a newer burrow is an error, never downgraded.
    pub fn open(data_dir: &Path) -> anyhow::Result<Arc<Store>> {
        let path = data_dir.join(DB_FILE);
        create_private(&path)?;
        let mut conn = connect(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        migrations::migrate(&mut conn, MIGRATIONS)
            .with_context(|| format!("bringing {} up to date", path.display()))?;
        let writer = Writer::start(conn, path.clone())?;
        Ok(Arc::new(Store {
            path,
            readers: Mutex::new(Vec::new()),
            writer,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Batches the writer thread has committed since the store was opened (each one fsync): with
    /// the number of writes, how well group commit pays.
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "for the status route and benchmarks; tests use it now"
        )
    )]
    pub fn commits(&self) -> u64 {
        self.writer.commits()
    }

    /// Read-only access on a reader connection (WAL: never blocks the writer). `f` runs inside one
    /// read transaction, so all it reads is one consistent snapshot.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> anyhow::Result<T> {
        let conn = match lock(&self.readers).pop() {
            Some(c) => c,
            None => {
                let c = connect(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                c.pragma_update(None, "query_only", true)
                    .with_context(|| format!("opening a reader on {}", self.path.display()))?;
                c
            }
        };
        let out = (|| {
            let tx = conn.unchecked_transaction()?;
            let out = f(&tx);
            // Nothing was written: ending the read transaction either way only releases the snapshot.
            tx.rollback()?;
            out
        })();
        let mut idle = lock(&self.readers);
        if idle.len() < MAX_IDLE_READERS && conn.is_autocommit() {
            idle.push(conn);
        }
        drop(idle);
        out.with_context(|| format!("reading {}", self.path.display()))
    }

    /// One transaction, durable (committed with synchronous=FULL) before this returns. Concurrent
    /// callers are group-committed: the writer thread runs every queued change in one transaction,
    /// then one commit, then answers them all. A change that errs rolls back only itself (it runs in
    /// its own SAVEPOINT) and its error is returned to its caller alone.
    ///
    /// `f` runs on the writer thread: it must not call the store itself (that would wait on itself).
    pub fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.queue(f)?.wait()
    }

    /// Queues a change like [`Store::write`] and returns at once; [`Pending::wait`] then waits for
    /// its durable commit. Writes queued after it returns (from any thread) are ordered after it, so a
    /// caller can start what the change records (send a command) while the commit runs, and
    /// acknowledge it only after.
    pub fn queue<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<Pending<T>> {
        let (tx, rx) = crossbeam_channel::bounded::<anyhow::Result<T>>(1);
        let fail_tx = tx.clone();
        let path = self.path.clone();
        self.writer.submit(Change {
            apply: Box::new(move |t| match catch_unwind(AssertUnwindSafe(|| f(t))) {
                Ok(Ok(value)) => Some(Box::new(move |committed: Result<(), String>| {
                    let _ = tx.send(committed.map(|()| value).map_err(|e| anyhow!(e)));
                })),
                Ok(Err(e)) => {
                    let e = anyhow::Error::new(e).context(format!("writing {}", path.display()));
                    let _ = tx.send(Err(e));
                    None
                }
                Err(_) => {
                    let _ = tx.send(Err(anyhow!("a change to {} panicked", path.display())));
                    None
                }
            }),
            fail: Box::new(move |e| {
                let _ = fail_tx.send(Err(anyhow!(e)));
            }),
            lazy: false,
        })?;
        Ok(Pending { rx })
    }

    /// Like [`Store::write`], but returns at once without waiting for the commit (for output chunks,
    /// heartbeats: things that need not be durable when acknowledged). Ordered with other writes. A
    /// failure is logged, nobody else hears of it. (It waits only if the writer is thousands of
    /// changes behind: the queue is bounded, so a flood costs time, not memory.)
    pub fn write_lazy(
        &self,
        f: impl FnOnce(&Transaction) -> rusqlite::Result<()> + Send + 'static,
    ) {
        let submitted = self.writer.submit(Change {
            apply: Box::new(move |t| match catch_unwind(AssertUnwindSafe(|| f(t))) {
                Ok(Ok(())) => Some(Box::new(|committed: Result<(), String>| {
                    if let Err(e) = committed {
                        log::warn!("a background store write was lost: {e}");
                    }
                })),
                Ok(Err(e)) => {
                    log::warn!("a background store write failed: {e}");
                    None
                }
                Err(_) => {
                    log::error!("a background store write panicked");
                    None
                }
            }),
            fail: Box::new(|e| log::warn!("a background store write was lost: {e}")),
            lazy: true,
        });
        if let Err(e) = submitted {
            log::warn!("a background store write was lost: {e:#}");
        }
    }
}

/// Opens a connection with the settings every connection of the store shares.
fn connect(path: &Path, flags: OpenFlags) -> anyhow::Result<Connection> {
    let flags = flags | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let shown = path.display();
    let conn =
        Connection::open_with_flags(path, flags).with_context(|| format!("opening {shown}"))?;
    (|| -> anyhow::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        if !flags.contains(OpenFlags::SQLITE_OPEN_READ_ONLY) {
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                anyhow::bail!("journal_mode is {mode}, not wal");
            }
        }
        // FULL: in WAL mode the WAL is fsynced at every commit, so a commit survives a power cut.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        Ok(())
    })()
    .with_context(|| format!("setting up {shown} (is it a burrow database?)"))?;
    Ok(conn)
}

/// Creates `path` empty with mode 0600 if it is missing, and makes an existing one 0600: SQLite
/// creates files 0644, and gives its `-wal` and `-shm` files the database's own mode.
fn create_private(path: &Path) -> anyhow::Result<()> {
    let shown = path.display();
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => {
            file.sync_all()
                .with_context(|| format!("creating {shown}"))?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("creating {shown}"))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {shown}")),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting permissions of {shown}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;

/// A change queued with [`Store::queue`].
#[must_use = "a queued change is acknowledged only once `wait` says it is durable"]
pub struct Pending<T> {
    rx: crossbeam_channel::Receiver<anyhow::Result<T>>,
}

impl<T> Pending<T> {
    /// The change's result once its commit is durable (or why it failed).
    pub fn wait(self) -> anyhow::Result<T> {
        self.rx
            .recv()
            .map_err(|_| anyhow!("the store's writer thread stopped"))?
    }
}
