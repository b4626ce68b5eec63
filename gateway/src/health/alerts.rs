//! The alerts engine: each rule, per node, fires once when its condition has held for the rule's
//! duration, and resolves once when the value is back past the rule's `clear` mark (hysteresis: a
//! value wobbling around the threshold does not fire again and again). Alerts are stored
//! ([`crate::store::health`]), so a firing alert survives a restart and is not fired twice.
//!
//! The engine is a pure state machine over (rule, node): [`Engine::evaluate`] takes what a node
//! looks like now and returns the alerts that fired or resolved; the monitor stores and notifies.
//!
//! Resource rules are judged only while a node is linked: an offline node's last figures are not
//! fresh, so they neither start nor end anything (its firing alerts stay until it is back and well).

use std::collections::HashMap;

use burrow_core::api::Metrics;

use super::rules::{Rule, Rules};
use super::{Alert, AlertState, NodeState};

/// What the engine judges a node by.
pub struct Look<'a> {
    pub node: &'a str,
    pub linked: bool,
    pub metrics: Option<&'a Metrics>,
    pub state: NodeState,
    /// Seconds in `state`.
    pub state_for_s: u64,
}

#[derive(Debug, Default)]
struct Track {
    /// Since when the condition has held, while not yet firing.
    holding_since: Option<u64>,
    /// The alert firing now.
    firing: Option<Alert>,
}

/// Per (rule, node): whether its condition holds, since when, and the alert it fired.
#[derive(Debug, Default)]
pub struct Engine {
    tracks: HashMap<(String, String), Track>,
    next_id: u64,
}

impl Engine {
    /// An engine that goes on from stored alerts: those still firing, and the highest id used.
    pub fn resume(firing: Vec<Alert>, max_id: u64) -> Engine {
        let mut e = Engine {
            tracks: HashMap::new(),
            next_id: max_id + 1,
        };
        for a in firing {
            let Some(node) = a.node.clone() else { continue };
            e.next_id = e.next_id.max(a.id + 1);
            e.tracks.insert(
                (a.rule.clone(), node),
                Track {
                    holding_since: None,
                    firing: Some(a),
                },
            );
        }
        e
    }

    /// Alerts firing now.
    pub fn firing(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self
            .tracks
            .values()
            .filter_map(|t| t.firing.clone())
            .collect();
        v.sort_by_key(|a| a.id);
        v
    }

    /// How many alerts are firing now.
    pub fn firing_count(&self) -> usize {
        self.tracks.values().filter(|t| t.firing.is_some()).count()
    }

    /// Summaries of the resource alerts firing for `node` (they make it `limited`).
    pub fn resource_firing(&self, node: &str, rules: &Rules) -> Vec<String> {
        let mut v: Vec<&Alert> = self
            .tracks
            .iter()
            .filter(|((rule, n), _)| {
                n == node
                    && rules
                        .rules
                        .iter()
                        .any(|r| &r.name == rule && r.metric.state().is_none())
            })
            .filter_map(|(_, t)| t.firing.as_ref())
            .collect();
        v.sort_by_key(|a| a.id);
        v.into_iter().map(|a| a.summary.clone()).collect()
    }

