//! Health: the one owner of node state. A reader looking for "where does the gateway decide a node
//! is offline" finds it here:
//!
//! - [`state`]: the decision itself, a pure function of what is known about a node (linked, its
//!   last beat, its faults and clock, failed handshakes, resource alerts) to its state and why;
//! - [`monitor`]: the "health" thread: keeps a link to every approved node (redialing when it drops),
//!   pings quiet links and drops dead ones (`serve --dead-after`, 20 s), re-decides every node's
//!   state each second, records each change (timestamped, stored, logged once, sent to
//!   [`Health::subscribe`]rs), and runs the alerts;
//! - [`rules`]: thresholds and the rules file; [`alerts`]: fire once, resolve once;
//!   [`notify`]: the hook and the Alertmanager webhook; [`history`]: metric samples;
//! - [`NodeState`]: the states and what each means.
//!
//! The bus reports what happens on the links ([`crate::bus::LinkEvent`]); everything else (the API,
//! `/metrics`, alerts, the CLI, the job scheduler through [`crate::bus::Bus::takes_commands`]) reads
//! node state through [`Health`], never from the bus or the registry directly.

pub mod alerts;
pub mod history;
pub mod monitor;
pub mod notify;
pub mod rules;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use burrow_core::api::Fault;
use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use crate::bus::{Bus, LinkEvent};
use crate::registry::{now, Approval, Registry};
use crate::store::health as rows;
use crate::store::Store;
use alerts::Engine;
use history::History;
use rules::Rules;

/// Where a node stands, as the API, `/metrics` and alerts show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Asked to pair, not yet approved.
    Pending,
    /// Linked, answering, nothing over its threshold.
    Online,
    /// Linked but degraded: a resource over its threshold, or heartbeats late.
    Limited,
    /// Not linked, or no answer within the dead-link bound.
    Offline,
    /// The node reports a fault of its own, or its handshakes keep failing.
    Error,
    /// Refused by an operator.
    Rejected,
}

impl NodeState {
    /// Every state, in the order `/metrics` and summaries list them.
    pub const ALL: [NodeState; 6] = [
        NodeState::Pending,
        NodeState::Online,
        NodeState::Limited,
        NodeState::Offline,
        NodeState::Error,
        NodeState::Rejected,
    ];

    /// The state of a lowercase name.
    pub fn parse(name: &str) -> Option<NodeState> {
        NodeState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The lowercase name (`online`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Online => "online",
            NodeState::Limited => "limited",
            NodeState::Offline => "offline",
            NodeState::Error => "error",
            NodeState::Rejected => "rejected",
        }
    }

    /// Whether commands are sent to a node in this state (the others queue or are reported
    /// `offline`); the scheduler asks [`Bus::takes_commands`], which the monitor keeps in step.
    pub fn takes_commands(self) -> bool {
        matches!(self, NodeState::Online | NodeState::Limited)
    }
}

/// A node's state, since when (Unix seconds), and why, in plain words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateInfo {
    pub state: NodeState,
    /// When the node entered this state (Unix seconds); `None` when not known (never linked since
    /// the gateway started and no history).
    pub since: Option<u64>,
    /// Why, for people ("link lost: connection reset", "disk / 93 % full").
    pub reason: String,
}

/// Whether an alert holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Resolved,
}

/// One alert: a rule whose condition held for its duration on one node (or the gateway itself).
/// It fires once and resolves once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Unique, increasing.
    pub id: u64,
    /// The rule's name (`disk_full`, `node_offline`).
    pub rule: String,
    /// The node it is about; `None` for the gateway itself.
    pub node: Option<String>,
    /// The rule's severity (`warning`, `critical`).
    pub severity: String,
    pub state: AlertState,
    /// For people ("disk / 93 % full (threshold 90 %) for 5m").
    pub summary: String,
    /// The figure that crossed the threshold, when there is one.
    pub value: Option<f64>,
    /// When it fired (Unix seconds).
    pub started_at: u64,
    /// When it resolved.
    pub resolved_at: Option<u64>,
}

