//! `/metrics`: the fleet as Prometheus sees it. Per node, node_exporter's names and units under a
//! `burrow_node_` prefix with a `node` label (and node_exporter's own `device`, `mountpoint`,
//! `fstype`, `cpu`, `sensor` labels); per gateway, nodes by state, job parts, API requests, exec
//! latency and sshd restarts. docs/monitoring.md lists every family.
//!
//! A scrape reads what the gateway knows at that moment ([`Snapshot`], taken by the API handler)
//! and renders it with [`render`], a pure function: a node removed from the registry is simply not
//! in the next snapshot, so its series disappear. Figures come from a node's last heartbeat and
//! are rendered only while its link is up (`online`, `limited`, `error`): an offline node keeps
//! `burrow_node_up 0`, its state and the age of its last beat, not a flat line of stale values.
//! A figure an agent could not read (an older agent's empty lists and zeros) is left out, never
//! rendered as 0.

pub mod counters;
pub mod text;

use burrow_core::api::{Metrics, NetInterface};

use crate::health::NodeState;
use counters::{Counters, UNMATCHED};
use text::{Type, Writer};

/// At most this many entries of each per-node list are rendered (filesystems, interfaces,
/// sensors, cores): a node's heartbeat decides how many series it makes, and must not make
/// thousands.
const MAX_ITEMS: usize = 64;
/// Cores are many on big machines.
const MAX_CORES: usize = 256;

/// One node as the renderer needs it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: String,
    pub state: NodeState,
    pub hostname: String,
    pub version: String,
    pub os: String,
    pub arch: String,
    /// Unix seconds of its last heartbeat.
    pub last_seen: Option<u64>,
    /// Its last heartbeat's figures.
    pub metrics: Option<Metrics>,
}

/// The sshd the gateway supervises (managed mode).
#[derive(Debug, Clone, Copy)]
pub struct SshdView {
    pub running: bool,
    pub restarts: u64,
}

/// What one scrape renders.
pub struct Snapshot<'c> {
    /// Unix seconds now.
    pub now: u64,
    /// Unix seconds the gateway started.
    pub started_at: u64,
    pub nodes: Vec<NodeView>,
    /// Nodes in each state (every state).
    pub counts: Vec<(NodeState, usize)>,
    /// Job parts waiting in lanes.
    pub parts_queued: usize,
    /// Job parts running on nodes.
    pub parts_running: usize,
    pub alerts_firing: usize,
    /// `None` with the system's sshd.
    pub sshd: Option<SshdView>,
    pub counters: &'c Counters,
}

/// Counts a job part's end (the job engine calls this once per part); `ran`: the node reported
/// the command's exit, so its latency goes into the exec histogram.
pub fn part_ended(job: &crate::jobs::Job, state: crate::jobs::state::NodeState, ran: bool) {
    let exec = matches!(job.meta.kind, crate::jobs::JobKind::Exec { .. });
    let latency = job.since_submit().filter(|_| exec && ran);
    counters::global().part_ended(job.meta.kind.name(), state.name(), latency);
}

/// The exposition text of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut w = Writer::new();
    gateway_families(&mut w, s);
    node_families(&mut w, s);
    w.finish()
}

