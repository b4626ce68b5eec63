//! What `/metrics` counts as it happens rather than reads on each scrape: API requests (by method,
//! route pattern and status), ended job parts (by kind and state) and the exec latency histogram.
//!
//! One process-wide set ([`global`]): the API's dispatcher and the job engine report into it
//! without a handle threaded through them. The renderer takes any [`Counters`], so unit tests use
//! their own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// Upper bounds of the exec latency buckets, seconds: 1 ms to 60 s.
pub const EXEC_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram of durations over fixed buckets, lock-free.
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last one is above every bound.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Cumulative (bound, count) pairs, the sum in seconds and the total count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, &bound) in self.bounds.iter().enumerate() {
            total += self.counts[i].load(Ordering::Relaxed);
            buckets.push((bound, total));
        }
        total += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, total)
    }
}

/// A request's key: method, route pattern, status.
pub type RequestKey = (&'static str, &'static str, u16);

/// The counters of one gateway process.
pub struct Counters {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    /// Ended job parts by (job kind, final state).
    parts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Exec parts that ran: from the submit to the node's end.
    pub exec_latency: Histogram,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            requests: Mutex::default(),
            parts: Mutex::default(),
            exec_latency: Histogram::new(&EXEC_BUCKETS),
        }
    }
}

/// The route label of a request that matched no route (so the label set stays bounded whatever
/// paths clients send).
pub const UNMATCHED: &str = "unmatched";

impl Counters {
    /// Counts one answered request. `route` is the table's pattern ([`UNMATCHED`] if none).
    pub fn request(&self, method: &str, route: &'static str, status: u16) {
        let key = (method_label(method), route, status);
        *lock(&self.requests).entry(key).or_default() += 1;
    }

    /// Counts one ended job part; `latency` for exec parts that ran.
    pub fn part_ended(&self, kind: &'static str, state: &'static str, latency: Option<Duration>) {
        *lock(&self.parts).entry((kind, state)).or_default() += 1;
        if let Some(d) = latency {
            self.exec_latency.observe(d);
        }
    }

    pub fn requests(&self) -> Vec<(RequestKey, u64)> {
        lock(&self.requests).iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn parts(&self) -> Vec<((&'static str, &'static str), u64)> {
        lock(&self.parts).iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// The method as a label: one of the methods HTTP defines, else `other` (a client choosing the
/// method must not choose how many series there are).
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    KNOWN
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .unwrap_or("other")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's counters.
pub fn global() -> &'static Counters {
    static COUNTERS: LazyLock<Counters> = LazyLock::new(Counters::default);
    &COUNTERS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let h = Histogram::new(&EXEC_BUCKETS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(200));
        h.observe(Duration::from_secs(120));
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(count, 4);
        assert_eq!(buckets[0], (0.001, 2));
        assert_eq!(buckets.iter().find(|b| b.0 == 0.25).unwrap().1, 3);
        assert_eq!(buckets.last().unwrap(), &(60.0, 3));
        assert!((sum - 120.2015).abs() < 1e-6, "{sum}");
    }

    /// Methods a client makes up all count as `other`: the series stay bounded.
    #[test]
    fn made_up_methods_share_one_label() {
        let c = Counters::default();
        c.request("get", "/healthz", 200);
        c.request("BREW", UNMATCHED, 404);
        c.request("XYZZY", UNMATCHED, 404);
        let r = c.requests();
        assert_eq!(
            r,
            vec![
                (("GET", "/healthz", 200), 1),
                (("other", UNMATCHED, 404), 2)
            ]
        );
    }
}
