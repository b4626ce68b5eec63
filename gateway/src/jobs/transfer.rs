//! File transfers as jobs: created here, run by the uploader's (or downloader's) request
//! (`api/files.rs`), never from a lane.

use std::sync::Arc;

use super::state::NodeState;
use super::{lock, persist, Job, JobKind, JobMeta, Jobs, NodeResult, Transfer};
use crate::refusal::{Kind, Refusal};
use crate::registry::now;

impl Jobs {
    /// Creates a file transfer job on `nodes` (offline ones end at once); the caller moves the bytes,
    /// calling [`Jobs::started`], [`Jobs::set_transfer`] and [`Jobs::finish`] for each part.
    pub fn submit_transfer(
        self: &Arc<Self>,
        kind: JobKind,
        actor: &str,
        target_text: &str,
        nodes: Vec<String>,
    ) -> Result<Arc<Job>, Refusal> {
        let t = now();
        let results: Vec<NodeResult> = nodes
            .into_iter()
            .map(|node| {
                let mut r = NodeResult::new(node.clone());
                if !self.bus.is_linked(&node) {
                    let why = self.bus.why_unavailable(&node);
                    r.state = NodeState::Offline;
                    r.error = Some((why.kind.code().into(), why.message));
                    r.ended_at = Some(t);
                }
                r
            })
            .collect();
        let seq = {
            let mut s = lock(&self.sched);
            s.next_seq += 1;
            s.next_seq - 1
        };
        let meta = JobMeta {
            id: crate::bus::new_job_id(),
            seq,
            kind,
            created_at: t,
            actor: actor.to_string(),
            target: target_text.to_string(),
            lane: "files".into(),
            queue_ttl_s: None,
            batch: None,
            any_of: None,
        };
        {
            let (meta, results) = (meta.clone(), results.clone());
            self.store
                .write(move |tx| persist::insert(tx, &meta, &results))
                .map_err(|e| Refusal::new(Kind::Internal, format!("storing the job: {e:#}")))?;
        }
        let job = Arc::new(Job::new(meta, results));
        if !job.is_finished() {
            lock(&self.sched)
                .active
                .insert(job.meta.id.clone(), job.clone());
        }
        Ok(job)
    }

    /// Records what a transfer part moved (before its [`Jobs::finish`]).
    pub fn set_transfer(&self, job: &Job, idx: usize, transfer: Transfer) {
        job.live().results[idx].transfer = Some(transfer);
    }

    /// Whether someone cancelled the job.
    pub fn is_cancelled(&self, job: &Job) -> bool {
        job.live().cancelled
    }
}
