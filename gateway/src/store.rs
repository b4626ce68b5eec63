//! TEMPORARY stand-in with the agreed interface; replaced by the store helper's module at merge.

use std::path::Path;
use std::sync::{Arc, Mutex};

pub struct Store {
    conn: Mutex<rusqlite::Connection>,
}

impl Store {
    pub fn open(data_dir: &Path) -> anyhow::Result<Arc<Store>> {
        let conn = rusqlite::Connection::open(data_dir.join("burrow.db"))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        for (version, sql) in MIGRATIONS {
            let current: u32 =
                store.read(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))?;
            if current < *version {
                store.write(move |tx| {
                    tx.execute_batch(sql)?;
                    tx.execute_batch(&format!("PRAGMA user_version={version}"))
                })?;
            }
        }
        Ok(Arc::new(store))
    }

    pub fn read<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> anyhow::Result<T> {
        let c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&c)?)
    }

    pub fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = c.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub fn write_lazy(
        &self,
        f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<()> + Send + 'static,
    ) {
        if let Err(e) = self.write(f) {
            log::error!("store: {e:#}");
        }
    }
}

const MIGRATIONS: &[(u32, &str)] = &[(2, crate::jobs::persist::SCHEMA)];
