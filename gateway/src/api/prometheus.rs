//! `GET /metrics`: takes a [`Snapshot`] of what the gateway knows now and answers it in the
//! Prometheus text format ([`crate::metrics`] renders). On the API port it needs a token like any
//! read (viewer or above); `serve --metrics-listen` serves the same answer without one on an
//! address of the operator's choosing ([`Listeners::with_metrics`], [`serve_metrics`]).

use std::net::SocketAddr;

use tiny_http::{Request, Server};

use super::{error_reply, respond, Ctx, Listeners, Reply};
use crate::metrics::{self, counters, text, NodeView, Snapshot, SshdView};
use crate::refusal::{Kind, Refusal};
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
        alerts_firing: ctx.health.firing_count(),
        sshd,
        counters: counters::global(),
    }
}

impl Listeners {
    /// Also serves `GET /metrics` on `addr` without a token (`serve --metrics-listen`), for a
    /// network the operator trusts. Every other path there is 404. An unspecified address (all
    /// interfaces) is refused unless `insecure`; any other is served with a warning in the log, as
    /// whoever reaches it (every local user, on loopback) reads node names and figures.
    pub fn with_metrics(mut self, addr: SocketAddr, insecure: bool) -> anyhow::Result<Listeners> {
        if addr.ip().is_unspecified() && !insecure {
            anyhow::bail!(
                "refusing to serve /metrics without a token on every interface ({addr}): give the \
                 address of the trusted network's interface, or pass --insecure"
            );
        }
        let server =
            Server::http(addr).map_err(|e| anyhow::anyhow!("serving /metrics on {addr}: {e}"))?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        log::warn!(
            "serving /metrics without a token on http://{bound}/metrics: whoever reaches that \
             address reads node names, states and figures"
        );
        self.metrics = Some(server);
        Ok(self)
    }
}

/// A request on the `--metrics-listen` port: `GET /metrics` answered without a token, anything else
/// 404 (405 for another method on `/metrics`).
pub(super) fn serve_metrics(ctx: &Ctx, request: Request) {
    let path = request.url().split('?').next().unwrap_or("");
    let method = request.method().as_str().to_uppercase();
    let reply = match (path.trim_end_matches('/'), method.as_str()) {
        ("/metrics", "GET") => answer(ctx),
        ("/metrics", _) => error_reply(&Refusal::new(
            Kind::MethodNotAllowed,
            format!("{method} is not allowed on /metrics; use GET"),
        )),
        _ => error_reply(&Refusal::new(
            Kind::NotFound,
            format!("no route {path}: this port serves only /metrics"),
        )),
    };
    let route = if path.trim_end_matches('/') == "/metrics" {
        "/metrics"
    } else {
        crate::metrics::counters::UNMATCHED
    };
    crate::metrics::counters::global().request(&method, route, reply.status());
    respond(request, reply);
}
