//! Printing a job's NDJSON event stream (`POST /api/v1/exec`, `GET /api/v1/jobs/{id}/stream`) the
//! way ssh prints one host: one node's bytes go to stdout and stderr unchanged and its exit code
//! becomes ours; with several nodes each line is prefixed `[node] ` (a node's partial line waits
//! for its newline, or its end, so nodes never split each other's lines), each node that did not
//! succeed gets a line saying why, and a summary line ends the output. Pure over two writers, so
//! the rules are tested here from canned lines.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

/// The per-node states of a job, in the order the summary line names them.
pub const STATES: [&str; 11] = [
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "offline",
    "refused",
    "lost",
    "expired",
    "unknown",
    "running",
    "queued",
];

/// A node's partial line is printed on its own once it is this long (memory stays bounded
/// whatever a command prints without a newline).
const MAX_PARTIAL: usize = 64 * 1024;

/// ssh's code for "the command did not run".
pub const DID_NOT_RUN: u8 = 255;
/// The shell's code for "interrupted by Ctrl-C".
pub const INTERRUPTED: u8 = 130;
/// `timeout(1)`'s code: the command ran out of time and was killed.
pub const TIMED_OUT: u8 = 124;

/// How one node's part of the job ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// One of [`STATES`].
    pub state: String,
    /// The command ran (an `exit` event) rather than never starting (an `error` event).
    pub ran: bool,
    /// The command's exit code, if it exited.
    pub exit_code: Option<i64>,
    /// The signal that killed it, if one did.
    pub signal: Option<i64>,
    /// Killed because its time ran out.
    pub timed_out: bool,
    /// Why it did not run or failed, from the gateway.
    pub error: Option<String>,
}

impl Outcome {
    /// From an `exit` or `error` event, or from a result of a job's JSON answer (same fields).
    pub fn from_json(v: &Value) -> Outcome {
        let state = v["state"].as_str().unwrap_or("unknown").to_string();
        let ran = v["event"] == "exit" || v["exit_code"].is_i64() || v["signal"].is_i64();
        Outcome {
            timed_out: v["timed_out"].as_bool() == Some(true) || state == "timed_out",
            state,
            ran,
            exit_code: v["exit_code"].as_i64(),
            signal: v["signal"].as_i64(),
            error: v["error"]
                .as_str()
                .or(v["message"].as_str())
                .map(str::to_string),
        }
    }

    /// `failed: exit code 3`, `offline: node pi-3 is offline`, ...
    pub fn describe(&self) -> String {
        let detail = match (&self.error, self.exit_code, self.signal) {
            _ if self.timed_out => Some("killed when its time ran out".to_string()),
            (Some(e), _, _) => Some(e.clone()),
            (None, Some(code), _) if code != 0 => Some(format!("exit code {code}")),
            (None, _, Some(signal)) => Some(format!("killed by signal {signal}")),
            _ => None,
        };
        let state = if self.timed_out {
            "timed out"
        } else {
            &self.state
        };
        match detail {
            Some(detail) => format!("{state}: {detail}"),
            None => state.to_string(),
        }
    }

