//! The fleet for people: `gateway nodes ls` (a table in 80 columns), `gateway nodes show ID` (every
//! figure of the last heartbeat and the recent trend), `gateway alerts ls` and `gateway status`.
//! Each has `--json` for the API's own answer. The tables are pure functions of that answer and
//! the time, tested from canned JSON; a figure the node did not report shows as `-`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::jobs::{age, cut};
use super::target::segment;
use super::{print_reply, ApiError, Client};
use crate::cli::{AlertFilter, AlertsCommand};

/// Labels get this many characters in `nodes ls` (the rest is `…`).
const MAX_LABELS: usize = 20;
/// An alert's summary in `alerts ls`.
const MAX_SUMMARY: usize = 60;
/// The trend of `nodes show` has about this many rows.
const TREND_ROWS: u64 = 12;

/// `gateway nodes ls`.
pub fn ls(client: &Client, json_out: bool) -> anyhow::Result<()> {
    let reply = client.call("GET", "/api/v1/nodes", None)?;
    print_reply(&reply, json_out, |r| nodes_table(r, SystemTime::now()))
}

/// `gateway nodes show ID`.
pub fn show(client: &Client, id: &str, since: Duration, json_out: bool) -> anyhow::Result<()> {
    let node = client.call("GET", &format!("/api/v1/nodes/{}", segment(id)), None)?;
    let now = SystemTime::now();
    let from = unix(now).saturating_sub(since.as_secs());
    let step = (since.as_secs() / TREND_ROWS).max(60);
    let path = format!(
        "/api/v1/nodes/{}/metrics?since={from}&step={step}",
        segment(id)
    );
    // The history is for the trend only: a gateway without it (or a failure) still shows the node.
    let history = client.call("GET", &path, None);
    if json_out {
        let history = history.unwrap_or(Value::Null);
        let out = json!({"node": node, "history": history});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print!("{}", node_text(&node, now));
    println!();
    print!("{}", trend_text(history, since, now));
    Ok(())
}

/// `gateway alerts ls`.
pub fn alerts(data_dir: &std::path::Path, command: AlertsCommand) -> anyhow::Result<()> {
    let AlertsCommand::Ls {
        state,
        limit,
        json: json_out,
    } = command;
    let client = Client::open(data_dir)?;
    let mut path = format!("/api/v1/alerts?limit={limit}");
    if let Some(state) = state {
        let name = match state {
            AlertFilter::Firing => "firing",
            AlertFilter::Resolved => "resolved",
        };
        path.push_str(&format!("&state={name}"));
    }
    let reply =
        client
            .call("GET", &path, None)
            .map_err(|e| match e.downcast_ref::<ApiError>() {
                Some(a) if a.status == 404 && a.message.contains("no route") => anyhow::anyhow!(
                    "this gateway has no alerts API (it answered: {}); is it an older version?",
                    a.message
                ),
                _ => e,
            })?;
    print_reply(&reply, json_out, |r| alerts_table(r, SystemTime::now()))
}

/// `gateway status`.
pub fn status(data_dir: &std::path::Path, json_out: bool) -> anyhow::Result<()> {
    let client = Client::open(data_dir)?;
    let reply = client.call("GET", "/api/v1/status", None)?;
    print_reply(&reply, json_out, status_text)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A time the API gives as RFC 3339 or Unix seconds.
fn when(v: &Value) -> Option<SystemTime> {
    match v {
        Value::Number(n) => n.as_u64().map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        Value::String(s) => humantime::parse_rfc3339_weak(s).ok(),
        _ => None,
    }
}

/// `3s ago`, `5m ago`, `never`.
fn ago(v: &Value, now: SystemTime) -> String {
    match when(v) {
        Some(t) => format!(
            "{} ago",
            age(&humantime::format_rfc3339_seconds(t).to_string(), now)
        ),
        None => "never".into(),
    }
}

/// Bytes in binary units: `512 B`, `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ if v < 10.0 => format!("{v:.1} {}", UNITS[unit]),
        _ => format!("{v:.0} {}", UNITS[unit]),
    }
}

