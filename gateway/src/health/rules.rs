//! Alert rules and where their figures come from: the built-in defaults (CPU > 90 % for 5 min,
//! memory > 90 %, a disk > 90 %, temperature > 80 °C, Pi throttling, a node offline for 2 min) and
//! the rules file (`serve --alert-rules FILE`, default `alerts.toml` beside the config file; the
//! format is in docs/alerts.md), with its hook and webhook.
//!
//! A figure a node does not report (an older agent's empty list, a machine without sensors) has no
//! value: a rule on it neither fires nor resolves.

use std::path::Path;
use std::time::Duration;

use burrow_core::api::Metrics;
use toml::de::{DeTable, DeValue};

use super::NodeState;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// CPU use of all cores, percent.
    Cpu,
    /// Memory in use (total minus available), percent of total.
    Memory,
    /// Swap in use, percent of swap.
    Swap,
    /// The fullest writable filesystem, percent used.
    Disk,
    /// The writable filesystem with the most inodes used, percent.
    Inodes,
    /// The hottest sensor, °C.
    Temperature,
    /// The Pi firmware's "now" flags (under-voltage, frequency capped, throttled, soft temperature
    /// limit: the low 4 bits of `get_throttled`); above 0 when any is set.
    Throttled,
    /// Load averages.
    Load1,
    Load5,
    Load15,
    /// The node is `offline` (a state rule: the value is the seconds it has been).
    Offline,
    /// The node is in `error` (a state rule).
    Error,
}

impl Metric {
    const NAMES: [(&'static str, Metric); 12] = [
        ("cpu", Metric::Cpu),
        ("memory", Metric::Memory),
        ("swap", Metric::Swap),
        ("disk", Metric::Disk),
        ("inodes", Metric::Inodes),
        ("temperature", Metric::Temperature),
        ("throttled", Metric::Throttled),
        ("load1", Metric::Load1),
        ("load5", Metric::Load5),
        ("load15", Metric::Load15),
        ("offline", Metric::Offline),
        ("error", Metric::Error),
    ];

    fn parse(name: &str) -> Option<Metric> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m)
    }

    /// The state this rule watches, for a state rule; `None` for a resource rule.
    pub fn state(self) -> Option<NodeState> {
        match self {
            Metric::Offline => Some(NodeState::Offline),
            Metric::Error => Some(NodeState::Error),
            _ => None,
        }
    }

    /// The unit shown after a value.
    fn unit(self) -> &'static str {
        match self {
            Metric::Cpu | Metric::Memory | Metric::Swap | Metric::Disk | Metric::Inodes => " %",
            Metric::Temperature => " °C",
            Metric::Offline | Metric::Error => " s",
            _ => "",
        }
    }

    /// The figure of a resource rule in `m`, and what it is about ("disk /var"); `None` when the
    /// node does not report it.
    pub fn value(self, m: &Metrics) -> Option<(f64, String)> {
        let pct = |used: f64, total: f64| (total > 0.0).then(|| 100.0 * used / total);
        match self {
            Metric::Cpu => Some((f64::from(m.cpu_percent), "cpu".into())),
            Metric::Memory => {
                let used = match m.mem_available {
                    0 => m.mem_used,
                    a => m.mem_total.saturating_sub(a),
                };
                pct(used as f64, m.mem_total as f64).map(|v| (v, "memory".into()))
            }
            Metric::Swap => {
                pct(m.swap_used as f64, m.swap_total as f64).map(|v| (v, "swap".into()))
            }
            Metric::Disk => {
                let fullest = m
                    .filesystems
                    .iter()
                    .filter(|f| !f.read_only)
                    .filter_map(|f| {
                        pct(f.total.saturating_sub(f.free) as f64, f.total as f64)
                            .map(|v| (v, format!("disk {}", f.mount)))
                    })
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                fullest.or_else(|| {
                    pct(
                        m.disk_total.saturating_sub(m.disk_free) as f64,
                        m.disk_total as f64,
                    )
                    .map(|v| (v, "disk /".into()))
                })
            }
            Metric::Inodes => m
                .filesystems
                .iter()
                .filter(|f| !f.read_only)
                .filter_map(|f| {
                    pct(
                        f.inodes_total.saturating_sub(f.inodes_free) as f64,
                        f.inodes_total as f64,
                    )
                    .map(|v| (v, format!("inodes {}", f.mount)))
                })
                .max_by(|a, b| a.0.total_cmp(&b.0)),
            Metric::Temperature => m
                .temperatures
                .iter()
                .map(|t| (f64::from(t.celsius), format!("temperature {}", t.sensor)))
                .max_by(|a, b| a.0.total_cmp(&b.0)),
            Metric::Throttled => m.throttled.map(|t| {
                (
                    f64::from(t & 0xf),
                    format!("throttling flags {:#x}", t & 0xf),
                )
            }),
            // A machine that reports no memory reports nothing: an older agent's empty figures.
            Metric::Load1 => (m.mem_total > 0).then(|| (m.load1, "load1".into())),
            Metric::Load5 => (m.mem_total > 0).then(|| (m.load5, "load5".into())),
            Metric::Load15 => (m.mem_total > 0).then(|| (m.load15, "load15".into())),
            Metric::Offline | Metric::Error => None,
        }
    }
}

