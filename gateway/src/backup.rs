//! `gateway backup FILE`: a consistent copy of the store (`<data>/burrow.db`), safe while the gateway
//! runs and writes.
//!
//! It uses SQLite's online backup API in one step: the copy is made inside one read transaction, so
//! it is one consistent snapshot (a commit the gateway makes meanwhile is either wholly in it or not
//! at all), and in WAL mode that read never blocks the gateway's writer. The copy goes to a temp file
//! beside FILE (0600: it holds the registry), is switched to a plain rollback journal so that it is
//! one self-contained file, checked (`PRAGMA integrity_check`), fsynced, and only then put in place:
//! FILE is either the complete backup or absent. An existing FILE is not overwritten unless asked.
//!
//! Restoring, and which other files of the data dir a rebuilt gateway needs: docs/backup.md.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::store::DB_FILE;

/// How long the backup waits for the database to become readable (it is busy only in rare moments,
/// e.g. while SQLite recovers a WAL after a crash) before it gives up.
const BUSY_LIMIT: Duration = Duration::from_secs(30);

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The backup file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The schema version it holds (`PRAGMA user_version`); a gateway restoring it must know it.
    pub schema_version: u32,
    /// Nodes in its registry (pending, approved and rejected).
    pub nodes: u64,
    /// Of those, the approved ones: the nodes that reconnect by themselves after a restore.
    pub approved_nodes: u64,
}

impl fmt::Display for BackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backed up to {}: {} bytes, schema version {}, {} nodes ({} approved)",
            self.path.display(),
            self.bytes,
            self.schema_version,
            self.nodes,
            self.approved_nodes
        )
    }
}

/// Backs up `<data_dir>/burrow.db` to `dest`, refusing to overwrite an existing file.
pub fn run(data_dir: &Path, dest: &Path) -> anyhow::Result<BackupReport> {
    run_with(data_dir, dest, false)
}

