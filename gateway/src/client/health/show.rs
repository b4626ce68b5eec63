//! `gateway nodes show` for people: the node, every figure of its last heartbeat, and the trend
//! from its metrics history.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{ago, bytes, duration, fullest, hottest, labels, percent, table, when};
use crate::client::jobs::age;
use crate::client::ApiError;

/// `nodes show` for people: who, where it stands and why, then every figure it reported.
pub fn node_text(n: &Value, now: SystemTime) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<13}{v}\n"));
    let mut state = s(&n["status"]);
    if let Some(since) = when(&n["state_since"]) {
        state.push_str(&format!(
            " for {}",
            age(&humantime::format_rfc3339_seconds(since).to_string(), now)
        ));
    }
    if let Some(reason) = n["state_reason"].as_str() {
        state.push_str(&format!(": {reason}"));
    }
    line("node", s(&n["id"]));
    line("state", state);
    line("hostname", s(&n["hostname"]));
    line(
        "system",
        format!(
            "{} {}, agent {}",
            s(&n["os"]),
            s(&n["arch"]),
            s(&n["version"])
        ),
    );
    line("labels", labels(n));
    let caps: Vec<&str> = n["capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    line(
        "capabilities",
        if caps.is_empty() {
            "-".into()
        } else {
            caps.join(",")
        },
    );
    line("last seen", ago(&n["last_seen"], now));
    let m = &n["metrics"];
    if !m.is_object() {
        out.push_str("no heartbeat yet\n");
        return out;
    }
    let num = |k: &str| m[k].as_f64().unwrap_or(0.0);
    let int = |k: &str| m[k].as_u64().unwrap_or(0);
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<13}{v}\n"));
    line("uptime", duration(int("uptime_s")));
    line(
        "load",
        format!(
            "{:.2} {:.2} {:.2}",
            num("load1"),
            num("load5"),
            num("load15")
        ),
    );
    let cores: Vec<String> = m["cpu_cores"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .map(|c| format!("{c:.0}"))
        .collect();
    let mut cpu = format!("{:.0}%", num("cpu_percent"));
    if !cores.is_empty() {
        cpu.push_str(&format!(" (per core: {})", cores.join(" ")));
    }
    line("cpu", cpu);
    let (used, total) = (int("mem_used"), int("mem_total"));
    line(
        "memory",
        format!(
            "{} of {} used ({})",
            bytes(used),
            bytes(total),
            percent(used, total)
        ),
    );
    if int("swap_total") > 0 {
        let (used, total) = (int("swap_used"), int("swap_total"));
        line("swap", format!("{} of {} used", bytes(used), bytes(total)));
    }
    if int("processes") > 0 {
        line("processes", int("processes").to_string());
    }
    if int("agent_rss") > 0 {
        line("agent memory", bytes(int("agent_rss")));
    }
    let temps: Vec<String> = m["temperatures"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{} {:.1}°C",
                s(&t["sensor"]),
                t["celsius"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    if !temps.is_empty() {
        line("temperature", temps.join(", "));
    }
    if let Some(bits) = m["throttled"].as_u64() {
        let mut what = Vec::new();
        if bits & 1 != 0 {
            what.push("under-voltage now");
        }
        if bits & 4 != 0 {
            what.push("throttled now");
        }
        if bits & 0x50000 != 0 {
            what.push("has been under-voltage or throttled");
        }
        let what = if what.is_empty() {
            "none".into()
        } else {
            what.join(", ")
        };
        line("throttling", format!("{what} (0x{bits:x})"));
    }
    let fs: Vec<Vec<String>> = m["filesystems"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let total = f["total"].as_u64().unwrap_or(0);
            let free = f["free"].as_u64().unwrap_or(0);
            let avail = f["available"].as_u64().unwrap_or(0);
            let used = total.saturating_sub(free);
            let inodes = f["inodes_total"].as_u64().unwrap_or(0);
            let ifree = f["inodes_free"].as_u64().unwrap_or(0);
            vec![
                s(&f["mount"]),
                s(&f["device"]),
                s(&f["fstype"]),
                bytes(used),
                bytes(total),
                percent(used, used + avail),
                percent(inodes.saturating_sub(ifree), inodes),
            ]
        })
        .collect();
    if !fs.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["MOUNT", "DEVICE", "TYPE", "USED", "SIZE", "USE", "INODES"],
            &fs,
        ));
    } else if let Some((_, p)) = fullest(m) {
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<13}{v}\n"));
        line(
            "disk /",
            format!("{p:.0}% used of {}", bytes(int("disk_total"))),
        );
    }
    let net: Vec<Vec<String>> = m["network"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                s(&i["name"]),
                bytes(i["rx_bytes"].as_u64().unwrap_or(0)),
                bytes(i["tx_bytes"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    if !net.is_empty() {
        out.push('\n');
        out.push_str(&table(&["INTERFACE", "RECEIVED", "SENT"], &net));
    }
    out
}

/// The points of a history answer: a list, or the first list among its keys (`samples`, ...),
/// each `{"at": …, "metrics": {…}}` or the figures themselves with `at`.
fn points(history: &Value) -> Vec<(Option<SystemTime>, &Value)> {
    let list = match history {
        Value::Array(a) => Some(a),
        Value::Object(o) => ["samples", "history", "points", "metrics"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_array)),
        _ => None,
    };
    list.into_iter()
        .flatten()
        .map(|p| {
            let at = when(&p["at"]);
            let m = if p["metrics"].is_object() {
                &p["metrics"]
            } else {
                p
            };
            (at, m)
        })
        .collect()
}

/// The trend of `nodes show`: one row per point, or why there is none.
pub fn trend_text(history: anyhow::Result<Value>, since: Duration, now: SystemTime) -> String {
    let span = humantime::format_duration(since);
    let history = match history {
        Ok(h) => h,
        Err(e) => {
            return match e.downcast_ref::<ApiError>() {
                Some(a) if a.status == 404 && a.message.contains("no route") => {
                    "trend: this gateway keeps no metrics history (an older version?)\n".into()
                }
                _ => format!("trend: not available ({e:#})\n"),
            }
        }
    };
    let rows: Vec<Vec<String>> = points(&history)
        .into_iter()
        .map(|(at, m)| {
            let used = m["mem_used"].as_u64().unwrap_or(0);
            let total = m["mem_total"].as_u64().unwrap_or(0);
            vec![
                at.map_or("?".into(), |t| {
                    format!(
                        "{} ago",
                        age(&humantime::format_rfc3339_seconds(t).to_string(), now)
                    )
                }),
                m["cpu_percent"]
                    .as_f64()
                    .map_or("-".into(), |c| format!("{c:.0}%")),
                percent(used, total),
                fullest(m).map_or("-".into(), |(_, p)| format!("{p:.0}%")),
                hottest(m).map_or("-".into(), |c| format!("{c:.0}°C")),
                m["load1"]
                    .as_f64()
                    .map_or("-".into(), |l| format!("{l:.2}")),
            ]
        })
        .collect();
    if rows.is_empty() {
        return format!("trend: no samples in the last {span}\n");
    }
    format!(
        "trend over the last {span}:\n{}",
        table(&["WHEN", "CPU", "MEM", "DISK", "TEMP", "LOAD"], &rows)
    )
}
