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
}

/// Reads the whole log once, checking each line against the one before.
pub fn scan(path: &Path) -> anyhow::Result<Scan> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut scan = Scan {
        good: 0,
        bad: None,
        resume: Link::genesis(),
        torn: None,
    };
    let mut expected = Link::genesis();
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
        match check_line(&text, &expected) {
            Ok(link) => {
                scan.resume = link.clone();
                if scan.bad.is_none() {
                    scan.good = n;
                    expected = link;
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

/// Checks a log offline: the number of entries, or the first bad one (a torn tail included).
pub fn verify(path: &Path) -> anyhow::Result<usize> {
    let scan = scan(path)?;
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
    Ok(scan.good)
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
