//! The store across a rebuilt VM: a backup taken while the gateway runs, plus the data-dir files
//! docs/backup.md lists, bring a node back online on a fresh data dir without joining again.

use std::fs;

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

#[test]
fn a_backup_and_the_kept_keys_restore_a_gateway_whose_nodes_come_back_without_rejoining() {
    let gw = Gateway::start();
    let join = gw.join(&["--uses", "1"]);
    let agent = Agent::start(&join, "keeper");
    gw.wait_status("keeper", "online");
    let before = gw.node("keeper");

    let saved = tempfile::tempdir().unwrap();
    let out = gw.cli(&["backup", saved.path().join("burrow.db").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 nodes (1 approved)"), "{said}");
    let out = gw.cli(&["backup", saved.path().join("burrow.db").to_str().unwrap()]);
    assert!(!out.status.success(), "overwrote an existing backup");
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
