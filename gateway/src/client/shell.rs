//! `gateway shell NODE [COMMAND…]`: an interactive command on a node's pseudo-terminal, like
//! `ssh -t`. The job is made async with `"tty"` (the local terminal's size and `TERM`); keystrokes
//! go up `PUT /jobs/{id}/stdin` as they are typed (the stdin pump of exec.rs, one flushed chunk per
//! read), output comes down `/jobs/{id}/stream`. The local terminal is in raw mode meanwhile (so
//! Ctrl-C is the byte 0x03 and reaches the remote side), restored on every way out: the guard's
//! drop (return, error, panic) and the SIGTERM/SIGHUP thread. SIGWINCH becomes
//! `POST /jobs/{id}/resize`. With stdin not a terminal there is no pty and no raw mode: the
//! command runs as `gateway exec` would run it, stdin streamed (as `ssh` without `-t`).

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use rustix::termios::{tcgetattr, tcgetwinsize, tcsetattr, OptionalActions, Termios};
use serde_json::{json, Value};
use signal_hook::consts::{SIGHUP, SIGTERM, SIGWINCH};
use signal_hook::iterator::Signals;

use super::exec::{follow, quiet_broken_pipe, settle_missing, StdinPump};
use super::interrupt::{CtrlC, Mode};
use super::render::{Printer, DID_NOT_RUN};
use super::target::segment;
use super::{json_answer, Client, JSON, NDJSON};
use crate::cli::ShellArgs;

/// The command when none is given: the node user's login shell.
pub const LOGIN_SHELL: &str = r#"exec "${SHELL:-/bin/sh}" -l"#;
/// A shell's default time limit: the API's longest (a week).
const SHELL_TIMEOUT_S: u64 = 7 * 24 * 3600;

/// Runs `gateway shell` and returns the exit code (the remote command's; 255 if it did not run).
pub fn run(data_dir: &Path, args: ShellArgs) -> u8 {
    quiet_broken_pipe(shell(data_dir, args), DID_NOT_RUN)
}

/// The body of `POST /api/v1/exec`; `tty`: the local terminal's rows, columns and `TERM`.
pub fn body(args: &ShellArgs, tty: Option<(u16, u16, Option<String>)>) -> Value {
    let command = if args.command.is_empty() {
        LOGIN_SHELL.to_string()
    } else {
        args.command.join(" ")
    };
    let mut body = json!({
        "target": args.node,
        "command": command,
        "timeout_s": args.timeout.unwrap_or(SHELL_TIMEOUT_S),
        "async": true,
        "stdin_stream": true,
    });
    if let Some((rows, cols, term)) = tty {
        body["tty"] = json!({"rows": rows, "cols": cols, "term": term});
    }
    body
}

fn shell(data_dir: &Path, args: ShellArgs) -> anyhow::Result<u8> {
    let client = Client::open(data_dir)?;
    let stdin = std::io::stdin();
    let tty = rustix::termios::isatty(&stdin).then(|| {
        let (rows, cols) = local_size();
        let term = std::env::var("TERM").ok().filter(|t| !t.is_empty());
        (rows, cols, term)
    });
    let answer = json_answer(client.send(
        "POST",
        "/api/v1/exec",
        JSON,
        Some(&body(&args, tty.clone())),
    )?)?;
    let id = answer["job_id"]
        .as_str()
        .context("the gateway named no job")?
        .to_string();
    let mut printer = Printer::new(std::io::stdout().lock(), std::io::stderr(), false);
    printer.expect(&id, vec![args.node.clone()]);
    // Without a terminal, Ctrl-C cancels the job as with `gateway exec`; in raw mode it is a byte.
    let ctrl_c = CtrlC::install(&client, Mode::Cancel)?;
    ctrl_c.job(&id);
    let raw = match tty {
        Some(_) => Some(RawMode::enter(&client, &id)?),
        None => None,
    };
    let pump = StdinPump::start(&client, &id)?;
    let stream = format!("/api/v1/jobs/{}/stream", segment(&id));
    let followed = client
        .send("GET", &stream, NDJSON, None)
        .and_then(|response| follow(response, &mut printer, Some(&ctrl_c)));
    let pumped = pump.finish();
    drop(raw);
    if let Err(e) = pumped {
        eprintln!("gateway: stdin: {e:#}");
    }
    followed?;
    settle_missing(&client, &mut printer)?;
    printer.finish(ctrl_c.cancelled())
}

/// The local terminal's size (rows, columns); 24×80 if it cannot be read.
fn local_size() -> (u16, u16) {
    let ask = |fd: std::os::fd::BorrowedFd<'_>| {
        tcgetwinsize(fd)
            .ok()
            .filter(|w| w.ws_row > 0 && w.ws_col > 0)
    };
    ask(std::io::stdin().as_fd())
        .or_else(|| ask(std::io::stdout().as_fd()))
        .map_or((24, 80), |w| (w.ws_row, w.ws_col))
}

/// The local terminal in raw mode while it lives; the signal thread restores it on SIGTERM and
/// SIGHUP (then cancels the job and exits 128+N) and sends the size on SIGWINCH.
struct RawMode {
    saved: Arc<Mutex<Option<Termios>>>,
    signals: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawMode {
    fn enter(client: &Client, job: &str) -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        let mut signals =
            Signals::new([SIGWINCH, SIGTERM, SIGHUP]).context("installing signal handlers")?;
        let handle = signals.handle();
        tcsetattr(&stdin, OptionalActions::Now, &raw).context("setting raw mode")?;
        let saved = Arc::new(Mutex::new(Some(saved)));
        let (shared, socket, job) = (Arc::clone(&saved), client.socket.clone(), job.to_string());
        let thread = std::thread::Builder::new()
            .name("shell-signals".into())
            .spawn(move || {
                let client = Client { socket };
                let path = |what: &str| format!("/api/v1/jobs/{}/{what}", segment(&job));
                for signal in signals.forever() {
                    if signal == SIGWINCH {
                        let (rows, cols) = local_size();
                        let body = json!({"rows": rows, "cols": cols});
                        if let Err(e) = client.call("POST", &path("resize"), Some(body)) {
                            log::debug!("resizing the remote terminal: {e:#}");
                        }
                        continue;
                    }
                    restore(&shared);
                    let _ = client.call("POST", &path("cancel"), Some(json!({})));
                    std::process::exit(128 + signal);
                }
            })
            .context("starting the signal thread")?;
        Ok(RawMode {
            saved,
            signals: handle,
            thread: Some(thread),
        })
    }
}

/// Puts the terminal back as it was (once).
fn restore(saved: &Mutex<Option<Termios>>) {
    if let Some(saved) = saved.lock().unwrap_or_else(PoisonError::into_inner).take() {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &saved);
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore(&self.saved);
        self.signals.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
