//! The hash chain of `audit.log`: how an entry is sealed into a line, how a file is checked offline,
//! and what is done with a torn last line at start.
//!
//! A line is the entry's JSON (with `seq` and `prev`, the previous line's hash) followed by
//! `, "hash": "<SHA-256 of the JSON before it>"}` and a newline. An entry is acknowledged only once
//! its whole line and newline are written and fsynced, so bytes after the last newline were never
//! acknowledged: they are what a power cut mid-append leaves (a torn tail), not tampering.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::head::Head;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where the chain stands: the last sealed entry's `seq` and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub hash: String,
}

impl Link {
    pub fn genesis() -> Link {
        Link {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }

    /// Seals `entry` as the next line; returns the line and the link it leads to. The caller
    /// adopts that link only once the line is durably written.
    pub fn seal(&self, mut entry: Value) -> (String, Link) {
        let seq = self.seq + 1;
        entry["seq"] = json!(seq);
        entry["prev"] = json!(self.hash);
        let body = serde_json::to_string(&entry).expect("entry serializes");
        let hash = burrow_core::join::hex(&Sha256::digest(body.as_bytes()));
        let line = format!("{}, \"hash\": \"{hash}\"}}\n", &body[..body.len() - 1]);
        (line, Link { seq, hash })
    }
}

/// The first entry that fails verification.
#[derive(Debug, Clone)]
pub struct Bad {
    /// 1-based line number.
    pub line: usize,
    pub seq: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "line {} (seq {seq}): {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

/// What a pass over a log found.
#[derive(Debug)]
pub struct Scan {
    /// Entries that verify, up to the first bad one.
    pub good: usize,
    /// The first entry that does not verify (a torn tail is reported in `torn`, not here).
    pub bad: Option<Bad>,
    /// The last complete line carrying a `seq` and `hash`: where new entries continue the chain.
    pub resume: Link,
    /// Byte offset and length of a torn tail (bytes after the last newline).
    pub torn: Option<(u64, u64)>,
    /// The first entry's seq, if the file has one that verifies.
    pub first_seq: Option<u64>,
    /// The link of the entry asked for with `want`, if it is among the good ones.
    pub found: Option<Link>,
}

/// What the first line of a file must link to.
#[derive(Debug, Clone)]
pub enum Start {
    /// Seq 1, after the genesis hash.
    Genesis,
    /// Whatever the first line says it follows (a file that continues one not at hand).
    Claimed,
    /// The last entry of the file before.
    After(Link),
}

/// Reads the whole log once, checking each line against the one before.
pub fn scan(path: &Path, start: Start, want: Option<u64>) -> anyhow::Result<Scan> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut scan = Scan {
        good: 0,
        bad: None,
        resume: Link::genesis(),
        torn: None,
        first_seq: None,
        found: None,
    };
    let mut expected = match &start {
        Start::After(link) => {
            scan.resume = link.clone();
            Some(link.clone())
        }
        Start::Genesis => Some(Link::genesis()),
        Start::Claimed => None,
    };
    let (mut offset, mut n) = (0u64, 0usize);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            scan.torn = Some((offset, read as u64));
            break;
        }
        offset += read as u64;
        n += 1;
        let text = String::from_utf8_lossy(&buf[..buf.len() - 1]);
        let follows = expected.clone().unwrap_or_else(|| claimed_prev(&text));
        match check_line(&text, &follows) {
            Ok(link) => {
                scan.resume = link.clone();
                if scan.bad.is_none() {
                    scan.good = n;
                    scan.first_seq.get_or_insert(link.seq);
                    if want == Some(link.seq) {
                        scan.found = Some(link.clone());
                    }
                    expected = Some(link);
                }
            }
            Err((seq, reason)) => {
                if let Some(link) = any_link(&text) {
                    scan.resume = link;
                }
                if scan.bad.is_none() {
                    scan.bad = Some(Bad {
                        line: n,
                        seq,
                        reason,
                    });
                }
            }
        }
    }
    Ok(scan)
}

/// The link a line says it follows (its `seq` - 1 and `prev`), for a file read without the one
/// before it.
fn claimed_prev(line: &str) -> Link {
    let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    Link {
        seq: v["seq"].as_u64().unwrap_or(1).saturating_sub(1),
        hash: v["prev"].as_str().unwrap_or(GENESIS).to_string(),
    }
}

/// Checks one line against the link it must follow; returns its own link, or its seq (if readable)
/// and why it fails.
fn check_line(line: &str, expected: &Link) -> Result<Link, (Option<u64>, String)> {
    let mut entry: Value =
        serde_json::from_str(line).map_err(|e| (None, format!("not JSON ({e})")))?;
    let seq = entry["seq"].as_u64();
    let fail = |reason: &str| (seq, reason.to_string());
    let hash = entry
        .as_object_mut()
        .and_then(|o| o.remove("hash"))
        .and_then(|h| h.as_str().map(str::to_string))
        .ok_or_else(|| fail("no hash"))?;
    let body = line
        .rsplit_once(", \"hash\"")
        .map(|(b, _)| format!("{b}}}"))
        .ok_or_else(|| fail("not in canonical form"))?;
    if burrow_core::join::hex(&Sha256::digest(body.as_bytes())) != hash {
        return Err(fail("contents do not match its hash (edited?)"));
    }
    if entry["prev"] != json!(expected.hash) {
        return Err(fail(
            "chain broken: prev is not the hash of the entry before (removed or reordered?)",
        ));
    }
    if seq != Some(expected.seq + 1) {
        return Err(fail(&format!("expected seq {}", expected.seq + 1)));
    }
    Ok(Link {
        seq: expected.seq + 1,
        hash,
    })
}

