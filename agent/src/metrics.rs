//! Health figures for heartbeats, from `sysinfo` (CPU, memory, load, uptime, root disk) and
//! `/proc/self/status` (the agent's own resident memory).

use burrow_core::api::Metrics;
use sysinfo::{Disks, System};

/// Keeps the previous CPU sample so each beat reports use since the last one.
pub struct Sampler {
    system: System,
}

impl Sampler {
    pub fn new() -> Sampler {
        let mut system = System::new();
        system.refresh_cpu_usage();
        Sampler { system }
    }

    pub fn sample(&mut self) -> Metrics {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let disks = Disks::new_with_refreshed_list();
        let root = disks
            .list()
            .iter()
            .find(|d| d.mount_point() == std::path::Path::new("/"));
        Metrics {
            uptime_s: System::uptime(),
            load1: System::load_average().one,
            cpu_percent: self.system.global_cpu_usage(),
            mem_total: self.system.total_memory(),
            mem_used: self.system.used_memory(),
            disk_total: root.map_or(0, |d| d.total_space()),
            disk_free: root.map_or(0, |d| d.available_space()),
            agent_rss: own_rss(),
            ..Metrics::default()
        }
    }
}

/// VmRSS of this process in bytes (0 where /proc is missing).
fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_plausible_figures() {
        let m = super::Sampler::new().sample();
        assert!(m.mem_total > 0 && m.mem_used <= m.mem_total);
        assert!(m.agent_rss > 0);
        assert!(m.uptime_s > 0);
    }
}