/// How a value is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Above,
    Below,
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique; the alert's name (`disk_full`).
    pub name: String,
    pub metric: Metric,
    pub op: Op,
    pub threshold: f64,
    /// A firing alert resolves once the value is back past this (hysteresis): for `>` at or below
    /// it. Default: 5 % short of the threshold (85.5 for 90).
    pub clear: f64,
    /// How long the condition must hold before the alert fires.
    pub for_s: u64,
    pub severity: String,
}

impl Rule {
    /// Whether `value` meets the condition.
    pub fn holds(&self, value: f64) -> bool {
        match self.op {
            Op::Above => value > self.threshold,
            Op::Below => value < self.threshold,
        }
    }

    /// Whether `value` is far enough back for a firing alert to resolve.
    pub fn cleared(&self, value: f64) -> bool {
        match self.op {
            Op::Above => value <= self.clear,
            Op::Below => value >= self.clear,
        }
    }

    /// "memory 95.2 % (threshold 90 %)".
    pub fn describe(&self, what: &str, value: f64) -> String {
        let unit = self.metric.unit();
        let op = match self.op {
            Op::Above => ">",
            Op::Below => "<",
        };
        format!(
            "{what} {}{unit} (threshold {op} {}{unit})",
            round(value),
            round(self.threshold)
        )
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// A command run with each alert's JSON on stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    /// Run by `/bin/sh -c`.
    pub command: String,
    pub timeout: Duration,
}

/// An Alertmanager (API v2) to POST alerts to.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// `http://host:port/path` (plain HTTP: put Alertmanager on a trusted network or loopback, or
    /// use the hook with curl for HTTPS).
    pub url: String,
    pub timeout: Duration,
}

/// The rules in force, with the hook and webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub rules: Vec<Rule>,
    pub hook: Option<Hook>,
    pub webhook: Option<Webhook>,
    /// Where they came from, for the log ("built-in rules", a path).
    pub source: String,
}

fn rule(name: &str, metric: Metric, threshold: f64, for_s: u64, severity: &str) -> Rule {
    Rule {
        name: name.into(),
        metric,
        op: Op::Above,
        threshold,
        clear: default_clear(Op::Above, threshold),
        for_s,
        severity: severity.into(),
    }
}

fn default_clear(op: Op, threshold: f64) -> f64 {
    match op {
        Op::Above => threshold - threshold.abs() * 0.05,
        Op::Below => threshold + threshold.abs() * 0.05,
    }
}

