//! One node's part of a job, on its own thread: `Exec`, following the request (output to the
//! subscribers, stdin in, re-attaching after a dropped link), and its durable end.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::protocol::{stream, unknown, ExitStatus};

use super::state::NodeState;
use super::{lock, persist, stdin, Ev, Job, JobKind, Jobs, GRACE};
use crate::bus::{Event, Request};
use crate::refusal::{Kind, Refusal};
use crate::registry::now;

impl Jobs {
    /// One node's part, on its own thread, from `Exec` to the durable end.
    pub(super) fn run_part(
        self: &Arc<Self>,
        job: &Arc<Job>,
        idx: usize,
        node: &str,
        resumed: bool,
    ) {
        let JobKind::Exec {
            spec,
            stdin,
            stdin_stream,
        } = &job.meta.kind
        else {
            // Transfers are run by their uploader's request, never from a lane.
            return self.part_stopped(job, node);
        };
        let mut spec = spec.clone();
        spec.stdin = stdin.is_some() || *stdin_stream;
        let deadline = Instant::now() + job.meta.kind.timeout() + GRACE;
        let mut delivered = resumed;
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            let request = match self.bus.exec(node, job.meta.id.clone(), spec.clone()) {
                Ok(r) => r,
                Err(refusal) if !delivered => {
                    // Never reached the node: it did not run.
                    self.part_stopped(job, node);
                    if job.meta.any_of.is_some() {
                        self.fail_over(job, idx, Some(node));
                    } else if job.meta.queue_ttl_s.is_some() {
                        self.enqueue(job, idx, node, 0);
                    } else {
                        self.finish(job, idx, NodeState::Offline, None, Some(refusal));
                    }
                    return;
                }
                Err(_) => {
                    if !self.wait_for_link(job, idx, node, deadline) {
                        return self.give_up(job, idx, node);
                    }
                    continue;
                }
            };
            let first = !delivered;
            if !delivered {
                delivered = true;
                self.started(job, idx, node, deadline);
            }
            let cancelled = {
                let mut live = job.live();
                live.handles.insert(idx, request.handle());
                live.cancelled
            };
            if cancelled {
                request.cancel();
            }
            // Input goes once: a request that attaches after a dropped link sends none again.
            let feed = match (first, stdin, lock(&job.stdin_rx).take()) {
                (true, Some(data), _) => Some(stdin::Feed::fixed(data.clone())),
                (true, None, Some(rx)) => Some(stdin::Feed::stream(rx)),
                _ => None,
            };
            match self.follow(job, idx, node, request, feed, deadline) {
                Followed::Ended => return,
                Followed::LinkLost => {
                    job.live().handles.remove(&idx);
                    if !self.wait_for_link(job, idx, node, deadline) {
                        return self.give_up(job, idx, node);
                    }
                }
                Followed::Stopping => return,
            }
        }
    }

    /// A part has reached its node.
    pub fn started(&self, job: &Arc<Job>, idx: usize, node: &str, deadline: Instant) {
        let t = now();
        let r = {
            let mut live = job.live();
            let r = &mut live.results[idx];
            r.state = NodeState::Running;
            r.started_at = Some(t);
            r.clone()
        };
        let id = job.meta.id.clone();
        self.store
            .write_lazy(move |tx| persist::update(tx, &id, idx, &r));
        job.changed.notify_all();
        job.emit(
            Ev::Start {
                node: node.to_string(),
            },
            true,
            deadline,
        );
    }

    /// Follows one request until it ends or its link drops.
    fn follow(
        self: &Arc<Self>,
        job: &Arc<Job>,
        idx: usize,
        node: &str,
        mut request: Request,
        mut stdin: Option<stdin::Feed>,
        deadline: Instant,
    ) -> Followed {
        let mut last_save = Instant::now();
        loop {
            // Standard input goes out as the agent's credit allows.
            if let Some(feed) = stdin.as_mut() {
                feed.pump(&request);
            }
            if self.stopping.load(Ordering::Relaxed) {
                return Followed::Stopping;
            }
            let wait = deadline.min(Instant::now() + Duration::from_secs(1));
            let next = match stdin.as_ref().and_then(stdin::Feed::wants) {
                Some(more) => crossbeam_channel::select! {
                    recv(request.events()) -> e => {
                        Some(e.unwrap_or_else(|_| Event::Lost("link closed".into())))
                    }
                    recv(more) -> chunk => {
                        if let Some(feed) = stdin.as_mut() {
                            feed.got(chunk, &request);
                        }
                        continue;
                    }
                    default(wait.saturating_duration_since(Instant::now())) => None,
                },
                None => request.next(wait),
            };
            let Some(event) = next else {
                if Instant::now() >= deadline {
                    let why = Refusal::new(
                        Kind::Timeout,
                        format!("{node} did not finish the command within its timeout"),
                    );
                    self.part_stopped(job, node);
                    self.finish(job, idx, NodeState::Lost, None, Some(why));
                    return Followed::Ended;
                }
                continue;
            };
            match event {
                Event::Stdout(data) | Event::Stderr(data) if data.is_empty() => {}
                Event::Stdout(data) => {
                    let n = data.len();
                    self.output(job, idx, node, stream::STDOUT, data, deadline);
                    request.credit(stream::STDOUT, n);
                }
                Event::Stderr(data) => {
                    let n = data.len();
                    self.output(job, idx, node, stream::STDERR, data, deadline);
                    request.credit(stream::STDERR, n);
                }
                Event::Credit { stream: s, bytes } => {
                    if let (Some(feed), stream::STDIN) = (stdin.as_mut(), s) {
                        feed.credit(bytes);
                    }
                }
                // The command stopped reading its input: the rest is not sent.
                Event::Reset {
                    stream: stream::STDIN,
                    ..
                } => stdin = None,
                Event::Data { .. } | Event::Eof { .. } | Event::Reset { .. } => {}
                Event::Exit(status) => {
                    let cancelled = job.live().cancelled;
                    let state = if status.timed_out {
                        NodeState::TimedOut
                    } else if status.exit_code == Some(0) {
                        NodeState::Succeeded
                    } else if cancelled && status.signal.is_some() {
                        NodeState::Cancelled
                    } else {
                        NodeState::Failed
                    };
                    // The lane is free before the end is committed: the next command of the
                    // lane need not wait for this one's fsync.
                    self.part_stopped(job, node);
                    self.end_part(job, idx, state, Some(status), None, Some(request));
                    return Followed::Ended;
                }
                Event::Failed(message) => {
                    let (state, kind) = if message.starts_with("refused") {
                        (NodeState::Refused, Kind::Forbidden)
                    } else {
                        (NodeState::Failed, Kind::ExecFailed)
                    };
                    self.part_stopped(job, node);
                    let why = Refusal::new(kind, message);
                    self.end_part(job, idx, state, None, Some(why), Some(request));
                    return Followed::Ended;
                }
                Event::Unknown { code, reason } => {
                    let state = if code == unknown::INTERRUPTED {
                        NodeState::Lost
                    } else {
                        NodeState::Unknown
                    };
                    self.part_stopped(job, node);
                    self.finish(
                        job,
                        idx,
                        state,
                        None,
                        Some(Refusal::new(Kind::NodeLost, reason)),
                    );
                    return Followed::Ended;
                }
                Event::Lost(message) => {
                    log::info!(
                        "job {} on {node}: {message}; waiting for the node",
                        job.meta.id
                    );
                    return Followed::LinkLost;
                }
            }
            if last_save.elapsed() >= Duration::from_secs(2) {
                last_save = Instant::now();
                let r = job.live().results[idx].clone();
                let id = job.meta.id.clone();
                self.store
                    .write_lazy(move |tx| persist::update(tx, &id, idx, &r));
            }
        }
    }

    fn output(
        &self,
        job: &Arc<Job>,
        idx: usize,
        node: &str,
        s: u32,
        data: Vec<u8>,
        deadline: Instant,
    ) {
        let i = usize::from(s == stream::STDERR);
        let keep = {
            let mut live = job.live();
            let out = &mut live.results[idx].output[i];
            let room = self.limits.output_per_node.saturating_sub(out.kept.len());
            out.push(&data, self.limits.output_per_node);
            room >= data.len()
        };
        job.emit(
            Ev::Output {
                node: node.to_string(),
                stream: s,
                data,
            },
            keep,
            deadline,
        );
    }

    /// Waits for a node's link to come back; `false` at the deadline, when stopping, or when the
    /// part was ended meanwhile (its node was cut off).
    fn wait_for_link(&self, job: &Job, idx: usize, node: &str, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if self.stopping.load(Ordering::Relaxed) || job.live().results[idx].state.is_final() {
                return false;
            }
            if self.bus.is_linked(node) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn give_up(self: &Arc<Self>, job: &Arc<Job>, idx: usize, node: &str) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        self.part_stopped(job, node);
        let why = Refusal::new(
            Kind::NodeLost,
            format!("{node} went away while it ran the command and did not come back in time"),
        );
        self.finish(job, idx, NodeState::Lost, None, Some(why));
    }

    /// Ends a part: durable first, then subscribers and waiters.
    pub fn finish(
        &self,
        job: &Arc<Job>,
        idx: usize,
        state: NodeState,
        exit: Option<ExitStatus>,
        error: Option<Refusal>,
    ) {
        self.end_part(job, idx, state, exit, error, None);
    }

    /// Ends a part. `held_by`: the request whose agent holds the outcome until it is told `Done`
    /// (sent by [`Jobs::confirm`] once the end is durable), so waiters and subscribers hear of the
    /// end while the commit runs; the outcome is durable on one side or the other all along: if the
    /// gateway dies before its commit, the part is still open in the store (or the job was never
    /// acknowledged before its end), and its `Exec` sent again after the restart gets the agent's
    /// kept copy. Otherwise (nothing ran, or the gateway decided the end) the commit comes first.
    /// Either way the job leaves memory, where `GET /api/v1/jobs/{id}` finds it, only once its last
    /// end is durable: from then on the store answers.
    fn end_part(
        &self,
        job: &Arc<Job>,
        idx: usize,
        state: NodeState,
        exit: Option<ExitStatus>,
        error: Option<Refusal>,
        held_by: Option<Request>,
    ) {
        let _order = lock(&job.emitting);
        let (r, last) = {
            let mut live = job.live();
            live.handles.remove(&idx);
            let r = &mut live.results[idx];
            if r.state.is_final() {
                return;
            }
            r.state = state;
            r.exit = exit;
            r.error = error.map(|e| (e.kind.code().to_string(), e.message));
            r.ended_at = Some(now());
            crate::metrics::part_ended(job, state, r.exit.is_some());
            let r = r.clone();
            (r, live.results.iter().all(|r| r.state.is_final()))
        };
        let id = job.meta.id.clone();
        let stored = r.clone();
        let write = move |tx: &rusqlite::Transaction| persist::update(tx, &id, idx, &stored);
        let what = format!("job {} on {}", job.meta.id, r.node);
        let pending = match held_by {
            Some(request) => match self.store.queue(write) {
                Ok(pending) => Some((pending, request)),
                Err(e) => {
                    log::error!("storing the end of {what}: {e:#}");
                    None
                }
            },
            None => {
                if let Err(e) = self.store.write(write) {
                    log::error!("storing the end of {what}: {e:#}");
                }
                None
            }
        };
        // Input nobody will read: an uploader blocked on it is told at once.
        lock(&job.stdin_rx).take();
        let far = Instant::now() + Duration::from_secs(30);
        job.emit_in_order(
            Ev::End {
                result: Box::new(r),
            },
            true,
            far,
        );
        if last {
            job.emit_in_order(Ev::Finished, true, far);
            job.live().subscribers.clear();
            self.ended(job);
        }
        job.changed.notify_all();
        let leave = last.then(|| self.leaver(job));
        match pending {
            Some((pending, request)) => self.confirm(pending, request, what, leave),
            None => {
                if let Some(leave) = leave {
                    leave();
                }
            }
        }
    }
}

pub(super) enum Followed {
    Ended,
    LinkLost,
    Stopping,
}
