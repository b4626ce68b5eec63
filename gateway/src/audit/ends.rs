//! The entry written when a job ends: per node its state, exit code or signal, duration, bytes of
//! output (never the output) or a transfer's size and SHA-256, and why it did not run. A job every
//! node refused (their exec policy said no) is `exec.refused`: it was asked for (the `exec` entry
//! says by whom), but nothing ran.

use serde_json::{json, Map, Value};

use crate::jobs::state::NodeState;
use crate::jobs::{Job, JobKind};

/// `(action, detail)` of the end of `job`, or `None` for a job whose handler records its own end
/// (an upload, `file.put`).
pub fn of(job: &Job) -> Option<(&'static str, Value)> {
    let results = job.results();
    let action = match &job.meta.kind {
        JobKind::Put { .. } => return None,
        JobKind::Get { .. } => "file.get.end",
        JobKind::Exec { .. } if results.iter().all(|r| r.state == NodeState::Refused) => {
            "exec.refused"
        }
        JobKind::Exec { .. } => "exec.end",
    };
    let mut per_node = Map::new();
    for r in &results {
        let mut v = json!({"state": r.state.name()});
        if let Some(exit) = &r.exit {
            v["exit_code"] = json!(exit.exit_code);
            if let Some(sig) = exit.signal {
                v["signal"] = json!(sig);
            }
            v["duration_ms"] = json!(exit.duration_ms);
        } else if let (Some(a), Some(b)) = (r.started_at, r.ended_at) {
            v["duration_ms"] = json!(b.saturating_sub(a) * 1000);
        }
        if matches!(job.meta.kind, JobKind::Exec { .. }) {
            let bytes = |i: usize| r.output[i].kept.len() as u64 + r.output[i].dropped;
            v["stdout_bytes"] = json!(bytes(0));
            v["stderr_bytes"] = json!(bytes(1));
        }
        if let Some(t) = &r.transfer {
            v["bytes"] = json!(t.bytes);
            v["sha256"] = json!(t.sha256);
        }
        if let Some((code, message)) = &r.error {
            v["error"] = json!(code);
            v["message"] = json!(message);
        }
        per_node.insert(r.node.clone(), v);
    }
    let ended = results.iter().filter_map(|r| r.ended_at).max();
    Some((
        action,
        json!({"job_id": job.meta.id, "state": job.state().name(), "results": per_node,
               "duration_s": ended.map(|e| e.saturating_sub(job.meta.created_at))}),
    ))
}
