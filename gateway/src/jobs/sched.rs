//! The scheduler: which queued part starts where and when (lanes, the node's limit, batch windows,
//! `any:` choice and failover, queue TTLs).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::state::NodeState;
use super::{lock, Entry, Job, Jobs, DEFAULT_NODE_LIMIT};
use crate::refusal::{Kind, Refusal};
use crate::registry::now;

impl Jobs {
    /// The least loaded linked node of `candidates` not in `skip`: fewest running and queued
    /// commands, then lowest CPU.
    pub(super) fn least_loaded(&self, candidates: &[String], skip: &[String]) -> Option<String> {
        let s = lock(&self.sched);
        candidates
            .iter()
            .filter(|n| !skip.contains(n) && self.bus.takes_commands(n))
            .min_by(|a, b| {
                let load = |n: &String| {
                    let q = s.nodes.get(n);
                    let queued: usize = q.map_or(0, |q| q.lanes.values().map(VecDeque::len).sum());
                    let cpu = self.registry.live(n).metrics.map_or(0.0, |m| m.cpu_percent);
                    (q.map_or(0, |q| q.running) + queued, cpu)
                };
                let (la, ca) = load(a);
                let (lb, cb) = load(b);
                la.cmp(&lb).then(ca.total_cmp(&cb))
            })
            .cloned()
    }

    /// Starts what may start, expires what waited too long, reports offline what may not wait.
    pub fn pump(self: &Arc<Self>) {
        self.pump_keeping(None);
    }

    /// [`Jobs::pump`], except that a part of `keep` that can start is not given a thread but
    /// returned, for the caller to run ([`super::Submit::run_in_waiter`]).
    pub(super) fn pump_keeping(
        self: &Arc<Self>,
        keep: Option<&Arc<Job>>,
    ) -> Option<(Arc<Job>, usize, String, bool)> {
        if self.stopping.load(Ordering::Relaxed) {
            return None;
        }
        let t = now();
        let mut start = Vec::new();
        let mut ended: Vec<(Arc<Job>, usize, NodeState, Refusal)> = Vec::new();
        let mut repick = Vec::new();
        {
            let mut s = lock(&self.sched);
            for (node, q) in s.nodes.iter_mut() {
                let linked = self.bus.is_linked(node);
                for entries in q.lanes.values_mut() {
                    entries.retain(|e| {
                        let ttl = e.job.meta.queue_ttl_s;
                        if let Some(ttl) = ttl {
                            if t >= e.queued_at + ttl {
                                let r = Refusal::new(
                                    Kind::NodeOffline,
                                    format!("queued for {ttl}s; {node} did not take it in time"),
                                );
                                ended.push((e.job.clone(), e.idx, NodeState::Expired, r));
                                return false;
                            }
                        } else if !linked && t >= e.wait_until {
                            if e.job.meta.any_of.is_some() {
                                repick.push((e.job.clone(), e.idx));
                            } else {
                                let r = self.bus.why_unavailable(node);
                                ended.push((e.job.clone(), e.idx, NodeState::Offline, r));
                            }
                            return false;
                        }
                        true
                    });
                }
                // Linked but in `error`: its commands wait in the queue.
                if !self.bus.takes_commands(node) {
                    continue;
                }
                let limit = self.bus.max_jobs(node).unwrap_or(DEFAULT_NODE_LIMIT);
                while q.running < limit {
                    // The earliest head among lanes that are free and whose job has batch room.
                    let pick = q
                        .lanes
                        .iter()
                        .filter(|(lane, _)| !q.busy_lanes.contains(*lane))
                        .filter_map(|(lane, e)| e.front().map(|e| (lane, e)))
                        .filter(|(_, e)| {
                            e.job
                                .meta
                                .batch
                                .is_none_or(|b| e.job.running.load(Ordering::Relaxed) < b)
                        })
                        .min_by_key(|(_, e)| e.job.meta.seq)
                        .map(|(lane, _)| lane.clone());
                    let Some(lane) = pick else { break };
                    let entry = q
                        .lanes
                        .get_mut(&lane)
                        .and_then(VecDeque::pop_front)
                        .expect("picked lane has a head");
                    q.busy_lanes.insert(lane);
                    q.running += 1;
                    entry.job.running.fetch_add(1, Ordering::Relaxed);
                    start.push((entry.job, entry.idx, node.clone(), false));
                }
            }
            s.nodes
                .retain(|_, q| q.running > 0 || q.lanes.values().any(|l| !l.is_empty()));
        }
        for (job, idx, state, why) in ended {
            self.finish(&job, idx, state, None, Some(why));
        }
        for (job, idx) in repick {
            self.fail_over(&job, idx, None);
        }
        let mut kept = None;
        for (job, idx, node, resumed) in start {
            if kept.is_none() && keep.is_some_and(|k| Arc::ptr_eq(k, &job)) {
                kept = Some((job, idx, node, resumed));
            } else {
                self.spawn_part(job, idx, node, resumed);
            }
        }
        kept
    }

    pub(super) fn spawn_part(
        self: &Arc<Self>,
        job: Arc<Job>,
        idx: usize,
        node: String,
        resumed: bool,
    ) {
        let jobs = self.clone();
        let name = format!("job-{node}");
        let spawned = std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn({
                let (job, node) = (job.clone(), node.clone());
                move || jobs.run_part(&job, idx, &node, resumed)
            });
        if let Err(e) = spawned {
            log::error!("starting a job thread: {e}");
            self.part_stopped(&job, &node);
            let why = Refusal::new(Kind::Internal, format!("no thread for the job: {e}"));
            self.finish(&job, idx, NodeState::Failed, None, Some(why));
        }
        // Finished part threads are not joined: they end by themselves and hold nothing.
    }

    /// A part stopped running on `node` (ended, or gave the node up): frees its lane.
    pub(super) fn part_stopped(self: &Arc<Self>, job: &Arc<Job>, node: &str) {
        {
            let mut s = lock(&self.sched);
            let q = s.nodes.entry(node.to_string()).or_default();
            q.running = q.running.saturating_sub(1);
            q.busy_lanes.remove(&job.meta.lane);
        }
        job.running.fetch_sub(1, Ordering::Relaxed);
        self.pump();
    }

    /// An `any:` part whose node went away before it started: the next least loaded candidate
    /// takes it; with none linked it ends `offline` (or waits, with a queue TTL).
    pub(super) fn fail_over(self: &Arc<Self>, job: &Arc<Job>, idx: usize, tried: Option<&str>) {
        let candidates = job.meta.any_of.clone().unwrap_or_default();
        let skip: Vec<String> = tried.map(str::to_string).into_iter().collect();
        let Some(next) = self.least_loaded(&candidates, &skip) else {
            let node = job.live().results[idx].node.clone();
            let why = self.bus.why_unavailable(&node);
            self.finish(job, idx, NodeState::Offline, None, Some(why));
            return;
        };
        log::info!(
            "job {}: {} is gone, {next} takes it",
            job.meta.id,
            tried.unwrap_or("its node")
        );
        job.live().results[idx].node = next.clone();
        self.enqueue(job, idx, &next, 0);
        self.pump();
    }

    pub(super) fn enqueue(&self, job: &Arc<Job>, idx: usize, node: &str, wait_until: u64) {
        let mut s = lock(&self.sched);
        s.active.insert(job.meta.id.clone(), job.clone());
        s.nodes
            .entry(node.to_string())
            .or_default()
            .lanes
            .entry(job.meta.lane.clone())
            .or_default()
            .push_back(Entry {
                job: job.clone(),
                idx,
                queued_at: now(),
                wait_until,
            });
    }
}
