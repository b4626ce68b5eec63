//! The audit log across crashes: what a power cut mid-append leaves must not stop the gateway.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::util::{wait_until, Gateway};

fn lines(gw: &Gateway) -> usize {
    std::fs::read_to_string(gw.data().join("audit.log"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Regression: a torn last line in `audit.log` made `gateway serve` fail verification and refuse
/// to start.
#[test]
fn torn_audit_tail_does_not_stop_the_gateway() {
    let gw = Gateway::start();
    gw.join(&[]);
    gw.join(&[]);
    // The harness's admin token (audited as `token.create`), then the two joins.
    wait_until(Duration::from_secs(10), "three audit entries", || {
        lines(&gw) == 3
    });
    let log = gw.data().join("audit.log");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "audit.log is private");
    let intact = std::fs::read(&log).unwrap();
    let torn = br#"{"ts": "2026-12-02T01:00:00Z", "actor": "gateway", "action": "join.cr"#;

    let gw = gw.restart_after(|data| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("audit.log"))
            .unwrap();
        f.write_all(torn).unwrap();
        let out =
            crate::util::isolate(&mut std::process::Command::new(crate::util::bin("gateway")))
                .args(["audit", "verify"])
                .arg(data.join("audit.log"))
                .output()
                .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("line 4") && err.contains("torn"),
            "{err}"
        );
    });

    // It serves, and new entries chain on after the acknowledged ones.
    let (status, _) = gw.api("GET", "/api/v1/status", None);
    assert_eq!(status, 200);
    assert!(
        gw.log_text().contains("torn line"),
        "the gateway says what it did:\n{}",
        gw.log_text()
    );
    // The restarted harness's token, then one more join.
    gw.join(&[]);
    wait_until(Duration::from_secs(10), "five audit entries", || {
        lines(&gw) == 5
    });
    let now = std::fs::read(&log).unwrap();
    assert!(now.starts_with(&intact), "acknowledged entries are kept");
    let out = gw.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 entries, chain intact"));

    // The torn bytes are kept aside, not dropped.
    let aside: Vec<_> = std::fs::read_dir(gw.data())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("audit.log.torn-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), torn);

    // An edited entry is named by `verify`, with a non-zero exit.
    let edited = String::from_utf8(now)
        .unwrap()
        .replacen("join.create", "join.cre4te", 2);
    let copy = gw.dir.path().join("edited.log");
    std::fs::write(&copy, edited).unwrap();
    let out = gw.cli(&["audit", "verify", copy.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 2 (seq 2)"),
        "{err}"
    );
}
