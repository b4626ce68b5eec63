//! `gateway cp`: a file to the nodes of a target (`PUT /api/v1/nodes/{id}/files`, or
//! `PUT /api/v1/files?target=` for many), or from one node (`GET /api/v1/nodes/{id}/files`),
//! streamed both ways in fixed-size pieces (1 GB in bounded memory). The SHA-256 of what was sent
//! is computed on the way and checked against each node's; a download lands in a temp file next to
//! its destination, renamed into place once complete and synced, so an interrupted one leaves
//! nothing.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::exec::check;
use super::render::Outcome;
use super::target::{is_node_id, parse_remote, query, segment, Remote};
use super::{exit_code, json_answer, Client, Usage};
use crate::cli::CpArgs;

/// Bytes read and sent at a time.
const PIECE: usize = 256 * 1024;

/// Runs `gateway cp`: 0 if every node has the file (or it came), 1 if not, 2 for usage errors.
pub fn run(data_dir: &Path, args: CpArgs) -> u8 {
    exit_code(cp(data_dir, args), 1)
}

/// Which way a copy goes.
#[derive(Debug, PartialEq, Eq)]
enum Direction<'a> {
    Up { local: &'a str, remote: Remote<'a> },
    Down { remote: Remote<'a>, local: &'a str },
}

fn direction<'a>(source: &'a str, dest: &'a str) -> Result<Direction<'a>, Usage> {
    match (parse_remote(source), parse_remote(dest)) {
        (None, Some(remote)) => Ok(Direction::Up {
            local: source,
            remote,
        }),
        (Some(remote), None) if is_node_id(remote.target) => Ok(Direction::Down {
            remote,
            local: dest,
        }),
        (Some(remote), None) => Err(Usage(format!(
            "a download comes from one node (NODE:/path), not from {:?}",
            remote.target
        ))),
        (Some(_), Some(_)) => Err(Usage(
            "both sides are on nodes: copy to a local file first, then push it".into(),
        )),
        (None, None) => {
            let relative = [source, dest]
                .into_iter()
                .find(|s| *s != "-" && s.split('/').next().is_some_and(|head| head.contains(':')));
            Err(Usage(match relative {
                Some(spec) => {
                    format!("{spec:?}: the path on the node must be absolute (TARGET:/path)")
                }
                None => "neither side is on a node: write TARGET:/path for one of them".into(),
            }))
        }
    }
}

fn cp(data_dir: &Path, args: CpArgs) -> anyhow::Result<u8> {
    match direction(&args.source, &args.dest)? {
        Direction::Up { local, remote } => {
            let client = Client::open(data_dir)?;
            upload(&client, local, &remote, args.mode)
        }
        Direction::Down { remote, local } => {
            if args.mode.is_some() {
                return Err(Usage("--mode is for uploads".into()).into());
            }
            let client = Client::open(data_dir)?;
            download(&client, &remote, local)
        }
    }
}

/// The remote path of an upload: a directory (`/opt/`) gets the local file's name.
fn upload_path(remote: &str, local: &str) -> Result<String, Usage> {
    if !remote.ends_with('/') {
        return Ok(remote.to_string());
    }
    match Path::new(local).file_name().and_then(|n| n.to_str()) {
        Some(name) if local != "-" => Ok(format!("{remote}{name}")),
        _ => Err(Usage(format!(
            "{remote} is a directory: name the file on the node (TARGET:{remote}NAME)"
        ))),
    }
}

/// The URL of an upload: one node's route for a node id, the target route for the rest.
fn upload_url(target: &str, path: &str, mode: Option<u32>) -> String {
    let mode = mode.map(|m| format!("{m:04o}"));
    if is_node_id(target) {
        let q = query(&[("path", Some(path)), ("mode", mode.as_deref())]);
        format!("/api/v1/nodes/{}/files{q}", segment(target))
    } else {
        let q = query(&[
            ("target", Some(target)),
            ("path", Some(path)),
            ("mode", mode.as_deref()),
        ]);
        format!("/api/v1/files{q}")
    }
}

fn upload(client: &Client, local: &str, remote: &Remote, mode: Option<u32>) -> anyhow::Result<u8> {
    let path = upload_path(remote.path, local)?;
    let (mut input, length, mode): (Box<dyn Read>, Option<u64>, Option<u32>) = if local == "-" {
        (Box::new(std::io::stdin().lock()), None, mode)
    } else {
        let file = File::open(local).with_context(|| format!("opening {local}"))?;
        let meta = file
            .metadata()
            .with_context(|| format!("reading {local}"))?;
        if !meta.is_file() {
            return Err(Usage(format!("{local} is not a regular file: cp copies one file")).into());
        }
        let mode = mode.or(Some(meta.mode() & 0o7777));
        // What the file holds now; bytes appended while it is sent are not part of it.
        (Box::new(file.take(meta.len())), Some(meta.len()), mode)
    };
    let mut sending = client.upload("PUT", &upload_url(remote.target, &path, mode), length)?;
    let mut hash = Sha256::new();
    let (mut sent, mut cut) = (0u64, false);
    let mut buf = vec![0u8; PIECE];
    while !cut {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {local}")),
        };
        hash.update(&buf[..n]);
        // A failed write or an early answer is the gateway refusing: `finish` returns why.
        cut = sending.write_all(&buf[..n]).is_err() || sending.answered();
        sent += n as u64;
    }
    if !cut && length.is_some_and(|l| sent < l) {
        // Dropping the connection mid-body: the nodes keep nothing of it.
        bail!(
            "{local} shrank while it was sent ({sent} of {} bytes): nothing was written",
            length.unwrap_or(0)
        );
    }
    let answer = json_answer(sending.finish()?)?;
    let sha = hex(&hash.finalize());
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let ok = report_upload(&answer, &path, sent, &sha, &mut out, &mut err)?;
    Ok(u8::from(!ok))
}

