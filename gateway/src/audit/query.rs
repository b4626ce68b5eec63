//! Reading the trail back: entries matching a filter, oldest first, a page at a time. The API
//! (`GET /api/v1/audit`) and the offline CLI (`gateway audit ls`, `export`) share it; it reads the
//! files, never the gateway's memory, so it needs no running gateway.

use std::path::Path;
use std::sync::RwLock;

use serde_json::Value;

use super::files;

/// Entries per page unless `limit` says otherwise, and the most one page holds.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// RFC 3339, Unix seconds, or an age (`2h`) back from now.
pub fn parse_since(text: &str) -> anyhow::Result<u64> {
    if let Ok(unix) = text.parse::<u64>() {
        return Ok(unix);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()));
    }
    if let Ok(age) = humantime::parse_duration(text) {
        return Ok(crate::registry::now().saturating_sub(age.as_secs()));
    }
    anyhow::bail!(
        "--since {text:?}: give a time (2026-12-01T10:00:00Z), Unix seconds, or an age (2h)"
    )
}

/// What to list. Every field given must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Entries at or after this time (Unix seconds).
    pub since: Option<u64>,
    /// Entries about this node: the target, or one of `detail.nodes`.
    pub node: Option<String>,
    /// Entries by this actor: the token name, `uid:N(name)`, or the bare Unix user name.
    pub actor: Option<String>,
    /// Entries with this action, or whose action starts with it and a dot (`exec` finds
    /// `exec.end`).
    pub action: Option<String>,
    /// The first seq to look at (the `next` of the page before).
    pub cursor: Option<u64>,
    pub limit: usize,
}

/// One page: the entries, and the cursor of the next page if there is more.
#[derive(Debug)]
pub struct Page {
    pub entries: Vec<Value>,
    pub next: Option<u64>,
}

impl Filter {
    pub fn matches(&self, e: &Value) -> bool {
        let since = self.since.map(crate::registry::rfc3339);
        // Timestamps are RFC 3339 in UTC with whole seconds: text order is time order.
        since.is_none_or(|s| e["ts"].as_str().is_some_and(|ts| ts >= s.as_str()))
            && self.node.as_deref().is_none_or(|n| about_node(e, n))
            && self.actor.as_deref().is_none_or(|a| by_actor(e, a))
            && self.action.as_deref().is_none_or(|a| {
                e["action"].as_str().is_some_and(|x| {
                    x == a || x.strip_prefix(a).is_some_and(|rest| rest.starts_with('.'))
                })
            })
    }
}

fn about_node(e: &Value, node: &str) -> bool {
    e["target"] == node
        || e["detail"]["nodes"]
            .as_array()
            .is_some_and(|ns| ns.iter().any(|n| n == node))
        || e["detail"]["results"].get(node).is_some()
}

fn by_actor(e: &Value, actor: &str) -> bool {
    let Some(name) = e["actor"].as_str() else {
        return false;
    };
    name == actor || name.ends_with(&format!("({actor})")) || e["jti"] == actor
}

/// The page of `log`'s trail that `filter` asks for.
pub fn page(log: &Path, filter: &Filter, rotating: Option<&RwLock<()>>) -> anyhow::Result<Page> {
    let mut entries = Vec::new();
    let mut next = None;
    walk(log, filter.cursor.unwrap_or(0), rotating, &mut |e| {
        if !filter.matches(&e) {
            return true;
        }
        if entries.len() == filter.limit {
            next = e["seq"].as_u64();
            return false;
        }
        entries.push(e);
        true
    })?;
    Ok(Page { entries, next })
}

/// Calls `f` with each entry of the trail from seq `from` on, in order, until it returns false.
/// Lines that are not JSON with a seq are skipped (finding them is `verify`'s job), and so is any
/// seq not above the last one seen. With `rotating` (the writer's lock), the files are listed and
/// opened while no rotation renames them; reading them then may go on beside the writer.
pub fn walk(
    log: &Path,
    from: u64,
    rotating: Option<&RwLock<()>>,
    f: &mut dyn FnMut(Value) -> bool,
) -> anyhow::Result<()> {
    let held = rotating.map(|l| l.read().unwrap_or_else(|e| e.into_inner()));
    let opened: Vec<_> = files::in_order(log)?
        .into_iter()
        .filter_map(|p| std::fs::File::open(&p).ok().map(|f| (p, f)))
        .collect();
    drop(held);
    let mut last = 0;
    let mut going = true;
    for (path, file) in opened {
        files::each_line_of(file, &path, &mut |_, line| {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                return true;
            };
            let Some(seq) = v["seq"].as_u64() else {
                return true;
            };
            if seq < from || (seq <= last && last > 0) {
                return true;
            }
            last = seq;
            going = f(v);
            going
        })?;
        if !going {
            break;
        }
    }
    Ok(())
}
