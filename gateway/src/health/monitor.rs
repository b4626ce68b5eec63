//! The health thread ("health"): keeps a link to every approved node (redialing when it drops),
//! pings quiet links and drops dead ones, and once a second (and at once when a link comes or goes)
//! re-decides every node's state ([`super::state`]), records what changed, and runs the alerts.
//!
//! Dead links: a link with no frame for [`Settings::ping_after`] (5 s) gets a ping; with none for
//! [`Settings::dead_after`] (`serve --dead-after`, 20 s) it is dropped: a frozen agent or a cut
//! network is `offline` within the bound plus a tick. Pings are answered by the agent's reader,
//! never behind a running command, and any frame (output, a beat) counts as an answer.
//!
//! A restart: every node starts unlinked. For the first `dead_after` the gateway does not record
//! an approved node that has not linked yet as gone `offline` (it is being redialed): a restart
//! does not fill every node's history with offline/online pairs.
//!
//! Writes: alerts are stored durably (one commit for all that changed in a tick) before the hook or
//! webhook hears of them; state changes go to the store lazily as they happen; metric samples in
//! one lazy batch a minute ([`super::history`]), compacted every ten minutes.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use super::alerts::Look;
use super::notify::{Notice, Notifier};
use super::{lock, Alert, AlertState, Health, NodeState, Recorded, StateChange};
use crate::registry::{now, Approval};
use crate::store::health as rows;

/// How often states are re-decided and links checked.
const TICK: Duration = Duration::from_secs(1);
/// Unlinked approved nodes are redialed every this many ticks.
const DIAL_EVERY: u64 = 2;
/// How often finished metric points are written, and firing alerts re-sent to the webhook.
const FLUSH_EVERY: Duration = Duration::from_secs(60);
/// How often the history is compacted and pruned.
const COMPACT_EVERY: Duration = Duration::from_secs(600);

/// The monitor's bounds (`serve` flags).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A quiet link gets a ping after this.
    pub ping_after: Duration,
    /// A link with no frame for this long is dropped (`--dead-after`).
    pub dead_after: Duration,
    /// How long metric samples are kept (`--metrics-retention`).
    pub retention: Duration,
}

impl Settings {
    /// The bounds for a dead-link bound of `dead_after`: pings after a quarter of it (5 s of 20 s),
    /// at least 1 s.
    pub fn new(dead_after: Duration, retention: Duration) -> Settings {
        Settings {
            ping_after: (dead_after / 4).max(Duration::from_secs(1)),
            dead_after,
            retention,
        }
    }
}

/// Runs until `stop` is dropped or sent to ("health" thread). The hook and webhook run on the
/// notifier's own thread, which this one owns and joins.
pub fn spawn(
    health: Arc<Health>,
    settings: Settings,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    let notifier = Notifier::start()?;
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let mut m = Monitor {
                health,
                settings,
                notifier,
                ticks: 0,
                flushed: Instant::now(),
                compacted: Instant::now(),
            };
            let wake = m.health.wake.1.clone();
            loop {
                select! {
                    recv(stop) -> _ => break,
                    recv(wake) -> _ => m.judge(now()),
                    default(TICK) => m.tick(),
                }
            }
            m.flush(now());
        })
}

struct Monitor {
    health: Arc<Health>,
    settings: Settings,
    notifier: Notifier,
    ticks: u64,
    flushed: Instant,
    compacted: Instant,
}

impl Monitor {
    fn tick(&mut self) {
        let h = self.health.clone();
        self.ticks += 1;
        if self.ticks % DIAL_EVERY == 1 {
            let approved: Vec<String> = h
                .registry
                .read()
                .nodes
                .values()
                .filter(|n| n.approval == Approval::Approved)
                .map(|n| n.id.clone())
                .collect();
            for id in approved {
                h.bus.dial(&id);
            }
        }
        h.bus
            .probe(self.settings.ping_after, self.settings.dead_after);
        let t = now();
        self.judge(t);
        if self.flushed.elapsed() >= FLUSH_EVERY {
            self.flushed = Instant::now();
            self.flush(t);
            self.repeat_to_webhook();
        }
        if self.compacted.elapsed() >= COMPACT_EVERY {
            self.compacted = Instant::now();
            let retention = self.settings.retention.as_secs();
            h.store
                .write_lazy(move |tx| super::history::compact(tx, t, retention));
        }
    }

    /// Writes the finished metric points of every node in one batch.
    fn flush(&self, t: u64) {
        let points = self.health.history.take_finished(t);
        if !points.is_empty() {
            self.health
                .store
                .write_lazy(move |tx| rows::insert_samples(tx, &points));
        }
    }

    fn repeat_to_webhook(&self) {
        let rules = self.health.rules();
        let Some(webhook) = rules.webhook.clone() else {
            return;
        };
        let alerts = lock(&self.health.engine).firing();
        if !alerts.is_empty() {
            self.notifier.send(Notice::Repeat { alerts, webhook });
        }
    }