fn gateway_families(w: &mut Writer, s: &Snapshot) {
    w.family(
        "burrow_build_info",
        Type::Gauge,
        "The gateway's version, as a label; always 1.",
    )
    .sample(&[("version", burrow_core::VERSION)], 1u64);
    w.family(
        "burrow_gateway_start_time_seconds",
        Type::Gauge,
        "When the gateway started, Unix seconds.",
    )
    .sample(&[], s.started_at);
    let mut f = w.family(
        "burrow_nodes",
        Type::Gauge,
        "Nodes in each state (pending, online, limited, offline, error, rejected).",
    );
    for (state, n) in &s.counts {
        f.sample(&[("state", state.as_str())], *n);
    }
    w.family("burrow_alerts_firing", Type::Gauge, "Alerts firing now.")
        .sample(&[], s.alerts_firing);
    let mut f = w.family(
        "burrow_job_parts",
        Type::Gauge,
        "Job parts (one job on one node) queued in lanes or running on nodes now.",
    );
    f.sample(&[("state", "queued")], s.parts_queued);
    f.sample(&[("state", "running")], s.parts_running);
    w.family(
        "burrow_job_queue_depth",
        Type::Gauge,
        "Job parts waiting in lanes, all nodes together.",
    )
    .sample(&[], s.parts_queued);
    let mut f = w.family(
        "burrow_job_parts_finished_total",
        Type::Counter,
        "Job parts that ended since the gateway started, by job kind and final state.",
    );
    for ((kind, state), n) in s.counters.parts() {
        f.sample(&[("kind", kind), ("state", state)], n);
    }
    let (buckets, sum, count) = s.counters.exec_latency.snapshot();
    w.family(
        "burrow_exec_duration_seconds",
        Type::Histogram,
        "Commands that ran: time from the job's submission to the node's end of it.",
    )
    .histogram(&[], &buckets, sum, count);
    let mut f = w.family(
        "burrow_api_requests_total",
        Type::Counter,
        "API requests answered, by method, route pattern (`unmatched` for none) and status.",
    );
    for ((method, route, status), n) in s.counters.requests() {
        let status = status.to_string();
        let route = if route.is_empty() { UNMATCHED } else { route };
        f.sample(
            &[("method", method), ("route", route), ("status", &status)],
            n,
        );
    }
    if let Some(sshd) = s.sshd {
        w.family(
            "burrow_sshd_up",
            Type::Gauge,
            "1 while the supervised sshd runs.",
        )
        .sample(&[], sshd.running);
        w.family(
            "burrow_sshd_restarts_total",
            Type::Counter,
            "Times the supervised sshd died and was started again.",
        )
        .sample(&[], sshd.restarts);
    }
}

/// The figures of nodes whose link is up (see the module doc).
fn fresh(n: &NodeView) -> Option<&Metrics> {
    let linked = matches!(
        n.state,
        NodeState::Online | NodeState::Limited | NodeState::Error
    );
    n.metrics.as_ref().filter(|_| linked)
}

/// Whether a heartbeat comes from an agent that sends the second set of figures (per-core CPU is
/// readable on every Linux): before it, `load5`, swap and the like are zeros that mean "not sent".
fn v2(m: &Metrics) -> bool {
    !m.cpu_cores.is_empty()
}

/// A percentage sent as `f32` as a ratio, through the shortest decimal of the `f32` ratio (38.88889 %
/// is 0.3888889, not 0.38888890000000004).
fn ratio(percent: f32) -> f64 {
    (percent / 100.0).to_string().parse().unwrap_or(f64::NAN)
}

