//! `GET /metrics`: takes a [`Snapshot`] of what the gateway knows now and answers it in the
//! Prometheus text format ([`crate::metrics`] renders). On the API port it needs a token like any
//! read (viewer or above); `serve --metrics-listen` serves the same answer without one on an
//! address of the operator's choosing (see `super::Listeners::with_metrics`).

use super::{Ctx, Reply};
use crate::health::AlertState;
use crate::metrics::{self, counters, text, NodeView, Snapshot, SshdView};
use crate::refusal::Refusal;
use crate::registry::now;

/// The route's handler.
pub fn metrics(ctx: &Ctx, _req: &super::routes::Req) -> Result<Reply, Refusal> {
    Ok(answer(ctx))
}

/// The exposition of `ctx` now, as an answer.
pub fn answer(ctx: &Ctx) -> Reply {
    Reply::Text {
        status: 200,
        content_type: text::CONTENT_TYPE,
        body: metrics::render(&snapshot(ctx)),
    }
}

fn snapshot(ctx: &Ctx) -> Snapshot<'static> {
    let t = now();
    // Records first, then each node's state: the health module reads the registry too.
    let records: Vec<_> = ctx.registry.read().nodes.values().cloned().collect();
    let nodes = records
        .into_iter()
        .filter_map(|n| {
            let state = ctx.health.state(&n.id)?.state;
            let live = ctx.registry.live(&n.id);
            Some(NodeView {
                state,
                hostname: n.hostname,
                version: live.agent_version.unwrap_or(n.version),
                os: n.os,
                arch: n.arch,
                last_seen: live.last_seen,
                metrics: live.metrics,
                id: n.id,
            })
        })
        .collect();
    let sshd = (ctx.sshd_status)();
    let sshd = (sshd["mode"] == "managed").then(|| SshdView {
        running: sshd["running"].as_bool().unwrap_or(false),
        restarts: sshd["restarts"].as_u64().unwrap_or(0),
    });
    Snapshot {
        now: t,
        started_at: t.saturating_sub(ctx.started.elapsed().as_secs()),
        nodes,
        counts: ctx.health.counts(),
        parts_queued: ctx.jobs.queue_depth(),
        parts_running: ctx.jobs.running(),
        alerts_firing: ctx
            .health
            .alerts(Some(AlertState::Firing), usize::MAX)
            .len(),
        sshd,
        counters: counters::global(),
    }
}