/// `part` of `whole` as a whole percentage, `-` when `whole` is 0 (not reported).
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

/// The fullest filesystem of a heartbeat's figures: (mount, percent used as `df` counts it: used
/// over used plus available). Older agents report only `/` (`disk_total`, `disk_free`).
fn fullest(m: &Value) -> Option<(String, f64)> {
    let fs: Vec<(String, f64)> = m["filesystems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let total = f["total"].as_u64()?;
            let free = f["free"].as_u64().unwrap_or(0);
            let avail = f["available"].as_u64().unwrap_or(0);
            let used = total.saturating_sub(free);
            let room = used + avail;
            (room > 0).then(|| {
                let mount = f["mount"].as_str().unwrap_or("?").to_string();
                (mount, used as f64 * 100.0 / room as f64)
            })
        })
        .collect();
    if fs.is_empty() {
        let total = m["disk_total"].as_u64().filter(|t| *t > 0)?;
        let free = m["disk_free"].as_u64().unwrap_or(0);
        return Some((
            "/".into(),
            total.saturating_sub(free) as f64 * 100.0 / total as f64,
        ));
    }
    fs.into_iter().max_by(|a, b| a.1.total_cmp(&b.1))
}

/// The hottest sensor, `48°C`.
fn hottest(m: &Value) -> Option<f64> {
    m["temperatures"]
        .as_array()?
        .iter()
        .filter_map(|t| t["celsius"].as_f64())
        .max_by(f64::total_cmp)
}

/// Columns padded to their widest cell, two spaces apart, the last one unpadded.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut widths = vec![0usize; header.len()];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn labels(node: &Value) -> String {
    let text: Vec<String> = node["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    match text.is_empty() {
        true => "-".into(),
        false => cut(&text.join(","), MAX_LABELS),
    }
}

/// The `nodes ls` table. Offline nodes keep their last known figures: LAST SEEN says how old.
pub fn nodes_table(reply: &Value, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = reply["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let m = &n["metrics"];
            let cpu = m["cpu_percent"]
                .as_f64()
                .filter(|_| m.is_object())
                .map_or("-".into(), |c| format!("{c:.0}%"));
            let mem = match (m["mem_used"].as_u64(), m["mem_total"].as_u64()) {
                (Some(used), Some(total)) => percent(used, total),
                _ => "-".into(),
            };
            let disk = fullest(m).map_or("-".into(), |(_, p)| format!("{p:.0}%"));
            let temp = hottest(m).map_or("-".into(), |c| format!("{c:.0}°C"));
            vec![
                n["id"].as_str().unwrap_or("?").to_string(),
                n["status"].as_str().unwrap_or("?").to_string(),
                labels(n),
                cpu,
                mem,
                disk,
                temp,
                ago(&n["last_seen"], now),
            ]
        })
        .collect();
    let header = [
        "ID",
        "STATUS",
        "LABELS",
        "CPU",
        "MEM",
        "DISK",
        "TEMP",
        "LAST SEEN",
    ];
    table(&header, &rows)
}

/// `1d 4h`, `3h 2m`, `5m`, `42s`.
fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// The alerts of an answer: a list, or its `alerts` key.
fn alert_list(reply: &Value) -> &[Value] {
    match reply {
        Value::Array(a) => a,
        _ => reply["alerts"].as_array().map_or(&[], Vec::as_slice),
    }
}

