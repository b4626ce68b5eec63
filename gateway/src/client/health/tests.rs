use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;

fn at(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap()
}

fn pi() -> Value {
    json!({
        "id": "pi-1", "status": "online", "hostname": "pi-1.lan", "os": "linux", "arch": "aarch64",
        "version": "0.1.0", "labels": {"site": "home", "rack": "2"}, "capabilities": ["gpio"],
        "last_seen": "2026-12-02T07:00:00Z", "state_since": "2026-12-02T06:00:00Z",
        "metrics": {
            "uptime_s": 90000, "load1": 0.5, "load5": 0.25, "load15": 0.1, "cpu_percent": 12.4,
            "cpu_cores": [10.0, 14.8], "mem_total": 4294967296u64, "mem_used": 1073741824u64,
            "mem_available": 3221225472u64, "swap_total": 0, "swap_used": 0,
            "disk_total": 100, "disk_free": 40,
            "filesystems": [
                {"mount": "/", "device": "/dev/mmcblk0p2", "fstype": "ext4", "total": 1000,
                 "available": 500, "free": 550, "inodes_total": 100, "inodes_free": 90},
                {"mount": "/data", "device": "/dev/sda1", "fstype": "ext4", "total": 1000,
                 "available": 50, "free": 100, "inodes_total": 100, "inodes_free": 10}
            ],
            "network": [{"name": "eth0", "rx_bytes": 1536, "tx_bytes": 10}],
            "temperatures": [{"sensor": "cpu-thermal", "celsius": 48.3},
                             {"sensor": "nvme", "celsius": 39.0}],
            "throttled": 5, "processes": 120, "agent_rss": 3145728
        }
    })
}

#[test]
fn the_nodes_table_shows_figures_in_human_units_within_80_columns() {
    let now = at("2026-12-02T07:00:03Z");
    let old_agent = json!({"id": "pi-2", "status": "offline", "labels": {},
        "last_seen": "2026-12-02T06:55:00Z",
        "metrics": {"cpu_percent": 3.0, "mem_total": 1000, "mem_used": 250,
                    "disk_total": 100, "disk_free": 10}});
    let pending = json!({"id": "new-node", "status": "pending", "labels": {}, "last_seen": null,
                         "metrics": null});
    let text = nodes_table(&json!({"nodes": [pi(), old_agent, pending]}), now);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("ID"), "{text}");
    for l in &lines {
        assert!(l.chars().count() <= 80, "over 80 columns: {l:?}");
    }
    let cells = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    // The fullest disk is /data: (1000-100) / (900+50) = 95 %.
    assert_eq!(
        cells(lines[1]),
        [
            "pi-1",
            "online",
            "rack=2,site=home",
            "12%",
            "25%",
            "95%",
            "48°C",
            "3s",
            "ago"
        ]
    );
    assert_eq!(
        cells(lines[2]),
        ["pi-2", "offline", "-", "3%", "25%", "90%", "-", "5m", "ago"]
    );
    assert_eq!(
        cells(lines[3]),
        ["new-node", "pending", "-", "-", "-", "-", "-", "never"]
    );
}