/// The `seq` and `hash` a line claims, without checking them.
fn any_link(line: &str) -> Option<Link> {
    let v: Value = serde_json::from_str(line).ok()?;
    Some(Link {
        seq: v["seq"].as_u64()?,
        hash: v["hash"].as_str()?.to_string(),
    })
}

/// What a check of a whole trail found.
#[derive(Debug)]
pub struct Report {
    pub entries: usize,
    pub files: usize,
    /// The first entry's seq (above 1 when older files were removed by retention, or are not here).
    pub first_seq: u64,
    pub last: Link,
}

/// Checks one file offline: the number of entries, or the first bad one (a torn tail included).
/// A file whose first entry is not seq 1 is taken to continue an older one.
#[cfg(test)]
pub fn verify(path: &Path) -> anyhow::Result<usize> {
    verify_trail(&[path.to_path_buf()], None).map(|r| r.entries)
}

/// Checks the files of a trail in chain order (oldest first), each linking to the one before, and
/// with a head (from the store) that the chain reaches it: the entry at the head's seq has the
/// head's hash (a tail cut at a line boundary fails here), and nothing older than the head's
/// `first_seq` is missing.
pub fn verify_trail(files: &[PathBuf], head: Option<&Head>) -> anyhow::Result<Report> {
    if files.is_empty() {
        anyhow::bail!("no audit log files to check");
    }
    let mut report = Report {
        entries: 0,
        files: files.len(),
        first_seq: 0,
        last: Link::genesis(),
    };
    let mut found = None;
    for (i, path) in files.iter().enumerate() {
        let start = match i {
            0 => Start::Claimed,
            _ => Start::After(report.last.clone()),
        };
        let scan = scan(path, start, head.map(|h| h.seq))?;
        if let Some(bad) = scan.bad {
            anyhow::bail!("{}: {bad}", path.display());
        }
        if let Some((_, len)) = scan.torn {
            anyhow::bail!(
                "{}: line {}: torn ({len} bytes without a newline: an append cut short; \
                 `gateway serve` moves it aside at start)",
                path.display(),
                scan.good + 1
            );
        }
        if i == 0 {
            report.first_seq = scan.first_seq.unwrap_or(1);
        }
        report.entries += scan.good;
        report.last = scan.resume;
        found = found.or(scan.found);
    }
    let Some(head) = head else {
        return Ok(report);
    };
    let last = files.last().expect("not empty").display();
    if head.seq > report.last.seq {
        anyhow::bail!(
            "{last}: seq {} is missing: the chain head in the store is seq {} ({}), the log ends \
             at seq {} (its tail was cut off)",
            report.last.seq + 1,
            head.seq,
            head.hash,
            report.last.seq
        );
    }
    if head.first_seq < report.first_seq && head.seq >= report.first_seq {
        anyhow::bail!(
            "{}: seq {} is missing: the store says the oldest entry kept is seq {}, the log starts \
             at seq {} (older entries were removed)",
            files[0].display(),
            head.first_seq,
            head.first_seq,
            report.first_seq
        );
    }
    match found {
        Some(link) if link.hash == head.hash => Ok(report),
        Some(link) => anyhow::bail!(
            "{last}: seq {}: its hash {} is not the chain head's in the store ({}): the log was \
             replaced or rewritten",
            head.seq,
            link.hash,
            head.hash
        ),
        // The head's entry is older than what is kept (retention removed it): nothing to compare.
        None if head.seq < report.first_seq => Ok(report),
        None => anyhow::bail!(
            "{last}: seq {} (the chain head in the store) is missing",
            head.seq
        ),
    }
}

/// Copies the torn tail at `offset` to `<log>.torn-<unix time>` (durably), then cuts it off the log,
/// so no byte is lost and new lines start on a line of their own. Returns where the tail went.
pub fn set_torn_tail_aside(path: &Path, offset: u64) -> anyhow::Result<PathBuf> {
    let mut tail = Vec::new();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
    file.read_to_end(&mut tail)
        .with_context(|| format!("reading the torn tail of {}", path.display()))?;
    let now = crate::registry::now();
    let mut aside = PathBuf::from(format!("{}.torn-{now}", path.display()));
    for n in 1.. {
        if !aside.exists() {
            break;
        }
        aside = PathBuf::from(format!("{}.torn-{now}-{n}", path.display()));
    }
    burrow_core::atomic_file::write(&aside, &tail, 0o600)?;
    file.set_len(offset)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cutting the torn tail off {}", path.display()))?;
    Ok(aside)
}
