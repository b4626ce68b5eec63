//! The store's schema, as an ordered list of migrations. `PRAGMA user_version` holds the number of
//! the last one applied; opening the store applies the ones after it, each in its own transaction
//! (which also sets `user_version`, so a crash leaves the database at one version or the next).
//!
//! To change the schema, append an entry with the next number; never edit one that has shipped.
//! Tables are `STRICT` (a value of the wrong type is an error, not silently stored).

use anyhow::bail;
use rusqlite::{Connection, Transaction, TransactionBehavior};

/// One schema step.
pub enum Migration {
    /// SQL run as one batch.
    Sql(&'static str),
    /// Code, for a step that SQL alone cannot express.
    #[cfg_attr(not(test), allow(dead_code, reason = "no code migration yet"))]
    Code(fn(&Transaction) -> rusqlite::Result<()>),
}

/// Every migration, in order: `(version it brings the database to, step)`. Versions start at 1 and
/// increase by one.
pub const MIGRATIONS: &[(u32, Migration)] = &[
    (1, Migration::Sql(REGISTRY)),
    (2, Migration::Sql(crate::jobs::persist::SCHEMA)),
    (3, Migration::Sql(super::health::SCHEMA)),
    (4, Migration::Sql(super::tokens::SCHEMA)),
    (5, Migration::Sql(crate::audit::head::SCHEMA)),
];

/// Migration 1: the registry (what `state.json` held: nodes, join tokens, revoked API token ids),
/// what the gateway last heard from each node, and `meta` (facts about the database itself, such as
/// which `state.json` was imported into it).
const REGISTRY: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    public_key    TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    approval      TEXT NOT NULL CHECK (approval IN ('pending', 'approved', 'rejected')),
    hostname      TEXT NOT NULL,
    capabilities  TEXT NOT NULL,  -- JSON array of strings
    labels        TEXT NOT NULL,  -- JSON object of strings
    os            TEXT NOT NULL,
    arch          TEXT NOT NULL,
    version       TEXT NOT NULL,
    port1         INTEGER,        -- its two listen ports on 127.0.0.1, both set at approval
    port2         INTEGER,
    created_at    INTEGER NOT NULL,
    approved_at   INTEGER,
    pending_until INTEGER,
    join_token    TEXT NOT NULL,
    -- Written lazily, at most every 10 s per node: when the gateway last heard from it, and its last
    -- heartbeat (JSON of burrow_core::api::Heartbeat).
    last_seen     INTEGER,
    last_beat     TEXT,
    CHECK ((port1 IS NULL) = (port2 IS NULL))
) STRICT;

CREATE TABLE join_tokens (
    id             TEXT PRIMARY KEY,
    seq            INTEGER NOT NULL UNIQUE,  -- the order the registry keeps them in
    secret_hash    TEXT NOT NULL,
    enrollment_key TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    uses           INTEGER NOT NULL,
    used           INTEGER NOT NULL,
    manual         INTEGER NOT NULL CHECK (manual IN (0, 1)),
    revoked        INTEGER NOT NULL CHECK (revoked IN (0, 1))
) STRICT;

CREATE TABLE revoked_jtis (
    jti        TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL  -- forgotten after this: the token has expired anyway
) STRICT;
";

/// The schema version this build writes.
pub fn latest(migrations: &[(u32, Migration)]) -> u32 {
    migrations.last().map_or(0, |(v, _)| *v)
}

/// Brings `conn` to the latest version of `migrations`, refusing a database that is newer.
pub fn migrate(conn: &mut Connection, migrations: &[(u32, Migration)]) -> anyhow::Result<()> {
    let latest = latest(migrations);
    let current: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > latest {
        bail!(
            "written by a newer burrow (schema {current}); this build knows up to {latest}: \
             run the newer gateway, or restore a backup made by this version"
        );
    }
    for (i, (version, step)) in migrations.iter().enumerate() {
        if *version != i as u32 + 1 {
            bail!(
                "migration number {version} is out of order (expected {})",
                i + 1
            );
        }
        if *version <= current {
            continue;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match step {
            Migration::Sql(sql) => tx.execute_batch(sql),
            Migration::Code(f) => f(&tx),
        }
        .map_err(|e| anyhow::anyhow!("migration {version}: {e}"))?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        log::info!("store schema is now version {version}");
    }
    Ok(())
}
