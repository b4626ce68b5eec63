//! Which nodes a command is for: the target syntax of the API and the CLI, and its resolution
//! against the registry.
//!
//! A target is a JSON value or a string in the CLI's syntax (the gateway parses both, so the CLI passes
//! what the user typed unchanged):
//!
//! | string             | JSON                              | nodes                                  |
//! |--------------------|-----------------------------------|----------------------------------------|
//! | `pi-1`             | `"pi-1"`                          | that node                              |
//! | `pi-1,pi-2`        | `["pi-1","pi-2"]`                 | those nodes                            |
//! | `*`                | `"*"`                             | every approved node                    |
//! | `glob:pi-*`        | `{"glob":"pi-*"}`                 | ids matching the glob (`*`, `?`)       |
//! | `cap:gpu`          | `{"capability":"gpu"}`            | nodes with that capability             |
//! | `label:site=home`  | `{"labels":{"site":"home"}}`      | nodes with every label given           |
//! | `glob:pi-*,cap:gpu`| `{"glob":"pi-*","capability":"gpu"}` | all given keys must match           |
//! | `any:cap:gpu`      | `{"any":{"capability":"gpu"}}`    | exactly one: the least loaded          |
//!
//! Selectors match approved nodes only; a named node must exist. Labels and capabilities are the ones
//! fixed at approval (the node cannot change them; operators can), so a node cannot make itself a
//! target.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::refusal::{bad_request, Refusal};
use crate::registry::{Approval, NodeRecord};

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Named nodes, in the order given (duplicates removed).
    Ids(Vec<String>),
    /// Approved nodes matching every given condition.
    Select(Selector),
    /// Exactly one node of the inner target's selection.
    Any(Box<Target>),
}

/// Conditions that must all hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// `*` alone is the glob that matches every id.
    pub glob: Option<String>,
    pub capabilities: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl Target {
    /// From the API's `target` (a string in CLI syntax, a list of ids or an object).
    pub fn from_json(value: &Value) -> Result<Target, Refusal> {
        match value {
            Value::String(s) => Target::parse(s),
            Value::Array(items) => {
                let ids = items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad_request("a target list holds node ids (strings)"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                ids_target(ids)
            }
            Value::Object(map) => {
                if let Some(inner) = map.get("any") {
                    if map.len() > 1 {
                        return Err(bad_request(
                            "\"any\" takes the whole selection as its value",
                        ));
                    }
                    return Ok(Target::Any(Box::new(Target::from_json(inner)?)));
                }
                let mut sel = Selector::default();
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("glob", Value::String(g)) => sel.glob = Some(check_glob(g)?),
                        ("capability", Value::String(c)) => sel.capabilities.push(c.clone()),
                        ("capabilities", Value::Array(cs)) => {
                            for c in cs {
                                let c = c.as_str().ok_or_else(|| {
                                    bad_request("\"capabilities\" is a list of strings")
                                })?;
                                sel.capabilities.push(c.into());
                            }
                        }
                        ("labels", Value::Object(ls)) => {
                            for (k, v) in ls {
                                let v = v.as_str().ok_or_else(|| {
                                    bad_request(format!("label {k:?}: values are strings"))
                                })?;
                                sel.labels.insert(k.clone(), v.into());
                            }
                        }
                        _ => {
                            return Err(bad_request(format!(
                                "unknown target key {key:?} or wrong type (known: glob, \
                                 capability, capabilities, labels, any)"
                            )))
                        }
                    }
                }
                if sel == Selector::default() {
                    return Err(bad_request("an empty target object selects nothing"));
                }
                Ok(Target::Select(sel))
            }
            _ => Err(bad_request(
                "\"target\" is a node id, a list of ids, \"*\", or an object such as \
                 {\"labels\":{\"site\":\"home\"}}",
            )),
        }
    }

    /// The CLI syntax (see the module doc).
    pub fn parse(text: &str) -> Result<Target, Refusal> {
        let text = text.trim();
        if text.is_empty() {
            return Err(bad_request("the target is empty"));
        }
        if let Some(rest) = text.strip_prefix("any:") {
            return Ok(Target::Any(Box::new(Target::parse(rest)?)));
        }
        let mut ids = Vec::new();
        let mut sel = Selector::default();
        let mut selectors = 0;
        for term in text.split(',').map(str::trim) {
            if term.is_empty() {
                return Err(bad_request(format!("empty term in target {text:?}")));
            }
            if term == "*" {
                sel.glob.get_or_insert_with(|| "*".into());
                selectors += 1;
            } else if let Some(g) = term.strip_prefix("glob:") {
                sel.glob = Some(check_glob(g)?);
                selectors += 1;
            } else if let Some(c) = term.strip_prefix("cap:") {
                if c.is_empty() {
                    return Err(bad_request("cap: needs a capability name"));
                }
                sel.capabilities.push(c.into());
                selectors += 1;
            } else if let Some(l) = term.strip_prefix("label:") {
                let (k, v) = l.split_once('=').ok_or_else(|| {
                    bad_request(format!("label:{l} needs KEY=VALUE, as in label:site=home"))
                })?;
                if k.is_empty() {
                    return Err(bad_request("label: needs a key"));
                }
                sel.labels.insert(k.into(), v.into());
                selectors += 1;
            } else if term.contains(':') || term.contains('*') || term.contains('?') {
                return Err(bad_request(format!(
                    "unknown target term {term:?}: use a node id, *, glob:PATTERN, cap:NAME, \
                     label:KEY=VALUE or any:…"
                )));
            } else {
                ids.push(term.to_string());
            }
        }
        match (ids.is_empty(), selectors) {
            (false, 0) => ids_target(ids),
            (true, _) => Ok(Target::Select(sel)),
            (false, _) => Err(bad_request(format!(
                "target {text:?} mixes node ids and selectors: give a list of ids, or selectors \
                 that must all match"
            ))),
        }
    }

    /// The nodes it names, in id order (named ids: in the order given). Unknown named ids are an
    /// error; `any` resolves to its candidates (the scheduler picks one).
    pub fn resolve<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a NodeRecord> + Clone,
    ) -> Result<Vec<String>, Refusal> {
        match self {
            Target::Ids(ids) => {
                for id in ids {
                    if !nodes.clone().into_iter().any(|n| &n.id == id) {
                        return Err(crate::refusal::not_found(format!("no node {id:?}")));
                    }
                }
                Ok(ids.clone())
            }
            Target::Select(sel) => Ok(nodes
                .into_iter()
                .filter(|n| n.approval == Approval::Approved && sel.matches(n))
                .map(|n| n.id.clone())
                .collect()),
            Target::Any(inner) => inner.resolve(nodes),
        }
    }

    pub fn is_any(&self) -> bool {
        matches!(self, Target::Any(_))
    }
}