#[test]
fn bytes_read_like_people_write_them() {
    assert_eq!(bytes(0), "0 B");
    assert_eq!(bytes(1023), "1023 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(1_288_490_189), "1.2 GiB");
    assert_eq!(bytes(40 << 30), "40 GiB");
    assert_eq!(
        bytes(u64::MAX),
        "16 EiB".replace("EiB", "PiB").replace("16", "16384")
    );
}

#[test]
fn show_lists_every_figure() {
    let now = at("2026-12-02T07:00:03Z");
    let text = node_text(&pi(), now);
    for want in [
        "state        online for 1h",
        "uptime       1d 1h",
        "load         0.50 0.25 0.10",
        "cpu          12% (per core: 10 15)",
        "memory       1.0 GiB of 4.0 GiB used (25%)",
        "temperature  cpu-thermal 48.3°C, nvme 39.0°C",
        "throttling   under-voltage now, throttled now (0x5)",
        "agent memory 3.0 MiB",
        "/data",
        "eth0",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let none = node_text(
        &json!({"id": "x", "status": "pending", "metrics": null}),
        now,
    );
    assert!(none.contains("no heartbeat yet"), "{none}");
}

/// The trend reads the history however it is listed, and says why there is none.
#[test]
fn the_trend_handles_history_empty_or_missing() {
    let now = at("2026-12-02T07:00:00Z");
    let hour = Duration::from_secs(3600);
    let m = pi()["metrics"].clone();
    let history = json!({"node": "pi-1", "samples": [
        {"at": 1_796_191_200u64, "metrics": m},
        {"at": "2026-12-02T06:50:00Z", "metrics": m}
    ]});
    let text = trend_text(Ok(history), hour, now);
    assert!(text.starts_with("trend over the last 1h:"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.contains("10m ago") && text.contains("1h ago"),
        "{text}"
    );
    assert!(text.contains("95%"), "{text}");
    let empty = trend_text(Ok(json!({"samples": []})), hour, now);
    assert_eq!(empty, "trend: no samples in the last 1h\n");
    let missing = anyhow::Error::new(ApiError {
        status: 404,
        message: "no route /api/v1/nodes/pi-1/metrics".into(),
    });
    assert!(trend_text(Err(missing), hour, now).contains("keeps no metrics history"));
    let other = anyhow::anyhow!("connection refused");
    assert!(trend_text(Err(other), hour, now).contains("not available (connection refused)"));
}

#[test]
fn alerts_table_shows_firing_and_resolved() {
    let now = at("2026-12-02T07:00:00Z");
    let reply = json!({"alerts": [
        {"id": 2, "rule": "disk_full", "node": "pi-1", "severity": "warning", "state": "firing",
         "summary": "disk /data 95 % full (threshold 90 %) for 5m", "value": 95.0,
         "started_at": 1_796_194_500u64, "resolved_at": null},
        {"id": 1, "rule": "node_offline", "node": null, "severity": "critical", "state": "resolved",
         "summary": "x", "started_at": 1_796_174_800u64, "resolved_at": 1_796_193_800u64}
    ]});
    let text = alerts_table(&reply, now);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[1].contains("firing") && lines[1].contains("since 5m"),
        "{text}"
    );
    assert!(
        lines[2].contains("(gateway)") && lines[2].contains("resolved 16m ago"),
        "{text}"
    );
    assert_eq!(alerts_table(&json!({"alerts": []}), now), "no alerts\n");
}

#[test]
fn status_summarises_the_fleet() {
    let s = json!({"version": "0.1.0", "uptime_s": 3700,
        "nodes": {"pending": 1, "online": 2, "limited": 0, "offline": 1, "error": 0, "rejected": 3,
                  "total": 7},
        "max_nodes": 100, "nodes_used": 4, "alerts": {"firing": 1},
        "jobs": {"queued": 2, "running": 1},
        "data_dir": {"path": "/var/lib/burrow/gateway", "total_bytes": 10u64 << 30,
                     "available_bytes": 4u64 << 30, "inodes_total": 100, "inodes_free": 75,
                     "store_bytes": 3u64 << 20},
        "sshd": {"mode": "managed", "running": true, "pid": 42, "restarts": 0},
        "ssh": {"public": "vm:2222", "host_fingerprint": "SHA256:abc"}});
    let text = status_text(&s);
    for want in [
        "gateway      0.1.0, up 1h 1m",
        "nodes        4 of 100 used: 2 online, 0 limited, 1 offline, 0 error, 1 pending, 3 rejected",
        "alerts       1 firing",
        "jobs         2 queued, 1 running",
        "data dir     /var/lib/burrow/gateway: 4.0 GiB free of 10 GiB (60% used), inodes 25% used; store 3.0 MiB",
        "sshd         managed, running (pid 42), 0 restarts",
        "nodes dial   vm:2222 (host key SHA256:abc)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
