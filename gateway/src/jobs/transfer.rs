//! File transfers as jobs: created here, run by the uploader's (or downloader's) request
//! (`api/files.rs`), never from a lane.

use std::sync::Arc;

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
            .iter()
            .map(|node| self.first_result(node, false, t))
            .collect();
        let meta = JobMeta {
            id: crate::bus::new_job_id(),
            seq: self.next_seq(),
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
