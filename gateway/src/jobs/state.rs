//! The states of a job on one node, and of a job as a whole (derived, never stored on its own).

use serde_json::{json, Map, Value};

/// Where a job stands on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeState {
    /// Waiting in its lane (node busy, lane busy, node offline with a queue TTL, batch window full).
    Queued,
    /// Sent to the node and not ended (including while its link is down: the node keeps running it).
    Running,
    /// Exit code 0.
    Succeeded,
    /// Non-zero exit, killed by a signal it did not get from burrow, or could not be started.
    Failed,
    /// Killed by the node when its timeout passed.
    TimedOut,
    /// Stopped by a cancel (queued: never ran; running: its processes were killed).
    Cancelled,
    /// Not run: the node was offline and the command was not to be queued.
    Offline,
    /// Not run: the node's policy said no.
    Refused,
    /// The node went away while it ran and never reported, or its agent restarted under it.
    Lost,
    /// Queued past its `queue_ttl_s`; never ran.
    Expired,
    /// The gateway cannot know whether it ran.
    Unknown,
}

impl NodeState {
    /// Every state, in the order summaries list them.
    pub const ALL: [NodeState; 11] = [
        NodeState::Queued,
        NodeState::Running,
        NodeState::Succeeded,
        NodeState::Failed,
        NodeState::TimedOut,
        NodeState::Cancelled,
        NodeState::Offline,
        NodeState::Refused,
        NodeState::Lost,
        NodeState::Expired,
        NodeState::Unknown,
    ];

    /// The name the API and the store use.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Queued => "queued",
            NodeState::Running => "running",
            NodeState::Succeeded => "succeeded",
            NodeState::Failed => "failed",
            NodeState::TimedOut => "timed_out",
            NodeState::Cancelled => "cancelled",
            NodeState::Offline => "offline",
            NodeState::Refused => "refused",
            NodeState::Lost => "lost",
            NodeState::Expired => "expired",
            NodeState::Unknown => "unknown",
        }
    }

    pub fn parse(name: &str) -> Option<NodeState> {
        NodeState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether nothing more will happen to it.
    pub fn is_final(self) -> bool {
        !matches!(self, NodeState::Queued | NodeState::Running)
    }
}

/// The job's own state from its nodes': `queued` while none has started, `running` while any is
/// queued or running, then `succeeded` if every node succeeded, `cancelled` if it was cancelled
/// before any node ran, else the first of `failed`, `timed_out`, `lost`, `unknown`, `cancelled`,
/// `expired`, `offline`, `refused` that some node has (the worst news first).
pub fn job_state(nodes: impl IntoIterator<Item = NodeState> + Clone) -> NodeState {
    let states: Vec<NodeState> = nodes.into_iter().collect();
    if states.is_empty() {
        return NodeState::Succeeded;
    }
    if states.iter().all(|s| *s == NodeState::Queued) {
        return NodeState::Queued;
    }
    if states.iter().any(|s| !s.is_final()) {
        return NodeState::Running;
    }
    if states.iter().all(|s| *s == NodeState::Succeeded) {
        return NodeState::Succeeded;
    }
    const WORST_FIRST: [NodeState; 8] = [
        NodeState::Failed,
        NodeState::TimedOut,
        NodeState::Lost,
        NodeState::Unknown,
        NodeState::Cancelled,
        NodeState::Expired,
        NodeState::Offline,
        NodeState::Refused,
    ];
    WORST_FIRST
        .into_iter()
        .find(|w| states.contains(w))
        .unwrap_or(NodeState::Failed)
}

/// `{"queued": n, "running": n, …}` with every state present.
pub fn summary(nodes: impl IntoIterator<Item = NodeState>) -> Value {
    let mut counts = [0u64; NodeState::ALL.len()];
    for s in nodes {
        counts[NodeState::ALL.iter().position(|x| *x == s).unwrap_or(0)] += 1;
    }
    let mut out = Map::new();
    for (s, n) in NodeState::ALL.iter().zip(counts) {
        out.insert(s.name().into(), json!(n));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::NodeState::*;
    use super::*;

    #[test]
    fn the_job_state_is_derived_worst_news_first() {
        assert_eq!(job_state([Queued, Queued]), Queued);
        assert_eq!(job_state([Queued, Succeeded]), Running);
        assert_eq!(job_state([Running, Failed]), Running);
        assert_eq!(job_state([Succeeded, Succeeded]), Succeeded);
        assert_eq!(job_state([Succeeded, Offline, Failed]), Failed);
        assert_eq!(job_state([Succeeded, Offline]), Offline);
        assert_eq!(job_state([Cancelled, Expired]), Cancelled);
    }

    #[test]
    fn a_summary_has_every_state_and_names_round_trip() {
        let s = summary([Succeeded, Succeeded, Offline]);
        assert_eq!(s.as_object().unwrap().len(), NodeState::ALL.len());
        assert_eq!(s["succeeded"], 2);
        assert_eq!(s["unknown"], 0);
        for st in NodeState::ALL {
            assert_eq!(NodeState::parse(st.name()), Some(st));
        }
    }
}