/// One line per node: bytes and SHA-256 on stdout, or why not on stderr. True if every node has
/// exactly what was sent.
fn report_upload(
    answer: &Value,
    path: &str,
    sent: u64,
    sha: &str,
    out: &mut impl Write,
    err: &mut impl Write,
) -> std::io::Result<bool> {
    // One node's route may answer with its result alone rather than a list.
    let results: Vec<&Value> = match answer["results"].as_array() {
        Some(results) => results.iter().collect(),
        None => vec![answer],
    };
    let mut all = !results.is_empty();
    for r in results {
        let node = r["node"].as_str().unwrap_or("?");
        let outcome = Outcome::from_json(r);
        if outcome.state != "succeeded" {
            writeln!(err, "{node}:{path}: {}", outcome.describe())?;
            all = false;
            continue;
        }
        let (bytes, their_sha) = (r["bytes"].as_u64(), r["sha256"].as_str().unwrap_or(""));
        if bytes != Some(sent) || !their_sha.eq_ignore_ascii_case(sha) {
            writeln!(
                err,
                "{node}:{path}: the node has {} bytes with sha256 {their_sha}, but {sent} bytes \
                 with sha256 {sha} were sent",
                bytes.map_or("?".into(), |b| b.to_string())
            )?;
            all = false;
            continue;
        }
        writeln!(out, "{node}:{path}: {sent} bytes, sha256 {sha}")?;
    }
    if !all {
        if let Some(summary) = answer["summary"].as_object() {
            writeln!(
                err,
                "{}",
                super::render::summary_line(&Value::Object(summary.clone()))
            )?;
        }
    }
    Ok(all)
}

fn download(client: &Client, remote: &Remote, local: &str) -> anyhow::Result<u8> {
    if remote.path.ends_with('/') {
        return Err(Usage(format!(
            "{} is a directory: cp copies one file",
            remote.path
        ))
        .into());
    }
    let q = query(&[("path", Some(remote.path))]);
    let url = format!("/api/v1/nodes/{}/files{q}", segment(remote.target));
    let response = check(client.send("GET", &url, "application/octet-stream", None)?)?;
    let length = response
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok());
    let job = response.header("x-burrow-job").unwrap_or("?").to_string();
    let mut body = response.into_reader();
    let what = format!("{}:{}", remote.target, remote.path);
    let got = if local == "-" {
        let mut out = std::io::stdout().lock();
        copy_hashing(&mut body, &mut out, &what, length)
            .and_then(|got| out.flush().map(|()| got).map_err(Into::into))
    } else {
        let dest = destination(Path::new(local), remote.path);
        save(&mut body, &dest, &what, length)
    };
    let (bytes, sha) = got.with_context(|| format!("job {job}"))?;
    let line = format!("{what}: {bytes} bytes, sha256 {sha}");
    if local == "-" {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(0)
}

/// A local directory receives the file under the remote name.
fn destination(local: &Path, remote_path: &str) -> PathBuf {
    let name = Path::new(remote_path).file_name();
    match name {
        Some(name) if local.is_dir() => local.join(name),
        _ => local.to_path_buf(),
    }
}

/// Writes `body` (`length` bytes, if known) to a temp file next to `dest`, syncs it and renames it
/// over `dest`; on any failure the temp file is removed and `dest` left as it was.
fn save(
    body: &mut impl Read,
    dest: &Path,
    what: &str,
    length: Option<u64>,
) -> anyhow::Result<(u64, String)> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .with_context(|| format!("{} names no file", dest.display()))?;
    let temp = dir.join(format!(
        ".{}.gateway-cp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    let result = copy_hashing(body, &mut file, what, length).and_then(|got| {
        file.sync_all()
            .with_context(|| format!("syncing {}", temp.display()))?;
        std::fs::rename(&temp, dest)
            .with_context(|| format!("renaming {} to {}", temp.display(), dest.display()))?;
        Ok(got)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Copies in pieces, hashing on the way: (bytes, sha256 hex). Fewer bytes than `length` (a
/// transfer cut short) is an error.
fn copy_hashing(
    from: &mut impl Read,
    to: &mut impl Write,
    what: &str,
    length: Option<u64>,
) -> anyhow::Result<(u64, String)> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("receiving {what}")),
        };
        hash.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    if let Some(length) = length.filter(|l| *l != total) {
        bail!("{what}: the transfer stopped after {total} of {length} bytes");
    }
    Ok((total, hex(&hash.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
