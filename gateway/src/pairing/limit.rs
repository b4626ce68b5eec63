//! `serve --max-nodes`: what counts against the limit, and the refusal beyond it.

use crate::refusal::{Kind, Refusal};
use crate::registry::{Approval, State};

/// Nodes that count against `--max-nodes`: approved ones, and pending ones whose request has not
/// lapsed (rejected ones do not).
pub fn nodes_used(s: &State, now: u64) -> usize {
    s.nodes
        .values()
        .filter(|n| match n.approval {
            Approval::Approved => true,
            Approval::Pending => n.pending_until.is_none_or(|t| t > now),
            Approval::Rejected => false,
        })
        .count()
}

/// The refusal (`node_limit`, 409) for one more node if `s` holds `max` already.
pub fn check_room(s: &State, max: usize, now: u64) -> Result<(), Refusal> {
    let used = nodes_used(s, now);
    if used < max {
        return Ok(());
    }
    Err(Refusal::new(
        Kind::NodeLimit,
        format!(
            "this gateway is full: {used} nodes are approved or pending and it takes at most {max} \
             (serve --max-nodes); remove one (gateway nodes revoke NAME) or raise the limit"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NodeRecord;

    fn node(id: &str, approval: Approval, pending_until: Option<u64>) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public_key: String::new(),
            fingerprint: String::new(),
            approval,
            hostname: String::new(),
            capabilities: Vec::new(),
            labels: Default::default(),
            os: String::new(),
            arch: String::new(),
            version: String::new(),
            ports: None,
            created_at: 0,
            approved_at: None,
            pending_until,
            join_token: String::new(),
        }
    }

    #[test]
    fn approved_and_live_pending_nodes_count_rejected_and_lapsed_do_not() {
        let mut s = State::default();
        for n in [
            node("a", Approval::Approved, None),
            node("p", Approval::Pending, Some(200)),
            node("lapsed", Approval::Pending, Some(50)),
            node("r", Approval::Rejected, None),
        ] {
            s.nodes.insert(n.id.clone(), n);
        }
        assert_eq!(nodes_used(&s, 100), 2);
        assert!(check_room(&s, 3, 100).is_ok());
        let full = check_room(&s, 2, 100).unwrap_err();
        assert_eq!(full.kind, Kind::NodeLimit);
        assert_eq!(full.kind.status(), 409);
        assert!(
            full.message.contains("2 nodes are approved or pending"),
            "{}",
            full.message
        );
        // Once the pending request lapses, its place is free.
        assert!(check_room(&s, 2, 300).is_ok());
    }
}
