//! Metric history: what `GET /api/v1/nodes/{id}/metrics` shows when there is no Prometheus.
//!
//! Beats are averaged into 1-minute points in memory; the monitor writes the finished points of the
//! whole fleet in one lazy batch a minute ([`History::take_finished`], `store::health`), and every
//! ten minutes [`compact`] folds points older than an hour into 10-minute averages and drops what is
//! older than the retention (24 h by default). A node thereby holds at most 60 + 6 × 23 points.
//!
//! Averages: gauges (CPU, load, memory, free space, temperatures) are averaged; counters and sizes
//! (network bytes, uptime, totals) keep their last value; throttling flags are OR-ed, so a brief
//! throttle still shows in the 10-minute point.

use std::collections::HashMap;
use std::sync::Mutex;

use burrow_core::api::{Filesystem, Metrics, NetInterface, Temperature};

use super::Sample;
use crate::store::health as rows;

/// Length of the fine points, and for how long they are kept before they are folded.
pub const FINE_STEP: u64 = 60;
pub const FINE_FOR: u64 = 3600;
/// Length of the coarse points.
pub const COARSE_STEP: u64 = 600;
/// Default retention of samples.
pub const RETENTION: u64 = 24 * 3600;

/// The open minute of each node and the finished points not yet written.
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    open: HashMap<String, (u64, Vec<Metrics>)>,
    finished: Vec<(String, Sample)>,
}

impl History {
    /// A beat's metrics, received at `at`.
    pub fn observe(&self, node: &str, at: u64, metrics: &Metrics) {
        let bucket = at - at % FINE_STEP;
        let mut inner = lock(&self.inner);
        let Inner { open, finished } = &mut *inner;
        match open.get_mut(node) {
            Some((b, beats)) if *b == bucket => beats.push(metrics.clone()),
            Some((b, beats)) => {
                let done = std::mem::take(beats);
                finished.push((node.to_string(), point(*b, &done)));
                *b = bucket;
                beats.push(metrics.clone());
            }
            None => {
                open.insert(node.to_string(), (bucket, vec![metrics.clone()]));
            }
        }
    }

    /// The points finished by `now` (minutes that are over), for the store: `(node, at, step,
    /// JSON)`.
    pub fn take_finished(&self, now: u64) -> Vec<(String, u64, u64, String)> {
        let current = now - now % FINE_STEP;
        let mut inner = lock(&self.inner);
        let Inner { open, finished } = &mut *inner;
        open.retain(|node, (b, beats)| {
            if *b < current {
                finished.push((node.clone(), point(*b, beats)));
                false
            } else {
                true
            }
        });
        finished
            .drain(..)
            .map(|(node, s)| {
                let json = serde_json::to_string(&s.metrics).expect("metrics serialize");
                (node, s.at, FINE_STEP, json)
            })
            .collect()
    }

    /// The node's points not yet in the store (the open minute included), oldest first.
    pub fn unwritten(&self, node: &str) -> Vec<Sample> {
        let inner = lock(&self.inner);
        let mut v: Vec<Sample> = inner
            .finished
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, s)| s.clone())
            .collect();
        if let Some((b, beats)) = inner.open.get(node) {
            v.push(point(*b, beats));
        }
        v
    }

    /// Forgets a node (removed).
    pub fn forget(&self, node: &str) {
        let mut inner = lock(&self.inner);
        inner.open.remove(node);
        inner.finished.retain(|(n, _)| n != node);
    }
}

fn point(at: u64, beats: &[Metrics]) -> Sample {
    let refs: Vec<&Metrics> = beats.iter().collect();
    Sample {
        at,
        metrics: average(&refs),
    }
}

/// Folds fine points older than an hour into coarse ones, and drops what is past `retention`
/// (run on the store's writer thread, in one transaction).
pub fn compact(tx: &rusqlite::Transaction, now: u64, retention: u64) -> rusqlite::Result<()> {
    // Whole coarse intervals only, so each is folded once.
    let edge = now.saturating_sub(FINE_FOR);
    let edge = edge - edge % COARSE_STEP;
    let fine = rows::samples_before(tx, FINE_STEP, edge)?;
    let mut groups: Vec<((String, u64), Vec<Metrics>)> = Vec::new();
    for (node, at, json) in fine {
        let Ok(m) = serde_json::from_str::<Metrics>(&json) else {
            continue;
        };
        let key = (node, at - at % COARSE_STEP);
        match groups.last_mut() {
            Some((k, v)) if *k == key => v.push(m),
            _ => groups.push((key, vec![m])),
        }
    }
    let coarse: Vec<(String, u64, u64, String)> = groups
        .into_iter()
        .map(|((node, at), ms)| {
            let refs: Vec<&Metrics> = ms.iter().collect();
            let json = serde_json::to_string(&average(&refs)).expect("metrics serialize");
            (node, at, COARSE_STEP, json)
        })
        .collect();
    rows::insert_samples(tx, &coarse)?;
    rows::delete_samples_before(tx, FINE_STEP, edge)?;
    rows::prune(tx, now, retention)
}

