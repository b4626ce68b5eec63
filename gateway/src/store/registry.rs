//! The registry's tables (migration 1): how [`State`] maps to rows, and the smallest set of row
//! writes that turns one state into another ([`Diff`]).
//!
//! Lists and maps inside a node (capabilities, labels) are stored as JSON text; times as Unix
//! seconds. A `u64` beyond SQLite's `i64` (only a hand-edited state file holds one) is stored as
//! `i64::MAX` rather than refused.

use std::collections::BTreeMap;

use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use crate::registry::{Approval, JoinTokenRecord, NodeRecord, State};

/// The `meta` key holding the SHA-256 (hex) of the `state.json` imported into this database.
pub const IMPORTED_STATE_JSON: &str = "imported_state_json_sha256";

/// Reads the whole registry.
pub fn load(c: &Connection) -> rusqlite::Result<State> {
    let mut state = State::default();
    let mut q = c.prepare(
        "SELECT id, public_key, fingerprint, approval, hostname, capabilities, labels, os, arch,
                version, port1, port2, created_at, approved_at, pending_until, join_token
         FROM nodes ORDER BY id",
    )?;
    for node in q.query_map([], node_of)? {
        let node = node?;
        state.nodes.insert(node.id.clone(), node);
    }
    let mut q = c.prepare(
        "SELECT id, secret_hash, enrollment_key, created_at, expires_at, uses, used, manual, revoked
         FROM join_tokens ORDER BY seq",
    )?;
    state.join_tokens = q
        .query_map([], |r| {
            Ok(JoinTokenRecord {
                id: r.get(0)?,
                secret_hash: r.get(1)?,
                enrollment_key: r.get(2)?,
                created_at: unsigned(r, 3)?,
                expires_at: unsigned(r, 4)?,
                uses: r.get(5)?,
                used: r.get(6)?,
                manual: r.get(7)?,
                revoked: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut q = c.prepare("SELECT jti, expires_at FROM revoked_jtis")?;
    state.revoked_jtis = q
        .query_map([], |r| Ok((r.get(0)?, unsigned(r, 1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(state)
}

fn node_of(r: &Row) -> rusqlite::Result<NodeRecord> {
    let approval = match r.get::<_, String>(3)?.as_str() {
        "pending" => Approval::Pending,
        "approved" => Approval::Approved,
        "rejected" => Approval::Rejected,
        other => return Err(bad(3, format!("unknown approval {other:?}"))),
    };
    let ports = match (r.get::<_, Option<u16>>(10)?, r.get::<_, Option<u16>>(11)?) {
        (Some(a), Some(b)) => Some([a, b]),
        _ => None,
    };
    Ok(NodeRecord {
        id: r.get(0)?,
        public_key: r.get(1)?,
        fingerprint: r.get(2)?,
        approval,
        hostname: r.get(4)?,
        capabilities: json(r, 5)?,
        labels: json(r, 6)?,
        os: r.get(7)?,
        arch: r.get(8)?,
        version: r.get(9)?,
        ports,
        created_at: unsigned(r, 12)?,
        approved_at: r.get::<_, Option<i64>>(13)?.map(|v| v.max(0) as u64),
        pending_until: r.get::<_, Option<i64>>(14)?.map(|v| v.max(0) as u64),
        join_token: r.get(15)?,
    })
}

/// What the gateway last heard from each node that has been heard from: `(id, last_seen, last
/// heartbeat as JSON)`.
pub fn load_beats(c: &Connection) -> rusqlite::Result<Vec<(String, u64, Option<String>)>> {
    let mut q =
        c.prepare("SELECT id, last_seen, last_beat FROM nodes WHERE last_seen IS NOT NULL")?;
    let rows = q
        .query_map([], |r| Ok((r.get(0)?, unsigned(r, 1)?, r.get(2)?)))?
        .collect();
    rows
}

/// Records when a node was last heard from and its last heartbeat (no-op for an unknown node).
pub fn record_beat(
    tx: &Transaction,
    id: &str,
    seen: u64,
    beat: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE nodes SET last_seen = ?2, last_beat = coalesce(?3, last_beat) WHERE id = ?1",
        params![id, int(seen), beat],
    )
    .map(|_| ())
}

/// A `meta` value.
pub fn meta(c: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

/// Sets a `meta` value.
pub fn set_meta(tx: &Transaction, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )
    .map(|_| ())
}

/// Whether the registry tables hold no row at all.
pub fn is_empty(c: &Connection) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM nodes) AND NOT EXISTS (SELECT 1 FROM join_tokens)
            AND NOT EXISTS (SELECT 1 FROM revoked_jtis)",
        [],
        |r| r.get(0),
    )
}

/// The row writes that turn the persisted state `from` into `to`.
#[derive(Debug, Default)]
pub struct Diff {
    upsert_nodes: Vec<NodeRecord>,
    delete_nodes: Vec<String>,
    /// The whole list, when anything in it changed (it is short, and its order matters).
    join_tokens: Option<Vec<JoinTokenRecord>>,
    upsert_jtis: Vec<(String, u64)>,
    delete_jtis: Vec<String>,
}

impl Diff {
    /// Compares two states row by row.
    pub fn between(from: &State, to: &State) -> Diff {
        Diff {
            upsert_nodes: changed(&from.nodes, &to.nodes)
                .map(|(_, n)| n.clone())
                .collect(),
            delete_nodes: gone(&from.nodes, &to.nodes),
            join_tokens: (from.join_tokens != to.join_tokens).then(|| to.join_tokens.clone()),
            upsert_jtis: changed(&from.revoked_jtis, &to.revoked_jtis)
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            delete_jtis: gone(&from.revoked_jtis, &to.revoked_jtis),
        }
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.upsert_nodes.is_empty()
            && self.delete_nodes.is_empty()
            && self.join_tokens.is_none()
            && self.upsert_jtis.is_empty()
            && self.delete_jtis.is_empty()
    }

    /// Writes the rows (inside the caller's transaction).
    pub fn apply(&self, tx: &Transaction) -> rusqlite::Result<()> {
        for id in &self.delete_nodes {
            tx.execute("DELETE FROM nodes WHERE id = ?1", [id])?;
        }
        // An upsert leaves `last_seen` and `last_beat` alone: they are the heartbeats' columns.
        let mut up = tx.prepare(
            "INSERT INTO nodes (id, public_key, fingerprint, approval, hostname, capabilities,
                                labels, os, arch, version, port1, port2, created_at, approved_at,
                                pending_until, join_token)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
             ON CONFLICT (id) DO UPDATE SET
                public_key = excluded.public_key, fingerprint = excluded.fingerprint,
                approval = excluded.approval, hostname = excluded.hostname,
                capabilities = excluded.capabilities, labels = excluded.labels, os = excluded.os,
                arch = excluded.arch, version = excluded.version, port1 = excluded.port1,
                port2 = excluded.port2, created_at = excluded.created_at,
                approved_at = excluded.approved_at, pending_until = excluded.pending_until,
                join_token = excluded.join_token",
        )?;
        for n in &self.upsert_nodes {
            let approval = match n.approval {
                Approval::Pending => "pending",
                Approval::Approved => "approved",
                Approval::Rejected => "rejected",
            };
            up.execute(params![
                n.id,
                n.public_key,
                n.fingerprint,
                approval,
                n.hostname,
                to_json(&n.capabilities)?,
                to_json(&n.labels)?,
                n.os,
                n.arch,
                n.version,
                n.ports.map(|p| p[0]),
                n.ports.map(|p| p[1]),
                int(n.created_at),
                n.approved_at.map(int),
                n.pending_until.map(int),
                n.join_token,
            ])?;
        }
        if let Some(tokens) = &self.join_tokens {
            tx.execute("DELETE FROM join_tokens", [])?;
            let mut ins = tx.prepare(
                "INSERT INTO join_tokens (id, seq, secret_hash, enrollment_key, created_at,
                                          expires_at, uses, used, manual, revoked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for (seq, t) in tokens.iter().enumerate() {
                ins.execute(params![
                    t.id,
                    seq as i64,
                    t.secret_hash,
                    t.enrollment_key,
                    int(t.created_at),
                    int(t.expires_at),
                    t.uses,
                    t.used,
                    t.manual,
                    t.revoked,
                ])?;
            }
        }
        for jti in &self.delete_jtis {
            tx.execute("DELETE FROM revoked_jtis WHERE jti = ?1", [jti])?;
        }
        for (jti, exp) in &self.upsert_jtis {
            tx.execute(
                "INSERT INTO revoked_jtis (jti, expires_at) VALUES (?1, ?2)
                 ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at",
                params![jti, int(*exp)],
            )?;
        }
        Ok(())
    }
}

/// Entries of `to` that are new or differ from `from`.
fn changed<'a, V: PartialEq>(
    from: &'a BTreeMap<String, V>,
    to: &'a BTreeMap<String, V>,
) -> impl Iterator<Item = (&'a String, &'a V)> {
    to.iter().filter(move |(k, v)| from.get(*k) != Some(*v))
}

/// Keys of `from` that `to` no longer has.
fn gone<V>(from: &BTreeMap<String, V>, to: &BTreeMap<String, V>) -> Vec<String> {
    from.keys()
        .filter(|k| !to.contains_key(*k))
        .cloned()
        .collect()
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(r: &Row, i: usize) -> rusqlite::Result<u64> {
    Ok(r.get::<_, i64>(i)?.max(0) as u64)
}

fn json<T: serde::de::DeserializeOwned>(r: &Row, i: usize) -> rusqlite::Result<T> {
    serde_json::from_str(&r.get::<_, String>(i)?).map_err(|e| bad(i, e.to_string()))
}

fn to_json<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn bad(i: usize, why: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, Type::Text, why.into())
}
