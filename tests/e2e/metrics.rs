//! What a real agent's heartbeat says about this machine, checked against the kernel's own answers
//! read by the test a moment later: `/proc/meminfo`, `/proc/stat`, `/proc/uptime`, `/proc/net/dev`,
//! the process table and `statvfs` (through coreutils' `stat -f`) of every filesystem it reports.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::util::{online_node, wait_until};

/// `/proc/meminfo` in bytes by field name.
fn meminfo() -> HashMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), kb * 1024))
        })
        .collect()
}

/// `statvfs` of `mount`: (total bytes, free bytes, available bytes, inodes, free inodes).
fn statvfs(mount: &str) -> (u64, u64, u64, u64, u64) {
    let out = Command::new("stat")
        .args(["-f", "-c", "%S %b %f %a %c %d", mount])
        .output()
        .unwrap();
    assert!(out.status.success(), "stat -f {mount}");
    let n: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    (n[0] * n[1], n[0] * n[2], n[0] * n[3], n[4], n[5])
}

/// Received and sent bytes per interface from `/proc/net/dev`.
fn net_dev() -> HashMap<String, (u64, u64)> {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            Some((name.trim().to_string(), (f[0], f[8])))
        })
        .collect()
}

fn processes() -> u64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count() as u64
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not a count of bytes: {v}"))
}

/// `|a - b| <= tolerance`.
fn near(what: &str, got: u64, want: u64, tolerance: u64) {
    assert!(
        got.abs_diff(want) <= tolerance,
        "{what}: the heartbeat says {got}, the kernel {want} (tolerance {tolerance})"
    );
}

#[test]
fn heartbeat_metrics_match_proc_and_statvfs() {
    let net_before = net_dev();
    let (gw, _agent) = online_node("mirror");
    wait_until(Duration::from_secs(10), "a heartbeat", || {
        gw.node("mirror")["metrics"]["mem_total"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let node = gw.node("mirror");
    let m = &node["metrics"];
    // The beat is at most a few seconds older than what the test reads now.
    let mem = meminfo();
    near("mem_total", u(&m["mem_total"]), mem["MemTotal"], 0);
    near("swap_total", u(&m["swap_total"]), mem["SwapTotal"], 0);
    // Memory moves: within 5 % of the machine (other tests run beside this one).
    let slack = mem["MemTotal"] / 20;
    near(
        "mem_available",
        u(&m["mem_available"]),
        mem["MemAvailable"],
        slack,
    );
    near(
        "mem_used",
        u(&m["mem_used"]),
        mem["MemTotal"] - mem["MemAvailable"],
        slack,
    );
    near(
        "swap_used",
        u(&m["swap_used"]),
        mem["SwapTotal"] - mem["SwapFree"],
        slack,
    );

    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let beat_uptime = u(&m["uptime_s"]);
    assert!(
        beat_uptime <= uptime as u64 && beat_uptime + 60 >= uptime as u64,
        "uptime {beat_uptime} s vs /proc/uptime {uptime}"
    );

    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let per_core = m["cpu_cores"].as_array().unwrap();
    assert_eq!(per_core.len(), cores, "one figure per core in /proc/stat");
    for c in per_core.iter().chain([&m["cpu_percent"]]) {
        let c = c.as_f64().unwrap();
        assert!((0.0..=100.0).contains(&c), "CPU {c} %");
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap();
    let load: Vec<f64> = loadavg
        .split_whitespace()
        .take(3)
        .map(|w| w.parse().unwrap())
        .collect();
    // load15 barely moves in a few seconds; load1 may (other tests run beside this one).
    let load15 = m["load15"].as_f64().unwrap();
    assert!(
        (load15 - load[2]).abs() <= 0.5,
        "load15 {load15} vs {}",
        load[2]
    );
    assert!(m["load1"].as_f64().unwrap() >= 0.0);

    let procs = u(&m["processes"]);
    let now = processes();
    near("processes", procs, now, now / 2 + 20);

    // Every filesystem it reports is what statvfs says of that mount point; the root is there
    // when it is a real (block device) filesystem, as on a Pi.
    let filesystems = m["filesystems"].as_array().unwrap();
    for fs in filesystems {
        let mount = fs["mount"].as_str().unwrap();
        let (total, free, available, inodes, inodes_free) = statvfs(mount);
        near(&format!("{mount} total"), u(&fs["total"]), total, 0);
        near(
            &format!("{mount} inodes"),
            u(&fs["inodes_total"]),
            inodes,
            0,
        );
        // Free space moves with what the tests write: 1 % of the filesystem, at least 256 MiB.
        let slack = (total / 100).max(256 << 20);
        near(&format!("{mount} free"), u(&fs["free"]), free, slack);
        near(
            &format!("{mount} available"),
            u(&fs["available"]),
            available,
            slack,
        );
        near(
            &format!("{mount} inodes free"),
            u(&fs["inodes_free"]),
            inodes_free,
            (inodes / 100).max(10_000),
        );
        for noise in [
            "tmpfs", "overlay", "squashfs", "proc", "sysfs", "cgroup", "cgroup2",
        ] {
            assert_ne!(fs["fstype"], noise, "{fs}");
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_is_a_device = mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let sep = f.iter().position(|w| *w == "-").unwrap_or(f.len());
        f.get(4) == Some(&"/") && f.get(sep + 2).is_some_and(|src| src.starts_with("/dev/"))
    });
    if root_is_a_device {
        let root = filesystems
            .iter()
            .find(|fs| fs["mount"] == "/")
            .unwrap_or_else(|| panic!("no / in {filesystems:?}"));
        assert_eq!(m["disk_total"], root["total"]);
    }

    // Network counters since boot: between what the kernel said before the agent started and now.
    let net_after = net_dev();
    let reported = m["network"].as_array().unwrap();
    for (name, (rx_after, tx_after)) in &net_after {
        if name == "lo" || !net_before.contains_key(name) {
            continue;
        }
        let i = reported
            .iter()
            .find(|i| i["name"] == name.as_str())
            .unwrap_or_else(|| panic!("interface {name} missing from {reported:?}"));
        let (rx_before, tx_before) = net_before[name];
        let (rx, tx) = (u(&i["rx_bytes"]), u(&i["tx_bytes"]));
        assert!((rx_before..=*rx_after).contains(&rx), "{name} rx {rx}");
        assert!((tx_before..=*tx_after).contains(&tx), "{name} tx {tx}");
    }
    assert!(
        !reported.iter().any(|i| i["name"] == "lo"),
        "loopback is left out: {reported:?}"
    );

    // Temperatures where the kernel has them.
    let zones = std::fs::read_dir("/sys/class/thermal")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
                .filter(|e| std::fs::read_to_string(e.path().join("temp")).is_ok())
                .count()
        })
        .unwrap_or(0);
    if zones > 0 {
        assert!(!m["temperatures"].as_array().unwrap().is_empty(), "{m}");
    }
    assert_eq!(node["version"], burrow_core::VERSION, "{node}");
    assert!(u(&m["agent_rss"]) > 0);
}