    /// The exit code of a one-node job, as ssh would give it.
    pub fn exit_code(&self, interrupted: bool) -> u8 {
        if interrupted && self.state == "cancelled" {
            return INTERRUPTED;
        }
        if self.timed_out {
            return TIMED_OUT;
        }
        match (self.ran, self.exit_code, self.signal) {
            (true, Some(code), _) => code.clamp(0, 255) as u8,
            (true, None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
            _ => DID_NOT_RUN,
        }
    }
}

/// The exit code of a whole job: one node's own code; with several, 0 only if every node
/// succeeded, else 1. No node at all is 1: nothing ran.
pub fn exit_code(nodes: &[String], outcomes: &BTreeMap<String, Outcome>, interrupted: bool) -> u8 {
    match nodes {
        [one] => outcomes
            .get(one)
            .map_or(DID_NOT_RUN, |o| o.exit_code(interrupted)),
        [] => 1,
        many => {
            let all = many
                .iter()
                .all(|n| outcomes.get(n).is_some_and(|o| o.state == "succeeded"));
            u8::from(!all)
        }
    }
}

/// `5 succeeded, 1 failed, 1 offline` from a summary object (every state a key).
pub fn summary_line(summary: &Value) -> String {
    let parts: Vec<String> = STATES
        .iter()
        .filter_map(|state| match summary[*state].as_u64() {
            Some(n) if n > 0 => Some(format!("{n} {}", state.replace('_', " "))),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        "no node ran it".to_string()
    } else {
        parts.join(", ")
    }
}

/// What the caller should do after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep reading.
    More,
    /// The job's id, the first time it is seen (Ctrl-C can cancel it from now on).
    Job(String),
    /// The summary came: the job is over, stop reading.
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Stream {
    Out,
    Err,
}

/// Turns events into output on `out`/`err` and remembers how each node ended.
pub struct Printer<O: Write, E: Write> {
    out: O,
    err: E,
    /// `--json`: print nothing, only keep the outcomes.
    quiet: bool,
    job_id: Option<String>,
    nodes: Option<Vec<String>>,
    partial: HashMap<(String, Stream), Vec<u8>>,
    outcomes: BTreeMap<String, Outcome>,
    summary: Option<Value>,
}

impl<O: Write, E: Write> Printer<O, E> {
    /// A printer writing the job's output to `out` and `err` (nothing at all if `quiet`).
    pub fn new(out: O, err: E, quiet: bool) -> Self {
        Printer {
            out,
            err,
            quiet,
            job_id: None,
            nodes: None,
            partial: HashMap::new(),
            outcomes: BTreeMap::new(),
            summary: None,
        }
    }

    /// The job and its nodes when known before the stream starts (async exec, attach); a `job`
    /// event says the same.
    pub fn expect(&mut self, job_id: &str, nodes: Vec<String>) {
        self.job_id = Some(job_id.to_string());
        self.nodes = Some(nodes);
    }

    /// The job's id, once an event (or [`Printer::expect`]) said it.
    pub fn job_id(&self) -> Option<&str> {
        self.job_id.as_deref()
    }

    fn single(&self) -> bool {
        self.nodes.as_ref().is_some_and(|n| n.len() == 1)
    }

    /// Handles one NDJSON line.
    pub fn line(&mut self, line: &[u8]) -> anyhow::Result<Step> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(Step::More);
        }
        let event: Value = serde_json::from_slice(line).with_context(|| {
            format!(
                "the gateway sent a line that is not JSON: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            )
        })?;
        self.event(&event)
    }

    /// Handles one event.
    pub fn event(&mut self, event: &Value) -> anyhow::Result<Step> {
        let new_job = match (event["job_id"].as_str(), &self.job_id) {
            (Some(id), None) => {
                self.job_id = Some(id.to_string());
                Some(id.to_string())
            }
            _ => None,
        };
        let node = event["node"].as_str().unwrap_or("").to_string();
        match event["event"].as_str().unwrap_or("") {
            "job" => {
                if let Some(nodes) = event["nodes"].as_array() {
                    let nodes = nodes.iter().filter_map(Value::as_str);
                    self.nodes = Some(nodes.map(str::to_string).collect());
                }
            }
            "stdout" => self.output(&node, Stream::Out, &data(event))?,
            "stderr" => self.output(&node, Stream::Err, &data(event))?,
            "exit" | "error" if node.is_empty() => {
                // An error about the whole job (the old single-node stream ended this way).
                let outcome = Outcome::from_json(event);
                if !self.quiet {
                    writeln!(self.err, "gateway: {}", outcome.describe())?;
                }
                self.summary = Some(Value::Null);
                return Ok(Step::Done);
            }
            "exit" | "error" => {
                self.flush_node(&node)?;
                let outcome = Outcome::from_json(event);
                self.note(&node, &outcome)?;
                self.outcomes.insert(node, outcome);
            }
            "summary" => {
                // Its line is printed by `finish`, after any node settled late.
                self.flush_all()?;
                self.summary = Some(event["summary"].clone());
                return Ok(Step::Done);
            }
            // `start` and events of later versions.
            _ => {}
        }
        Ok(new_job.map_or(Step::More, Step::Job))
    }

    /// One line on stderr for a node that did not succeed (with one node: only when the exit
    /// code cannot say it: timeouts, signals, not run).
    fn note(&mut self, node: &str, outcome: &Outcome) -> std::io::Result<()> {
        if self.quiet || outcome.state == "succeeded" {
            return Ok(());
        }
        if !self.single() {
            return writeln!(self.err, "[{node}] {}", outcome.describe());
        }
        let plain_exit = outcome.ran
            && !outcome.timed_out
            && outcome.exit_code.is_some()
            && outcome.error.is_none();
        if plain_exit {
            return Ok(());
        }
        writeln!(self.err, "gateway: {node}: {}", outcome.describe())
    }

    fn output(&mut self, node: &str, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        if self.quiet || bytes.is_empty() {
            return Ok(());
        }
        if self.single() {
            let w: &mut dyn Write = match stream {
                Stream::Out => &mut self.out,
                Stream::Err => &mut self.err,
            };
            w.write_all(bytes)?;
            return w.flush();
        }
        let key = (node.to_string(), stream);
        let mut buffer = self.partial.remove(&key).unwrap_or_default();
        buffer.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(newline) = buffer[start..].iter().position(|&b| b == b'\n') {
            let end = start + newline + 1;
            self.prefixed(node, stream, &buffer[start..end])?;
            start = end;
        }
        while buffer.len() - start >= MAX_PARTIAL {
            let end = start + MAX_PARTIAL;
            self.prefixed(node, stream, &buffer[start..end])?;
            start = end;
        }
        buffer.drain(..start);
        if !buffer.is_empty() {
            self.partial.insert(key, buffer);
        }
        Ok(())
    }

    /// Writes `[node] `, `line`, and a newline if `line` lacks one (a long line's piece, a node's
    /// last partial line).
    fn prefixed(&mut self, node: &str, stream: Stream, line: &[u8]) -> std::io::Result<()> {
        let w: &mut dyn Write = match stream {
            Stream::Out => &mut self.out,
            Stream::Err => &mut self.err,
        };
        let mut text = Vec::with_capacity(node.len() + 4 + line.len());
        text.extend_from_slice(format!("[{node}] ").as_bytes());
        text.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            text.push(b'\n');
        }
        w.write_all(&text)?;
        w.flush()
    }