fn node_families(w: &mut Writer, s: &Snapshot) {
    let nodes = &s.nodes;
    let each = |w: &mut Writer,
                name: &'static str,
                kind: Type,
                help: &str,
                f: &dyn Fn(&mut text::Family, &NodeView)| {
        let mut family = w.family(name, kind, help);
        for n in nodes {
            f(&mut family, n);
        }
    };
    each(
        w,
        "burrow_node_up",
        Type::Gauge,
        "1 when the node takes commands (online or limited), else 0.",
        &|f, n| {
            f.sample(
                &[("node", &n.id)],
                matches!(n.state, NodeState::Online | NodeState::Limited),
            )
        },
    );
    each(
        w,
        "burrow_node_state",
        Type::Gauge,
        "1 for the node's current state, 0 for the others (every state present).",
        &|f, n| {
            for state in NodeState::ALL {
                f.sample(
                    &[("node", &n.id), ("state", state.as_str())],
                    state == n.state,
                );
            }
        },
    );
    each(
        w,
        "burrow_node_info",
        Type::Gauge,
        "The node's hostname, agent version, OS and architecture, as labels; always 1.",
        &|f, n| {
            f.sample(
                &[
                    ("node", &n.id),
                    ("hostname", &n.hostname),
                    ("version", &n.version),
                    ("os", &n.os),
                    ("arch", &n.arch),
                ],
                1u64,
            )
        },
    );
    each(
        w,
        "burrow_node_heartbeat_age_seconds",
        Type::Gauge,
        "Seconds since the node's last heartbeat (kept across gateway restarts).",
        &|f, n| {
            if let Some(t) = n.last_seen {
                f.sample(&[("node", &n.id)], s.now.saturating_sub(t))
            }
        },
    );
    each(
        w,
        "burrow_node_boot_time_seconds",
        Type::Gauge,
        "When the node booted, Unix seconds (its last beat's time minus its uptime).",
        &|f, n| {
            if let (Some(m), Some(t)) = (fresh(n), n.last_seen) {
                if m.uptime_s > 0 {
                    f.sample(&[("node", &n.id)], t.saturating_sub(m.uptime_s))
                }
            }
        },
    );
    each(
        w,
        "burrow_node_cpu_usage_ratio",
        Type::Gauge,
        "CPU busy, all cores, between the node's last two heartbeats (0 to 1).",
        &|f, n| {
            if let Some(m) = fresh(n) {
                f.sample(&[("node", &n.id)], ratio(m.cpu_percent))
            }
        },
    );
    each(
        w,
        "burrow_node_cpu_core_usage_ratio",
        Type::Gauge,
        "CPU busy per core between the node's last two heartbeats (0 to 1).",
        &|f, n| {
            for (i, pct) in fresh(n)
                .map(|m| &m.cpu_cores[..])
                .unwrap_or(&[])
                .iter()
                .take(MAX_CORES)
                .enumerate()
            {
                f.sample(&[("node", &n.id), ("cpu", &i.to_string())], ratio(*pct))
            }
        },
    );
    let load =
        |name: &'static str, help: &'static str, get: fn(&Metrics) -> f64, needs_v2: bool| {
            move |w: &mut Writer| {
                let mut f = w.family(name, Type::Gauge, help);
                for n in nodes {
                    if let Some(m) = fresh(n).filter(|m| !needs_v2 || v2(m)) {
                        f.sample(&[("node", &n.id)], get(m));
                    }
                }
            }
        };
    load(
        "burrow_node_load1",
        "1-minute load average.",
        |m| m.load1,
        false,
    )(w);
    load(
        "burrow_node_load5",
        "5-minute load average.",
        |m| m.load5,
        true,
    )(w);
    load(
        "burrow_node_load15",
        "15-minute load average.",
        |m| m.load15,
        true,
    )(w);
    each(
        w,
        "burrow_node_memory_total_bytes",
        Type::Gauge,
        "Memory, bytes.",
        &|f, n| {
            if let Some(m) = fresh(n).filter(|m| m.mem_total > 0) {
                f.sample(&[("node", &n.id)], m.mem_total)
            }
        },
    );
    each(
        w,
        "burrow_node_memory_available_bytes",
        Type::Gauge,
        "Memory available to new programs without swapping, bytes.",
        &|f, n| {
            if let Some(m) = fresh(n).filter(|m| m.mem_total > 0) {
                // Older agents send no `mem_available`; their `mem_used` is total minus available.
                let available = match m.mem_available {
                    0 => m.mem_total.saturating_sub(m.mem_used),
                    a => a,
                };
                f.sample(&[("node", &n.id)], available)
            }
        },
    );
    each(
        w,
        "burrow_node_swap_total_bytes",
        Type::Gauge,
        "Swap, bytes.",
        &|f, n| {
            if let Some(m) = fresh(n).filter(|m| v2(m)) {
                f.sample(&[("node", &n.id)], m.swap_total)
            }
        },
    );
    each(
        w,
        "burrow_node_swap_free_bytes",
        Type::Gauge,
        "Swap not in use, bytes.",
        &|f, n| {
            if let Some(m) = fresh(n).filter(|m| v2(m)) {
                f.sample(&[("node", &n.id)], m.swap_total.saturating_sub(m.swap_used))
            }
        },
    );
    filesystem_families(w, nodes);
    type Counter = (&'static str, &'static str, fn(&NetInterface) -> u64);
    let network: [Counter; 2] = [
        (
            "burrow_node_network_receive_bytes_total",
            "Bytes received per interface since boot.",
            |i| i.rx_bytes,
        ),
        (
            "burrow_node_network_transmit_bytes_total",
            "Bytes sent per interface since boot.",
            |i| i.tx_bytes,
        ),
    ];
    for (name, help, value) in network {
        each(w, name, Type::Counter, help, &|f, n| {
            for i in fresh(n)
                .map(|m| &m.network[..])
                .unwrap_or(&[])
                .iter()
                .take(MAX_ITEMS)
            {
                f.sample(&[("node", &n.id), ("device", &i.name)], value(i))
            }
        });
    }
    each(
        w,
        "burrow_node_temperature_celsius",
        Type::Gauge,
        "Temperatures the node's kernel exposes (thermal zones, hwmon), degrees Celsius.",
        &|f, n| {
            for t in fresh(n)
                .map(|m| &m.temperatures[..])
                .unwrap_or(&[])
                .iter()
                .take(MAX_ITEMS)
            {
                f.sample(&[("node", &n.id), ("sensor", &t.sensor)], t.celsius)
            }
        },
    );
    each(w, "burrow_node_throttled_flags", Type::Gauge, "The Raspberry Pi firmware's get_throttled bits (bit 0: under-voltage now, bit 2: throttled now), where readable.", &|f, n| {
        if let Some(bits) = fresh(n).and_then(|m| m.throttled) {
            f.sample(&[("node", &n.id)], bits)
        }
    });
    each(
        w,
        "burrow_node_processes",
        Type::Gauge,
        "Processes on the node.",
        &|f, n| {
            if let Some(m) = fresh(n).filter(|m| m.processes > 0) {
                f.sample(&[("node", &n.id)], m.processes)
            }
        },
    );
    each(
        w,
        "burrow_node_agent_resident_memory_bytes",
        Type::Gauge,
        "Resident memory of the node's burrow agent, bytes.",
        &|f, n| {
            if let Some(m) = fresh(n).filter(|m| m.agent_rss > 0) {
                f.sample(&[("node", &n.id)], m.agent_rss)
            }
        },
    );
}