impl Rules {
    /// The built-in rules (issue 8's defaults), no hook, no webhook.
    pub fn builtin() -> Rules {
        Rules {
            rules: vec![
                rule("cpu_high", Metric::Cpu, 90.0, 300, "warning"),
                rule("memory_high", Metric::Memory, 90.0, 300, "warning"),
                rule("disk_full", Metric::Disk, 90.0, 300, "warning"),
                rule("temperature_high", Metric::Temperature, 80.0, 60, "warning"),
                rule("throttled", Metric::Throttled, 0.0, 60, "warning"),
                rule("node_offline", Metric::Offline, 0.0, 120, "critical"),
                rule("node_error", Metric::Error, 0.0, 60, "critical"),
            ],
            hook: None,
            webhook: None,
            source: "built-in rules".into(),
        }
    }

    /// Reads a rules file (see docs/alerts.md); errors name the file and line.
    pub fn load(path: &Path) -> anyhow::Result<Rules> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading alert rules {}: {e}", path.display()))?;
        Rules::parse(&text, &path.display().to_string()).map_err(anyhow::Error::msg)
    }

    /// Parses a rules file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Rules, String> {
        let table = DeTable::parse(text).map_err(|e| format!("{file}: {e}"))?;
        let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let mut rules = Vec::new();
        let mut hook = None;
        let mut webhook = None;
        let mut keep_defaults = None;
        for (key, value) in table.get_ref() {
            let at = line(key.span().start);
            let here = |why: String| format!("{file} line {at}: {why}");
            match (key.get_ref().as_ref(), value.get_ref()) {
                ("rule", DeValue::Array(items)) => {
                    for item in items {
                        let at = line(item.span().start);
                        let DeValue::Table(t) = item.get_ref() else {
                            return Err(format!("{file} line {at}: write rules as [[rule]]"));
                        };
                        rules.push(parse_rule(t).map_err(|e| format!("{file} line {at}: {e}"))?);
                    }
                }
                ("hook", DeValue::Table(t)) => hook = Some(parse_hook(t).map_err(here)?),
                ("webhook", DeValue::Table(t)) => webhook = Some(parse_webhook(t).map_err(here)?),
                ("defaults", DeValue::Boolean(b)) => keep_defaults = Some(*b),
                (k, _) => {
                    return Err(here(format!(
                        "unknown or misplaced key `{k}` (known: [[rule]], [hook], [webhook], \
                         defaults = true|false)"
                    )))
                }
            }
        }
        for (i, r) in rules.iter().enumerate() {
            if rules[..i].iter().any(|o| o.name == r.name) {
                return Err(format!("{file}: two rules are named {:?}", r.name));
            }
        }
        // No rules in the file: the built-in ones (a file may hold just a hook). With rules, they
        // replace the built-in ones unless `defaults = true` keeps those not named again.
        if keep_defaults.unwrap_or(rules.is_empty()) {
            for d in Rules::builtin().rules {
                if !rules.iter().any(|r| r.name == d.name) {
                    rules.push(d);
                }
            }
        }
        Ok(Rules {
            rules,
            hook,
            webhook,
            source: file.to_string(),
        })
    }
}

fn text<'a>(v: &'a DeValue<'_>, key: &str) -> Result<&'a str, String> {
    match v {
        DeValue::String(s) => Ok(s.as_ref()),
        _ => Err(format!("`{key}` must be a string")),
    }
}

fn number(v: &DeValue<'_>, key: &str) -> Result<f64, String> {
    let n = match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|i| i as f64),
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        _ => None,
    };
    n.filter(|n| n.is_finite())
        .ok_or_else(|| format!("`{key}` must be a finite number"))
}

fn duration(v: &DeValue<'_>, key: &str) -> Result<Duration, String> {
    let s = text(v, key)?;
    humantime::parse_duration(s).map_err(|e| format!("`{key}` = {s:?}: {e} (examples: 30s, 5m)"))
}

