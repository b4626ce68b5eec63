//! Health figures for heartbeats, read straight from the kernel: `/proc` (load, CPU, memory, swap,
//! uptime, network counters, process count, the agent's own RSS), `statvfs(2)` on every real
//! filesystem, `/sys` (temperatures, the Raspberry Pi firmware's throttling flags).
//!
//! Why not `sysinfo`: each figure is one small file the agent reads when it sends a beat, so it
//! refreshes exactly what it sends and keeps nothing between beats but the previous CPU counters
//! (sysinfo kept its own tables of every process and disk; dropping it made the agent smaller:
//! BENCHMARKS.md). Every reader returns "not readable" (an empty list, `None`, 0) rather than failing:
//! a beat always goes out.

mod faults;
mod fs;
mod proc;
mod thermal;

use std::path::{Path, PathBuf};

use burrow_core::api::Metrics;

pub use faults::Faults;

/// Makes [`Metrics`] for one beat; keeps the CPU counters of the previous beat, so CPU use is over
/// the interval between beats.
pub struct Sampler {
    proc: PathBuf,
    sys: PathBuf,
    cpu: Option<proc::CpuTimes>,
}

impl Sampler {
    /// Reads the real `/proc` and `/sys`.
    pub fn new() -> Sampler {
        Sampler::at(Path::new("/proc"), Path::new("/sys"))
    }

    /// Reads `proc` and `sys` instead of `/proc` and `/sys` (tests give it a fake tree). Filesystems
    /// are always the real ones: `statvfs` needs real mount points.
    pub fn at(proc: &Path, sys: &Path) -> Sampler {
        let mut sampler = Sampler {
            proc: proc.to_path_buf(),
            sys: sys.to_path_buf(),
            cpu: None,
        };
        // The first beat then has an interval to measure CPU over (since the agent started).
        sampler.cpu = proc::CpuTimes::parse(&sampler.read("stat"));
        sampler
    }

    /// One beat's figures.
    pub fn sample(&mut self) -> Metrics {
        let (load1, load5, load15) = proc::loadavg(&self.read("loadavg")).unwrap_or_default();
        let mem = proc::Memory::parse(&self.read("meminfo"));
        let (cpu_percent, cpu_cores) = match proc::CpuTimes::parse(&self.read("stat")) {
            Some(now) => {
                let usage = self
                    .cpu
                    .as_ref()
                    .map(|before| now.usage_since(before))
                    .unwrap_or_default();
                self.cpu = Some(now);
                usage
            }
            None => Default::default(),
        };
        let root = fs::root();
        Metrics {
            uptime_s: proc::uptime(&self.read("uptime")),
            load1,
            load5,
            load15,
            cpu_percent,
            cpu_cores,
            mem_total: mem.total,
            mem_used: mem.total.saturating_sub(mem.available),
            mem_available: mem.available,
            swap_total: mem.swap_total,
            swap_used: mem.swap_total.saturating_sub(mem.swap_free),
            disk_total: root.map_or(0, |r| r.total),
            disk_free: root.map_or(0, |r| r.available),
            filesystems: fs::filesystems(&self.read("self/mountinfo")),
            network: proc::network(&self.read("net/dev")),
            temperatures: thermal::temperatures(&self.sys),
            throttled: thermal::throttled(&self.sys),
            processes: proc::processes(&self.proc),
            agent_rss: proc::own_rss(&self.read("self/status")),
        }
    }

    /// A file under the proc root; empty when unreadable (every parser then reports nothing).
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.proc.join(name)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