/// Samples merged into points of `step` seconds (each the average of those in its interval, at
/// the interval's start), oldest first.
pub fn rebucket(mut samples: Vec<Sample>, step: u64) -> Vec<Sample> {
    samples.sort_by_key(|s| s.at);
    let mut out: Vec<Sample> = Vec::new();
    let mut group: Vec<Sample> = Vec::new();
    let flush = |group: &mut Vec<Sample>, out: &mut Vec<Sample>| {
        if let Some(first) = group.first() {
            let at = first.at - first.at % step;
            let refs: Vec<&Metrics> = group.iter().map(|s| &s.metrics).collect();
            out.push(Sample {
                at,
                metrics: average(&refs),
            });
            group.clear();
        }
    };
    for s in samples {
        if group.first().is_some_and(|g| g.at / step != s.at / step) {
            flush(&mut group, &mut out);
        }
        group.push(s);
    }
    flush(&mut group, &mut out);
    out
}

/// The average of several points (see the module doc for what "average" means per field).
pub fn average(ms: &[&Metrics]) -> Metrics {
    let Some(last) = ms.last() else {
        return Metrics::default();
    };
    if ms.len() == 1 {
        return (*last).clone();
    }
    let n = ms.len() as f64;
    let avg = |f: &dyn Fn(&Metrics) -> f64| ms.iter().map(|m| f(m)).sum::<f64>() / n;
    let avg_u = |f: &dyn Fn(&Metrics) -> u64| avg(&|m| f(m) as f64).round() as u64;
    let cores = last.cpu_cores.len();
    Metrics {
        uptime_s: last.uptime_s,
        load1: avg(&|m| m.load1),
        load5: avg(&|m| m.load5),
        load15: avg(&|m| m.load15),
        cpu_percent: avg(&|m| f64::from(m.cpu_percent)) as f32,
        cpu_cores: (0..cores)
            .map(|i| {
                let v: Vec<f32> = ms
                    .iter()
                    .filter_map(|m| m.cpu_cores.get(i).copied())
                    .collect();
                v.iter().sum::<f32>() / v.len().max(1) as f32
            })
            .collect(),
        mem_total: last.mem_total,
        mem_used: avg_u(&|m| m.mem_used),
        mem_available: avg_u(&|m| m.mem_available),
        swap_total: last.swap_total,
        swap_used: avg_u(&|m| m.swap_used),
        disk_total: last.disk_total,
        disk_free: avg_u(&|m| m.disk_free),
        filesystems: last
            .filesystems
            .iter()
            .map(|f| {
                let same: Vec<&Filesystem> = ms
                    .iter()
                    .filter_map(|m| m.filesystems.iter().find(|g| g.mount == f.mount))
                    .collect();
                let k = same.len() as f64;
                let mean = |g: &dyn Fn(&Filesystem) -> u64| {
                    (same.iter().map(|x| g(x) as f64).sum::<f64>() / k).round() as u64
                };
                Filesystem {
                    available: mean(&|x| x.available),
                    free: mean(&|x| x.free),
                    inodes_free: mean(&|x| x.inodes_free),
                    ..f.clone()
                }
            })
            .collect(),
        network: last.network.iter().map(NetInterface::clone).collect(),
        temperatures: last
            .temperatures
            .iter()
            .map(|t| {
                let same: Vec<f32> = ms
                    .iter()
                    .filter_map(|m| m.temperatures.iter().find(|u| u.sensor == t.sensor))
                    .map(|u| u.celsius)
                    .collect();
                Temperature {
                    sensor: t.sensor.clone(),
                    celsius: same.iter().sum::<f32>() / same.len().max(1) as f32,
                }
            })
            .collect(),
        throttled: ms.iter().filter_map(|m| m.throttled).reduce(|a, b| a | b),
        processes: avg(&|m| f64::from(m.processes)).round() as u32,
        agent_rss: avg_u(&|m| m.agent_rss),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn m(cpu: f32, rx: u64) -> Metrics {
        Metrics {
            cpu_percent: cpu,
            mem_total: 1000,
            mem_used: (cpu * 10.0) as u64,
            network: vec![NetInterface {
                name: "eth0".into(),
                rx_bytes: rx,
                tx_bytes: 0,
            }],
            filesystems: vec![Filesystem {
                mount: "/".into(),
                total: 100,
                free: cpu as u64,
                ..Filesystem::default()
            }],
            throttled: Some(if cpu > 50.0 { 4 } else { 0 }),
            ..Metrics::default()
        }
    }

    #[test]
    fn gauges_are_averaged_counters_keep_their_last_value() {
        let (a, b) = (m(10.0, 100), m(60.0, 500));
        let avg = average(&[&a, &b]);
        assert_eq!(avg.cpu_percent, 35.0);
        assert_eq!(avg.mem_used, 350);
        assert_eq!(avg.network[0].rx_bytes, 500);
        assert_eq!(avg.filesystems[0].free, 35);
        assert_eq!(avg.throttled, Some(4), "a throttle in the interval shows");
    }

    #[test]
    fn beats_become_one_point_a_minute() {
        let h = History::default();
        h.observe("pi", 120, &m(10.0, 1));
        h.observe("pi", 150, &m(30.0, 2));
        assert!(h.take_finished(179).is_empty(), "the minute is still open");
        assert_eq!(h.unwritten("pi")[0].metrics.cpu_percent, 20.0);
        h.observe("pi", 185, &m(50.0, 3));
        let done = h.take_finished(185);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].1, done[0].2), (120, 60));
        let later = h.take_finished(300);
        assert_eq!(later.len(), 1, "a quiet node's open minute is closed too");
        assert!(h.unwritten("pi").is_empty());
    }

    /// Issue 8 §3: samples are not durable one by one; a minute of 2,000 nodes' beats is one
    /// batch, one commit.
    #[test]
    fn two_thousand_nodes_cost_one_commit_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let h = History::default();
        for n in 0..2000 {
            let node = format!("pi-{n}");
            h.observe(&node, 600, &m(5.0, 1));
            h.observe(&node, 630, &m(7.0, 2));
        }
        let before = store.commits();
        let batch = h.take_finished(660);
        assert_eq!(batch.len(), 2000);
        store
            .write(move |tx| rows::insert_samples(tx, &batch))
            .unwrap();
        assert_eq!(store.commits() - before, 1);
        let one = store.read(|c| rows::samples(c, "pi-7", 0)).unwrap();
        assert_eq!(one.len(), 1);
    }

    /// Regression guard for the history bound: a day of beats every 30 s leaves 60 fine and at
    /// most 6 × 23 coarse points, and queries rebucket them.
    #[test]
    fn a_day_of_beats_is_compacted_to_a_bounded_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let registry = crate::registry::Registry::with_store(dir.path(), &store).unwrap();
        registry
            .update(|s| {
                s.nodes
                    .insert("pi".into(), crate::health::tests_support::node("pi"));
                Ok::<_, anyhow::Error>(())
            })
            .unwrap();
        let h = Arc::new(History::default());
        let start = 1_700_000_000 - 1_700_000_000 % 600;
        let day = 26 * 3600;
        let mut t = start;
        while t < start + day {
            h.observe("pi", t, &m(((t / 60) % 100) as f32, t));
            if t % 600 == 0 {
                let batch = h.take_finished(t);
                let now = t;
                store
                    .write(move |tx| {
                        rows::insert_samples(tx, &batch)?;
                        compact(tx, now, RETENTION)
                    })
                    .unwrap();
            }
            t += 30;
        }
        let now = t;
        let all = store.read(|c| rows::samples(c, "pi", 0)).unwrap();
        let fine = all.iter().filter(|r| r.1 == FINE_STEP).count();
        let coarse = all.iter().filter(|r| r.1 == COARSE_STEP).count();
        assert!((59..=70).contains(&fine), "{fine} fine points");
        assert!((130..=144).contains(&coarse), "{coarse} coarse points");
        assert!(
            all.iter().all(|r| r.0 + RETENTION + 600 >= now),
            "older than 24 h"
        );
        let samples: Vec<Sample> = all
            .into_iter()
            .map(|(at, _, j)| Sample {
                at,
                metrics: serde_json::from_str(&j).unwrap(),
            })
            .collect();
        let hourly = rebucket(samples, 3600);
        assert!((24..=26).contains(&hourly.len()), "{}", hourly.len());
        assert!(hourly.windows(2).all(|w| w[1].at - w[0].at == 3600));
    }
}