/// One point of a node's metrics history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub at: u64,
    pub metrics: burrow_core::api::Metrics,
}

/// A change of a node's state, as recorded (and sent to subscribers).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateChange {
    pub node: String,
    /// The state before (`None`: none recorded yet).
    pub from: Option<NodeState>,
    pub to: NodeState,
    /// Unix seconds.
    pub at: u64,
    pub reason: String,
}

/// What the bus has told about one node since the gateway started.
#[derive(Debug, Default, Clone)]
struct Facts {
    link_up_at: Option<u64>,
    link_lost: Option<String>,
    beat_at: Option<u64>,
    interval_s: u32,
    faults: Vec<Fault>,
    skew_s: Option<i64>,
    handshake_failures: u32,
    handshake_error: Option<String>,
}

/// A node's recorded state.
#[derive(Debug, Clone)]
struct Recorded {
    state: NodeState,
    since: u64,
    reason: String,
}

/// The one owner of node state (see the module doc).
pub struct Health {
    registry: Arc<Registry>,
    bus: Arc<Bus>,
    store: Arc<Store>,
    /// When this gateway started (Unix seconds).
    started: u64,
    facts: Mutex<HashMap<String, Facts>>,
    recorded: Mutex<HashMap<String, Recorded>>,
    engine: Mutex<Engine>,
    rules: Mutex<Arc<Rules>>,
    history: History,
    /// Wakes the monitor when a link comes or goes (bounded to one pending wake).
    wake: (Sender<()>, Receiver<()>),
    subscribers: Mutex<Vec<Sender<StateChange>>>,
}

