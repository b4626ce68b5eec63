//! The audit trail: who paired, approved, rejected, minted, revoked, labelled, ran, cancelled and
//! copied what, as JSON lines appended to `audit.log` (0600) with fsync. Each line carries the
//! SHA-256 of the previous one, so an edited, removed or reordered line breaks the chain and
//! `gateway audit verify` finds it offline; `chain` owns the format.
//!
//! Acknowledged = durable: [`Audit::record`] returns once the entry is fsynced, so a caller that
//! records before it answers never answers for an action the trail lacks. One writer thread
//! ("audit-writer", [`writer`]) owns the file and group-commits: every entry queued while it writes
//! goes into the next write and fsync. Denied requests are only counted ([`denied`]) and written as
//! one entry per source, route and reason per interval.
//!
//! The trail spans `audit.log` and its rotated files (`audit.log.1`, … older); the chain goes on
//! across them. The chain's head (last seq and hash) is also kept in the store ([`head`]), which is
//! what shows a tail cut at a line boundary.
//!
//! The gateway never refuses to start over its audit log: a torn last line (power cut mid-append) is
//! moved to `audit.log.torn-<time>`, a log that fails verification further up is kept as it is
//! (evidence) with an error in the gateway's log, and a log that ends before the store's head gets an
//! `audit.truncated` entry saying so before the chain continues after its last entry.

mod chain;
mod denied;
pub mod ends;
pub mod files;
pub mod head;
pub mod query;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use anyhow::Context;
use crossbeam_channel::{bounded, Sender};
use serde_json::{json, Value};

#[cfg(test)]
pub use chain::verify;
pub use chain::verify_trail;
use chain::{Link, Start};
pub use head::{Head, HeadStore};
use writer::{Queued, Thread, Writer};
pub use writer::{Settings, DEFAULT_KEEP, DEFAULT_MAX_BYTES};

/// Who did it: a token's name (subject), its jti and role, or the Unix user of a CLI call.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub name: String,
    pub role: Option<String>,
    pub jti: Option<String>,
}

impl Actor {
    /// An actor known by name alone (a node pairing, the gateway itself, a request's source).
    pub fn named(name: &str) -> Actor {
        Actor {
            name: name.to_string(),
            ..Actor::default()
        }
    }
}

impl From<&str> for Actor {
    fn from(name: &str) -> Actor {
        Actor::named(name)
    }
}

impl From<&String> for Actor {
    fn from(name: &String) -> Actor {
        Actor::named(name)
    }
}

impl From<&Actor> for Actor {
    fn from(a: &Actor) -> Actor {
        a.clone()
    }
}

impl From<&crate::tokens::Verified> for Actor {
    fn from(t: &crate::tokens::Verified) -> Actor {
        Actor {
            name: t.subject.clone(),
            role: Some(t.role.as_str().to_string()),
            // The CLI socket's caller has no token: its name is the Unix user.
            jti: (!t.jti.is_empty()).then(|| t.jti.clone()),
        }
    }
}

impl From<&crate::api::routes::Caller> for Actor {
    fn from(c: &crate::api::routes::Caller) -> Actor {
        match &c.token {
            Some(t) => Actor::from(t),
            None => Actor::named(c.actor()),
        }
    }
}

/// An entry before it is sealed into the chain.
fn entry(who: &Actor, action: &str, target: &str, detail: Value) -> Value {
    let mut e = json!({
        "ts": crate::registry::rfc3339(crate::registry::now()),
        "actor": who.name,
    });
    if let Some(role) = &who.role {
        e["role"] = json!(role);
    }
    if let Some(jti) = &who.jti {
        e["jti"] = json!(jti);
    }
    e["action"] = json!(action);
    e["target"] = json!(target);
    e["detail"] = detail;
    e
}

/// A cheap handle for recording entries.
#[derive(Clone)]
pub struct Audit {
    /// Shared by every handle: closing the log takes the sender out for all of them at once, so a
    /// handle left somewhere (a job's end hook) cannot keep the writer from ending.
    tx: Arc<RwLock<Option<Sender<Queued>>>>,
    denied: Arc<Mutex<denied::Denied>>,
    path: PathBuf,
    rotating: Arc<RwLock<()>>,
}

/// An entry queued with [`Audit::queue`].
#[must_use = "an entry counts as recorded only once `wait` says it is durable"]
pub struct Pending(Option<crossbeam_channel::Receiver<bool>>);

impl Pending {
    /// Whether the entry is durable (`false`: writing it failed, or the log is closed).
    pub fn wait(self) -> bool {
        self.0.is_some_and(|rx| rx.recv().unwrap_or(false))
    }
}

/// Owns the writer thread; dropping it flushes and joins.
pub struct AuditLog {
    audit: Audit,
    thread: Option<JoinHandle<()>>,
}

