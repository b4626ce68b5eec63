//! Ctrl-C while the CLI follows a job. A client going away never cancels a job (issue 7), so the
//! CLI does it explicitly, as ssh's Ctrl-C ends the remote command: the first SIGINT sends
//! `POST /api/v1/jobs/{id}/cancel` and the CLI keeps printing until the job's summary; a second
//! one exits at once (130) and leaves the job to the gateway. `jobs attach` only detaches.
//!
//! A named thread waits for SIGINT (signal-hook's iterator); it is woken for shutdown by closing
//! the iterator's handle, and joined on drop. The cancel request goes out on a thread of its own,
//! so a gateway slow to answer it never keeps the second Ctrl-C from acting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;
use signal_hook::consts::SIGINT;
use signal_hook::iterator::{Handle, Signals};

use super::render::INTERRUPTED;
use super::target::segment;
use super::{json_answer, Client};

/// What Ctrl-C does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Cancel the job (exec), then keep printing.
    Cancel,
    /// Stop following and leave the job running (jobs attach).
    Detach,
}

#[derive(Default)]
struct State {
    job: Option<String>,
    presses: u32,
    cancel_sent: bool,
    /// The thread sending the cancel, joined on drop.
    canceller: Option<JoinHandle<()>>,
}

/// Ctrl-C handling for as long as it lives.
pub struct CtrlC {
    state: Arc<Mutex<State>>,
    socket: PathBuf,
    mode: Mode,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl CtrlC {
    /// Takes over SIGINT.
    pub fn install(client: &Client, mode: Mode) -> anyhow::Result<CtrlC> {
        let mut signals = Signals::new([SIGINT]).context("installing the Ctrl-C handler")?;
        let handle = signals.handle();
        let state = Arc::new(Mutex::new(State::default()));
        let socket = client.socket.clone();
        let (shared, socket_for_thread) = (Arc::clone(&state), socket.clone());
        let thread = std::thread::Builder::new()
            .name("ctrl-c".into())
            .spawn(move || {
                // Ends when `handle.close()` is called (drop).
                for _ in signals.forever() {
                    pressed(&shared, &socket_for_thread, mode);
                }
            })
            .context("starting the Ctrl-C thread")?;
        Ok(CtrlC {
            state,
            socket,
            mode,
            handle,
            thread: Some(thread),
        })
    }

    /// The job is known: from now on Ctrl-C acts on it (and a Ctrl-C pressed before acts now).
    pub fn job(&self, id: &str) {
        let cancel_now = {
            let mut state = lock(&self.state);
            state.job = Some(id.to_string());
            self.mode == Mode::Cancel && state.presses > 0 && !state.cancel_sent
        };
        if cancel_now {
            cancel(&self.state, &self.socket);
        }
    }

    /// Whether Ctrl-C cancelled the job (its exit code is then 130).
    pub fn cancelled(&self) -> bool {
        lock(&self.state).cancel_sent
    }
}

impl Drop for CtrlC {
    fn drop(&mut self) {
        self.handle.close();
        // The signal thread first: it may still start the canceller.
        let signals = self.thread.take().map(JoinHandle::join);
        let canceller = lock(&self.state).canceller.take().map(JoinHandle::join);
        if matches!(signals, Some(Err(_))) || matches!(canceller, Some(Err(_))) {
            eprintln!("gateway: a Ctrl-C thread panicked");
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pressed(state: &Arc<Mutex<State>>, socket: &Path, mode: Mode) {
    let (presses, job) = {
        let mut s = lock(state);
        s.presses += 1;
        (s.presses, s.job.clone())
    };
    let later = |id: &str| {
        format!("`gateway jobs attach {id}` follows it, `gateway jobs cancel {id}` stops it")
    };
    match (mode, presses, job) {
        (Mode::Detach, _, job) => {
            if let Some(id) = job {
                eprintln!("\ngateway: detached; job {id} goes on: {}", later(&id));
            }
            std::process::exit(INTERRUPTED.into());
        }
        (Mode::Cancel, 1, Some(_)) => cancel(state, socket),
        (Mode::Cancel, 1, None) => {
            eprintln!(
                "\ngateway: cancelling the job once the gateway names it (Ctrl-C again: quit)"
            )
        }
        (Mode::Cancel, _, job) => {
            match job {
                Some(id) => eprintln!("gateway: not waiting for job {id}: {}", later(&id)),
                None => eprintln!("gateway: quit before the gateway named the job"),
            }
            std::process::exit(INTERRUPTED.into());
        }
    }
}

/// Sends the cancel (once, on its own thread) and says so.
fn cancel(state: &Arc<Mutex<State>>, socket: &Path) {
    let mut s = lock(state);
    if s.cancel_sent {
        return;
    }
    s.cancel_sent = true;
    let id = s.job.clone().unwrap_or_default();
    eprintln!("\ngateway: cancelling job {id} (Ctrl-C again: stop waiting)");
    let client = Client {
        socket: socket.to_path_buf(),
    };
    let spawned = std::thread::Builder::new()
        .name("cancel".into())
        .spawn(move || {
            let path = format!("/api/v1/jobs/{}/cancel", segment(&id));
            if let Err(e) = client
                .send("POST", &path, super::JSON, None)
                .and_then(json_answer)
            {
                eprintln!("gateway: could not cancel job {id}: {e:#}");
            }
        });
    match spawned {
        Ok(thread) => s.canceller = Some(thread),
        Err(e) => eprintln!("gateway: could not cancel the job: {e}"),
    }
}
