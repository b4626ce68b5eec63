use std::collections::HashSet;

use burrow_core::api::{Filesystem, Metrics, NetInterface, Temperature};

use super::counters::Counters;
use super::*;

fn full_metrics() -> Metrics {
    Metrics {
        uptime_s: 1000,
        load1: 0.5,
        load5: 0.25,
        load15: 0.125,
        cpu_percent: 12.5,
        cpu_cores: vec![10.0, 15.0],
        mem_total: 4 << 30,
        mem_used: 1 << 30,
        mem_available: 3 << 30,
        swap_total: 1 << 20,
        swap_used: 1 << 10,
        disk_total: 100,
        disk_free: 40,
        filesystems: vec![
            Filesystem {
                mount: "/".into(),
                device: "/dev/mmcblk0p2".into(),
                fstype: "ext4".into(),
                total: 100,
                available: 40,
                free: 45,
                inodes_total: 1000,
                inodes_free: 900,
                read_only: false,
            },
            Filesystem {
                mount: "/mnt/we\"ird\\path\nx".into(),
                device: "/dev/sda1".into(),
                fstype: "vfat".into(),
                total: 10,
                available: 5,
                free: 5,
                inodes_total: 0,
                inodes_free: 0,
                read_only: true,
            },
        ],
        network: vec![NetInterface {
            name: "eth0".into(),
            rx_bytes: 123,
            tx_bytes: 456,
        }],
        temperatures: vec![
            Temperature {
                sensor: "cpu-thermal".into(),
                celsius: 48.3,
            },
            // The same name twice (two hwmon chips): one series.
            Temperature {
                sensor: "cpu-thermal".into(),
                celsius: 49.0,
            },
        ],
        throttled: Some(0x5),
        processes: 123,
        agent_rss: 3 << 20,
    }
}

fn node(id: &str, state: NodeState, metrics: Option<Metrics>) -> NodeView {
    NodeView {
        id: id.into(),
        state,
        hostname: format!("{id}.lan"),
        version: "0.1.0".into(),
        os: "linux".into(),
        arch: "aarch64".into(),
        last_seen: Some(1_000_000),
        metrics,
    }
}

fn snapshot<'c>(nodes: Vec<NodeView>, counters: &'c Counters) -> Snapshot<'c> {
    Snapshot {
        now: 1_000_005,
        started_at: 999_000,
        counts: NodeState::ALL.iter().map(|&s| (s, 1)).collect(),
        nodes,
        parts_queued: 2,
        parts_running: 1,
        alerts_firing: 0,
        sshd: Some(SshdView {
            running: true,
            restarts: 3,
        }),
        counters,
    }
}

fn busy_counters() -> Counters {
    let c = Counters::default();
    c.request("GET", "/api/v1/nodes", 200);
    c.request("POST", "/api/v1/nodes/{id}/exec", 404);
    c.part_ended(
        "exec",
        "succeeded",
        Some(std::time::Duration::from_millis(3)),
    );
    c
}

/// The families of a text: each `# TYPE` name, with how often it appears.
fn families(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect()
}

