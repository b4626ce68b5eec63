//! The audit trail: who paired, approved, rejected and ran what, as JSON lines appended to
//! `audit.log` (0600) with fsync. Each line carries the SHA-256 of the previous one, so an edited,
//! removed or reordered line breaks the chain and `gateway audit verify` (or [`verify`]) finds it
//! offline; `chain` owns the format.
//!
//! One writer thread ("audit-writer") owns the file; request handlers only send it entries, so an
//! fsync never sits on a request's path. The chain advances only after a line is durably written: a
//! failed append is cut off again and the next entry takes its place in the chain.
//!
//! The gateway never refuses to start over its audit log: a torn last line (power cut mid-append) is
//! moved to `audit.log.torn-<time>`, and a log that fails verification further up is kept as it is
//! (evidence) with an error in the gateway's log, the chain continuing after its last entry.

mod chain;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::Context;
use crossbeam_channel::{bounded, Sender};
use serde_json::{json, Value};

pub use chain::verify;
use chain::Link;

/// A cheap handle for recording entries.
#[derive(Clone)]
pub struct Audit {
    tx: Option<Sender<Value>>,
}

/// Owns the writer thread; dropping it flushes and joins.
pub struct AuditLog {
    tx: Option<Sender<Value>>,
    thread: Option<JoinHandle<()>>,
}

/// The append-only file under the writer: an append is durable once this returns Ok.
trait Durable {
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
struct Writer<F> {
    file: F,
    len: u64,
    link: Link,
    shown: PathBuf,
}

impl<F: Durable> Writer<F> {
    fn write(&mut self, entry: Value) {
        let (line, next) = self.link.seal(entry);
        match self.file.append(line.as_bytes()) {
            Ok(()) => {
                self.len += line.len() as u64;
                self.link = next;
            }
            Err(e) => {
                // Not acknowledged: keep it in the gateway's log, and take any partial line back
                // out so the next entry starts on a line of its own.
                log::error!(
                    "writing audit log {}: {e}; entry not recorded: {}",
                    self.shown.display(),
                    line.trim_end()
                );
                if let Err(e) = self.file.cut(self.len) {
                    log::error!("cutting a failed append off {}: {e}", self.shown.display());
                }
            }
        }
    }
}

/// Checks the log at start and sets a torn tail aside; returns where the chain continues.
fn recover(path: &Path) -> anyhow::Result<Link> {
    let scan = chain::scan(path)?;
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
    Ok(scan.resume)
}

impl AuditLog {
    pub fn open(path: &Path) -> anyhow::Result<AuditLog> {
        let link = match path.exists() {
            true => recover(path)?,
            false => Link::genesis(),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // `mode` applies at creation only (and through the umask): also tighten an older file.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
        let len = file.metadata()?.len();
        let mut writer = Writer {
            file,
            len,
            link,
            shown: path.to_path_buf(),
        };
        let (tx, rx) = bounded::<Value>(1024);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                for entry in rx {
                    writer.write(entry);
                }
            })
            .context("spawning the audit writer")?;
        Ok(AuditLog {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> Audit {
        Audit {
            tx: self.tx.clone(),
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // The writer ends when every sender is gone; handles held elsewhere must be dropped first.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Audit {
    pub fn record(&self, actor: &str, action: &str, target: &str, detail: Value) {
        let entry = json!({
            "ts": crate::registry::rfc3339(crate::registry::now()),
            "actor": actor,
            "action": action,
            "target": target,
            "detail": detail,
        });
        if let Some(tx) = &self.tx {
            if tx.send(entry).is_err() {
                log::error!("audit writer is gone; entry lost: {action} {target}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