    /// Judges one node against every rule at `now`; returns the alerts that changed (fired, or
    /// resolved).
    pub fn evaluate(&mut self, rules: &Rules, look: &Look, now: u64) -> Vec<Alert> {
        let mut changed = Vec::new();
        for rule in &rules.rules {
            let key = (rule.name.clone(), look.node.to_string());
            let track = self.tracks.entry(key).or_default();
            // (condition holds, value is back past `clear`, the value, what it is about)
            let judged = judge(rule, look);
            let Some((holds, cleared, value, what)) = judged else {
                // No value: nothing starts; what fires goes on firing.
                track.holding_since = None;
                continue;
            };
            match &mut track.firing {
                None if holds => {
                    // A state rule has held for as long as the node has been in the state.
                    let since = match rule.metric.state() {
                        Some(_) => now.saturating_sub(look.state_for_s),
                        None => *track.holding_since.get_or_insert(now),
                    };
                    if now.saturating_sub(since) >= rule.for_s {
                        let alert = Alert {
                            id: self.next_id,
                            rule: rule.name.clone(),
                            node: Some(look.node.to_string()),
                            severity: rule.severity.clone(),
                            state: AlertState::Firing,
                            summary: summary(rule, &what, value),
                            value: Some(value),
                            started_at: now,
                            resolved_at: None,
                        };
                        self.next_id += 1;
                        track.holding_since = None;
                        track.firing = Some(alert.clone());
                        changed.push(alert);
                    }
                }
                None => track.holding_since = None,
                Some(_) if cleared => {
                    let mut alert = track.firing.take().expect("firing");
                    alert.state = AlertState::Resolved;
                    alert.resolved_at = Some(now);
                    alert.value = Some(value);
                    changed.push(alert);
                }
                Some(_) => {}
            }
        }
        changed
    }

    /// Resolves what fires for rules that are gone (a reload dropped them) or nodes that are gone
    /// (removed from the registry).
    pub fn prune(&mut self, rules: &Rules, exists: impl Fn(&str) -> bool, now: u64) -> Vec<Alert> {
        let mut changed = Vec::new();
        self.tracks.retain(|(rule, node), track| {
            let rule_gone = !rules.rules.iter().any(|r| &r.name == rule);
            let node_gone = !exists(node);
            if !rule_gone && !node_gone {
                return true;
            }
            if let Some(mut alert) = track.firing.take() {
                alert.state = AlertState::Resolved;
                alert.resolved_at = Some(now);
                alert.summary = format!(
                    "{} ({})",
                    alert.summary,
                    if node_gone {
                        "node removed"
                    } else {
                        "rule removed"
                    }
                );
                changed.push(alert);
            }
            false
        });
        changed
    }
}

fn judge(rule: &Rule, look: &Look) -> Option<(bool, bool, f64, String)> {
    match rule.metric.state() {
        Some(state) => {
            let held = look.state == state;
            let value = if held { look.state_for_s as f64 } else { 0.0 };
            Some((held, !held, value, state.as_str().to_string()))
        }
        None if !look.linked => None,
        None => {
            let (value, what) = rule.metric.value(look.metrics?)?;
            Some((rule.holds(value), rule.cleared(value), value, what))
        }
    }
}

