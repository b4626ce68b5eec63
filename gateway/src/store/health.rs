//! The health tables (migration 3): metric samples (1-minute points for the last hour, 10-minute
//! averages up to the retention), node state changes and alerts. What to keep and how to average
//! is `crate::health::history`'s; this is only the SQL.
//!
//! Samples are written lazily, in batches (one `write_lazy` a minute for the whole fleet), never
//! one by one: 2,000 nodes cost one commit a minute, not 2,000 fsyncs.

use rusqlite::{params, Connection, Transaction};

use crate::health::{Alert, AlertState};

/// Migration 3.
pub const SCHEMA: &str = "
CREATE TABLE metric_samples (
    node    TEXT NOT NULL,
    at      INTEGER NOT NULL,  -- start of the point's interval, Unix seconds
    step    INTEGER NOT NULL,  -- its length: 60 (1-minute point) or 600 (10-minute average)
    metrics TEXT NOT NULL,     -- JSON of burrow_core::api::Metrics
    PRIMARY KEY (node, step, at)
) STRICT, WITHOUT ROWID;

CREATE TABLE node_states (
    id     INTEGER PRIMARY KEY,
    node   TEXT NOT NULL,
    at     INTEGER NOT NULL,
    state  TEXT NOT NULL,
    reason TEXT NOT NULL
) STRICT;
CREATE INDEX node_states_by_node ON node_states (node, id);

CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY,
    rule        TEXT NOT NULL,
    node        TEXT,
    severity    TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
    summary     TEXT NOT NULL,
    value       REAL,
    started_at  INTEGER NOT NULL,
    resolved_at INTEGER
) STRICT;
CREATE INDEX alerts_by_state ON alerts (state, id);
";

/// State changes kept per node (the oldest go first).
pub const STATES_PER_NODE: u32 = 200;
/// Resolved alerts are kept this long (seconds), and at most this many in all.
pub const ALERTS_KEPT_S: u64 = 30 * 86400;
pub const ALERTS_KEPT: u32 = 10_000;

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Adds (or replaces) samples: `(node, at, step, metrics JSON)`.
pub fn insert_samples(
    tx: &Transaction,
    rows: &[(String, u64, u64, String)],
) -> rusqlite::Result<()> {
    let mut q = tx.prepare(
        "INSERT OR REPLACE INTO metric_samples (node, at, step, metrics) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (node, at, step, json) in rows {
        q.execute(params![node, int(*at), int(*step), json])?;
    }
    Ok(())
}

/// A node's samples from `since`, oldest first: `(at, step, metrics JSON)`.
pub fn samples(
    c: &Connection,
    node: &str,
    since: u64,
) -> rusqlite::Result<Vec<(u64, u64, String)>> {
    let mut q = c.prepare(
        "SELECT at, step, metrics FROM metric_samples WHERE node = ?1 AND at >= ?2 ORDER BY at, step",
    )?;
    let rows = q.query_map(params![node, int(since)], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get::<_, i64>(1)? as u64,
            r.get(2)?,
        ))
    })?;
    rows.collect()
}

/// Points of length `step` that start before `before`: `(node, at, metrics JSON)`, by node and time.
pub fn samples_before(
    tx: &Transaction,
    step: u64,
    before: u64,
) -> rusqlite::Result<Vec<(String, u64, String)>> {
    let mut q = tx.prepare(
        "SELECT node, at, metrics FROM metric_samples WHERE step = ?1 AND at < ?2 ORDER BY node, at",
    )?;
    let rows = q.query_map(params![int(step), int(before)], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
    })?;
    rows.collect()
}

/// Deletes points of length `step` that start before `before`.
pub fn delete_samples_before(tx: &Transaction, step: u64, before: u64) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM metric_samples WHERE step = ?1 AND at < ?2",
        params![int(step), int(before)],
    )
}