/// The `alerts ls` table.
pub fn alerts_table(reply: &Value, now: SystemTime) -> String {
    let alerts = alert_list(reply);
    if alerts.is_empty() {
        return "no alerts\n".into();
    }
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            let since = match when(&a["resolved_at"]) {
                Some(_) => format!("resolved {}", ago(&a["resolved_at"], now)),
                None => format!(
                    "since {}",
                    ago(&a["started_at"], now).trim_end_matches(" ago")
                ),
            };
            vec![
                a["id"]
                    .as_u64()
                    .map_or_else(|| a["id"].as_str().unwrap_or("?").into(), |i| i.to_string()),
                a["state"].as_str().unwrap_or("?").to_string(),
                a["severity"].as_str().unwrap_or("-").to_string(),
                a["node"].as_str().unwrap_or("(gateway)").to_string(),
                a["rule"].as_str().unwrap_or("?").to_string(),
                since,
                cut(a["summary"].as_str().unwrap_or(""), MAX_SUMMARY),
            ]
        })
        .collect();
    table(
        &["ID", "STATE", "SEVERITY", "NODE", "RULE", "WHEN", "SUMMARY"],
        &rows,
    )
}

/// `gateway status` for people.
pub fn status_text(s: &Value) -> String {
    let n = &s["nodes"];
    let count = |k: &str| n[k].as_u64().unwrap_or(0);
    let mut out = format!(
        "gateway      {}, up {}\n",
        s["version"].as_str().unwrap_or("?"),
        duration(s["uptime_s"].as_u64().unwrap_or(0))
    );
    let states = [
        "online", "limited", "offline", "error", "pending", "rejected",
    ]
    .map(|k| format!("{} {k}", count(k)))
    .join(", ");
    let used = match (s["nodes_used"].as_u64(), s["max_nodes"].as_u64()) {
        (Some(u), Some(m)) => format!("{u} of {m} used: "),
        _ => String::new(),
    };
    out.push_str(&format!("nodes        {used}{states}\n"));
    if let Some(firing) = s["alerts"]["firing"].as_u64() {
        out.push_str(&format!("alerts       {firing} firing\n"));
    }
    if s["jobs"].is_object() {
        out.push_str(&format!(
            "jobs         {} queued, {} running\n",
            s["jobs"]["queued"].as_u64().unwrap_or(0),
            s["jobs"]["running"].as_u64().unwrap_or(0)
        ));
    }
    let d = &s["data_dir"];
    if d.is_object() {
        let mut text = d["path"].as_str().unwrap_or("?").to_string();
        match (d["available_bytes"].as_u64(), d["total_bytes"].as_u64()) {
            (Some(avail), Some(total)) => text.push_str(&format!(
                ": {} free of {} ({} used)",
                bytes(avail),
                bytes(total),
                percent(total.saturating_sub(avail), total)
            )),
            _ => text.push_str(&format!(
                ": {}",
                d["error"].as_str().unwrap_or("room unknown")
            )),
        }
        if let (Some(free), Some(all)) = (d["inodes_free"].as_u64(), d["inodes_total"].as_u64()) {
            if all > 0 {
                text.push_str(&format!(
                    ", inodes {} used",
                    percent(all - free.min(all), all)
                ));
            }
        }
        if let Some(store) = d["store_bytes"].as_u64() {
            text.push_str(&format!("; store {}", bytes(store)));
        }
        out.push_str(&format!("data dir     {text}\n"));
    }
    let sshd = &s["sshd"];
    let sshd_text = match sshd["mode"].as_str() {
        Some("managed") => {
            let running = match sshd["running"].as_bool() {
                Some(true) => format!("running (pid {})", sshd["pid"]),
                _ => "NOT running".into(),
            };
            format!(
                "managed, {running}, {} restarts",
                sshd["restarts"].as_u64().unwrap_or(0)
            )
        }
        Some(mode) => mode.to_string(),
        None => "-".into(),
    };
    out.push_str(&format!("sshd         {sshd_text}\n"));
    if let Some(public) = s["ssh"]["public"].as_str() {
        out.push_str(&format!(
            "nodes dial   {public} (host key {})\n",
            s["ssh"]["host_fingerprint"].as_str().unwrap_or("?")
        ));
    }
    out
}

mod show;
#[cfg(test)]
mod tests;

pub use show::{node_text, trend_text};
