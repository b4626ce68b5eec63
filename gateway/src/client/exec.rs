//! `gateway exec TARGET COMMAND…`: runs a command on the nodes of a target through
//! `POST /api/v1/exec` and prints it like ssh (render.rs). Piped stdin streams to a single node's
//! command (`"stdin_stream"`: the job is created async, stdin goes up `PUT /jobs/{id}/stdin` on its
//! own thread while this one follows `/jobs/{id}/stream`), or goes whole in the body (`stdin_b64`,
//! up to 8 MiB) to many. Ctrl-C cancels the job (interrupt.rs).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::interrupt::{CtrlC, Mode};
use super::render::{Printer, Step, DID_NOT_RUN};
use super::target::{is_node_id, segment};
use super::{api_error, exit_code, json_answer, ApiError, Client, Usage, JSON, NDJSON};
use crate::cli::{Batch, ExecArgs};
use crate::unix_http::{Response, Upload};

/// Piped stdin sent whole to several nodes: at most this much.
pub const MAX_WHOLE_STDIN: usize = 8 << 20;
/// Longest NDJSON event accepted from the gateway (an output event carries one frame's bytes).
const MAX_EVENT: u64 = 16 << 20;
/// The exit code when our stdout is a closed pipe (`| head`): the shell's for SIGPIPE.
const BROKEN_PIPE: u8 = 128 + 13;

/// What happens to the CLI's stdin.
#[derive(Debug, PartialEq, Eq)]
pub enum Stdin {
    /// Nothing is sent (a terminal, /dev/null, `-n`): the command reads EOF.
    None,
    /// Streamed while the command runs (one node).
    Stream,
    /// Read whole and sent in the request (several nodes, or `--async`).
    Whole(Vec<u8>),
}

/// Runs `gateway exec` and returns the exit code (see `cli::EXEC_HELP`): errors before any node
/// ran are 255, like ssh's.
pub fn run(data_dir: &Path, args: ExecArgs) -> u8 {
    quiet_broken_pipe(exec(data_dir, args), DID_NOT_RUN)
}

/// [`exit_code`], except that a closed stdout (`gateway exec … | head`) exits quietly.
pub(super) fn quiet_broken_pipe(result: anyhow::Result<u8>, failure: u8) -> u8 {
    match result {
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            BROKEN_PIPE
        }
        other => exit_code(other, failure),
    }
}

fn exec(data_dir: &Path, args: ExecArgs) -> anyhow::Result<u8> {
    let client = Client::open(data_dir)?;
    if let Some(hint) = split_shell_hint(&args) {
        eprintln!("gateway: note: {hint}");
    }
    let stdin = stdin_plan(&args)?;
    let body = body(&args, &stdin);
    if args.detach {
        let answer = json_answer(client.send("POST", "/api/v1/exec", JSON, Some(&body))?)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            println!("{}", answer["job_id"].as_str().unwrap_or_default());
        }
        return Ok(0);
    }
    let ctrl_c = CtrlC::install(&client, Mode::Cancel)?;
    let mut printer = Printer::new(std::io::stdout().lock(), std::io::stderr(), args.json);
    let mut pump = None;
    let response = if stdin == Stdin::Stream {
        let answer = json_answer(client.send("POST", "/api/v1/exec", JSON, Some(&body))?)?;
        let id = answer["job_id"]
            .as_str()
            .context("the gateway named no job")?;
        let nodes = answer["nodes"].as_array().into_iter().flatten();
        printer.expect(
            id,
            nodes.filter_map(Value::as_str).map(String::from).collect(),
        );
        ctrl_c.job(id);
        pump = Some(StdinPump::start(&client, id)?);
        let stream = format!("/api/v1/jobs/{}/stream", segment(id));
        client.send("GET", &stream, NDJSON, None)?
    } else {
        client.send("POST", "/api/v1/exec", NDJSON, Some(&body))?
    };
    follow(response, &mut printer, Some(&ctrl_c))?;
    match pump.map(StdinPump::finish) {
        // 409: the command ended before it read all its input, as `yes | … head -1` does; ssh
        // says nothing then either.
        Some(Err(e))
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == 409) => {}
        Some(Err(e)) => eprintln!("gateway: stdin: {e:#}"),
        _ => {}
    }
    settle_missing(&client, &mut printer)?;
    let code = printer.finish(ctrl_c.cancelled())?;
    if args.json {
        let id = printer.job_id().context("the gateway named no job")?;
        let job = client.call("GET", &format!("/api/v1/jobs/{}", segment(id)), None)?;
        println!("{}", serde_json::to_string_pretty(&job)?);
    }
    Ok(code)
}