/// Drops what is older than the retentions, and what belongs to nodes no longer registered.
pub fn prune(tx: &Transaction, now: u64, samples_kept_s: u64) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM metric_samples WHERE at < ?1",
        params![int(now.saturating_sub(samples_kept_s))],
    )?;
    tx.execute(
        "DELETE FROM metric_samples WHERE node NOT IN (SELECT id FROM nodes)",
        [],
    )?;
    tx.execute(
        "DELETE FROM node_states WHERE node NOT IN (SELECT id FROM nodes)
            OR id IN (SELECT id FROM (SELECT id, row_number() OVER
                      (PARTITION BY node ORDER BY id DESC) AS n FROM node_states) WHERE n > ?1)",
        params![STATES_PER_NODE],
    )?;
    tx.execute(
        "DELETE FROM alerts WHERE state = 'resolved' AND (resolved_at < ?1
            OR id <= (SELECT max(id) FROM alerts) - ?2)",
        params![int(now.saturating_sub(ALERTS_KEPT_S)), ALERTS_KEPT],
    )?;
    Ok(())
}

/// Records a state change.
pub fn record_state(
    tx: &Transaction,
    node: &str,
    at: u64,
    state: &str,
    reason: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO node_states (node, at, state, reason) VALUES (?1, ?2, ?3, ?4)",
        params![node, int(at), state, reason],
    )?;
    Ok(())
}

/// A node's state changes, newest first: `(at, state, reason)`.
pub fn states(
    c: &Connection,
    node: &str,
    limit: u32,
) -> rusqlite::Result<Vec<(u64, String, String)>> {
    let mut q = c.prepare(
        "SELECT at, state, reason FROM node_states WHERE node = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = q.query_map(params![node, limit], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
    })?;
    rows.collect()
}

/// Every node's last recorded state: `(node, at, state)`.
pub fn last_states(c: &Connection) -> rusqlite::Result<Vec<(String, u64, String)>> {
    let mut q = c.prepare(
        "SELECT node, at, state FROM node_states WHERE id IN
            (SELECT max(id) FROM node_states GROUP BY node)",
    )?;
    let rows = q.query_map([], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
    })?;
    rows.collect()
}

/// Stores an alert (a resolution replaces the row of its firing).
pub fn put_alert(tx: &Transaction, a: &Alert) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO alerts
            (id, rule, node, severity, state, summary, value, started_at, resolved_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            int(a.id),
            a.rule,
            a.node,
            a.severity,
            alert_state(a.state),
            a.summary,
            a.value,
            int(a.started_at),
            a.resolved_at.map(int)
        ],
    )?;
    Ok(())
}

fn alert_state(s: AlertState) -> &'static str {
    match s {
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    }
}

/// Alerts newest first, those in `state` only when given, at most `limit`.
pub fn alerts(
    c: &Connection,
    state: Option<AlertState>,
    limit: u32,
) -> rusqlite::Result<Vec<Alert>> {
    let mut q = c.prepare(
        "SELECT id, rule, node, severity, state, summary, value, started_at, resolved_at
         FROM alerts WHERE ?1 IS NULL OR state = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = q.query_map(params![state.map(alert_state), limit], |r| {
        Ok(Alert {
            id: r.get::<_, i64>(0)? as u64,
            rule: r.get(1)?,
            node: r.get(2)?,
            severity: r.get(3)?,
            state: match r.get::<_, String>(4)?.as_str() {
                "firing" => AlertState::Firing,
                _ => AlertState::Resolved,
            },
            summary: r.get(5)?,
            value: r.get(6)?,
            started_at: r.get::<_, i64>(7)? as u64,
            resolved_at: r.get::<_, Option<i64>>(8)?.map(|t| t as u64),
        })
    })?;
    rows.collect()
}

/// The highest alert id used (0 for none).
pub fn max_alert_id(c: &Connection) -> rusqlite::Result<u64> {
    c.query_row("SELECT coalesce(max(id), 0) FROM alerts", [], |r| {
        r.get::<_, i64>(0).map(|v| v as u64)
    })
}
