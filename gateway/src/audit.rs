//! The audit trail: who paired, approved, rejected and ran what, as JSON lines appended to
//! `audit.log` with fsync. Each line carries the SHA-256 of the previous one, so an edited, removed
//! or reordered line breaks the chain and `gateway audit verify` (or [`verify`]) finds it offline.
//!
//! One writer thread ("audit-writer") owns the file; request handlers only send it entries, so an
//! fsync never sits on a request's path.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use crossbeam_channel::{bounded, Sender};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditLog {
    pub fn open(path: &Path) -> anyhow::Result<AuditLog> {
        let (mut seq, mut prev) = (0u64, GENESIS.to_string());
        if path.exists() {
            let (n, last) = verify(path).with_context(|| {
                format!(
                    "{} fails verification; move it away to start a new chain",
                    path.display()
                )
            })?;
            seq = n as u64;
            prev = last;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let (tx, rx) = bounded::<Value>(1024);
        let shown: PathBuf = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                for mut entry in rx {
                    seq += 1;
                    entry["seq"] = json!(seq);
                    entry["prev"] = json!(prev);
                    let body = serde_json::to_string(&entry).expect("entry serializes");
                    let hash = burrow_core::join::hex(&Sha256::digest(body.as_bytes()));
                    let line = format!("{}, \"hash\": \"{hash}\"}}\n", &body[..body.len() - 1]);
                    if let Err(e) = file
                        .write_all(line.as_bytes())
                        .and_then(|()| file.sync_data())
                    {
                        log::error!("writing audit log {}: {e}", shown.display());
                    }
                    prev = hash;
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

/// Checks the whole chain; returns the number of entries and the last hash.
pub fn verify(path: &Path) -> anyhow::Result<(usize, String)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut prev = GENESIS.to_string();
    let mut count = 0;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        let n = i + 1;
        let mut entry: Value =
            serde_json::from_str(&line).with_context(|| format!("line {n} is not JSON"))?;
        let hash = entry
            .as_object_mut()
            .and_then(|o| o.remove("hash"))
            .and_then(|h| h.as_str().map(str::to_string))
            .with_context(|| format!("line {n} has no hash"))?;
        if entry["prev"] != json!(prev) {
            bail!(
                "line {n}: chain broken (prev does not match line {})",
                n - 1
            );
        }
        let body = line
            .rsplit_once(", \"hash\"")
            .map(|(b, _)| format!("{b}}}"))
            .with_context(|| format!("line {n} is not in canonical form"))?;
        if burrow_core::join::hex(&Sha256::digest(body.as_bytes())) != hash {
            bail!("line {n}: contents do not match its hash (edited?)");
        }
        prev = hash;
        count = n;
    }
    Ok((count, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_verifies_and_detects_edits() {
        let dir = std::env::temp_dir().join(format!("burrow-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        for round in 0..2 {
            let log = AuditLog::open(&path).unwrap();
            let a = log.handle();
            a.record(
                "alice",
                "exec",
                "pi-1",
                json!({"command": format!("uptime {round}")}),
            );
            a.record("bob", "node.approve", "pi-2", json!({}));
            drop(a);
        }
        assert_eq!(verify(&path).unwrap().0, 4);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("bob", "eve");
        std::fs::write(&path, text).unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("line 2"));
        assert!(AuditLog::open(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