impl Health {
    /// The health module of a gateway: picks up the stored states and firing alerts, uses the
    /// built-in rules until [`Health::set_rules`], and hears the bus's link events.
    pub fn new(registry: Arc<Registry>, bus: Arc<Bus>) -> Arc<Health> {
        let store = registry.store().clone();
        let loaded = store.read(|c| {
            Ok((
                rows::last_states(c)?,
                rows::alerts(c, Some(AlertState::Firing), u32::MAX)?,
                rows::max_alert_id(c)?,
            ))
        });
        let (states, firing, max_id) = loaded.unwrap_or_else(|e| {
            log::error!("reading the stored node states and alerts: {e:#}");
            (Vec::new(), Vec::new(), 0)
        });
        let recorded = states
            .into_iter()
            .filter_map(|(node, since, state)| {
                let state = NodeState::parse(&state)?;
                let reason = String::new();
                Some((
                    node,
                    Recorded {
                        state,
                        since,
                        reason,
                    },
                ))
            })
            .collect();
        let health = Arc::new(Health {
            registry,
            bus: bus.clone(),
            store,
            started: now(),
            facts: Mutex::new(HashMap::new()),
            recorded: Mutex::new(recorded),
            engine: Mutex::new(Engine::resume(firing, max_id)),
            rules: Mutex::new(Arc::new(Rules::builtin())),
            history: History::default(),
            wake: crossbeam_channel::bounded(1),
            subscribers: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&health);
        bus.on_event(Box::new(move |event| {
            if let Some(h) = weak.upgrade() {
                h.observe(event);
            }
        }));
        health
    }

    /// What the bus saw (called on bus threads: only this module's own locks are taken).
    fn observe(&self, event: LinkEvent<'_>) {
        let t = now();
        let mut facts = lock(&self.facts);
        let wake = match event {
            LinkEvent::Up { node } => {
                *facts.entry(node.to_string()).or_default() = Facts {
                    link_up_at: Some(t),
                    ..Facts::default()
                };
                true
            }
            LinkEvent::Down { node, reason } => {
                let f = facts.entry(node.to_string()).or_default();
                f.link_up_at = None;
                f.beat_at = None;
                f.link_lost = Some(reason.to_string());
                true
            }
            LinkEvent::Beat {
                node,
                beat,
                received_ms,
            } => {
                let f = facts.entry(node.to_string()).or_default();
                let skewed = |s: Option<i64>| s.is_some_and(|s| s.abs() > state::MAX_SKEW_S);
                let skew_s = (beat.sent_at_ms > 0)
                    .then(|| (beat.sent_at_ms as i64 - received_ms as i64) / 1000);
                // A beat that brings or clears a fault changes the state: decide at once.
                let wake = f.faults != beat.faults || skewed(f.skew_s) != skewed(skew_s);
                f.beat_at = Some(t);
                f.interval_s = beat.interval_s;
                f.faults.clone_from(&beat.faults);
                f.skew_s = skew_s;
                drop(facts);
                self.history.observe(node, t, &beat.metrics);
                if wake {
                    let _ = self.wake.0.try_send(());
                }
                return;
            }
            LinkEvent::HandshakeFailed { node, port, error } => {
                let f = facts.entry(node.to_string()).or_default();
                f.handshake_failures += 1;
                f.handshake_error = Some(format!("port {port}: {error}"));
                true
            }
            LinkEvent::HandshakeOk { node } => {
                let f = facts.entry(node.to_string()).or_default();
                f.handshake_failures = 0;
                f.handshake_error = None;
                false
            }
        };
        drop(facts);
        if wake {
            let _ = self.wake.0.try_send(());
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Rules> {
        lock(&self.rules).clone()
    }

    /// Puts new rules in force (a SIGHUP reload); the monitor judges by them from its next tick.
    pub fn set_rules(&self, rules: Rules) {
        log::info!(
            "alert rules from {}: {} rules{}{}",
            rules.source,
            rules.rules.len(),
            if rules.hook.is_some() { ", a hook" } else { "" },
            if rules.webhook.is_some() {
                ", a webhook"
            } else {
                ""
            },
        );
        *lock(&self.rules) = Arc::new(rules);
        let _ = self.wake.0.try_send(());
    }

    /// Hears every recorded state change from now on (a bounded queue: a subscriber that does not
    /// keep up misses changes, it never slows the monitor).
    #[allow(
        dead_code,
        reason = "for /metrics and the status route (the expose helper)"
    )]
    pub fn subscribe(&self) -> Receiver<StateChange> {
        let (tx, rx) = crossbeam_channel::bounded(1024);
        lock(&self.subscribers).push(tx);
        rx
    }

    /// Decides a node's state now (no recording): see [`state::decide`].
    fn decide(&self, node: &str, approval: Approval, now: u64) -> (NodeState, String) {
        let linked = self.bus.is_linked(node);
        let rules = self.rules();
        let firing = lock(&self.engine).resource_firing(node, &rules);
        let facts = lock(&self.facts).get(node).cloned().unwrap_or_default();
        let beat_age_s = match linked {
            true => facts
                .beat_at
                .or(facts.link_up_at)
                .map(|t| now.saturating_sub(t)),
            false => None,
        };
        state::decide(&state::Inputs {
            approval: Some(approval),
            linked,
            link_lost: facts.link_lost.as_deref(),
            beat_age_s,
            interval_s: facts.interval_s,
            faults: &facts.faults,
            skew_s: facts.skew_s,
            handshake_failures: facts.handshake_failures,
            handshake_error: facts.handshake_error.as_deref(),
            firing: &firing,
        })
    }

    /// The state of one node; `None` for a node the registry does not know.
    pub fn state(&self, node: &str) -> Option<StateInfo> {
        let approval = self.registry.read().nodes.get(node)?.approval;
        let t = now();
        let (state, reason) = self.decide(node, approval, t);
        let recorded = lock(&self.recorded)
            .get(node)
            .filter(|r| r.state == state)
            .map(|r| r.since);
        let since = recorded.or_else(|| {
            let live = self.registry.live(node);
            match state {
                NodeState::Offline => live.last_seen,
                NodeState::Pending | NodeState::Rejected => None,
                _ => live.online_since.or(Some(t)),
            }
        });
        Some(StateInfo {
            state,
            since,
            reason,
        })
    }

    /// Every known node's state, by node id.
    pub fn states(&self) -> Vec<(String, StateInfo)> {
        let ids: Vec<String> = self.registry.read().nodes.keys().cloned().collect();
        ids.into_iter()
            .filter_map(|id| self.state(&id).map(|s| (id, s)))
            .collect()
    }

    /// Alerts, newest first: those in `state` (all when `None`), at most `limit` (and at most
    /// 1,000).
    /// How many alerts are firing now (from memory: the engine holds each firing alert; `alerts`
    /// reads at most 1,000 of them from the store).
    pub fn firing_count(&self) -> usize {
        lock(&self.engine).firing_count()
    }

    pub fn alerts(&self, state: Option<AlertState>, limit: usize) -> Vec<Alert> {
        let limit = limit.min(1000) as u32;
        self.store
            .read(|c| rows::alerts(c, state, limit))
            .unwrap_or_else(|e| {
                log::error!("reading alerts: {e:#}");
                Vec::new()
            })
    }

    /// A node's metrics history from `since` (Unix seconds), one point per `step` seconds at most
    /// (downsampled: averages of gauges, last value of counters), oldest first.
    pub fn history(&self, node: &str, since: u64, step: u64) -> Vec<Sample> {
        let stored = self
            .store
            .read(|c| rows::samples(c, node, since))
            .unwrap_or_else(|e| {
                log::error!("reading the metric history of {node}: {e:#}");
                Vec::new()
            });
        let mut samples: Vec<Sample> = stored
            .into_iter()
            .filter_map(|(at, _, json)| {
                let metrics = serde_json::from_str(&json).ok()?;
                Some(Sample { at, metrics })
            })
            .collect();
        samples.extend(
            self.history
                .unwritten(node)
                .into_iter()
                .filter(|s| s.at >= since),
        );
        history::rebucket(samples, step.max(1))
    }

    /// A node's recorded state changes, newest first, at most `limit`.
    pub fn changes(&self, node: &str, limit: u32) -> Vec<StateChange> {
        let rows = self
            .store
            .read(|c| rows::states(c, node, limit.saturating_add(1)))
            .unwrap_or_else(|e| {
                log::error!("reading the state history of {node}: {e:#}");
                Vec::new()
            });
        let states: Vec<(u64, Option<NodeState>, String)> = rows
            .into_iter()
            .map(|(at, s, reason)| (at, NodeState::parse(&s), reason))
            .collect();
        let mut out = Vec::new();
        for (i, (at, to, reason)) in states.iter().enumerate().take(limit as usize) {
            let Some(to) = *to else { continue };
            out.push(StateChange {
                node: node.to_string(),
                from: states.get(i + 1).and_then(|s| s.1),
                to,
                at: *at,
                reason: reason.clone(),
            });
        }
        out
    }

    /// How many nodes are in each state (every state present, zeros included).
    pub fn counts(&self) -> Vec<(NodeState, usize)> {
        let states = self.states();
        NodeState::ALL
            .iter()
            .map(|&s| (s, states.iter().filter(|(_, i)| i.state == s).count()))
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod tests_support {
    use std::collections::BTreeMap;

    use crate::registry::NodeRecord;

    /// An approved node record for tests.
    pub fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public_key: format!("ssh-ed25519 AAAA {id}"),
            fingerprint: format!("SHA256:{id}"),
            approval: crate::registry::Approval::Approved,
            hostname: id.into(),
            capabilities: Vec::new(),
            labels: BTreeMap::new(),
            os: "linux".into(),
            arch: "x86_64".into(),
            version: "test".into(),
            ports: Some([1, 2]),
            created_at: 0,
            approved_at: Some(0),
            pending_until: None,
            join_token: "t".into(),
        }
    }
}
