//! `GET /api/v1/jobs`, `GET /api/v1/jobs/{id}`, `GET /api/v1/jobs/{id}/stream` and
//! `POST /api/v1/jobs/{id}/cancel`: jobs after the fact, like Salt's `jobs.lookup_jid`.

use serde_json::{json, Value};

use super::exec::{job_json, parse_state, Lines};
use super::routes::Req;
use super::{Ctx, Reply};
use crate::jobs::persist::Filter;
use crate::refusal::{bad_request, conflict, Kind, Refusal};

/// Default and largest page of `GET /api/v1/jobs`.
const PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

pub fn list(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let mut filter = Filter {
        limit: PAGE,
        ..Filter::default()
    };
    for (key, value) in super::query(&req.call.path)? {
        match key.as_str() {
            "node" => filter.node = Some(value),
            "state" => filter.state = Some(parse_state(&value)?),
            "limit" => {
                filter.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| bad_request(format!("limit is 1 to {MAX_PAGE}")))?
            }
            "before" => {
                filter.before_seq = Some(
                    ctx.jobs
                        .seq_of(&value)?
                        .ok_or_else(|| bad_request(format!("before={value:?}: no such job")))?,
                )
            }
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {other:?} (node, state, limit, before)"
                )))
            }
        }
    }
    let limit = filter.limit;
    let jobs = ctx.jobs.list(filter)?;
    let rows: Vec<Value> = jobs.iter().map(|j| summary_json(j)).collect();
    let next = (jobs.len() == limit)
        .then(|| jobs.last().map(|j| j.meta.id.clone()))
        .flatten();
    Ok(Reply::Json(200, json!({"jobs": rows, "next_before": next})))
}

/// A job in a listing: everything but the output.
fn summary_json(job: &crate::jobs::Job) -> Value {
    let mut v = job_json(job, 0);
    if let Some(obj) = v.as_object_mut() {
        obj.remove("results");
        let nodes: Vec<String> = job.results().into_iter().map(|r| r.node).collect();
        obj.insert("nodes".into(), json!(nodes));
    }
    v
}

pub fn show(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let job = ctx.jobs.get(req.param(0))?;
    if req.caller.sees_output() {
        return Ok(Reply::Json(200, job_json(&job, ctx.answer_limit)));
    }
    Ok(Reply::Json(200, withheld_json(&job)))
}

/// A job as a viewer sees it: states, exit codes, durations and how many bytes each stream
/// produced (`output_bytes`), but not the output itself (it needs operator or gateway).
fn withheld_json(job: &crate::jobs::Job) -> Value {
    // With nothing kept per stream, every byte a node produced is counted as dropped.
    let mut v = job_json(job, 0);
    if let Some(results) = v["results"].as_array_mut() {
        for r in results.iter_mut().filter_map(Value::as_object_mut) {
            for key in ["stdout", "stderr", "stdout_b64", "stderr_b64", "truncated"] {
                r.remove(key);
            }
            if let Some(bytes) = r.remove("dropped_bytes") {
                r.insert("output_bytes".into(), bytes);
            }
        }
    }
    v["output"] = json!("withheld: command output needs operator or gateway; this token is viewer");
    v
}

pub fn stream(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let job = ctx.jobs.get(req.param(0))?;
    Ok(Reply::Stream(Box::new(Lines::new(ctx, job, true))))
}

pub fn cancel(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let job = ctx.jobs.cancel(req.param(0))?;
    ctx.pairing.audit().record(
        &req.caller,
        "job.cancel",
        &job.meta.target,
        json!({"job_id": job.meta.id}),
    );
    Ok(Reply::Json(200, job_json(&job, ctx.answer_limit)))
}

/// `POST /api/v1/jobs/{id}/resize` `{"rows": R, "cols": C}`: a tty job's terminal size.
pub fn resize(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let body: serde_json::Map<String, Value> = super::parse_body(&req.call.body)?;
    if let Some(k) = body.keys().find(|k| *k != "rows" && *k != "cols") {
        return Err(bad_request(format!("unknown field {k:?} (rows, cols)")));
    }
    let (rows, cols) = super::exec::terminal_size(body.get("rows"), body.get("cols"), "resize")?;
    let job = ctx.jobs.terminal(req.param(0), |h| h.resize(rows, cols))?;
    Ok(Reply::Json(
        200,
        json!({"job_id": job.meta.id, "rows": rows, "cols": cols}),
    ))
}

/// Signals `POST /api/v1/jobs/{id}/signal` takes, by name.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("KILL", 9),
    ("USR1", 10),
    ("USR2", 12),
    ("TERM", 15),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("WINCH", 28),
];

/// `POST /api/v1/jobs/{id}/signal` `{"signal": "INT"}`: signals a tty job's foreground group.
pub fn signal(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let body: serde_json::Map<String, Value> = super::parse_body(&req.call.body)?;
    let names = || {
        SIGNALS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let name = match (body.len(), body.get("signal")) {
        (1, Some(Value::String(name))) => name.trim_start_matches("SIG").to_ascii_uppercase(),
        _ => {
            return Err(bad_request(format!(
                "give {{\"signal\": NAME}} ({})",
                names()
            )))
        }
    };
    let Some(&(_, number)) = SIGNALS.iter().find(|(n, _)| *n == name) else {
        return Err(bad_request(format!(
            "unknown signal {name:?} ({})",
            names()
        )));
    };
    let job = ctx.jobs.terminal(req.param(0), |h| h.signal(number))?;
    ctx.pairing.audit().record(
        &req.caller,
        "job.signal",
        &job.meta.target,
        json!({"job_id": job.meta.id, "signal": name}),
    );
    Ok(Reply::Json(
        200,
        json!({"job_id": job.meta.id, "signal": name}),
    ))
}

/// Bytes read from an uploader at a time.
const STDIN_CHUNK: usize = burrow_core::protocol::MAX_CHUNK;

/// `PUT /api/v1/jobs/{id}/stdin`: the request body is the command's standard input, streamed as it
/// arrives (the node's pace sets the upload's); the body's end is the input's end.
pub fn stdin(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let job = ctx.jobs.get(req.param(0))?;
    if job.is_finished() {
        return Err(conflict(format!("job {} has ended", job.meta.id)));
    }
    let tx = job.take_stdin().ok_or_else(|| {
        conflict(format!(
            "job {} takes no streamed stdin, or its stdin is already being sent \
             (create it with \"stdin_stream\": true)",
            job.meta.id
        ))
    })?;
    let mut body = req.body.borrow_mut();
    let mut total = 0u64;
    loop {
        let mut chunk = vec![0u8; STDIN_CHUNK];
        let n = match body.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad_request(format!("reading the body: {e}"))),
        };
        chunk.truncate(n);
        if tx.send(chunk).is_err() {
            return Err(Refusal::new(
                Kind::Conflict,
                format!("the command ended after reading {total} bytes of its input"),
            ));
        }
        total += n as u64;
    }
    drop(tx);
    Ok(Reply::Json(
        200,
        json!({"job_id": job.meta.id, "bytes": total}),
    ))
}