/// The body of `POST /api/v1/exec` for these arguments.
pub fn body(args: &ExecArgs, stdin: &Stdin) -> Value {
    let mut body = Map::new();
    body.insert("target".into(), json!(args.target));
    if args.argv {
        body.insert("argv".into(), json!(args.args));
    } else {
        // As ssh does: the words are one shell command line.
        body.insert("command".into(), json!(args.args.join(" ")));
    }
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            body.insert(key.into(), value);
        }
    };
    put("timeout_s", args.timeout.map(Value::from));
    put("queue_ttl_s", args.queue_ttl.map(Value::from));
    put("lane", args.lane.clone().map(Value::from));
    put("cwd", args.cwd.clone().map(Value::from));
    put(
        "batch",
        args.batch.map(|b| match b {
            Batch::Count(n) => json!(n),
            Batch::Percent(p) => json!(format!("{p}%")),
        }),
    );
    if !args.env.is_empty() {
        let env: Map<String, Value> = args
            .env
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        put("env", Some(Value::Object(env)));
    }
    match stdin {
        Stdin::None => {}
        Stdin::Stream => put("stdin_stream", Some(json!(true))),
        Stdin::Whole(bytes) => put("stdin_b64", Some(json!(STANDARD.encode(bytes)))),
    }
    if args.detach || *stdin == Stdin::Stream {
        put("async", Some(json!(true)));
    }
    Value::Object(body)
}

/// `gateway exec pi-1 sh -c 'a && b'` runs `sh -c a && b` on the node, as ssh would (the words
/// are one command line): `sh -c` gets only `a`. Before the command bus the CLI sent argv, where
/// that form was right, so it deserves a word when a quoted script follows `sh -c`.
fn split_shell_hint(args: &ExecArgs) -> Option<String> {
    let [shell, flag, script, ..] = args.args.as_slice() else {
        return None;
    };
    let shells = [
        "sh",
        "bash",
        "dash",
        "zsh",
        "/bin/sh",
        "/bin/bash",
        "/usr/bin/env",
    ];
    let split = !args.argv && shells.contains(&shell.as_str()) && flag == "-c";
    (split && script.contains(char::is_whitespace)).then(|| {
        format!(
            "the words are joined into one shell command line, as with ssh, so `{shell} -c`              runs only {:?}; quote the whole command (gateway exec {} '…') or use --argv",
            script.split_whitespace().next().unwrap_or(""),
            args.target
        )
    })
}

/// Decides what to do with stdin, reading it if it goes whole.
fn stdin_plan(args: &ExecArgs) -> anyhow::Result<Stdin> {
    use std::io::IsTerminal;
    let none = args.no_stdin || std::io::stdin().is_terminal() || stdin_is_dev_null();
    match stdin_mode(none, is_node_id(&args.target), args.detach) {
        StdinMode::None => Ok(Stdin::None),
        StdinMode::Stream => Ok(Stdin::Stream),
        StdinMode::Whole => read_whole(std::io::stdin().lock(), MAX_WHOLE_STDIN).map(Stdin::Whole),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum StdinMode {
    None,
    Stream,
    Whole,
}

/// Stdin streams only to one plain node id, followed live; an `--async` job or a target of
/// several nodes (or `any:`, which the gateway resolves) gets it whole.
fn stdin_mode(none: bool, one_node_id: bool, detach: bool) -> StdinMode {
    match (none, one_node_id && !detach) {
        (true, _) => StdinMode::None,
        (false, true) => StdinMode::Stream,
        (false, false) => StdinMode::Whole,
    }
}

/// All of `input` if it is at most `limit` bytes, else a usage error.
fn read_whole(input: impl Read, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .context("reading stdin")?;
    if bytes.len() > limit {
        return Err(Usage(format!(
            "stdin is over {} MiB: a command for several nodes (or --async) gets its stdin whole, \
             up to that; one node streams any size, `gateway cp` pushes a file, and -n sends no stdin",
            limit >> 20
        ))
        .into());
    }
    Ok(bytes)
}

/// Whether stdin is /dev/null (no data will ever come: nothing to send).
fn stdin_is_dev_null() -> bool {
    let (Ok(stdin), Ok(null)) = (
        rustix::fs::fstat(std::io::stdin()),
        rustix::fs::stat("/dev/null"),
    ) else {
        return false;
    };
    let is_char = |mode: u32| {
        rustix::fs::FileType::from_raw_mode(mode) == rustix::fs::FileType::CharacterDevice
    };
    is_char(stdin.st_mode) && stdin.st_rdev == null.st_rdev
}

/// Reads a job's NDJSON events from `response` into `printer` until the summary or the end of
/// the stream (a lost connection is said on stderr; `Printer::finish` then reports the cut).
pub(super) fn follow<O: Write, E: Write>(
    response: Response,
    printer: &mut Printer<O, E>,
    ctrl_c: Option<&CtrlC>,
) -> anyhow::Result<()> {
    let response = check(response)?;
    let mut reader = BufReader::new(response.into_reader());
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader).take(MAX_EVENT).read_until(b'\n', &mut line) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("gateway: lost the connection to the gateway: {e}");
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        if n as u64 == MAX_EVENT && !line.ends_with(b"\n") {
            bail!("the gateway sent an event over {} MiB", MAX_EVENT >> 20);
        }
        match printer.line(&line)? {
            Step::Job(id) => {
                if let Some(ctrl_c) = ctrl_c {
                    ctrl_c.job(&id);
                }
            }
            Step::Done => return Ok(()),
            Step::More => {}
        }
    }
}