    /// A node ended: its partial lines are printed with a newline added.
    fn flush_node(&mut self, node: &str) -> std::io::Result<()> {
        for stream in [Stream::Out, Stream::Err] {
            if let Some(rest) = self.partial.remove(&(node.to_string(), stream)) {
                self.prefixed(node, stream, &rest)?;
            }
        }
        Ok(())
    }

    fn flush_all(&mut self) -> std::io::Result<()> {
        let mut nodes: Vec<String> = self.partial.keys().map(|(n, _)| n.clone()).collect();
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            self.flush_node(&node)?;
        }
        Ok(())
    }

    /// Nodes of a finished job whose `exit` or `error` never came (a stream owes one per node):
    /// their outcome is to be taken from the job's stored results ([`Printer::settle`]).
    pub fn missing(&self) -> Vec<String> {
        match (&self.summary, &self.nodes) {
            (Some(_), Some(nodes)) => nodes
                .iter()
                .filter(|n| !self.outcomes.contains_key(*n))
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A node's outcome from its stored result (same fields as the events), noted as if the
    /// stream had said it.
    pub fn settle(&mut self, node: &str, result: &Value) -> std::io::Result<()> {
        let outcome = Outcome::from_json(result);
        self.note(node, &outcome)?;
        self.outcomes.insert(node.to_string(), outcome);
        Ok(())
    }

    /// The stream ended: what is left is printed, then the summary line (several nodes), and the
    /// job's exit code comes back (an error if the stream ended before the summary).
    pub fn finish(&mut self, interrupted: bool) -> anyhow::Result<u8> {
        self.flush_all()?;
        self.out.flush()?;
        if let Some(summary) = self.summary.as_ref().filter(|s| s.is_object()) {
            if !self.quiet && !self.single() {
                writeln!(self.err, "{}", summary_line(summary))?;
            }
        }
        if self.summary.is_none() {
            let how = match &self.job_id {
                Some(id) => format!(
                    "; the job goes on: `gateway jobs attach {id}` follows it, \
                     `gateway jobs cancel {id}` stops it"
                ),
                None => String::new(),
            };
            anyhow::bail!("the gateway's stream ended before the job did{how}");
        }
        let nodes = match &self.nodes {
            Some(nodes) => nodes.clone(),
            None => self.outcomes.keys().cloned().collect(),
        };
        Ok(exit_code(&nodes, &self.outcomes, interrupted))
    }
}

/// An output event's bytes: `data` (UTF-8 text) or `data_b64` (anything else).
fn data(event: &Value) -> Vec<u8> {
    match event["data_b64"].as_str() {
        Some(b64) => STANDARD.decode(b64).unwrap_or_default(),
        None => event["data"].as_str().unwrap_or("").as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests;
