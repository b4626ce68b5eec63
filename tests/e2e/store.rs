//! The store across a rebuilt VM: a backup taken while the gateway runs, plus the data-dir files
//! docs/backup.md lists, bring a node back online on a fresh data dir without joining again.

use std::fs;
use std::path::Path;

use serde_json::json;

use crate::util::{Agent, Gateway};

/// The files of the data dir that docs/backup.md says to keep beside the database backup.
const KEPT: &[&str] = &[
    "gateway.key",
    "gateway.key.pub",
    "sshd/ssh_host_ed25519_key",
    "sshd/ssh_host_ed25519_key.pub",
    "audit.log",
];

/// An online backup of `<data>/burrow.db` into `dest`, as `gateway backup` makes it (SQLite's
/// backup API in one step, while the gateway writes; then a plain journal, so it is one file).
/// `gateway backup FILE` itself is wired in the CLI; until then the test takes the same copy here.
fn backup(data: &Path, dest: &Path) {
    let src = rusqlite::Connection::open(data.join("burrow.db")).unwrap();
    src.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let mut dst = rusqlite::Connection::open(dest).unwrap();
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst).unwrap();
        assert_eq!(b.step(-1).unwrap(), rusqlite::backup::StepResult::Done);
    }
    let mode: String = dst
        .pragma_update_and_check(None, "journal_mode", "delete", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
}

#[test]
fn a_backup_and_the_kept_keys_restore_a_gateway_whose_nodes_come_back_without_rejoining() {
    let gw = Gateway::start();
    let join = gw.join(&["--uses", "1"]);
    let agent = Agent::start(&join, "keeper");
    gw.wait_status("keeper", "online");
    let before = gw.node("keeper");

    let saved = tempfile::tempdir().unwrap();
    backup(&gw.data(), &saved.path().join("burrow.db"));
    // The gateway keeps running and writing after the backup; the restore goes back to it.
    let (code, out) = gw.exec("keeper", json!({"command": "echo before"}));
    assert_eq!(
        (code, out["stdout"].as_str()),
        (200, Some("before\n")),
        "{out}"
    );

    // The VM is rebuilt: the data dir is gone but for the kept files and the backup.
    let gw = gw.restart_after(|data| {
        for file in KEPT {
            let to = saved.path().join(file);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(data.join(file), &to).unwrap_or_else(|e| panic!("keeping {file}: {e}"));
        }
        fs::remove_dir_all(data).unwrap();
        fs::create_dir_all(data.join("sshd")).unwrap();
        for file in KEPT.iter().chain(&["burrow.db"]) {
            fs::copy(saved.path().join(file), data.join(file)).unwrap();
        }
    });
    gw.wait_status("keeper", "online");
    let after = gw.node("keeper");
    for field in [
        "fingerprint",
        "ports",
        "created_at",
        "approved_at",
        "labels",
    ] {
        assert_eq!(after[field], before[field], "{field} changed");
    }
    let (code, out) = gw.exec("keeper", json!({"command": "echo restored"}));
    assert_eq!(
        (code, out["stdout"].as_str()),
        (200, Some("restored\n")),
        "{out}"
    );
    let log = agent.proc.log_text();
    assert_eq!(
        log.matches("paired as").count(),
        1,
        "the node joined again:\n{log}"
    );
    // The audit chain goes on where the kept log ends.
    let out = gw.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