/// [`run`], overwriting an existing `dest` (atomically: it is replaced by the complete backup) if
/// `overwrite` is set.
pub fn run_with(data_dir: &Path, dest: &Path, overwrite: bool) -> anyhow::Result<BackupReport> {
    let source = data_dir.join(DB_FILE);
    if !source.is_file() {
        bail!(
            "no database at {}: is {} the gateway's data dir? (a gateway that still keeps \
             state.json imports it into the database when it next starts)",
            source.display(),
            data_dir.display()
        );
    }
    if !overwrite && fs::symlink_metadata(dest).is_ok() {
        bail!(
            "{} exists: choose another file, or overwrite it explicitly",
            dest.display()
        );
    }
    let name = dest
        .file_name()
        .with_context(|| format!("{} is not a file name", dest.display()))?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        burrow_core::join::hex(&burrow_core::random_bytes::<4>())
    ));
    let result = copy(&source, &tmp).and_then(|report| {
        put_in_place(&tmp, dest, dir, overwrite)?;
        let bytes = fs::metadata(dest)
            .with_context(|| format!("reading {}", dest.display()))?
            .len();
        Ok(BackupReport {
            path: dest.to_path_buf(),
            bytes,
            ..report
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Copies the database at `source` into a new file `tmp` (0600), checks it, fsyncs it.
fn copy(source: &Path, tmp: &Path) -> anyhow::Result<BackupReport> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // Read-write without create: a reader of a WAL database needs its -shm file, and after a crash
    // the first connection recovers the WAL. Nothing is written to the database itself.
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", source.display()))?;
    src.busy_timeout(BUSY_LIMIT)?;
    let mut dst = Connection::open(tmp).with_context(|| format!("opening {}", tmp.display()))?;
    {
        let backup = Backup::new(&src, &mut dst)
            .with_context(|| format!("starting the backup of {}", source.display()))?;
        let deadline = Instant::now() + BUSY_LIMIT;
        // -1: every page in one step, i.e. one read transaction and one consistent snapshot. Done in
        // several steps, a write by the gateway between two of them would restart the copy.
        loop {
            match backup
                .step(-1)
                .with_context(|| format!("copying {}", source.display()))?
            {
                StepResult::Done => break,
                StepResult::More => continue,
                StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                    // Nothing tells us when the lock goes; retry shortly.
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => bail!(
                    "{} stayed locked for {}s; try again",
                    source.display(),
                    BUSY_LIMIT.as_secs()
                ),
            }
        }
    }
    drop(src);
    let checked = (|| -> rusqlite::Result<(String, u32, u64, u64)> {
        // The copy carries the source's WAL mode; a backup should be one file with no -wal beside it.
        let _: String =
            dst.pragma_update_and_check(None, "journal_mode", "delete", |r| r.get(0))?;
        let integrity: String = dst.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        let version: u32 = dst.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let has_nodes: bool = dst.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'nodes')",
            [],
            |r| r.get(0),
        )?;
        let (nodes, approved) = match has_nodes {
            false => (0, 0),
            true => dst.query_row(
                "SELECT count(*), count(*) FILTER (WHERE approval = 'approved') FROM nodes",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?,
        };
        Ok((integrity, version, nodes, approved))
    })()
    .with_context(|| format!("checking the copy {}", tmp.display()))?;
    let (integrity, schema_version, nodes, approved_nodes) = checked;
    if integrity != "ok" {
        bail!(
            "the copy of {} fails its integrity check: {integrity}",
            source.display()
        );
    }
    dst.close()
        .map_err(|(_, e)| e)
        .with_context(|| format!("closing {}", tmp.display()))?;
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    Ok(BackupReport {
        path: tmp.to_path_buf(),
        bytes: 0,
        schema_version,
        nodes,
        approved_nodes,
    })
}

/// Moves the finished `tmp` to `dest` (without `overwrite`, never over a file that appeared
/// meanwhile) and makes the directory entry durable.
fn put_in_place(tmp: &Path, dest: &Path, dir: &Path, overwrite: bool) -> anyhow::Result<()> {
    let shown = dest.display();
    if overwrite {
        fs::rename(tmp, dest).with_context(|| format!("writing {shown}"))?;
    } else {
        // A hard link fails if `dest` exists, where a rename would replace it.
        match fs::hard_link(tmp, dest) {
            Ok(()) => {
                fs::remove_file(tmp).with_context(|| format!("removing {}", tmp.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                bail!("{shown} appeared during the backup; not overwritten")
            }
            // A filesystem without hard links: check, then rename.
            Err(_) if fs::symlink_metadata(dest).is_err() => {
                fs::rename(tmp, dest).with_context(|| format!("writing {shown}"))?
            }
            Err(e) => return Err(e).with_context(|| format!("writing {shown}")),
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::registry::{Approval, NodeRecord, Registry};

    fn node(id: &str, approval: Approval) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public_key: format!("ssh-ed25519 AAAA {id}"),
            fingerprint: format!("SHA256:{id}"),
            approval,
            hostname: id.into(),
            capabilities: vec![],
            labels: Default::default(),
            os: "linux".into(),
            arch: "aarch64".into(),
            version: "0.1.0".into(),
            ports: None,
            created_at: 1,
            approved_at: None,
            pending_until: None,
            join_token: "jt".into(),
        }
    }

    #[test]
    fn backs_up_while_the_store_is_written_and_the_copy_restores() {
        let data = tempfile::tempdir().unwrap();
        let reg = Registry::open(data.path()).unwrap();
        reg.update(|s| {
            for (id, a) in [("a", Approval::Approved), ("b", Approval::Approved)] {
                s.nodes.insert(id.into(), node(id, a));
            }
            s.nodes.insert("c".into(), node("c", Approval::Pending));
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
        let store = reg.store().clone();
        store
            .write(|t| t.execute_batch("CREATE TABLE load (n INTEGER PRIMARY KEY)"))
            .unwrap();
        // A live writer: durable writes back to back for the whole backup.
        let stop = Arc::new(AtomicBool::new(false));
        let (s, halt) = (store.clone(), stop.clone());
        let writer = std::thread::spawn(move || {
            let mut n = 0i64;
            while !halt.load(Ordering::Relaxed) {
                s.write(move |t| t.execute("INSERT INTO load VALUES (?1)", [n]))
                    .unwrap();
                n += 1;
            }
            n
        });
        // Let the writer get going before the backup starts.
        let started = Instant::now();
        while store
            .read(|c| c.query_row("SELECT count(*) FROM load", [], |r| r.get::<_, i64>(0)))
            .unwrap()
            < 50
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the writer did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("gw.db");
        let report = run(data.path(), &dest).unwrap();
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert_eq!(report.path, dest);
        assert_eq!((report.nodes, report.approved_nodes), (3, 2));
        assert_eq!(report.schema_version, crate::store::schema_version());
        assert_eq!(report.bytes, fs::metadata(&dest).unwrap().len());
        assert!(
            report.to_string().contains("3 nodes (2 approved)"),
            "{report}"
        );
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("gw.db")],
            "one file: no temp, no -wal"
        );
        let copied: i64 = Connection::open(&dest)
            .unwrap()
            .query_row("SELECT count(*) FROM load", [], |r| r.get(0))
            .unwrap();
        assert!(
            copied >= 50 && copied <= written,
            "{copied} of {written} rows"
        );

        // Restore: the copy as the store of a fresh data dir.
        let restored = tempfile::tempdir().unwrap();
        fs::copy(&dest, restored.path().join(DB_FILE)).unwrap();
        let back = Registry::open(restored.path()).unwrap();
        assert_eq!(*back.read(), *reg.read());
    }

    #[test]
    fn refuses_to_overwrite_unless_asked_and_needs_a_database() {
        let data = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("backup.db");
        let err = format!("{:#}", run(data.path(), &dest).unwrap_err());
        assert!(err.contains("no database at"), "{err}");
        drop(Registry::open(data.path()).unwrap());
        fs::write(&dest, b"keep me").unwrap();
        let err = format!("{:#}", run(data.path(), &dest).unwrap_err());
        assert!(err.contains("exists"), "{err}");
        assert_eq!(fs::read(&dest).unwrap(), b"keep me");
        let report = run_with(data.path(), &dest, true).unwrap();
        assert_eq!(report.nodes, 0);
        assert_ne!(fs::read(&dest).unwrap(), b"keep me");
        assert_eq!(
            fs::read_dir(out.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
