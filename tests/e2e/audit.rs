//! The audit trail against a real gateway and agent: a workload listed by who did it (API and
//! CLI), tampered copies named by `verify`, kill -9 during a stream of execs, a flood of bad tokens,
//! rotation and retention, and what a power cut mid-append leaves.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{wait_until, Agent, Gateway};

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

fn entries(gw: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(gw.data().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Writes `lines` (each without its newline) to a copy next to the data dir.
fn copy(gw: &Gateway, name: &str, lines: &[&str]) -> String {
    let path = gw.dir.path().join(name);
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

/// Asserts `gateway audit verify <args>` fails and its message contains every one of `want`.
fn fails(gw: &Gateway, args: &[&str], want: &[&str]) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = gw.cli(&all);
    let (_, err) = text(&out);
    assert!(!out.status.success(), "{args:?} passed");
    for w in want {
        assert!(err.contains(w), "{args:?}: expected {w:?} in {err}");
    }
}

/// The whole acceptance workload: pair, approve, exec (ok, failing, cancelled), token create and
/// revoke, a label change; then the API and the CLI say who did what with exit codes, filters and
/// paging work, `verify` passes, and copies with an edited, deleted, swapped line or a cut tail
/// fail naming the entry.
#[test]
fn workload_is_listed_by_who_and_tampered_copies_fail_verify() {
    let gw = Gateway::start();
    let _agent = Agent::start(&gw.join(&["--manual"]), "pi-w");
    gw.wait_status("pi-w", "pending");
    let (status, _) = gw.api("POST", "/api/v1/nodes/pi-w/approve", None);
    assert_eq!(status, 200);
    gw.wait_status("pi-w", "online");
    let (status, minted) = gw.api(
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "operator", "ttl": "1h", "name": "alice"})),
    );
    assert_eq!(status, 201, "{minted}");
    let alice = minted["token"].as_str().unwrap().to_string();
    let alice_jti = minted["jti"].as_str().unwrap().to_string();
    let exec = |body: Value| gw.api_as(&alice, "POST", "/api/v1/nodes/pi-w/exec", Some(body));
    let (status, ok) = exec(json!({"command": "echo hi"}));
    assert_eq!((status, &ok["state"]), (200, &json!("succeeded")), "{ok}");
    let (_, failed) = exec(json!({"argv": ["sh", "-c", "exit 3"]}));
    assert_eq!(failed["exit_code"], 3, "{failed}");
    let (status, slow) = exec(json!({"command": "sleep 30", "async": true}));
    assert_eq!(status, 202, "{slow}");
    let slow_id = slow["job_id"].as_str().unwrap().to_string();
    let (status, _) = gw.api_as(
        &alice,
        "POST",
        &format!("/api/v1/jobs/{slow_id}/cancel"),
        None,
    );
    assert_eq!(status, 200);
    let (status, _) = gw.api_as(
        &alice,
        "PATCH",
        "/api/v1/nodes/pi-w",
        Some(json!({"labels": {"room": "attic"}})),
    );
    assert_eq!(status, 200);
    let (status, _) = gw.api("DELETE", &format!("/api/v1/tokens/{alice_jti}"), None);
    assert_eq!(status, 200);
    wait_until(Duration::from_secs(30), "the cancelled job's end", || {
        entries(&gw)
            .iter()
            .any(|e| e["action"] == "exec.end" && e["detail"]["job_id"] == slow_id.as_str())
    });

    // The API, filtered by actor: alice's execs with her role and jti, and their ends.
    let (status, page) = gw.api("GET", "/api/v1/audit?actor=alice&limit=1000", None);
    assert_eq!(status, 200, "{page}");
    let by_alice = page["entries"].as_array().unwrap();
    let execs: Vec<&Value> = by_alice.iter().filter(|e| e["action"] == "exec").collect();
    assert_eq!(execs.len(), 3, "{page:#}");
    assert!(execs
        .iter()
        .all(|e| e["role"] == "operator" && e["jti"] == alice_jti.as_str()));
    assert_eq!(execs[1]["detail"]["argv"], json!(["sh", "-c", "exit 3"]));
    let end_of = |id: &Value| {
        by_alice
            .iter()
            .find(|e| e["action"] == "exec.end" && e["detail"]["job_id"] == *id)
            .unwrap_or_else(|| panic!("no end of {id}: {page:#}"))
    };
    let end = end_of(&failed["job_id"]);
    assert_eq!(end["detail"]["results"]["pi-w"]["exit_code"], 3);
    assert_eq!(end["detail"]["results"]["pi-w"]["state"], "failed");
    assert_eq!(
        end_of(&ok["job_id"])["detail"]["results"]["pi-w"]["stdout_bytes"],
        3
    );
    assert!(
        !end_of(&ok["job_id"]).to_string().contains("hi\\n"),
        "no output in the trail"
    );
    assert_eq!(end_of(&json!(slow_id))["detail"]["state"], "cancelled");
    assert!(by_alice.iter().any(|e| e["action"] == "job.cancel"));
    assert!(by_alice.iter().any(|e| e["action"] == "node.label"));
    // Admin actions by the harness's token (named by the CLI's Unix user, who minted it).
    let all = entries(&gw);
    for action in ["node.join", "node.approve", "token.create", "token.revoke"] {
        assert!(all.iter().any(|e| e["action"] == action), "no {action}");
    }

    // Filters and paging: by node, by action, two at a time with the cursor.
    let (_, by_node) = gw.api("GET", "/api/v1/audit?node=pi-w&action=exec", None);
    assert_eq!(
        by_node["entries"].as_array().unwrap().len(),
        6,
        "{by_node:#}"
    );
    let mut seqs = Vec::new();
    let mut path = "/api/v1/audit?limit=2".to_string();
    loop {
        let (status, page) = gw.api("GET", &path, None);
        assert_eq!(status, 200);
        assert!(page["entries"].as_array().unwrap().len() <= 2);
        seqs.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_u64().unwrap()),
        );
        match page["next"].as_u64() {
            Some(n) => path = format!("/api/v1/audit?limit=2&cursor={n}"),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let (status, bad) = gw.api("GET", "/api/v1/audit?limit=0", None);
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().contains("limit"), "{bad}");
    // A viewer may not read the trail.
    let viewer = gw.token("viewer");
    let (status, _) = gw.api_as(&viewer, "GET", "/api/v1/audit", None);
    assert_eq!(status, 403);

    // The CLI, offline from the files: a table with who and the exit code, and JSON lines.
    let out = gw.cli(&["audit", "ls", "--actor", "alice", "--action", "exec.end"]);
    let (table, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(table.starts_with("SEQ  TIME"), "{table}");
    assert!(
        table.contains("alice") && table.contains("pi-w: failed exit 3"),
        "{table}"
    );
    let out = gw.cli(&["audit", "ls", "--json", "--limit", "1"]);
    let (json_lines, _) = text(&out);
    let first: Value = serde_json::from_str(json_lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    let out = gw.cli(&["audit", "export"]);
    let (exported, _) = text(&out);
    let lines = exported.lines().count();
    assert!(lines >= all.len(), "export has {lines} of {}", all.len());

    // The chain verifies, and the store's head has caught up with the file.
    let n = entries(&gw).len();
    wait_until(
        Duration::from_secs(10),
        "the head at the last entry",
        || {
            let (out, _) = text(&gw.cli(&["audit", "verify"]));
            out.contains(&format!("chain head (seq {n}) matches"))
        },
    );

    // Tampered copies: each fails and names the entry.
    let log = std::fs::read_to_string(gw.data().join("audit.log")).unwrap();
    let l: Vec<&str> = log.lines().collect();
    let edited = l[4].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    let mut e = l.clone();
    e[4] = &edited;
    fails(
        &gw,
        &[&copy(&gw, "edited.log", &e)],
        &["line 5 (seq 5)", "edited"],
    );
    let mut d = l.clone();
    d.remove(4);
    fails(
        &gw,
        &[&copy(&gw, "deleted.log", &d)],
        &["line 5 (seq 6)", "chain broken"],
    );
    let mut s = l.clone();
    s.swap(4, 5);
    fails(
        &gw,
        &[&copy(&gw, "swapped.log", &s)],
        &["line 5 (seq 6)", "chain broken"],
    );
    let cut = copy(&gw, "cut.log", &l[..n - 2]);
    let out = gw.cli(&["audit", "verify", &cut]);
    assert!(
        out.status.success(),
        "the file alone cannot show a cut at a line boundary"
    );
    fails(
        &gw,
        &["--head", &cut],
        &[&format!("seq {} is missing", n - 1), "tail was cut off"],
    );
}

/// Regression (issue 9): an exec was answered before its audit entry was on disk, so a crash right
/// after could lose the record of a command that ran. Now every exec the client heard back about
/// is in the log after a kill -9, and the chain verifies.
#[test]
fn kill_9_during_a_stream_of_execs_loses_no_acknowledged_exec() {
    let gw = Gateway::start();
    let _agent = Agent::start(&gw.join(&[]), "pi-k");
    gw.wait_status("pi-k", "online");
    let token = gw.token("operator");
    let url = gw.url("/api/v1/nodes/pi-k/exec");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let pid = gw.proc.child.id();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (acked, url, token) = (acked.clone(), url.clone(), token.clone());
            s.spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                loop {
                    let sent = agent
                        .post(&url)
                        .header("Authorization", &format!("Bearer {token}"))
                        .send(json!({"argv": ["true"], "async": true}).to_string());
                    let Ok(resp) = sent else { return };
                    if resp.status().as_u16() != 202 {
                        return;
                    }
                    let Ok(body) = resp.into_body().read_to_string() else {
                        return;
                    };
                    let v: Value = serde_json::from_str(&body).unwrap();
                    acked
                        .lock()
                        .unwrap()
                        .push(v["job_id"].as_str().unwrap().to_string());
                }
            });
        }
        wait_until(Duration::from_secs(60), "40 acknowledged execs", || {
            acked.lock().unwrap().len() >= 40
        });
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    });
    let acked = acked.lock().unwrap().clone();
    let gw = gw.crash_restart();
    let recorded: std::collections::HashSet<String> = entries(&gw)
        .into_iter()
        .filter(|e| e["action"] == "exec")
        .filter_map(|e| e["detail"]["job_id"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !recorded.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in the log: {missing:?}"
    );
    let out = gw.cli(&["audit", "verify"]);
    let (ok, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(ok.contains("chain intact"), "{ok}");
}

/// 10,000 requests with bad tokens add a bounded number of `denied` entries (one per source, route
/// and reason per interval), and every one of them is counted.
#[test]
fn bad_token_flood_adds_a_bounded_number_of_entries() {
    let gw = Gateway::start_with(&["--audit-denied-every", "1s"]);
    let before = entries(&gw).len();
    let started = Instant::now();
    let url = gw.url("/api/v1/nodes");
    std::thread::scope(|s| {
        for _ in 0..4 {
            let url = url.clone();
            s.spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                for _ in 0..2_500 {
                    let resp = agent
                        .get(&url)
                        .header("Authorization", "Bearer not.a.token")
                        .call()
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 401);
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs() + 3;
    let denied = |gw: &Gateway| -> Vec<Value> {
        entries(gw)
            .into_iter()
            .filter(|e| e["action"] == "denied")
            .collect()
    };
    wait_until(Duration::from_secs(10), "all 10,000 counted", || {
        denied(&gw)
            .iter()
            .map(|e| e["detail"]["count"].as_u64().unwrap())
            .sum::<u64>()
            == 10_000
    });
    let d = denied(&gw);
    // One key (127.0.0.1, GET /api/v1/nodes, one reason): at most one entry per second of flood.
    assert!(
        d.len() as u64 <= seconds,
        "{} denied entries for a {seconds} s flood",
        d.len()
    );
    assert!(d.iter().all(|e| e["actor"] == "127.0.0.1"
        && e["target"] == "GET /api/v1/nodes"
        && e["detail"]["status"] == 401));
    let added = entries(&gw).len() - before;
    assert_eq!(added, d.len(), "nothing else was written");
    // A listing of the trail shows them.
    let (_, page) = gw.api("GET", "/api/v1/audit?action=denied", None);
    assert_eq!(page["entries"].as_array().unwrap().len(), d.len());
}

/// Rotation: the chain goes on across files and verifies as one; retention deletes the oldest.
#[test]
fn rotated_files_verify_as_one_chain_and_the_oldest_are_deleted() {
    let gw = Gateway::start_with(&["--audit-max-bytes", "1500", "--audit-keep", "2"]);
    for _ in 0..20 {
        gw.join(&[]);
    }
    let data = gw.data();
    assert!(data.join("audit.log.1").exists() && data.join("audit.log.2").exists());
    assert!(!data.join("audit.log.3").exists(), "retention keeps 2");
    let out = gw.cli(&["audit", "verify"]);
    let (ok, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(ok.contains("3 file(s)"), "{ok}");
    let out = gw.cli(&["audit", "export"]);
    let seqs: Vec<u64> = text(&out)
        .0
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(seqs[0] > 1, "the oldest entries were deleted");
    assert_eq!(*seqs.last().unwrap(), 21, "the token and 20 joins");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

/// A command the node's policy refused is recorded as refused (`exec.refused`, with the rule), not
/// only as an `exec` that was asked for; the trail never says it ran.
#[test]
fn an_exec_the_node_refused_is_recorded_as_refused() {
    let dir = tempfile::Builder::new()
        .prefix("burrow-audit-policy")
        .tempdir()
        .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "mode = \"deny-all\"\n").unwrap();
    let gw = Gateway::start();
    let _agent = Agent::start_with(
        &gw.join(&[]),
        "pi-r",
        &["--policy", policy.to_str().unwrap()],
    );
    gw.wait_status("pi-r", "online");
    let (_, answer) = gw.api(
        "POST",
        "/api/v1/exec",
        Some(json!({"target": "pi-r", "argv": ["true"]})),
    );
    assert_eq!(answer["results"][0]["state"], "refused", "{answer}");
    let job_id = answer["job_id"].clone();
    // The end entry follows the answer (it is queued, not waited for, by the jobs engine).
    let mut page = Value::Null;
    wait_until(Duration::from_secs(10), "the exec.refused entry", || {
        let (status, p) = gw.api("GET", "/api/v1/audit?action=exec.refused", None);
        assert_eq!(status, 200);
        page = p;
        !page["entries"].as_array().unwrap().is_empty()
    });
    let refused = page["entries"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{page:#}");
    let r = &refused[0]["detail"];
    assert_eq!(r["job_id"], job_id);
    assert_eq!(r["results"]["pi-r"]["state"], "refused");
    assert!(
        r["results"]["pi-r"]["message"]
            .as_str()
            .unwrap()
            .contains("deny-all"),
        "{r}"
    );
    assert!(r["results"]["pi-r"].get("exit_code").is_none());
    let (_, ended) = gw.api("GET", "/api/v1/audit?action=exec.end", None);
    assert_eq!(ended["entries"].as_array().unwrap().len(), 0, "{ended:#}");
}
