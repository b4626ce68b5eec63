//! The jobs' rows in the store: every SQL statement about jobs is here.
//!
//! What is durable when: a job and its per-node rows before the request is answered (so a job id the
//! API showed always exists after a crash); a node's end (state, exit, stored output) before the
//! agent is told `Done` (so the agent keeps the outcome until the gateway holds it); output while a
//! command runs lazily (it is not acknowledged to anyone: after a crash the agent's own copy of what
//! it produced while the gateway was away fills the gap).

use rusqlite::{params, OptionalExtension, Row};

use super::state::NodeState;
use super::{JobKind, JobMeta, NodeResult};

/// Migration 2: jobs, their per-node results and stored output. A queued command is a `queued` row.
pub const SCHEMA: &str = "
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    target      TEXT NOT NULL,
    lane        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    queue_ttl_s INTEGER,
    batch       INTEGER,
    any_of      TEXT
);
CREATE TABLE results (
    job            TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx            INTEGER NOT NULL,
    node           TEXT NOT NULL,
    state          TEXT NOT NULL,
    exit_code      INTEGER,
    signal         INTEGER,
    timed_out      INTEGER NOT NULL DEFAULT 0,
    duration_ms    INTEGER,
    error          TEXT,
    code           TEXT,
    started_at     INTEGER,
    ended_at       INTEGER,
    stdout         BLOB NOT NULL DEFAULT x'',
    stderr         BLOB NOT NULL DEFAULT x'',
    stdout_dropped INTEGER NOT NULL DEFAULT 0,
    stderr_dropped INTEGER NOT NULL DEFAULT 0,
    transfer       TEXT,
    PRIMARY KEY (job, idx)
);
CREATE INDEX results_by_node ON results(node, job);
CREATE INDEX results_open ON results(state) WHERE state IN ('queued', 'running');
";

pub fn insert(
    tx: &rusqlite::Transaction,
    meta: &JobMeta,
    results: &[NodeResult],
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO jobs (id, seq, kind, created_at, actor, target, lane, spec, queue_ttl_s, batch, any_of)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            meta.id,
            meta.seq as i64,
            meta.kind.name(),
            meta.created_at as i64,
            meta.actor,
            meta.target,
            meta.lane,
            serde_json::to_string(&meta.kind).expect("job kinds serialize"),
            meta.queue_ttl_s.map(|t| t as i64),
            meta.batch.map(|b| b as i64),
            meta.any_of
                .as_ref()
                .map(|a| serde_json::to_string(a).expect("lists serialize")),
        ],
    )?;
    for (idx, r) in results.iter().enumerate() {
        tx.execute(
            "INSERT INTO results (job, idx, node, state) VALUES (?1, ?2, ?3, ?4)",
            params![meta.id, idx as i64, r.node, r.state.name()],
        )?;
    }
    Ok(())
}

/// Writes one node's row as it is now (state, exit, output).
pub fn update(
    tx: &rusqlite::Transaction,
    job: &str,
    idx: usize,
    r: &NodeResult,
) -> rusqlite::Result<()> {
    let exit = r.exit.as_ref();
    tx.execute(
        "UPDATE results SET node = ?3, state = ?4, exit_code = ?5, signal = ?6, timed_out = ?7,
             duration_ms = ?8, error = ?9, code = ?10, started_at = ?11, ended_at = ?12,
             stdout = ?13, stderr = ?14, stdout_dropped = ?15, stderr_dropped = ?16,
             transfer = ?17
         WHERE job = ?1 AND idx = ?2",
        params![
            job,
            idx as i64,
            r.node,
            r.state.name(),
            exit.and_then(|e| e.exit_code),
            exit.and_then(|e| e.signal),
            exit.is_some_and(|e| e.timed_out),
            exit.map(|e| e.duration_ms as i64),
            r.error.as_ref().map(|e| e.1.clone()),
            r.error.as_ref().map(|e| e.0.clone()),
            r.started_at.map(|t| t as i64),
            r.ended_at.map(|t| t as i64),
            r.output[0].kept,
            r.output[1].kept,
            r.output[0].dropped as i64,
            r.output[1].dropped as i64,
            r.transfer
                .as_ref()
                .map(|t| serde_json::to_string(t).expect("transfers serialize")),
        ],
    )?;
    Ok(())
}

fn meta_of(row: &Row) -> rusqlite::Result<JobMeta> {
    let spec: String = row.get("spec")?;
    let any: Option<String> = row.get("any_of")?;
    let bad = |e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(JobMeta {
        id: row.get("id")?,
        seq: row.get::<_, i64>("seq")? as u64,
        kind: serde_json::from_str::<JobKind>(&spec).map_err(bad)?,
        created_at: row.get::<_, i64>("created_at")? as u64,
        actor: row.get("actor")?,
        target: row.get("target")?,
        lane: row.get("lane")?,
        queue_ttl_s: row.get::<_, Option<i64>>("queue_ttl_s")?.map(|t| t as u64),
        batch: row.get::<_, Option<i64>>("batch")?.map(|b| b as usize),
        any_of: any
            .map(|a| serde_json::from_str(&a))
            .transpose()
            .map_err(bad)?,
    })
}