/// Every sample line's name belongs to the family just declared: one block per family.
#[test]
fn every_family_is_written_once_with_its_samples_together() {
    let counters = busy_counters();
    let s = snapshot(
        vec![
            node("pi-1", NodeState::Online, Some(full_metrics())),
            node("pi-2", NodeState::Limited, Some(full_metrics())),
        ],
        &counters,
    );
    let text = render(&s);
    let names = families(&text);
    let unique: HashSet<&str> = names.iter().copied().collect();
    assert_eq!(names.len(), unique.len(), "a family twice:\n{text}");
    let mut current = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            current = rest.split(' ').next().unwrap();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| *b == current))
            .unwrap_or(name);
        assert_eq!(base, current, "sample outside its family: {line}");
    }
    // With full figures every family has samples.
    for name in &names {
        assert!(
            text.lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name)),
            "family {name} has no sample:\n{text}"
        );
    }
    for want in [
        "burrow_node_up{node=\"pi-1\"} 1",
        "burrow_node_state{node=\"pi-2\",state=\"limited\"} 1",
        "burrow_node_state{node=\"pi-2\",state=\"online\"} 0",
        "burrow_node_cpu_usage_ratio{node=\"pi-1\"} 0.125",
        "burrow_node_cpu_core_usage_ratio{node=\"pi-1\",cpu=\"1\"} 0.15",
        "burrow_node_memory_available_bytes{node=\"pi-1\"} 3221225472",
        "burrow_node_swap_free_bytes{node=\"pi-1\"} 1047552",
        "burrow_node_filesystem_avail_bytes{node=\"pi-1\",device=\"/dev/mmcblk0p2\",fstype=\"ext4\",mountpoint=\"/\"} 40",
        "burrow_node_filesystem_readonly{node=\"pi-1\",device=\"/dev/sda1\",fstype=\"vfat\",mountpoint=\"/mnt/we\\\"ird\\\\path\\nx\"} 1",
        "burrow_node_network_receive_bytes_total{node=\"pi-1\",device=\"eth0\"} 123",
        "burrow_node_temperature_celsius{node=\"pi-1\",sensor=\"cpu-thermal\"} 48.3",
        "burrow_node_heartbeat_age_seconds{node=\"pi-1\"} 5",
        "burrow_node_boot_time_seconds{node=\"pi-1\"} 999000",
        "burrow_node_throttled_flags{node=\"pi-1\"} 5",
        "burrow_nodes{state=\"error\"} 1",
        "burrow_job_parts{state=\"queued\"} 2",
        "burrow_api_requests_total{method=\"POST\",route=\"/api/v1/nodes/{id}/exec\",status=\"404\"} 1",
        "burrow_exec_duration_seconds_bucket{le=\"0.005\"} 1",
        "burrow_exec_duration_seconds_count 1",
        "burrow_sshd_restarts_total 3",
    ] {
        assert!(text.lines().any(|l| l == want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(
        text.matches("sensor=\"cpu-thermal\"").count(),
        2,
        "one temperature series per node:\n{text}"
    );
}

/// A node removed from the registry is not in the next snapshot: none of its series remain.
#[test]
fn a_removed_nodes_series_are_gone() {
    let counters = Counters::default();
    let both = vec![
        node("pi-1", NodeState::Online, Some(full_metrics())),
        node("pi-gone", NodeState::Online, Some(full_metrics())),
    ];
    let before = render(&snapshot(both.clone(), &counters));
    assert!(before.contains("node=\"pi-gone\""));
    let after = render(&snapshot(vec![both[0].clone()], &counters));
    assert!(!after.contains("pi-gone"), "{after}");
    assert!(after.contains("burrow_node_up{node=\"pi-1\"} 1"));
    // The families stay, empty or not: the same names scrape after scrape.
    assert_eq!(families(&before), families(&after));
}

/// An offline node shows its state and last beat's age, not its stale figures; an older agent's
/// zeros for figures it never sent are left out, not rendered as 0.
#[test]
fn stale_and_unsent_figures_are_left_out() {
    let counters = Counters::default();
    let old_agent = Metrics {
        uptime_s: 50,
        load1: 0.1,
        cpu_percent: 5.0,
        mem_total: 1000,
        mem_used: 400,
        disk_total: 100,
        disk_free: 60,
        agent_rss: 10,
        ..Metrics::default()
    };
    let text = render(&snapshot(
        vec![
            node("old", NodeState::Online, Some(old_agent)),
            node("down", NodeState::Offline, Some(full_metrics())),
            node("new", NodeState::Pending, None),
        ],
        &counters,
    ));
    let lines_of = |id: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(&format!("node=\"{id}\"")))
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect()
    };
    let down = lines_of("down");
    assert!(down.contains(&"burrow_node_up".to_string()));
    assert!(down.contains(&"burrow_node_heartbeat_age_seconds".to_string()));
    assert!(
        !down
            .iter()
            .any(|n| n.contains("filesystem") || n.contains("cpu") || n.contains("memory")),
        "{down:?}"
    );
    let old = lines_of("old");
    for absent in [
        "burrow_node_load5",
        "burrow_node_swap_total_bytes",
        "burrow_node_processes",
        "burrow_node_filesystem_free_bytes",
        "burrow_node_filesystem_files",
        "burrow_node_temperature_celsius",
        "burrow_node_cpu_core_usage_ratio",
    ] {
        assert!(
            !old.iter().any(|n| n == absent),
            "{absent} for an old agent"
        );
    }
    assert!(text.contains(
        "burrow_node_filesystem_size_bytes{node=\"old\",device=\"\",fstype=\"\",mountpoint=\"/\"} 100"
    ));
    assert!(text.contains("burrow_node_memory_available_bytes{node=\"old\"} 600"));
    assert!(text.contains("burrow_node_up{node=\"new\"} 0"));
    assert!(text.contains("burrow_node_state{node=\"new\",state=\"pending\"} 1"));
}

/// Whatever a node reports, each list makes a bounded number of series.
#[test]
fn a_node_cannot_make_unbounded_series() {
    let counters = Counters::default();
    let mut m = full_metrics();
    m.network = (0..10_000)
        .map(|i| NetInterface {
            name: format!("veth{i}"),
            rx_bytes: 1,
            tx_bytes: 1,
        })
        .collect();
    let text = render(&snapshot(
        vec![node("pi-1", NodeState::Online, Some(m))],
        &counters,
    ));
    let rx = text
        .lines()
        .filter(|l| l.starts_with("burrow_node_network_receive_bytes_total{"))
        .count();
    assert_eq!(rx, MAX_ITEMS);
}

/// `promtool check metrics` (Debian package `prometheus`) accepts a render with every family
/// filled, odd label values included; skipped with a message where promtool is missing (the e2e
/// test `prometheus::promtool_accepts_…` checks a real gateway's answer the same way).
#[test]
fn promtool_accepts_a_full_render() {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED promtool_accepts_a_full_render: promtool is not installed");
        return;
    };
    let counters = busy_counters();
    let mut odd = node(
        "we\"ird\\node\nname",
        NodeState::Error,
        Some(full_metrics()),
    );
    odd.hostname = "ünïcode host".into();
    let text = render(&snapshot(
        vec![node("pi-1", NodeState::Online, Some(full_metrics())), odd],
        &counters,
    ));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
