//! Denied requests (401/403 at the route check), counted in memory per (source, route, reason) and
//! written out as one `denied` entry per key and interval: a flood of bad tokens costs a map update
//! per request, not a line and an fsync, and adds at most [`MAX_KEYS`] entries per interval.

use std::collections::HashMap;

use serde_json::{json, Value};

/// Distinct keys counted per interval; sources beyond it are counted under [`OTHER`].
pub const MAX_KEYS: usize = 256;
/// The source of requests counted once the map is full.
pub const OTHER: &str = "(other sources)";
/// Reasons are cut to this many bytes (they quote the verifier's message, never the token).
const MAX_REASON: usize = 160;

#[derive(Hash, PartialEq, Eq)]
struct Key {
    source: String,
    route: String,
    reason: String,
}

struct Count {
    status: u16,
    n: u64,
    first: u64,
    last: u64,
}

/// The counts of the current interval.
#[derive(Default)]
pub struct Denied {
    counts: HashMap<Key, Count>,
}

impl Denied {
    /// Counts one denied request.
    pub fn note(&mut self, source: &str, route: &str, status: u16, reason: &str) {
        let mut reason = reason.to_string();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let mut key = Key {
            source: source.to_string(),
            route: route.to_string(),
            reason,
        };
        if !self.counts.contains_key(&key) && self.counts.len() >= MAX_KEYS {
            key.source = OTHER.to_string();
        }
        let t = crate::registry::now();
        let c = self.counts.entry(key).or_insert(Count {
            status,
            n: 0,
            first: t,
            last: t,
        });
        c.n += 1;
        c.last = t;
    }

    /// The interval's entries (one per key), leaving the counts empty.
    pub fn take(&mut self) -> Vec<Value> {
        let mut out: Vec<(Key, Count)> = self.counts.drain().collect();
        out.sort_by_key(|(_, c)| c.first);
        out.into_iter()
            .map(|(k, c)| {
                super::entry(
                    &super::Actor::named(&k.source),
                    "denied",
                    &k.route,
                    json!({"status": c.status, "reason": k.reason, "count": c.n,
                           "first": crate::registry::rfc3339(c.first),
                           "last": crate::registry::rfc3339(c.last)}),
                )
            })
            .collect()
    }
}