fn summary(rule: &Rule, what: &str, value: f64) -> String {
    match rule.metric.state() {
        Some(_) => format!("node {what} for {} s", value as u64),
        None => rule.describe(what, value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::rules::Metric;

    fn mem(percent: u64) -> Metrics {
        Metrics {
            mem_total: 100,
            mem_available: 100 - percent,
            ..Metrics::default()
        }
    }

    fn rules(threshold: f64, for_s: u64) -> Rules {
        Rules::parse(
            &format!(
                "[[rule]]\nname = \"mem\"\nmetric = \"memory\"\nthreshold = {threshold}\nfor = \"{for_s}s\"\n\
                 [[rule]]\nname = \"off\"\nmetric = \"offline\"\nfor = \"120s\"\n"
            ),
            "test",
        )
        .unwrap()
    }

    fn look<'a>(m: &'a Metrics, state: NodeState, for_s: u64) -> Look<'a> {
        Look {
            node: "pi",
            linked: state != NodeState::Offline,
            metrics: Some(m),
            state,
            state_for_s: for_s,
        }
    }

    /// Fires once after its duration, stays quiet while it holds, and does not resolve (nor fire
    /// again) while the value wobbles between `clear` and the threshold: hysteresis.
    #[test]
    fn fires_once_after_the_duration_and_resolves_once_with_hysteresis() {
        let r = rules(90.0, 60);
        let mut e = Engine::default();
        let ev = |e: &mut Engine, pct, t| {
            let m = mem(pct);
            e.evaluate(&r, &look(&m, NodeState::Online, 0), t)
        };
        assert!(ev(&mut e, 95, 1000).is_empty(), "not yet held for 60 s");
        assert!(ev(&mut e, 95, 1059).is_empty());
        let fired = ev(&mut e, 96, 1060);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].state, AlertState::Firing);
        assert_eq!(fired[0].summary, "memory 96 % (threshold > 90 %)");
        assert_eq!(e.resource_firing("pi", &r), vec![fired[0].summary.clone()]);
        for (t, pct) in [(1070, 97), (1080, 89), (1090, 91), (1100, 86)] {
            assert!(ev(&mut e, pct, t).is_empty(), "{pct} % at {t}");
        }
        let resolved = ev(&mut e, 85, 1110);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].state, AlertState::Resolved);
        assert_eq!(resolved[0].id, fired[0].id);
        assert_eq!(resolved[0].resolved_at, Some(1110));
        assert!(ev(&mut e, 10, 1120).is_empty());
        assert!(e.firing().is_empty());
        assert_eq!(e.firing_count(), 0);
        // A dip below the threshold restarts the clock.
        assert!(ev(&mut e, 95, 2000).is_empty());
        assert!(ev(&mut e, 80, 2030).is_empty());
        assert!(ev(&mut e, 95, 2059).is_empty());
        assert!(ev(&mut e, 95, 2100).is_empty());
        assert_eq!(ev(&mut e, 95, 2119).len(), 1);
    }

    #[test]
    fn an_offline_node_neither_starts_nor_ends_resource_alerts() {
        let r = rules(90.0, 0);
        let mut e = Engine::default();
        let full = mem(99);
        assert!(e
            .evaluate(&r, &look(&full, NodeState::Offline, 5), 10)
            .is_empty());
        assert_eq!(
            e.evaluate(&r, &look(&full, NodeState::Online, 0), 11).len(),
            1
        );
        let fine = mem(1);
        assert!(e
            .evaluate(&r, &look(&fine, NodeState::Offline, 1), 12)
            .is_empty());
        assert_eq!(e.firing().len(), 1, "still firing while offline");
        assert_eq!(e.firing_count(), 1);
        // Missing figures (an older agent) are no value either.
        let old = Metrics::default();
        assert!(e
            .evaluate(&r, &look(&old, NodeState::Online, 1), 13)
            .is_empty());
        assert_eq!(e.firing().len(), 1);
    }

    #[test]
    fn node_offline_fires_after_two_minutes_and_resolves_when_back() {
        let r = rules(90.0, 0);
        let mut e = Engine::default();
        let m = mem(1);
        assert!(e
            .evaluate(&r, &look(&m, NodeState::Offline, 119), 119)
            .is_empty());
        let fired = e.evaluate(&r, &look(&m, NodeState::Offline, 120), 120);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].rule, "off");
        assert_eq!(fired[0].summary, "node offline for 120 s");
        assert!(e.resource_firing("pi", &r).is_empty(), "not a resource");
        let back = e.evaluate(&r, &look(&m, NodeState::Online, 0), 200);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].state, AlertState::Resolved);
    }

    #[test]
    fn a_reload_that_drops_a_rule_resolves_its_alerts_and_stored_ones_do_not_fire_again() {
        let r = rules(1.0, 0);
        let mut e = Engine::default();
        let m = mem(50);
        let fired = e.evaluate(&r, &look(&m, NodeState::Online, 0), 5);
        assert_eq!(fired.len(), 1);
        // A restart: the firing alert comes back from the store, nothing fires twice.
        let mut e = Engine::resume(e.firing(), fired[0].id);
        assert!(e
            .evaluate(&r, &look(&m, NodeState::Online, 0), 6)
            .is_empty());
        let mut only_offline = r.clone();
        only_offline.rules.retain(|r| r.metric == Metric::Offline);
        let gone = e.prune(&only_offline, |_| true, 7);
        assert_eq!(gone.len(), 1);
        assert!(gone[0].summary.ends_with("(rule removed)"));
        assert_eq!(e.firing(), vec![]);
        let next = e.evaluate(&r, &look(&m, NodeState::Online, 0), 8);
        assert!(next[0].id > fired[0].id, "ids keep increasing");
    }
}
