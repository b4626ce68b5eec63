//! The chain's head kept in the store (`audit_head`, migration 5): the last durable entry's seq and
//! hash, and the oldest seq retention kept. The log file alone cannot show that its last lines were
//! cut off at a line boundary (what is left is a valid chain); the head, written after each durable
//! group and kept elsewhere, can. It may lag the file by a group (it is written after the fsync,
//! without waiting), never lead it.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::store::Store;

/// Migration 5.
pub const SCHEMA: &str = "
CREATE TABLE audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,  -- the last durable entry
    hash      TEXT NOT NULL,     -- its hash
    first_seq INTEGER NOT NULL   -- the oldest entry retention kept
) STRICT;
";

/// Where the chain stood after the last durable group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub first_seq: u64,
}

/// Where the head is kept.
pub trait HeadStore: Send + Sync {
    fn load(&self) -> anyhow::Result<Option<Head>>;
    /// Saves without waiting for it to be durable.
    fn save(&self, head: Head);
}

impl HeadStore for Arc<Store> {
    fn load(&self) -> anyhow::Result<Option<Head>> {
        self.read(read)
    }

    fn save(&self, head: Head) {
        self.write_lazy(move |tx| {
            tx.execute(
                "INSERT INTO audit_head (id, seq, hash, first_seq) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET seq = ?1, hash = ?2, first_seq = ?3",
                rusqlite::params![head.seq as i64, head.hash, head.first_seq as i64],
            )
            .map(|_| ())
        });
    }
}

fn read(conn: &Connection) -> rusqlite::Result<Option<Head>> {
    conn.query_row(
        "SELECT seq, hash, first_seq FROM audit_head WHERE id = 1",
        [],
        |r| {
            Ok(Head {
                seq: r.get::<_, i64>(0)? as u64,
                hash: r.get(1)?,
                first_seq: r.get::<_, i64>(2)? as u64,
            })
        },
    )
    .optional()
}

/// The head as kept in `<data_dir>/burrow.db`, read offline (read-only; the gateway may run).
pub fn load_offline(data_dir: &Path) -> anyhow::Result<Option<Head>> {
    let path = data_dir.join(crate::store::DB_FILE);
    if !path.exists() {
        anyhow::bail!("{} does not exist: no chain head to check", path.display());
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let has_table: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit_head'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .with_context(|| format!("reading {}", path.display()))?;
    if !has_table {
        return Ok(None);
    }
    read(&conn).with_context(|| format!("reading the audit head in {}", path.display()))
}
