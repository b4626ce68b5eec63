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

    /// How many nodes are in each state (every state present, zeros included).
    pub fn counts(&self) -> Vec<(NodeState, usize)> {
        let states = self.states();
        NodeState::ALL
            .iter()
            .map(|&s| (s, states.iter().filter(|(_, i)| i.state == s).count()))
            .collect()
    }
}
