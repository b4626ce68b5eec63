//! File transfers (protocol doc, "Files"): a request opened with `Open{stream: FIRST_OPENED, purpose:
//! File}` and JSON [`FileParams`], served on its own thread (`file-<id>`).
//!
//! - `put`: the bytes are written to `<dir>/.<name>.burrow-tmp-<random>` (created with the mode,
//!   default 0o644) as they arrive, and credit goes back to the gateway for every chunk written, so
//!   at most [`INITIAL_WINDOW`] bytes wait in memory whatever the file's size. At `Eof` the file is
//!   fsynced, renamed over the target and the directory fsynced, then `Exit` (exit code 0). An
//!   announced `size` that does not match, a write error (disk full…), `Cancel`, `Reset` or the loss
//!   of the connection removes the temp file: an interrupted transfer leaves nothing.
//! - `get`: a regular file is sent in `Data` chunks (at most [`MAX_CHUNK`]) within the credit the
//!   gateway grants (starting at [`INITIAL_WINDOW`]), then `Eof`, then `Exit`.
//!
//! Transfers take a slot of the node's concurrency limit (`max_jobs`) while they run. They are not
//! jobs of the ledger and do not outlive their connection.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use burrow_core::protocol::{stream, ExitStatus, FileParams, Message, INITIAL_WINDOW, MAX_CHUNK};

use crate::exec::describe;
use crate::job::Sink;

/// The stream a transfer's bytes travel on.
pub const STREAM: u32 = stream::FIRST_OPENED;

/// What the connection tells a running transfer.
pub struct Transfer {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// `put`: chunks received, not yet written.
    incoming: VecDeque<Vec<u8>>,
    /// `put`: bytes received and not yet credited back.
    uncredited: usize,
    /// `put`: the gateway sent `Eof`.
    eof: bool,
    /// `get`: bytes the agent may still send.
    credit: u64,
    /// Stop now: why (`None` inside: the connection is gone, send nothing).
    abort: Option<Option<String>>,
}

