//! The fleet for people, from the real CLI against a real gateway with real agents: `gateway nodes
//! ls` (its table and `--json`), `nodes show`, `status`, `alerts ls`.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::util::{wait_until, Agent, Gateway};

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The memory in use on this machine, percent, as `/proc/meminfo` says now.
fn mem_used_percent() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb = |key: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (kb("MemTotal:") - kb("MemAvailable:")) * 100.0 / kb("MemTotal:")
}

#[test]
fn nodes_ls_shows_real_agents_with_their_state_and_figures() {
    let gw = Gateway::start();
    let join = gw.join(&["--uses", "2"]);
    let _a = Agent::start_with(&join, "pi-a", &["--label", "site=home"]);
    let mut b = Agent::start(&join, "pi-b");
    gw.wait_status("pi-a", "online");
    gw.wait_status("pi-b", "online");
    wait_until(
        Duration::from_secs(30),
        "both nodes' first heartbeat",
        || {
            ["pi-a", "pi-b"]
                .iter()
                .all(|n| gw.node(n)["metrics"].is_object())
        },
    );

    let table = text(&gw.cli(&["nodes", "ls"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "STATUS", "LABELS", "CPU", "MEM", "DISK", "TEMP", "LAST", "SEEN"]
    );
    let row = |id: &str| -> Vec<String> {
        let line = lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
        assert!(line.chars().count() <= 80, "over 80 columns: {line}");
        line.split_whitespace().map(str::to_string).collect()
    };
    let a = row("pi-a");
    assert_eq!(a[1], "online", "{table}");
    assert_eq!(a[2], "site=home", "{table}");
    for cell in &a[3..6] {
        assert!(cell.ends_with('%'), "{cell} in {table}");
    }
    // MEM is this machine's, as the agent read it.
    let mem: f64 = a[4].trim_end_matches('%').parse().unwrap();
    assert!(
        (mem - mem_used_percent()).abs() < 15.0,
        "MEM {mem}% vs /proc/meminfo {:.0}%",
        mem_used_percent()
    );
    assert!(table.contains(" ago"), "{table}");

    let json: Value = serde_json::from_str(&text(&gw.cli(&["nodes", "ls", "--json"]))).unwrap();
    let ids: Vec<&str> = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["pi-a", "pi-b"]);

    // A stopped node: offline, its last figures still shown.
    b.proc.terminate();
    gw.wait_status("pi-b", "offline");
    let table = text(&gw.cli(&["nodes", "ls"]));
    let line = table.lines().find(|l| l.starts_with("pi-b")).unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1], "offline", "{table}");
    assert!(cells[4].ends_with('%'), "last known MEM kept: {table}");

    let show = text(&gw.cli(&["nodes", "show", "pi-a"]));
    for want in [
        "node         pi-a",
        "state        online",
        "memory ",
        "uptime ",
        "trend",
    ] {
        assert!(show.contains(want), "missing {want:?} in:\n{show}");
    }
    let shown: Value =
        serde_json::from_str(&text(&gw.cli(&["nodes", "show", "pi-a", "--json"]))).unwrap();
    assert_eq!(shown["node"]["id"], "pi-a");
    let missing = gw.cli(&["nodes", "show", "nobody"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no node \"nobody\""));
}

#[test]
fn status_and_alerts_for_people_and_as_json() {
    let (gw, _agent) = crate::util::online_node("pi-1");
    let status = text(&gw.cli(&["status"]));
    for want in [
        "nodes        1 of 100 used: 1 online, 0 limited, 0 offline",
        "jobs         0 queued, 0 running",
        "sshd         managed, running",
        "data dir     ",
        "; store ",
    ] {
        assert!(status.contains(want), "missing {want:?} in:\n{status}");
    }
    let json: Value = serde_json::from_str(&text(&gw.cli(&["status", "--json"]))).unwrap();
    assert_eq!(json["max_nodes"], 100);
    assert_eq!(json["nodes_used"], 1);
    assert_eq!(json["nodes"]["online"], 1);
    assert!(
        json["data_dir"]["available_bytes"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert!(
        json["data_dir"]["store_bytes"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert!(json["version"].is_string() && json["uptime_s"].is_u64());

    // Alerts: none on a healthy fleet; a gateway without the alerts API says so and fails.
    let out = gw.cli(&["alerts", "ls", "--state", "firing"]);
    if out.status.success() {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "no alerts\n");
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("has no alerts API"), "{err}");
    }
}