    /// Runs the alerts, then decides and records every node's state.
    fn judge(&self, t: u64) {
        let h = self.health.clone();
        let nodes: Vec<(String, Approval)> = h
            .registry
            .read()
            .nodes
            .values()
            .map(|n| (n.id.clone(), n.approval))
            .collect();
        let known: HashSet<&str> = nodes.iter().map(|(id, _)| id.as_str()).collect();
        let rules = h.rules();
        let mut changed_alerts = Vec::new();
        for (id, approval) in &nodes {
            if *approval != Approval::Approved {
                continue;
            }
            let (state, since) = match lock(&h.recorded).get(id) {
                Some(r) => (r.state, r.since),
                None => (NodeState::Offline, h.started),
            };
            let live = h.registry.live(id);
            let look = Look {
                node: id,
                linked: h.bus.is_linked(id),
                metrics: live.metrics.as_ref(),
                state,
                state_for_s: t.saturating_sub(since),
            };
            let fired = lock(&h.engine).evaluate(&rules, &look, t);
            changed_alerts.extend(fired);
        }
        let pruned = lock(&h.engine).prune(&rules, |n| known.contains(n), t);
        changed_alerts.extend(pruned);
        // Stored before anyone is told (all in one commit), so the API shows what the hook says.
        let queued: Vec<_> = changed_alerts
            .iter()
            .map(|a| {
                let a = a.clone();
                h.store.queue(move |tx| rows::put_alert(tx, &a))
            })
            .collect();
        for q in queued {
            if let Err(e) = q.and_then(crate::store::Pending::wait) {
                log::error!("storing an alert: {e:#}");
            }
        }
        for alert in changed_alerts {
            self.alert_changed(alert, &rules);
        }

        let grace = h.started + self.settings.dead_after.as_secs();
        for (id, approval) in &nodes {
            let (state, reason) = h.decide(id, *approval, t);
            let linked = h.bus.is_linked(id);
            h.bus.hold(id, linked && !state.takes_commands());
            let before = lock(&h.recorded).get(id).cloned();
            if before.as_ref().is_some_and(|r| r.state == state) {
                if let Some(r) = lock(&h.recorded).get_mut(id) {
                    r.reason = reason;
                }
                continue;
            }
            let seen_this_run = lock(&h.facts).get(id).is_some_and(|f| {
                f.link_up_at.is_some() || f.link_lost.is_some() || f.handshake_failures > 0
            });
            if state == NodeState::Offline && t < grace && !seen_this_run {
                continue;
            }
            self.record(id, before.map(|r| r.state), state, reason, t);
        }
        // Nodes removed from the registry: forget them.
        let gone: Vec<String> = lock(&h.recorded)
            .keys()
            .filter(|n| !known.contains(n.as_str()))
            .cloned()
            .collect();
        for id in gone {
            lock(&h.recorded).remove(&id);
            lock(&h.facts).remove(&id);
            h.history.forget(&id);
            h.bus.hold(&id, false);
        }
    }

    fn record(&self, node: &str, from: Option<NodeState>, to: NodeState, reason: String, t: u64) {
        let h = &self.health;
        match from {
            Some(from) if reason.is_empty() => {
                log::info!("node {node}: {} -> {}", from.as_str(), to.as_str())
            }
            Some(from) => log::info!(
                "node {node}: {} -> {}: {reason}",
                from.as_str(),
                to.as_str()
            ),
            None => log::info!("node {node}: {} {reason}", to.as_str()),
        }
        lock(&h.recorded).insert(
            node.to_string(),
            Recorded {
                state: to,
                since: t,
                reason: reason.clone(),
            },
        );
        let (n, r) = (node.to_string(), reason.clone());
        h.store
            .write_lazy(move |tx| rows::record_state(tx, &n, t, to.as_str(), &r));
        let change = StateChange {
            node: node.to_string(),
            from,
            to,
            at: t,
            reason,
        };
        lock(&h.subscribers).retain(|s| match s.try_send(change.clone()) {
            Ok(()) => true,
            Err(crossbeam_channel::TrySendError::Full(_)) => true,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
        });
    }

    fn alert_changed(&self, alert: Alert, rules: &super::rules::Rules) {
        let node = alert.node.as_deref().unwrap_or("gateway");
        match alert.state {
            AlertState::Firing => log::warn!(
                "alert {} fired for {node} ({}): {}",
                alert.rule,
                alert.severity,
                alert.summary
            ),
            AlertState::Resolved => log::info!(
                "alert {} resolved for {node}: {}",
                alert.rule,
                alert.summary
            ),
        }
        if rules.hook.is_some() || rules.webhook.is_some() {
            self.notifier.send(Notice::Changed {
                alert,
                hook: rules.hook.clone(),
                webhook: rules.webhook.clone(),
            });
        }
    }
}