/// node_exporter's `node_filesystem_*` families. An older agent reports only `/` (as
/// `disk_total`/`disk_free`, the latter being space available to users): its size and available
/// space are rendered, with empty `device` and `fstype`.
fn filesystem_families(w: &mut Writer, nodes: &[NodeView]) {
    struct Fs<'a> {
        mount: &'a str,
        device: &'a str,
        fstype: &'a str,
        size: u64,
        avail: u64,
        /// (free, files, files free, read-only): not known from older agents.
        more: Option<(u64, u64, u64, bool)>,
    }
    fn of(m: &Metrics) -> Vec<Fs<'_>> {
        if m.filesystems.is_empty() {
            return match m.disk_total {
                0 => Vec::new(),
                size => vec![Fs {
                    mount: "/",
                    device: "",
                    fstype: "",
                    size,
                    avail: m.disk_free,
                    more: None,
                }],
            };
        }
        m.filesystems
            .iter()
            .take(MAX_ITEMS)
            .map(|f| Fs {
                mount: &f.mount,
                device: &f.device,
                fstype: &f.fstype,
                size: f.total,
                avail: f.available,
                more: Some((f.free, f.inodes_total, f.inodes_free, f.read_only)),
            })
            .collect()
    }
    type Get = fn(&Fs) -> Option<u64>;
    let families: [(&'static str, &str, Get); 6] = [
        (
            "burrow_node_filesystem_size_bytes",
            "Filesystem size, bytes.",
            |f| Some(f.size),
        ),
        (
            "burrow_node_filesystem_avail_bytes",
            "Filesystem space available to non-root users, bytes.",
            |f| Some(f.avail),
        ),
        (
            "burrow_node_filesystem_free_bytes",
            "Filesystem free space (root's reserve included), bytes.",
            |f| f.more.map(|m| m.0),
        ),
        (
            "burrow_node_filesystem_files",
            "Filesystem inodes in all.",
            |f| f.more.map(|m| m.1),
        ),
        (
            "burrow_node_filesystem_files_free",
            "Filesystem inodes free.",
            |f| f.more.map(|m| m.2),
        ),
        (
            "burrow_node_filesystem_readonly",
            "1 when the filesystem is mounted read-only.",
            |f| f.more.map(|m| u64::from(m.3)),
        ),
    ];
    for (name, help, get) in families {
        let mut family = w.family(name, Type::Gauge, help);
        for n in nodes {
            let Some(m) = fresh(n) else { continue };
            for fs in of(m) {
                if let Some(v) = get(&fs) {
                    family.sample(
                        &[
                            ("node", &n.id),
                            ("device", fs.device),
                            ("fstype", fs.fstype),
                            ("mountpoint", fs.mount),
                        ],
                        v,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
