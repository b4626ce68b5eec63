//! Health routes: a node's metric history (`GET /api/v1/nodes/{id}/metrics?since=&step=`), its
//! state changes (`GET /api/v1/nodes/{id}/history?limit=`) and the alerts
//! (`GET /api/v1/alerts?state=firing|resolved&limit=`). All read through [`crate::health::Health`].

use serde_json::{json, Value};

use super::routes::Req;
use super::{Ctx, Reply};
use crate::health::history::{FINE_STEP, RETENTION};
use crate::health::AlertState;
use crate::refusal::{bad_request, not_found, Refusal};
use crate::registry::{now, rfc3339};

/// Most points one history answer holds.
pub const MAX_POINTS: u64 = 1500;
/// Most entries one list answer holds, and how many when `limit` is not given.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

fn known(ctx: &Ctx, id: &str) -> Result<(), Refusal> {
    match ctx.registry.read().nodes.contains_key(id) {
        true => Ok(()),
        false => Err(not_found(format!("no node {id:?}"))),
    }
}

/// `since`: Unix seconds, an RFC 3339 time, or a duration back from now (`90m`, `6h`).
pub fn parse_since(text: &str, now: u64) -> Result<u64, Refusal> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return Ok(secs);
    }
    match humantime::parse_duration(text) {
        Ok(d) => Ok(now.saturating_sub(d.as_secs())),
        Err(_) => Err(bad_request(format!(
            "since={text:?}: Unix seconds, an RFC 3339 time (2026-12-02T08:00:00Z) or a \
             duration back from now (90m, 6h)"
        ))),
    }
}

/// `step`: seconds or a duration (`5m`), 1 minute to 1 day.
pub fn parse_step(text: &str) -> Result<u64, Refusal> {
    let secs = text
        .parse::<u64>()
        .ok()
        .or_else(|| humantime::parse_duration(text).ok().map(|d| d.as_secs()));
    match secs {
        Some(s) if (FINE_STEP..=86400).contains(&s) => Ok(s),
        _ => Err(bad_request(format!(
            "step={text:?}: seconds or a duration (5m) between 1m and 1d"
        ))),
    }
}

/// `GET /api/v1/nodes/{id}/metrics?since=&step=`: the node's metrics history, oldest first.
/// Default: the last 24 h, one point per minute for an hour or less, else per 10 minutes.
pub fn metrics(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let id = req.param(0);
    known(ctx, id)?;
    let t = now();
    let mut since = t.saturating_sub(RETENTION);
    let mut step = None;
    for (key, value) in super::query(&req.call.path)? {
        match key.as_str() {
            "since" => since = parse_since(&value, t)?,
            "step" => step = Some(parse_step(&value)?),
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {other:?} (since, step)"
                )))
            }
        }
    }
    if since > t {
        return Err(bad_request("since is in the future"));
    }
    let span = t - since;
    let step = step.unwrap_or(if span <= 3600 { 60 } else { 600 });
    if span / step > MAX_POINTS {
        return Err(bad_request(format!(
            "{} points of {step} s from since to now: at most {MAX_POINTS}; use a larger step \
             or a later since",
            span / step
        )));
    }
    let samples: Vec<Value> = ctx
        .health
        .history(id, since, step)
        .into_iter()
        .map(|s| json!({"at": rfc3339(s.at), "at_unix": s.at, "metrics": s.metrics}))
        .collect();
    Ok(Reply::Json(
        200,
        json!({"node": id, "since": rfc3339(since), "step_s": step, "samples": samples}),
    ))
}

fn limit(value: &str) -> Result<usize, Refusal> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(bad_request(format!(
            "limit={value:?}: a number from 1 to {MAX_LIMIT}"
        ))),
    }
}

/// `GET /api/v1/nodes/{id}/history?limit=`: the node's state changes, newest first.
pub fn history(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let id = req.param(0);
    known(ctx, id)?;
    let mut n = DEFAULT_LIMIT;
    for (key, value) in super::query(&req.call.path)? {
        match key.as_str() {
            "limit" => n = limit(&value)?,
            other => return Err(bad_request(format!("unknown parameter {other:?} (limit)"))),
        }
    }
    let changes: Vec<Value> = ctx
        .health
        .changes(id, n as u32)
        .into_iter()
        .map(|c| json!({"at": rfc3339(c.at), "from": c.from, "to": c.to, "reason": c.reason}))
        .collect();
    let state = ctx.health.state(id);
    Ok(Reply::Json(
        200,
        json!({
            "node": id,
            "state": state.as_ref().map(|s| s.state),
            "since": state.as_ref().and_then(|s| s.since).map(rfc3339),
            "reason": state.as_ref().map(|s| s.reason.as_str()),
            "changes": changes,
        }),
    ))
}

/// `GET /api/v1/alerts?state=firing|resolved&limit=`: alerts, newest first.
pub fn alerts(ctx: &Ctx, req: &Req) -> Result<Reply, Refusal> {
    let mut state = None;
    let mut n = DEFAULT_LIMIT;
    for (key, value) in super::query(&req.call.path)? {
        match key.as_str() {
            "state" => {
                state = Some(match value.as_str() {
                    "firing" => AlertState::Firing,
                    "resolved" => AlertState::Resolved,
                    _ => return Err(bad_request(format!("state={value:?}: firing or resolved"))),
                })
            }
            "limit" => n = limit(&value)?,
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {other:?} (state, limit)"
                )))
            }
        }
    }
    let alerts: Vec<Value> = ctx
        .health
        .alerts(state, n)
        .iter()
        .map(crate::health::notify::hook_json)
        .collect();
    Ok(Reply::Json(200, json!({ "alerts": alerts })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_and_step_take_seconds_times_and_durations() {
        let now = 1_800_000_000;
        assert_eq!(parse_since("1700000000", now).unwrap(), 1_700_000_000);
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000
        );
        assert_eq!(parse_since("90m", now).unwrap(), now - 5400);
        for bad in ["yesterday", "-5", "", "2023-13-01T00:00:00Z"] {
            let e = parse_since(bad, now).unwrap_err();
            assert_eq!(e.kind.status(), 400, "{bad}");
            assert!(e.message.contains("since="), "{}", e.message);
        }
        assert_eq!(parse_step("300").unwrap(), 300);
        assert_eq!(parse_step("5m").unwrap(), 300);
        for bad in ["30", "0", "2d", "soon", "-60"] {
            assert!(parse_step(bad).is_err(), "{bad}");
        }
    }
}