/// A stream owes an `exit` or `error` per node; for a node whose never came, the job's stored
/// result says how it ended (one `GET /api/v1/jobs/{id}`, only then).
pub(super) fn settle_missing<O: Write, E: Write>(
    client: &Client,
    printer: &mut Printer<O, E>,
) -> anyhow::Result<()> {
    let missing = printer.missing();
    let Some(id) = printer.job_id().map(str::to_string) else {
        return Ok(());
    };
    if missing.is_empty() {
        return Ok(());
    }
    log::debug!("the stream of job {id} had no result for {missing:?}: asking for the job");
    let job = client.call("GET", &format!("/api/v1/jobs/{}", segment(&id)), None)?;
    for result in job["results"].as_array().into_iter().flatten() {
        if let Some(node) = result["node"]
            .as_str()
            .filter(|n| missing.iter().any(|m| m == n))
        {
            printer.settle(node, result)?;
        }
    }
    Ok(())
}

/// The response if it is not an error answer; else the API's error.
pub(super) fn check(response: Response) -> anyhow::Result<Response> {
    if response.status < 400 {
        return Ok(response);
    }
    let status = response.status;
    let text = response.into_string()?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Err(api_error(status, &value))
}

/// The thread that sends the CLI's stdin to a job as it comes (`PUT /api/v1/jobs/{id}/stdin`,
/// chunked; the body's end is the command's EOF). Stopped when the job is over: dropping the pipe's
/// write end wakes its `poll` on stdin; if it is busy on the connection instead (the gateway's
/// answer on its way) it gets [`STDIN_GRACE`] to finish, then the connection is shut down, which
/// wakes a blocked write or read.
pub(super) struct StdinPump {
    stop: Option<OwnedFd>,
    closer: UnixStream,
    done: std::sync::mpsc::Receiver<anyhow::Result<u64>>,
    thread: Option<JoinHandle<()>>,
}

/// How long a stopped stdin pump may take to finish what it is sending or reading.
const STDIN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl StdinPump {
    pub(super) fn start(client: &Client, job: &str) -> anyhow::Result<StdinPump> {
        let path = format!("/api/v1/jobs/{}/stdin", segment(job));
        let upload = client.upload("PUT", &path, None)?;
        let closer = upload.closer().context("sharing the stdin connection")?;
        let (wake, stop) = rustix::pipe::pipe().context("creating the stdin pump's pipe")?;
        let (tx, done) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("stdin-pump".into())
            .spawn(move || {
                let _ = tx.send(pump(upload, &wake));
            })
            .context("starting the stdin thread")?;
        Ok(StdinPump {
            stop: Some(stop),
            closer,
            done,
            thread: Some(thread),
        })
    }

    /// Stops the pump (if stdin has not ended yet) and returns how stdin went; a pump cut off
    /// after its grace reports nothing (the job is over: its input is no news).
    pub(super) fn finish(mut self) -> anyhow::Result<u64> {
        self.stop = None;
        let result = match self.done.recv_timeout(STDIN_GRACE) {
            Ok(result) => result,
            Err(_) => {
                let _ = self.closer.shutdown(std::net::Shutdown::Both);
                Ok(0)
            }
        };
        if let Some(Err(_)) = self.thread.take().map(JoinHandle::join) {
            bail!("the stdin thread panicked");
        }
        result
    }
}

impl Drop for StdinPump {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop = None;
            let _ = self.closer.shutdown(std::net::Shutdown::Both);
            let _ = thread.join();
        }
    }
}

/// Copies stdin to `upload` until EOF (then ends the body and checks the answer) or until `wake`
/// says stop (its other end is dropped).
fn pump(mut upload: Upload, wake: &OwnedFd) -> anyhow::Result<u64> {
    use rustix::event::{poll, PollFd, PollFlags};
    let stdin = std::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    loop {
        let mut fds = [
            PollFd::new(&stdin, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            // Ctrl-C interrupts the call; the Ctrl-C thread acts on it.
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("waiting for stdin"),
        }
        if !fds[1].revents().is_empty() {
            return Ok(sent);
        }
        let n = match rustix::io::read(&stdin, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => return Err(e).context("reading stdin"),
        };
        if n == 0 {
            json_answer(upload.finish()?)?;
            return Ok(sent);
        }
        if let Err(e) = upload.write_all(&buf[..n]).and_then(|()| upload.flush()) {
            // The gateway may have refused the body: its answer says why.
            json_answer(upload.finish()?)?;
            return Err(e).context("sending stdin to the gateway");
        }
        sent += n as u64;
    }
}

#[cfg(test)]
mod tests;