/// Checks the current file at start and sets a torn tail aside; returns where the chain continues
/// and the link of the entry at `want` (the store's head), if the current file has it.
fn recover(path: &Path, want: Option<u64>) -> anyhow::Result<(Link, Option<Link>)> {
    let rotated = files::rotated(path)?;
    if !path.exists() || std::fs::metadata(path)?.len() == 0 {
        // Rotated just before a crash, or a new trail: continue after the newest rotated file.
        let Some((_, newest)) = rotated.first() else {
            return Ok((Link::genesis(), None));
        };
        let scan = chain::scan(newest, Start::Claimed, want)?;
        return Ok((scan.resume, scan.found));
    }
    let start = match rotated.is_empty() {
        true => Start::Genesis,
        false => Start::Claimed,
    };
    let scan = chain::scan(path, start, want)?;
    if let Some((offset, len)) = scan.torn {
        let aside = chain::set_torn_tail_aside(path, offset)?;
        log::warn!(
            "audit log {} ended in a torn line ({len} bytes, an append cut short, never \
             acknowledged): moved it to {} and continued the chain after seq {}",
            path.display(),
            aside.display(),
            scan.resume.seq
        );
    }
    if let Some(bad) = &scan.bad {
        log::error!(
            "audit log {} fails verification at {bad}; kept as it is, new entries continue \
             after seq {} (check it with `gateway audit verify`)",
            path.display(),
            scan.resume.seq
        );
    }
    Ok((scan.resume, scan.found))
}

/// What the trail says against the store's head, as an entry to write first (`None`: they agree).
fn against_head(head: Option<&Head>, resume: &Link, found: Option<&Link>) -> Option<Value> {
    let head = head?;
    let problem = if head.seq > resume.seq {
        format!(
            "the log ends at seq {} but the store's chain head is seq {}: entries {}..={} are \
             missing (the tail was cut off)",
            resume.seq,
            head.seq,
            resume.seq + 1,
            head.seq
        )
    } else if found.is_some_and(|f| f.hash != head.hash) {
        format!(
            "seq {} in the log is not the store's chain head (hash {}): the log was rewritten",
            head.seq, head.hash
        )
    } else {
        return None;
    };
    log::error!("audit log: {problem}; recorded as `audit.truncated`, the chain continues");
    Some(entry(
        &Actor::named("gateway"),
        "audit.truncated",
        "audit.log",
        json!({"problem": problem, "head_seq": head.seq, "head_hash": head.hash,
               "log_seq": resume.seq}),
    ))
}

impl AuditLog {
    /// Opens the trail at `path` with default settings and no head in a store (tests, tools).
    #[cfg(test)]
    pub fn open(path: &Path) -> anyhow::Result<AuditLog> {
        AuditLog::open_with(path, Settings::default(), None)
    }

    /// Opens the trail at `path`, keeping its head in `head` (the store) after each durable group.
    pub fn open_with(
        path: &Path,
        settings: Settings,
        head: Option<Arc<dyn HeadStore>>,
    ) -> anyhow::Result<AuditLog> {
        let stored = match &head {
            Some(h) => h.load().context("reading the audit chain's head")?,
            None => None,
        };
        let (link, found) = recover(path, stored.as_ref().map(|h| h.seq))?;
        let mismatch = against_head(stored.as_ref(), &link, found.as_ref());
        let file = writer::open_append(path)?;
        let len = file.metadata()?.len();
        let first_seq = files::first_seq(path)?.unwrap_or(link.seq + 1);
        let denied = Arc::new(Mutex::new(denied::Denied::default()));
        let rotating = Arc::new(RwLock::new(()));
        let thread = Thread {
            writer: Writer {
                file,
                len,
                link,
                shown: path.to_path_buf(),
                groups: 0,
            },
            path: path.to_path_buf(),
            settings,
            head,
            first_seq,
            denied: denied.clone(),
            rotating: rotating.clone(),
        };
        let (tx, rx) = bounded::<Queued>(4096);
        if let Some(entry) = mismatch {
            tx.send(Queued { entry, done: None })
                .expect("the receiver is here");
        }
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || thread.run(rx))
            .context("spawning the audit writer")?;
        Ok(AuditLog {
            audit: Audit {
                tx: Arc::new(RwLock::new(Some(tx))),
                denied,
                path: path.to_path_buf(),
                rotating,
            },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> Audit {
        self.audit.clone()
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // The writer ends when every sender is gone; handles held elsewhere must be dropped first.
        let mut tx = self.audit.tx.write().unwrap_or_else(|e| e.into_inner());
        tx.take();
        drop(tx);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the audit writer panicked");
            }
        }
    }
}

impl Audit {
    /// Appends an entry and returns once it is durable (`true`), or once writing it failed
    /// (`false`: the gateway's log has it and why).
    pub fn record(&self, who: impl Into<Actor>, action: &str, target: &str, detail: Value) -> bool {
        self.queue(who, action, target, detail).wait()
    }

    /// Queues an entry and returns at once; [`Pending::wait`] then waits until it is durable.
    /// Entries are written in the order they were queued, so once a later one is durable, so is
    /// this one.
    pub fn queue(
        &self,
        who: impl Into<Actor>,
        action: &str,
        target: &str,
        detail: Value,
    ) -> Pending {
        let entry = entry(&who.into(), action, target, detail);
        let tx = self.tx.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(tx) = tx else {
            log::error!("audit log is closed; entry lost: {action} {target}");
            return Pending(None);
        };
        let (done, durable) = bounded(1);
        if tx
            .send(Queued {
                entry,
                done: Some(done),
            })
            .is_err()
        {
            log::error!("audit writer is gone; entry lost: {action} {target}");
            return Pending(None);
        }
        Pending(Some(durable))
    }

    /// Counts a request refused at the route check (401/403): written later, aggregated.
    pub fn denied(&self, source: &str, route: &str, status: u16, reason: &str) {
        let mut d = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        d.note(source, route, status, reason);
    }

    /// A page of the trail, read from the files.
    pub fn query(&self, filter: &query::Filter) -> anyhow::Result<query::Page> {
        query::page(&self.path, filter, Some(&self.rotating))
    }
}

#[cfg(test)]
mod tests;
