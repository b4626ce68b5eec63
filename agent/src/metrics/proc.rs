//! Parsers for the `/proc` files a heartbeat reads: each takes the file's text (empty when it was
//! unreadable) and returns what it found, so tests feed them fixed text and the live machine alike.

use std::path::Path;

use burrow_core::api::NetInterface;

/// Interfaces reported at most (a container host can have hundreds of veths); beats stay small.
const MAX_INTERFACES: usize = 64;

/// `/proc/loadavg`: the 1, 5 and 15-minute load averages.
pub fn loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<f64>().ok());
    Some((fields.next()??, fields.next()??, fields.next()??))
}

/// `/proc/uptime`: whole seconds since boot (0 when unreadable).
pub fn uptime(text: &str) -> u64 {
    text.split_ascii_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(0, |s| s as u64)
}

/// The lines of `/proc/meminfo` a beat reports, in bytes (0 when missing).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

impl Memory {
    pub fn parse(text: &str) -> Memory {
        let mut m = Memory::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let slot = match key {
                "MemTotal" => &mut m.total,
                "MemAvailable" => &mut m.available,
                "SwapTotal" => &mut m.swap_total,
                "SwapFree" => &mut m.swap_free,
                _ => continue,
            };
            *slot = kb(value);
        }
        m
    }
}

/// " 1234 kB" as bytes.
fn kb(value: &str) -> u64 {
    value
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .map_or(0, |kb| kb.saturating_mul(1024))
}

/// Busy and total jiffies of one `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Jiffies {
    busy: u64,
    total: u64,
}

/// The `cpu` (all cores) and `cpuN` lines of `/proc/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuTimes {
    all: Jiffies,
    /// Index = core number; `None` for a core with no line (offline).
    cores: Vec<Option<Jiffies>>,
}

impl CpuTimes {
    /// `None` when the text has no `cpu` line.
    pub fn parse(text: &str) -> Option<CpuTimes> {
        let mut all = None;
        let mut cores: Vec<Option<Jiffies>> = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_ascii_whitespace();
            let Some(name) = fields.next().and_then(|n| n.strip_prefix("cpu")) else {
                continue;
            };
            // user nice system idle iowait irq softirq steal (guest time is already in user).
            let values: Vec<u64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
            if values.len() < 4 {
                continue;
            }
            let idle = values[3].saturating_add(values.get(4).copied().unwrap_or(0));
            let total = values.iter().fold(0u64, |sum, v| sum.saturating_add(*v));
            let jiffies = Jiffies {
                busy: total.saturating_sub(idle),
                total,
            };
            if name.is_empty() {
                all = Some(jiffies);
            } else if let Ok(n) = name.parse::<usize>() {
                // A core number far beyond the lines seen so far is not a real core: ignore it.
                if n < 4096 {
                    if cores.len() <= n {
                        cores.resize(n + 1, None);
                    }
                    cores[n] = Some(jiffies);
                }
            }
        }
        Some(CpuTimes { all: all?, cores })
    }

    /// Percent busy of all cores and of each core between `before` and `self`.
    pub fn usage_since(&self, before: &CpuTimes) -> (f32, Vec<f32>) {
        let cores = self
            .cores
            .iter()
            .enumerate()
            .map(
                |(i, now)| match (now, before.cores.get(i).copied().flatten()) {
                    (Some(now), Some(then)) => percent(*now, then),
                    _ => 0.0,
                },
            )
            .collect();
        (percent(self.all, before.all), cores)
    }
}

fn percent(now: Jiffies, then: Jiffies) -> f32 {
    let total = now.total.saturating_sub(then.total);
    if total == 0 {
        return 0.0;
    }
    let busy = now.busy.saturating_sub(then.busy).min(total);
    (busy as f64 * 100.0 / total as f64) as f32
}

/// `/proc/net/dev`: byte counters of every interface but loopback, in the file's order.
pub fn network(text: &str) -> Vec<NetInterface> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let fields: Vec<u64> = counters
                .split_ascii_whitespace()
                .map_while(|f| f.parse().ok())
                .collect();
            // rx: bytes packets errs drop fifo frame compressed multicast; then tx bytes.
            if name == "lo" || fields.len() < 9 {
                return None;
            }
            Some(NetInterface {
                name: name.to_string(),
                rx_bytes: fields[0],
                tx_bytes: fields[8],
            })
        })
        .take(MAX_INTERFACES)
        .collect()
}

/// Processes on the machine: the numeric entries of the proc root (0 when unreadable).
pub fn processes(proc: &Path) -> u32 {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return 0;
    };
    let count = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.as_encoded_bytes();
            !name.is_empty() && name.iter().all(u8::is_ascii_digit)
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// `VmRSS` of `/proc/self/status`, in bytes (0 when missing).
pub fn own_rss(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map_or(0, kb)
}