fn result_of(row: &Row) -> rusqlite::Result<NodeResult> {
    let state: String = row.get("state")?;
    let mut r = NodeResult::new(row.get("node")?);
    r.state = NodeState::parse(&state).unwrap_or(NodeState::Unknown);
    let duration: Option<i64> = row.get("duration_ms")?;
    if let Some(duration_ms) = duration {
        r.exit = Some(burrow_core::protocol::ExitStatus {
            exit_code: row.get("exit_code")?,
            signal: row.get("signal")?,
            timed_out: row.get("timed_out")?,
            duration_ms: duration_ms as u64,
        });
    }
    let (code, error): (Option<String>, Option<String>) = (row.get("code")?, row.get("error")?);
    r.error = code.zip(error);
    r.started_at = row.get::<_, Option<i64>>("started_at")?.map(|t| t as u64);
    r.ended_at = row.get::<_, Option<i64>>("ended_at")?.map(|t| t as u64);
    r.output[0].kept = row.get("stdout")?;
    r.output[1].kept = row.get("stderr")?;
    r.output[0].dropped = row.get::<_, i64>("stdout_dropped")? as u64;
    r.output[1].dropped = row.get::<_, i64>("stderr_dropped")? as u64;
    let transfer: Option<String> = row.get("transfer")?;
    r.transfer = transfer.and_then(|t| serde_json::from_str(&t).ok());
    Ok(r)
}

/// One job with its results, or `None`.
pub fn load(
    c: &rusqlite::Connection,
    id: &str,
) -> rusqlite::Result<Option<(JobMeta, Vec<NodeResult>)>> {
    let Some(meta) = c
        .query_row("SELECT * FROM jobs WHERE id = ?1", [id], meta_of)
        .optional()?
    else {
        return Ok(None);
    };
    let results = results_of(c, id)?;
    Ok(Some((meta, results)))
}

fn results_of(c: &rusqlite::Connection, id: &str) -> rusqlite::Result<Vec<NodeResult>> {
    let mut stmt = c.prepare("SELECT * FROM results WHERE job = ?1 ORDER BY idx")?;
    let rows = stmt.query_map([id], result_of)?;
    rows.collect()
}

/// Jobs not ended (some node queued or running), oldest first: what a restarted gateway resumes.
pub fn open_jobs(c: &rusqlite::Connection) -> rusqlite::Result<Vec<(JobMeta, Vec<NodeResult>)>> {
    let mut stmt = c.prepare(
        "SELECT * FROM jobs WHERE id IN
             (SELECT job FROM results WHERE state IN ('queued', 'running'))
         ORDER BY seq",
    )?;
    let metas: Vec<JobMeta> = stmt.query_map([], meta_of)?.collect::<Result<_, _>>()?;
    metas
        .into_iter()
        .map(|m| {
            let r = results_of(c, &m.id)?;
            Ok((m, r))
        })
        .collect()
}

/// The filters of `GET /api/v1/jobs`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub node: Option<String>,
    pub state: Option<NodeState>,
    /// Jobs older than this one (its `seq`).
    pub before_seq: Option<u64>,
    pub limit: usize,
}

/// Ids of the jobs matching `filter`, newest first. A job matches `state` when one of its nodes is
/// in it (its own derived state is checked by the caller).
pub fn list(c: &rusqlite::Connection, filter: &Filter) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare(
        "SELECT j.id FROM jobs j
         WHERE (?1 IS NULL OR EXISTS (SELECT 1 FROM results r WHERE r.job = j.id AND r.node = ?1))
           AND (?2 IS NULL OR j.seq < ?2)
         ORDER BY j.seq DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            filter.node,
            filter.before_seq.map(|s| s as i64),
            filter.limit as i64
        ],
        |r| r.get(0),
    )?;
    rows.collect()
}

pub fn seq_of(c: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<u64>> {
    c.query_row("SELECT seq FROM jobs WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|s| s.map(|s| s as u64))
}

pub fn max_seq(c: &rusqlite::Connection) -> rusqlite::Result<u64> {
    c.query_row("SELECT COALESCE(MAX(seq), 0) FROM jobs", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|s| s as u64)
}

/// Retention: drops ended jobs beyond the newest `keep` and those created before `older_than`.
pub fn prune(tx: &rusqlite::Transaction, keep: usize, older_than: u64) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM jobs WHERE id NOT IN
             (SELECT job FROM results WHERE state IN ('queued', 'running'))
           AND (created_at < ?1 OR seq <= (SELECT COALESCE(MAX(seq), 0) FROM jobs) - ?2)",
        params![older_than as i64, keep as i64],
    )
}