impl Selector {
    pub fn matches(&self, node: &NodeRecord) -> bool {
        self.glob.as_deref().is_none_or(|g| glob_match(g, &node.id))
            && self
                .capabilities
                .iter()
                .all(|c| node.capabilities.contains(c))
            && self
                .labels
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
    }
}

fn ids_target(ids: Vec<String>) -> Result<Target, Refusal> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        if id.is_empty() {
            return Err(bad_request("empty node id in target"));
        }
        if !out.contains(&id) {
            out.push(id);
        }
    }
    if out.is_empty() {
        return Err(bad_request("the target list is empty"));
    }
    Ok(Target::Ids(out))
}

fn check_glob(g: &str) -> Result<String, Refusal> {
    if g.is_empty() || g.len() > 256 {
        return Err(bad_request("a glob is 1 to 256 characters"));
    }
    Ok(g.to_string())
}

/// `*` matches any run of characters, `?` one character; everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(id: &str, caps: &[&str], labels: &[(&str, &str)], approval: Approval) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public_key: String::new(),
            fingerprint: String::new(),
            approval,
            hostname: id.into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            os: "linux".into(),
            arch: "aarch64".into(),
            version: "0".into(),
            ports: None,
            created_at: 0,
            approved_at: None,
            pending_until: None,
            join_token: String::new(),
        }
    }

    fn fleet() -> Vec<NodeRecord> {
        vec![
            node("pi-1", &["gpio"], &[("site", "home")], Approval::Approved),
            node("pi-2", &["gpu"], &[("site", "home")], Approval::Approved),
            node("nas", &["gpu"], &[("site", "office")], Approval::Approved),
            node("pi-3", &["gpu"], &[("site", "home")], Approval::Pending),
        ]
    }

    fn ids(t: &Target) -> Vec<String> {
        t.resolve(fleet().iter()).unwrap()
    }

    #[test]
    fn cli_syntax_and_json_select_the_same_nodes() {
        let cases = [
            ("*", json!("*"), vec!["pi-1", "pi-2", "nas"]),
            ("glob:pi-*", json!({"glob": "pi-*"}), vec!["pi-1", "pi-2"]),
            ("cap:gpu", json!({"capability": "gpu"}), vec!["pi-2", "nas"]),
            (
                "label:site=home",
                json!({"labels": {"site": "home"}}),
                vec!["pi-1", "pi-2"],
            ),
            (
                "label:site=home,cap:gpu",
                json!({"labels": {"site": "home"}, "capability": "gpu"}),
                vec!["pi-2"],
            ),
            ("nas,pi-1,nas", json!(["nas", "pi-1"]), vec!["nas", "pi-1"]),
        ];
        for (text, value, want) in cases {
            let a = Target::parse(text).unwrap();
            let b = Target::from_json(&value).unwrap();
            assert_eq!(ids(&a), want, "{text}");
            assert_eq!(ids(&b), want, "{value}");
        }
        let any = Target::parse("any:cap:gpu").unwrap();
        assert!(any.is_any());
        assert_eq!(ids(&any), vec!["pi-2", "nas"]);
        assert_eq!(
            Target::from_json(&json!({"any": {"capability": "gpu"}})).unwrap(),
            any
        );
    }

    #[test]
    fn bad_targets_are_refused_with_a_reason() {
        for bad in [
            "",
            "pi-1,",
            "pi-1,cap:gpu",
            "label:site",
            "cap:",
            "host:x",
            "pi-*",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
        for bad in [json!(5), json!({}), json!({"colour": "red"}), json!([1])] {
            assert!(Target::from_json(&bad).is_err(), "{bad}");
        }
        let err = Target::parse("ghost").unwrap().resolve(fleet().iter());
        assert!(err.is_err());
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("pi-*", "pi-12"));
        assert!(glob_match("*", ""));
        assert!(glob_match("p?-*2", "pi-12"));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(!glob_match("pi-?", "pi-12"));
        assert!(!glob_match("pi", "pi-1"));
    }
}
