//! The audit log's chain, its recovery at start and its durability rule.

use std::os::unix::fs::PermissionsExt;

use super::writer::{Durable, Queued};
use super::*;
use std::fs::OpenOptions;
use std::io::Write;

pub(super) fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("burrow-audit-{name}"))
        .tempdir()
        .unwrap()
}

/// Opens the log, records `n` entries, closes it (joining the writer).
fn record(path: &Path, n: usize, tag: &str) {
    let log = AuditLog::open(path).unwrap();
    let a = log.handle();
    for i in 0..n {
        a.record(
            "alice",
            "exec",
            "pi-1",
            json!({"command": format!("{tag} {i}")}),
        );
    }
}

#[test]
fn chain_verifies_and_detects_edits() {
    let dir = temp_dir("edit");
    let path = dir.path().join("audit.log");
    record(&path, 2, "one");
    record(&path, 2, "two");
    assert_eq!(verify(&path).unwrap(), 4);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("one 1", "one 9", 1);
    std::fs::write(&path, edited).unwrap();
    let err = verify(&path).unwrap_err().to_string();
    assert!(
        err.contains("line 2 (seq 2)") && err.contains("edited"),
        "{err}"
    );
    // A removed line is named too.
    let removed: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&path, removed).unwrap();
    let err = verify(&path).unwrap_err().to_string();
    assert!(
        err.contains("line 2 (seq 3)") && err.contains("chain broken"),
        "{err}"
    );
}

#[test]
fn gateway_starts_over_an_edited_log_and_keeps_it_as_evidence() {
    let dir = temp_dir("evidence");
    let path = dir.path().join("audit.log");
    record(&path, 3, "a");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("a 0", "a 7", 1)).unwrap();
    record(&path, 1, "after");
    let now = std::fs::read_to_string(&path).unwrap();
    assert!(now.starts_with(&text.replacen("a 0", "a 7", 1)));
    assert!(verify(&path).unwrap_err().to_string().contains("line 1"));
    // The new entry continues after the last one.
    let last: Value = serde_json::from_str(now.lines().last().unwrap()).unwrap();
    assert_eq!(last["seq"], 4);
}

/// Regression: a torn last line (power cut mid-append) made `AuditLog::open` fail, so the gateway
/// refused to start.
#[test]
fn torn_tail_is_set_aside_and_the_chain_continues() {
    let dir = temp_dir("torn");
    let path = dir.path().join("audit.log");
    record(&path, 2, "before");
    let intact = std::fs::read(&path).unwrap();
    let torn = b"{\"ts\": \"2026-12-02T01:00:00Z\", \"actor\": \"al";
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(torn).unwrap();
    drop(f);
    let err = verify(&path).unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("torn"), "{err}");

    record(&path, 2, "after");
    assert_eq!(verify(&path).unwrap(), 4);
    let now = std::fs::read(&path).unwrap();
    assert!(now.starts_with(&intact), "acknowledged entries were kept");
    let asides: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("audit.log.torn-")
        })
        .collect();
    assert_eq!(asides.len(), 1);
    assert_eq!(std::fs::read(asides[0].path()).unwrap(), torn);
}

struct Flaky {
    written: Vec<u8>,
    fail_next: bool,
}

impl Durable for Flaky {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if std::mem::take(&mut self.fail_next) {
            // Half the line reached the disk, then the fsync failed.
            self.written.extend_from_slice(&bytes[..bytes.len() / 2]);
            return Err(std::io::Error::other("injected fsync failure"));
        }
        self.written.extend_from_slice(bytes);
        Ok(())
    }
    fn cut(&mut self, len: u64) -> std::io::Result<()> {
        self.written.truncate(len as usize);
        Ok(())
    }
}

/// The chain used to advance even when the append or fsync failed, so every later entry pointed at
/// a line that was never durably written.
#[test]
fn chain_advances_only_after_a_durable_write() {
    let dir = temp_dir("durable");
    let mut w = Writer {
        file: Flaky {
            written: Vec::new(),
            fail_next: false,
        },
        len: 0,
        link: Link::genesis(),
        shown: dir.path().join("audit.log"),
        groups: 0,
    };
    let one = |n: u64| {
        vec![Queued {
            entry: json!({"n": n}),
            done: None,
        }]
    };
    assert!(w.write_group(one(1)));
    w.file.fail_next = true;
    let (done, heard) = crossbeam_channel::bounded(1);
    let failed = vec![Queued {
        entry: json!({"n": 2}),
        done: Some(done),
    }];
    assert!(!w.write_group(failed));
    assert!(!heard.recv().unwrap(), "the waiter hears it is not durable");
    assert_eq!(w.link.seq, 1, "a failed append does not advance the chain");
    assert!(w.write_group(one(3)));
    let path = dir.path().join("audit.log");
    std::fs::write(&path, &w.file.written).unwrap();
    assert_eq!(verify(&path).unwrap(), 2);
}

#[test]
fn audit_log_is_created_0600() {
    let dir = temp_dir("mode");
    let path = dir.path().join("audit.log");
    record(&path, 1, "x");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // An older, wider file is tightened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    record(&path, 1, "y");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

mod trail;
