//! The store's unit tests: open and migrate, a newer schema refused, group commit, a failing change
//! undoing only itself, reads beside an open write, and rows acknowledged before a `kill -9`.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// Waits until `cond` holds, or panics naming `what` after 30 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn store_with_table(dir: &Path) -> Arc<Store> {
    let store = Store::open(dir).unwrap();
    store
        .write(|t| t.execute_batch("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY) STRICT"))
        .unwrap();
    store
}

fn rows(store: &Store) -> Vec<i64> {
    store
        .read(|c| {
            let mut q = c.prepare("SELECT n FROM t ORDER BY n")?;
            let v = q.query_map([], |r| r.get(0))?.collect();
            v
        })
        .unwrap()
}

/// Holds the writer thread inside a change (after it inserted `n`) until the returned sender is
/// dropped or sent to; returns once the writer is inside it.
fn hold_writer(
    store: &Arc<Store>,
    n: i64,
) -> (crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>) {
    let (entered_tx, entered_rx) = crossbeam_channel::bounded::<()>(1);
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
    let s = store.clone();
    let holder = std::thread::spawn(move || {
        s.write(move |t| {
            t.execute("INSERT INTO t VALUES (?1)", [n])?;
            entered_tx.send(()).unwrap();
            let _ = release_rx.recv();
            Ok(())
        })
        .unwrap();
    });
    entered_rx.recv().unwrap();
    (release_tx, holder)
}

#[test]
fn open_creates_a_private_wal_database_at_the_latest_schema_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let path = dir.path().join(DB_FILE);
    assert_eq!(store.path(), path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (journal, version, tables) = store
        .read(|c| {
            let journal: String = c.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
            let version: u32 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let mut q =
                c.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")?;
            let tables: Vec<String> = q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok((journal, version, tables))
        })
        .unwrap();
    assert_eq!(journal, "wal");
    assert_eq!(version, migrations::latest(MIGRATIONS));
    for table in ["join_tokens", "meta", "nodes", "revoked_jtis"] {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing: {tables:?}"
        );
    }
    let settings = store
        .write(|t| {
            let sync: i64 = t.pragma_query_value(None, "synchronous", |r| r.get(0))?;
            let fk: i64 = t.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
            Ok((sync, fk))
        })
        .unwrap();
    assert_eq!(settings, (2, 1), "synchronous=FULL (2) and foreign_keys=ON");
    store
        .write(|t| t.execute("INSERT INTO meta VALUES ('k', 'v')", []))
        .unwrap();
    // SQLite gives the write-ahead log and its index the database's own mode.
    for side in ["-wal", "-shm"] {
        let file = dir.path().join(format!("{DB_FILE}{side}"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    drop(store);
    // Reopening applies no migration again (it would fail: the tables exist) and keeps the data.
    let store = Store::open(dir.path()).unwrap();
    let v: String = store
        .read(|c| c.query_row("SELECT value FROM meta WHERE key = 'k'", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(v, "v");
}

#[test]
fn a_database_from_a_newer_burrow_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let latest = migrations::latest(MIGRATIONS);
    let path = dir.path().join(DB_FILE);
    let raw = Connection::open(&path).unwrap();
    raw.pragma_update(None, "user_version", latest + 1).unwrap();
    drop(raw);
    let err = format!(
        "{:#}",
        Store::open(dir.path())
            .err()
            .expect("a newer schema opened")
    );
    let want = format!(
        "written by a newer burrow (schema {}); this build knows up to {latest}",
        latest + 1
    );
    assert!(err.contains(&want), "{err}");
    let raw = Connection::open(&path).unwrap();
    let v: u32 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, latest + 1, "never downgraded");
}

#[test]
fn each_migration_is_its_own_transaction_and_a_failing_one_stops_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("m.db")).unwrap();
    fn code(t: &Transaction) -> rusqlite::Result<()> {
        t.execute("INSERT INTO a VALUES (42)", []).map(|_| ())
    }
    let good: &[(u32, Migration)] = &[
        (1, Migration::Sql("CREATE TABLE a (x INTEGER)")),
        (2, Migration::Code(code)),
    ];
    migrate(&mut conn, good).unwrap();
    let bad: &[(u32, Migration)] = &[
        (1, Migration::Sql("CREATE TABLE a (x INTEGER)")),
        (2, Migration::Code(code)),
        (
            3,
            Migration::Sql("CREATE TABLE b (y INTEGER); INSERT INTO nowhere VALUES (1)"),
        ),
    ];
    let err = migrate(&mut conn, bad).unwrap_err().to_string();
    assert!(err.contains("migration 3"), "{err}");
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    let b: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'b'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(b, 0, "the failed migration's table was rolled back");
    let x: i64 = conn.query_row("SELECT x FROM a", [], |r| r.get(0)).unwrap();
    assert_eq!(x, 42, "migration 2 ran once");
    let gap: &[(u32, Migration)] = &[(1, Migration::Sql("")), (3, Migration::Sql(""))];
    assert!(
        migrate(&mut conn, gap).is_err(),
        "a gap in the numbers is refused"
    );
}

