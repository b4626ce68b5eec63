//! The files of one audit trail: `audit.log` (current) and `audit.log.1`, `audit.log.2`, …
//! (rotated, higher is older), and reading their entries in chain order, oldest first.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

/// `<log>.<n>`.
pub fn nth(log: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n}", log.display()))
}

/// The rotated files of `log` that exist, as `(n, path)` by `n` ascending (newest first).
pub fn rotated(log: &Path) -> anyhow::Result<Vec<(usize, PathBuf)>> {
    let dir = log.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = log
        .file_name()
        .context("the audit log path has no file name")?
        .to_string_lossy()
        .to_string();
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().to_string();
        let n = file
            .strip_prefix(&name)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0);
        if let Some(n) = n {
            out.push((n, nth(log, n)));
        }
    }
    out.sort();
    Ok(out)
}

/// Every file of the trail in chain order: the oldest rotated one first, `log` itself last (if it
/// exists).
pub fn in_order(log: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated(log)?.into_iter().rev().map(|(_, p)| p).collect();
    if log.exists() {
        files.push(log.to_path_buf());
    }
    Ok(files)
}

/// The seq of the first entry of the trail, if it has one.
pub fn first_seq(log: &Path) -> anyhow::Result<Option<u64>> {
    for file in in_order(log)? {
        let mut first = None;
        each_line(&file, |_, line| {
            first = serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["seq"].as_u64());
            false
        })?;
        if first.is_some() {
            return Ok(first);
        }
    }
    Ok(None)
}

/// Calls `f(line number, line)` for each complete line of `file` (a torn tail, bytes after the last
/// newline, is not a line) until it returns false.
pub fn each_line(file: &Path, mut f: impl FnMut(usize, &str) -> bool) -> anyhow::Result<()> {
    let open = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    each_line_of(open, file, &mut f)
}

/// [`each_line`] on an open file (a rotation may have renamed it since it was opened).
pub fn each_line_of(
    open: File,
    shown: &Path,
    f: &mut dyn FnMut(usize, &str) -> bool,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(open);
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}", shown.display()))?;
        if read == 0 || buf.last() != Some(&b'\n') {
            return Ok(());
        }
        n += 1;
        if !f(n, &String::from_utf8_lossy(&buf[..buf.len() - 1])) {
            return Ok(());
        }
    }
}