impl Transfer {
    /// A transfer with the initial credit.
    pub fn new() -> Transfer {
        Transfer {
            state: Mutex::new(State {
                credit: INITIAL_WINDOW.into(),
                ..State::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let out = change(&mut self.lock());
        self.changed.notify_all();
        out
    }

    fn wait(&self, mut done: impl FnMut(&State) -> bool) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        while !done(&state) {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state
    }

    /// `Data` from the gateway (`put`). `Err`: beyond the credit it holds.
    pub fn data(&self, data: Vec<u8>) -> Result<(), String> {
        self.update(|s| {
            if s.eof || s.abort.is_some() {
                return Ok(());
            }
            if s.uncredited + data.len() > INITIAL_WINDOW as usize {
                return Err(format!(
                    "the gateway sent {} bytes of a file beyond its credit",
                    s.uncredited + data.len() - INITIAL_WINDOW as usize
                ));
            }
            s.uncredited += data.len();
            s.incoming.push_back(data);
            Ok(())
        })
    }

    /// `Eof` from the gateway (`put`: the file is complete).
    pub fn eof(&self) {
        self.update(|s| s.eof = true);
    }

    /// `Credit` from the gateway (`get`).
    pub fn add_credit(&self, bytes: u32) {
        self.update(|s| s.credit = s.credit.saturating_add(bytes.into()));
    }

    /// `Cancel` or `Reset` (`Some(why)`: answered with `Failed`), or the connection is gone (`None`).
    pub fn abort(&self, why: Option<String>) {
        self.update(|s| {
            s.abort.get_or_insert(why);
        });
    }
}

/// Serves transfer request `id` with `params` (the JSON of the `Open`); returns its last frame, or
/// `None` when the connection is gone.
pub fn serve(id: u32, params: &str, transfer: &Transfer, sink: &Sink) -> Option<Message> {
    let started = Instant::now();
    let result = match serde_json::from_str::<FileParams>(params) {
        Err(e) => Err(Some(format!("bad file transfer params: {e}"))),
        Ok(p) if p.op == "put" || p.op == "get" => match policy_check(&p) {
            Err(refused) => Err(Some(refused)),
            Ok(()) if p.op == "put" => put(id, &p, transfer, sink),
            Ok(()) => get(id, &p, transfer, sink),
        },
        Ok(p) => Err(Some(format!(
            "unknown file operation {:?} (put or get)",
            p.op
        ))),
    };
    match result {
        Ok(()) => Some(Message::Exit {
            id,
            status: ExitStatus {
                exit_code: Some(0),
                signal: None,
                timed_out: false,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            },
        }),
        Err(Some(message)) => Some(Message::Failed { id, message }),
        Err(None) => None,
    }
}

/// The owner's `file_dirs` ([`crate::policy`]): `Err` with the refusal's message (logged).
fn policy_check(p: &FileParams) -> Result<(), String> {
    let path = checked_path(&p.path)?;
    crate::policy::current()
        .check_file(&p.op, path)
        .map_err(|refused| {
            crate::policy::record(serde_json::json!({"op": p.op, "path": p.path}), &refused);
            refused.message()
        })
}

/// `Err(None)`: the connection is gone; `Err(Some(why))`: the transfer failed.
type Outcome = Result<(), Option<String>>;

fn checked_path(path: &str) -> Result<&Path, String> {
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("{path}: the path must be absolute"));
    }
    Ok(p)
}

fn put(id: u32, params: &FileParams, transfer: &Transfer, sink: &Sink) -> Outcome {
    let path = checked_path(&params.path)?;
    let shown = &params.path;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Some(format!("{shown}: not a file path")));
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Some(format!("{}: not a directory", dir.display()))),
        Err(e) => return Err(Some(format!("{}: {}", dir.display(), describe(&e)))),
    }
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(Some(format!("{shown} is a directory")));
    }
    if let Some(size) = params.size {
        if let Ok(fs) = rustix::fs::statvfs(dir) {
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            if size > free {
                return Err(Some(format!(
                    "{shown}: {size} bytes do not fit, {free} bytes free on its file system"
                )));
            }
        }
    }
    let mode = params.mode.unwrap_or(0o644) & 0o7777;
    let tmp = dir.join(format!(
        ".{}.burrow-tmp-{}",
        name.to_string_lossy(),
        burrow_core::join::hex(&burrow_core::random_bytes::<6>())
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("creating {}: {}", tmp.display(), describe(&e)))?;
    // Removes the temp file on every way out but the rename.
    let mut guard = TempFile(Some(tmp));
    // `mode` was filtered by the umask at creation; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("setting the mode of {shown}: {}", describe(&e)))?;
    let mut received: u64 = 0;
    loop {
        let chunk = {
            let mut state = transfer.wait(|s| !s.incoming.is_empty() || s.eof || s.abort.is_some());
            if let Some(why) = &state.abort {
                return Err(why.clone());
            }
            match state.incoming.pop_front() {
                Some(chunk) => chunk,
                None => break,
            }
        };
        received += chunk.len() as u64;
        if params.size.is_some_and(|size| received > size) {
            return Err(Some(format!(
                "{shown}: more than the announced {} bytes arrived",
                params.size.unwrap_or(0)
            )));
        }
        file.write_all(&chunk)
            .map_err(|e| format!("writing {shown}: {}", describe(&e)))?;
        transfer.update(|s| s.uncredited -= chunk.len());
        if !sink(Message::Credit {
            id,
            stream: STREAM,
            bytes: chunk.len() as u32,
        }) {
            return Err(None);
        }
    }
    if let Some(size) = params.size.filter(|&size| size != received) {
        return Err(Some(format!(
            "{shown}: {received} bytes arrived, {size} were announced"
        )));
    }
    file.sync_all()
        .map_err(|e| format!("writing {shown}: {}", describe(&e)))?;
    drop(file);
    let tmp = guard.0.take().unwrap_or_default();
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Some(format!("renaming into {shown}: {}", describe(&e))));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing {}: {}", dir.display(), describe(&e)))?;
    log::info!("job {}: wrote {shown} ({received} bytes)", params.job);
    Ok(())
}

struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn get(id: u32, params: &FileParams, transfer: &Transfer, sink: &Sink) -> Outcome {
    let path = checked_path(&params.path)?;
    let shown = &params.path;
    // Non-blocking open: a FIFO at the path must not pin this thread until a writer comes (reads of
    // a regular file ignore the flag).
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Some(format!("{shown} not found")))
        }
        Err(e) => return Err(Some(format!("{shown}: {}", describe(&e)))),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("{shown}: {}", describe(&e)))?;
    if meta.is_dir() {
        return Err(Some(format!("{shown} is a directory")));
    }
    if !meta.is_file() {
        return Err(Some(format!("{shown} is not a regular file")));
    }
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut sent: u64 = 0;
    loop {
        let allowed = {
            let mut state = transfer.wait(|s| s.credit > 0 || s.abort.is_some());
            if let Some(why) = &state.abort {
                return Err(why.clone());
            }
            let n = state.credit.min(MAX_CHUNK as u64);
            state.credit -= n;
            n as usize
        };
        let n = loop {
            match file.read(&mut buf[..allowed]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Some(format!("reading {shown}: {}", describe(&e)))),
            }
        };
        if n == 0 {
            break;
        }
        // Credit not used now stays for the next chunk.
        transfer.update(|s| s.credit += (allowed - n) as u64);
        sent += n as u64;
        if !sink(Message::Data {
            id,
            stream: STREAM,
            data: buf[..n].to_vec(),
        }) {
            return Err(None);
        }
    }
    if !sink(Message::Eof { id, stream: STREAM }) {
        return Err(None);
    }
    log::info!("job {}: sent {shown} ({sent} bytes)", params.job);
    Ok(())
}

#[cfg(test)]
mod tests;
