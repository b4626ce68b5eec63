//! Health: the one owner of node state. A reader looking for "where does the gateway decide a node
//! is offline" finds it here:
//!
//! - [`monitor`]: the "health" thread: keeps a link to every approved node (redialing when it drops),
//!   pings quiet links and drops dead ones, and re-decides every node's state on each tick;
//! - [`NodeState`]: the states and what each means.
//!
//! Everything else (the API, `/metrics`, alerts, the CLI) reads node state through [`Health`],
//! never from the bus or the registry directly.

pub mod monitor;

use std::sync::Arc;

use serde::Serialize;

use crate::bus::Bus;
use crate::registry::{Approval, Registry};

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
    /// `offline`).
    #[allow(
        dead_code,
        reason = "for the scheduler, once it asks the health module"
    )]
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
#[allow(dead_code, reason = "the alerts engine is being built")]
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

/// The one owner of node state (see the module doc).
pub struct Health {
    registry: Arc<Registry>,
    bus: Arc<Bus>,
}

impl Health {
    pub fn new(registry: Arc<Registry>, bus: Arc<Bus>) -> Arc<Health> {
        Arc::new(Health { registry, bus })
    }

    /// The state of one node; `None` for a node the registry does not know.
    pub fn state(&self, node: &str) -> Option<StateInfo> {
        let approval = self.registry.read().nodes.get(node)?.approval;
        let live = self.registry.live(node);
        let (state, since, reason) = match approval {
            Approval::Pending => (NodeState::Pending, None, "waiting for approval".to_string()),
            Approval::Rejected => (NodeState::Rejected, None, "rejected".to_string()),
            Approval::Approved if self.bus.is_linked(node) => {
                (NodeState::Online, live.online_since, String::new())
            }
            Approval::Approved => (NodeState::Offline, live.last_seen, "not linked".to_string()),
        };
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

    /// Alerts, newest first: those in `state` (all when `None`), at most `limit`.
    #[allow(dead_code, reason = "the alerts engine and its routes are being built")]
    pub fn alerts(&self, state: Option<AlertState>, limit: usize) -> Vec<Alert> {
        let _ = (state, limit);
        Vec::new()
    }

    /// A node's metrics history from `since` (Unix seconds), one point per `step` seconds at most
    /// (downsampled: averages of gauges, last value of counters), oldest first.
    #[allow(dead_code, reason = "the history store and its route are being built")]
    pub fn history(&self, node: &str, since: u64, step: u64) -> Vec<Sample> {
        let _ = (node, since, step);
        Vec::new()
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
