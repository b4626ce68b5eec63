//! The API token table (migration 4): what was minted, by whom, and when it was revoked. The token
//! itself is never stored (it is a bearer credential; its `jti` names it). Revocation is also put in
//! the registry's `revoked_jtis` (loaded into memory at start, checked on every request): that
//! is what refuses the token; `revoked_at` here is what the listing shows.
//!
//! Rows are kept until [`KEPT_AFTER_EXPIRY_S`] past their expiry (listed as `expired` meanwhile),
//! then pruned when the next token is minted.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// Migration 4.
pub const SCHEMA: &str = "
CREATE TABLE api_tokens (
    jti        TEXT PRIMARY KEY,
    name       TEXT NOT NULL,     -- the JWT subject
    role       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,     -- the minting token's name and jti, or the Unix user on api.sock
    revoked_at INTEGER
) STRICT;
CREATE INDEX api_tokens_by_created ON api_tokens (created_at);
";

/// Expired tokens stay listed this long after their expiry (seconds): 30 days.
pub const KEPT_AFTER_EXPIRY_S: u64 = 30 * 86400;

/// One minted token, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub jti: String,
    pub name: String,
    pub role: String,
    pub created_at: u64,
    pub expires_at: u64,
    pub created_by: String,
    pub revoked_at: Option<u64>,
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Records a minted token, and prunes rows expired more than [`KEPT_AFTER_EXPIRY_S`] before `now`.
pub fn insert(tx: &Transaction, row: &TokenRow, now: u64) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM api_tokens WHERE expires_at < ?1",
        [int(now.saturating_sub(KEPT_AFTER_EXPIRY_S))],
    )?;
    tx.execute(
        "INSERT INTO api_tokens (jti, name, role, created_at, expires_at, created_by, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            row.jti,
            row.name,
            row.role,
            int(row.created_at),
            int(row.expires_at),
            row.created_by,
            row.revoked_at.map(int)
        ],
    )?;
    Ok(())
}

/// Every recorded token, newest first.
pub fn list(c: &Connection) -> rusqlite::Result<Vec<TokenRow>> {
    let mut q = c.prepare(
        "SELECT jti, name, role, created_at, expires_at, created_by, revoked_at
         FROM api_tokens ORDER BY created_at DESC, rowid DESC",
    )?;
    let rows = q.query_map([], read_row)?;
    rows.collect()
}

/// One token by `jti`.
pub fn get(c: &Connection, jti: &str) -> rusqlite::Result<Option<TokenRow>> {
    c.query_row(
        "SELECT jti, name, role, created_at, expires_at, created_by, revoked_at
         FROM api_tokens WHERE jti = ?1",
        [jti],
        read_row,
    )
    .optional()
}

/// Marks `jti` revoked at `now` unless it already is; returns the row as it now stands (`None`:
/// no such token).
pub fn revoke(tx: &Transaction, jti: &str, now: u64) -> rusqlite::Result<Option<TokenRow>> {
    tx.execute(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE jti = ?1 AND revoked_at IS NULL",
        params![jti, int(now)],
    )?;
    get(tx, jti)
}

fn read_row(r: &rusqlite::Row) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        jti: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        created_at: uint(r.get(3)?),
        expires_at: uint(r.get(4)?),
        created_by: r.get(5)?,
        revoked_at: r.get::<_, Option<i64>>(6)?.map(uint),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn row(jti: &str, created_at: u64, expires_at: u64) -> TokenRow {
        TokenRow {
            jti: jti.into(),
            name: format!("name-{jti}"),
            role: "operator".into(),
            created_at,
            expires_at,
            created_by: "uid:0(root)".into(),
            revoked_at: None,
        }
    }

    #[test]
    fn tokens_are_listed_newest_first_and_pruned_a_month_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let now = 10 * KEPT_AFTER_EXPIRY_S;
        // Expired just over the grace period ago: pruned by the next insert.
        let stale = row("stale", 1, now - KEPT_AFTER_EXPIRY_S - 1);
        store.write(move |tx| insert(tx, &stale, 1)).unwrap();
        // Expired, but recently: kept.
        let expired = row("expired", 2, now - 10);
        store.write(move |tx| insert(tx, &expired, 2)).unwrap();
        let fresh = row("fresh", now, now + 60);
        store.write(move |tx| insert(tx, &fresh, now)).unwrap();
        let listed: Vec<String> = store
            .read(list)
            .unwrap()
            .into_iter()
            .map(|r| r.jti)
            .collect();
        assert_eq!(listed, ["fresh", "expired"]);
    }

    #[test]
    fn revoking_twice_keeps_the_first_time_and_unknown_jtis_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let r = row("j1", 100, 10_000);
        store.write(move |tx| insert(tx, &r, 100)).unwrap();
        let first = store.write(|tx| revoke(tx, "j1", 200)).unwrap().unwrap();
        assert_eq!(first.revoked_at, Some(200));
        let again = store.write(|tx| revoke(tx, "j1", 300)).unwrap().unwrap();
        assert_eq!(again.revoked_at, Some(200));
        assert_eq!(store.write(|tx| revoke(tx, "nope", 300)).unwrap(), None);
    }

    /// What the API's revocation writes (the row and the registry's `revoked_jtis`) is what a
    /// restarted gateway loads: the token stays refused.
    #[test]
    fn a_revocation_survives_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let exp = crate::registry::now() + 3600;
        {
            let registry = Registry::open(dir.path()).unwrap();
            let r = row("j1", 100, exp);
            registry
                .store()
                .write(move |tx| insert(tx, &r, 100))
                .unwrap();
            registry
                .update(|s| {
                    s.revoked_jtis.insert("j1".into(), exp);
                    Ok::<_, anyhow::Error>(())
                })
                .unwrap();
            registry.store().write(|tx| revoke(tx, "j1", 200)).unwrap();
        }
        let registry = Registry::open(dir.path()).unwrap();
        assert_eq!(registry.read().revoked_jtis.get("j1"), Some(&exp));
        let listed = registry.store().read(list).unwrap();
        assert_eq!(listed[0].revoked_at, Some(200));
        assert!(!listed[0].name.is_empty());
    }
}