use migrations::migrate;

#[test]
fn concurrent_writes_are_all_durable_and_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_table(dir.path());
    let before = store.commits();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let s = store.clone();
            std::thread::spawn(move || {
                for j in 0..50 {
                    let n = i * 1000 + j;
                    let got = s
                        .write(move |t| t.execute("INSERT INTO t VALUES (?1)", [n]))
                        .unwrap();
                    assert_eq!(got, 1);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    eprintln!(
        "800 writes from 16 threads: {} commits",
        store.commits() - before
    );
    drop(store);
    // A fresh open (new connections) sees every acknowledged row.
    let store = Store::open(dir.path()).unwrap();
    let all = rows(&store);
    assert_eq!(all.len(), 800);
    for i in 0..16 {
        for j in 0..50 {
            assert!(
                all.binary_search(&(i * 1000 + j)).is_ok(),
                "row {i}/{j} lost"
            );
        }
    }
}

#[test]
fn changes_queued_during_a_commit_share_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_table(dir.path());
    let before = store.commits();
    let (release, holder) = hold_writer(&store, 0);
    let writers: Vec<_> = (1..=10)
        .map(|n| {
            let s = store.clone();
            std::thread::spawn(move || {
                s.write(move |t| t.execute("INSERT INTO t VALUES (?1)", [n]))
            })
        })
        .collect();
    wait_until("ten queued changes", || store.writer.queued() == 10);
    drop(release);
    holder.join().unwrap();
    for w in writers {
        w.join().unwrap().unwrap();
    }
    assert_eq!(
        store.commits() - before,
        2,
        "the holder's commit, then one for all ten"
    );
    assert_eq!(rows(&store), (0..=10).collect::<Vec<i64>>());
}

#[test]
fn a_failing_or_panicking_change_rolls_back_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_table(dir.path());
    let before = store.commits();
    let (release, holder) = hold_writer(&store, 0);
    let s = store.clone();
    let good1 = std::thread::spawn(move || s.write(|t| t.execute("INSERT INTO t VALUES (1)", [])));
    wait_until("the first change queued", || store.writer.queued() == 1);
    let s = store.clone();
    let bad = std::thread::spawn(move || {
        s.write(|t| {
            t.execute("INSERT INTO t VALUES (2)", [])?;
            // A duplicate key: this change fails after it wrote a row.
            t.execute("INSERT INTO t VALUES (1)", [])
        })
    });
    wait_until("the failing change queued", || store.writer.queued() == 2);
    let s = store.clone();
    let panics = std::thread::spawn(move || {
        s.write(|t| -> rusqlite::Result<()> {
            t.execute("INSERT INTO t VALUES (3)", [])?;
            panic!("a bug in a change");
        })
    });
    wait_until("the panicking change queued", || store.writer.queued() == 3);
    let s = store.clone();
    let good2 = std::thread::spawn(move || s.write(|t| t.execute("INSERT INTO t VALUES (4)", [])));
    wait_until("the last change queued", || store.writer.queued() == 4);
    drop(release);
    holder.join().unwrap();
    assert_eq!(good1.join().unwrap().unwrap(), 1);
    let err = format!("{:#}", bad.join().unwrap().unwrap_err());
    assert!(err.contains("UNIQUE"), "{err}");
    let err = format!("{:#}", panics.join().unwrap().unwrap_err());
    assert!(err.contains("panicked"), "{err}");
    assert_eq!(good2.join().unwrap().unwrap(), 1);
    assert_eq!(store.commits() - before, 2, "all four changes in one batch");
    assert_eq!(rows(&store), vec![0, 1, 4]);
}

