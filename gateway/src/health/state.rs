//! Where the gateway decides a node's state: a pure function of what is known about the node now
//! ([`Inputs`]) to a [`NodeState`] and the reason, in plain words. No clock, no locks, no I/O: the
//! monitor gathers the inputs, this decides, and the table in the tests says what each case gives.
//!
//! Order of precedence for an approved node: not linked → `offline` (or `error` when its handshakes
//! keep failing); linked → `error` when it reports faults or its clock is off by more than
//! [`MAX_SKEW_S`]; then `limited` when a resource alert fires or its heartbeats are late; else
//! `online`.

use burrow_core::api::Fault;

use super::NodeState;
use crate::registry::Approval;

/// A clock further than this from the gateway's (seconds, either way) is a fault of the node.
pub const MAX_SKEW_S: i64 = 60;
/// Handshakes failing this many times in a row (with no success between) put a node in `error`.
pub const HANDSHAKE_FAILURES: u32 = 3;
/// The beat interval assumed when an agent does not say (older agents).
pub const DEFAULT_INTERVAL_S: u64 = 30;

/// Seconds after the previous beat (or the link's start) at which a beat is late: its interval and
/// half again, plus 5 s for a slow machine or link. 30 s → 50 s.
pub fn late_after(interval_s: u32) -> u64 {
    let i = match interval_s {
        0 => DEFAULT_INTERVAL_S,
        n => u64::from(n),
    };
    i + i / 2 + 5
}

/// What the state of one node is decided from.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    /// Its pairing state (`None`: approved; the common case reads shorter).
    pub approval: Option<Approval>,
    /// Its authenticated link is up.
    pub linked: bool,
    /// Why the last link ended, if one did.
    pub link_lost: Option<&'a str>,
    /// Seconds since the last heartbeat on the current link, or since the link came up when none
    /// has arrived on it yet.
    pub beat_age_s: Option<u64>,
    /// The interval the last beat announced (0: not said).
    pub interval_s: u32,
    /// Faults the last beat reported.
    pub faults: &'a [Fault],
    /// The node's clock minus the gateway's at the last beat, seconds (`None`: not said).
    pub skew_s: Option<i64>,
    /// Failed handshakes in a row, and the last one's error.
    pub handshake_failures: u32,
    pub handshake_error: Option<&'a str>,
    /// Summaries of the resource alerts firing for the node now.
    pub firing: &'a [String],
}