fn parse_rule(t: &DeTable<'_>) -> Result<Rule, String> {
    let mut name = None;
    let mut metric = None;
    let mut op = Op::Above;
    let mut threshold = None;
    let mut clear = None;
    let mut for_s = 0;
    let mut severity = "warning".to_string();
    for (key, value) in t {
        let (k, v) = (key.get_ref().as_ref(), value.get_ref());
        match k {
            "name" => {
                let n = text(v, k)?;
                let ok = !n.is_empty()
                    && n.len() <= 64
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !ok {
                    return Err(format!("rule name {n:?}: 1 to 64 letters, digits or _-."));
                }
                name = Some(n.to_string());
            }
            "metric" => {
                let m = text(v, k)?;
                let known: Vec<&str> = Metric::NAMES.iter().map(|(n, _)| *n).collect();
                metric =
                    Some(Metric::parse(m).ok_or_else(|| {
                        format!("unknown metric {m:?}; known: {}", known.join(", "))
                    })?);
            }
            "op" => {
                op = match text(v, k)? {
                    ">" => Op::Above,
                    "<" => Op::Below,
                    o => return Err(format!("op {o:?}: \">\" or \"<\"")),
                }
            }
            "threshold" => threshold = Some(number(v, k)?),
            "clear" => clear = Some(number(v, k)?),
            "for" => for_s = duration(v, k)?.as_secs(),
            "severity" => {
                let s = text(v, k)?;
                if s.is_empty() || s.len() > 32 {
                    return Err("severity: 1 to 32 characters (warning, critical)".into());
                }
                severity = s.to_string();
            }
            other => {
                return Err(format!(
                    "unknown key `{other}` in a rule (name, metric, op, threshold, clear, for, \
                     severity)"
                ))
            }
        }
    }
    let name = name.ok_or("a rule needs a `name`")?;
    let metric = metric.ok_or_else(|| format!("rule {name}: needs a `metric`"))?;
    let threshold = match (threshold, metric.state()) {
        (Some(t), _) => t,
        (None, Some(_)) => 0.0,
        (None, None) => return Err(format!("rule {name}: needs a `threshold`")),
    };
    let clear = clear.unwrap_or_else(|| default_clear(op, threshold));
    let wrong_side = match op {
        Op::Above => clear > threshold,
        Op::Below => clear < threshold,
    };
    if wrong_side && metric.state().is_none() {
        return Err(format!(
            "rule {name}: `clear` ({clear}) must be on the healthy side of the threshold ({threshold})"
        ));
    }
    Ok(Rule {
        name,
        metric,
        op,
        threshold,
        clear,
        for_s,
        severity,
    })
}

/// The longest a hook or webhook call may take.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

fn timeout(v: &DeValue<'_>) -> Result<Duration, String> {
    let t = duration(v, "timeout")?;
    if t.is_zero() || t > MAX_TIMEOUT {
        return Err("`timeout` is between 1s and 10m".into());
    }
    Ok(t)
}

fn parse_hook(t: &DeTable<'_>) -> Result<Hook, String> {
    let mut command = None;
    let mut limit = Duration::from_secs(10);
    for (key, value) in t {
        match key.get_ref().as_ref() {
            "command" => command = Some(text(value.get_ref(), "command")?.to_string()),
            "timeout" => limit = timeout(value.get_ref())?,
            other => {
                return Err(format!(
                    "unknown key `{other}` in [hook] (command, timeout)"
                ))
            }
        }
    }
    let command = command
        .filter(|c| !c.trim().is_empty())
        .ok_or("[hook] needs a `command` (run by /bin/sh -c, the alert as JSON on stdin)")?;
    Ok(Hook {
        command,
        timeout: limit,
    })
}

fn parse_webhook(t: &DeTable<'_>) -> Result<Webhook, String> {
    let mut url = None;
    let mut limit = Duration::from_secs(5);
    for (key, value) in t {
        match key.get_ref().as_ref() {
            "url" => url = Some(text(value.get_ref(), "url")?.to_string()),
            "timeout" => limit = timeout(value.get_ref())?,
            other => return Err(format!("unknown key `{other}` in [webhook] (url, timeout)")),
        }
    }
    let url = url.ok_or("[webhook] needs a `url` (http://alertmanager:9093/api/v2/alerts)")?;
    super::notify::parse_url(&url).map_err(|e| format!("[webhook] url {url:?}: {e}"))?;
    Ok(Webhook {
        url,
        timeout: limit,
    })
}

#[cfg(test)]
mod tests;