#[test]
fn reads_do_not_wait_for_an_open_write_and_see_only_committed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_table(dir.path());
    store
        .write(|t| t.execute("INSERT INTO t VALUES (1)", []))
        .unwrap();
    let (release, holder) = hold_writer(&store, 2);
    // The writer is inside an open transaction that has inserted 2.
    assert_eq!(rows(&store), vec![1]);
    drop(release);
    holder.join().unwrap();
    assert_eq!(rows(&store), vec![1, 2]);
}

#[test]
fn lazy_writes_are_ordered_with_other_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_table(dir.path());
    for n in 0..20 {
        store.write_lazy(move |t| t.execute("INSERT INTO t VALUES (?1)", [n]).map(|_| ()));
    }
    // A failing lazy write is only logged; the ones after it still land.
    store.write_lazy(|t| t.execute("INSERT INTO t VALUES (0)", []).map(|_| ()));
    store.write_lazy(|t| t.execute("INSERT INTO t VALUES (20)", []).map(|_| ()));
    let seen: i64 = store
        .write(|t| t.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(seen, 21, "a write sees every lazy write queued before it");
}

/// A command's "started" row (lazy) and its end (durable) a moment later cost one fsync, not two:
/// a batch of only lazy changes waits up to `LAZY_LINGER` for a durable one; alone, it still lands.
#[test]
fn a_lazy_write_shares_the_commit_of_a_durable_one_that_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_table(dir.path());
    // The durable write must come within the linger of the writer taking the lazy one; a test
    // thread descheduled that long on a busy machine gets two more tries.
    let shared = (0..3).any(|n| {
        let before = store.commits();
        store.write_lazy(move |t| t.execute("INSERT INTO t VALUES (?1)", [10 + n]).map(|_| ()));
        // The writer has taken it and lingers (nothing durable came to commit it with).
        wait_until("the writer to take the lazy change", || {
            store.writer.queued() == 0
        });
        store
            .write(move |t| t.execute("INSERT INTO t VALUES (?1)", [20 + n]))
            .unwrap();
        store.commits() - before == 1
    });
    assert!(
        shared,
        "a lazy write and the durable one after it never shared a commit"
    );
    let before = store.commits();
    store.write_lazy(|t| t.execute("INSERT INTO t VALUES (3)", []).map(|_| ()));
    wait_until("a lone lazy write to be committed", || {
        store.commits() - before == 1
    });
    let n: i64 = store
        .read(|c| c.query_row("SELECT count(*) FROM t WHERE n = 3", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(n, 1);
}

/// The child of [`acknowledged_writes_survive_kill_9`]: writes rows from four threads, printing
/// `acked N` after each write returned, until it is killed. Without the variable it does nothing.
#[test]
fn child_writes_until_killed() {
    let Some(dir) = std::env::var_os("BURROW_STORE_KILL_CHILD") else {
        return;
    };
    let store = store_with_table(Path::new(&dir));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let s = store.clone();
            std::thread::spawn(move || {
                for j in 0.. {
                    let n = i + 4 * j;
                    s.write(move |t| t.execute("INSERT INTO t VALUES (?1)", [n]))
                        .unwrap();
                    println!("acked {n}");
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "store::tests::child_writes_until_killed",
            "--exact",
            "--nocapture",
        ])
        .env("BURROW_STORE_KILL_CHILD", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let line = lines.next().expect("the child stopped early").unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked.push(n.parse::<i64>().unwrap());
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-write
    child.wait().unwrap();
    // Acknowledgements printed before the kill but not read yet count too.
    for line in lines {
        if let Some(n) = line.unwrap().strip_prefix("acked ") {
            acked.push(n.parse().unwrap());
        }
    }
    let store = Store::open(dir.path()).unwrap();
    let all = rows(&store);
    for n in &acked {
        assert!(all.binary_search(n).is_ok(), "acknowledged row {n} lost");
    }
}