/// The node's state and why (empty for a healthy `online` node).
pub fn decide(i: &Inputs) -> (NodeState, String) {
    match i.approval.unwrap_or(Approval::Approved) {
        Approval::Pending => return (NodeState::Pending, "waiting for approval".into()),
        Approval::Rejected => return (NodeState::Rejected, "rejected by an operator".into()),
        Approval::Approved => {}
    }
    if !i.linked {
        if i.handshake_failures >= HANDSHAKE_FAILURES {
            return (
                NodeState::Error,
                format!(
                    "{} handshakes in a row failed: {}",
                    i.handshake_failures,
                    i.handshake_error.unwrap_or("no reason given")
                ),
            );
        }
        let why = match i.link_lost {
            Some(reason) => format!("link lost: {reason}"),
            None => "not linked".into(),
        };
        return (NodeState::Offline, why);
    }
    if !i.faults.is_empty() {
        let said: Vec<String> = i
            .faults
            .iter()
            .map(|f| format!("{} ({})", f.message, f.code))
            .collect();
        return (NodeState::Error, said.join("; "));
    }
    if let Some(skew) = i.skew_s.filter(|s| s.abs() > MAX_SKEW_S) {
        let way = if skew > 0 { "ahead of" } else { "behind" };
        return (
            NodeState::Error,
            format!(
                "its clock is {} s {way} the gateway's (bound {MAX_SKEW_S} s)",
                skew.abs()
            ),
        );
    }
    let mut why: Vec<String> = i.firing.to_vec();
    if let Some(age) = i.beat_age_s.filter(|&a| a > late_after(i.interval_s)) {
        why.push(format!(
            "heartbeat late: none for {age} s (expected within {} s)",
            late_after(i.interval_s)
        ));
    }
    if why.is_empty() {
        (NodeState::Online, String::new())
    } else {
        (NodeState::Limited, why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault() -> Vec<Fault> {
        vec![Fault {
            code: burrow_core::api::fault::POLICY_INVALID.into(),
            message: "policy.toml line 3: unknown key".into(),
        }]
    }

    /// Every case of the decision, one row each: (what, inputs, state, words the reason holds).
    #[test]
    fn the_decision_table() {
        let faults = fault();
        let firing = vec!["memory 95 % used (threshold 90 %)".to_string()];
        let linked = Inputs {
            linked: true,
            beat_age_s: Some(3),
            ..Inputs::default()
        };
        let rows: Vec<(&str, Inputs, NodeState, &str)> = vec![
            (
                "pending",
                Inputs {
                    approval: Some(Approval::Pending),
                    linked: true,
                    ..Inputs::default()
                },
                NodeState::Pending,
                "approval",
            ),
            (
                "rejected",
                Inputs {
                    approval: Some(Approval::Rejected),
                    ..Inputs::default()
                },
                NodeState::Rejected,
                "rejected",
            ),
            (
                "never linked",
                Inputs::default(),
                NodeState::Offline,
                "not linked",
            ),
            (
                "link lost",
                Inputs {
                    link_lost: Some("connection reset"),
                    ..Inputs::default()
                },
                NodeState::Offline,
                "link lost: connection reset",
            ),
            (
                "two failed handshakes are not yet an error",
                Inputs {
                    handshake_failures: 2,
                    handshake_error: Some("bad signature"),
                    ..Inputs::default()
                },
                NodeState::Offline,
                "not linked",
            ),
            (
                "handshakes keep failing",
                Inputs {
                    handshake_failures: 3,
                    handshake_error: Some("bad signature: hello"),
                    ..Inputs::default()
                },
                NodeState::Error,
                "3 handshakes in a row failed: bad signature",
            ),
            ("healthy", linked.clone(), NodeState::Online, ""),
            (
                "a fault",
                Inputs {
                    faults: &faults,
                    firing: &firing,
                    ..linked.clone()
                },
                NodeState::Error,
                "unknown key (policy_invalid)",
            ),
            (
                "clock 61 s ahead",
                Inputs {
                    skew_s: Some(61),
                    ..linked.clone()
                },
                NodeState::Error,
                "61 s ahead of",
            ),
            (
                "clock 61 s behind",
                Inputs {
                    skew_s: Some(-61),
                    ..linked.clone()
                },
                NodeState::Error,
                "61 s behind",
            ),
            (
                "clock 60 s off is within the bound",
                Inputs {
                    skew_s: Some(-60),
                    ..linked.clone()
                },
                NodeState::Online,
                "",
            ),
            (
                "a resource alert",
                Inputs {
                    firing: &firing,
                    ..linked.clone()
                },
                NodeState::Limited,
                "memory 95 %",
            ),
            (
                "beat 50 s old is on time",
                Inputs {
                    beat_age_s: Some(50),
                    ..linked.clone()
                },
                NodeState::Online,
                "",
            ),
            (
                "beat 51 s old is late",
                Inputs {
                    beat_age_s: Some(51),
                    ..linked.clone()
                },
                NodeState::Limited,
                "heartbeat late: none for 51 s",
            ),
            (
                "a 120 s interval makes 51 s on time",
                Inputs {
                    beat_age_s: Some(51),
                    interval_s: 120,
                    ..linked.clone()
                },
                NodeState::Online,
                "",
            ),
            (
                "handshake failures do not matter once linked",
                Inputs {
                    handshake_failures: 9,
                    ..linked.clone()
                },
                NodeState::Online,
                "",
            ),
        ];
        for (what, inputs, state, words) in rows {
            let (got, reason) = decide(&inputs);
            assert_eq!(got, state, "{what}: {reason}");
            assert!(reason.contains(words), "{what}: {reason:?} lacks {words:?}");
            if state == NodeState::Online {
                assert!(reason.is_empty(), "{what}: {reason}");
            }
        }
    }

    #[test]
    fn late_is_one_and_a_half_intervals_and_5_s() {
        assert_eq!(late_after(0), 50);
        assert_eq!(late_after(30), 50);
        assert_eq!(late_after(10), 20);
    }
}
