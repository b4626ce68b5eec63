//! JSON bodies the agent and the gateway exchange over the API (pairing) and the secure link
//! (heartbeats). Operator-facing
//! API shapes live in the gateway; these are here because both binaries must agree on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /api/v1/agent/hello`: the agent's challenge to whatever listens on the API port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloRequest {
    /// Base64 of 32 random bytes.
    pub nonce: String,
}

/// The gateway's answer: a signature proving it holds the pinned key, and a one-time server nonce for
/// the agent to sign in a pairing request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloReply {
    /// Base64 of 32 random bytes, valid for one use within a minute.
    pub server_nonce: String,
    /// Base64 signature over [`crate::handshake::api_hello_message`].
    pub signature: String,
}

/// What a node asks for when it pairs (sent as the `request` string of [`SignedRequest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRequest {
    /// The node's name (its id in the API).
    pub name: String,
    /// The node's key as an OpenSSH line.
    pub public_key: String,
    /// The join secret; not needed when the key is already known (pending or approved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_secret: Option<String>,
    /// The machine's hostname.
    pub hostname: String,
    /// What the node offers (free-form words such as `docker`, `gpio`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `std::env::consts::OS`/`ARCH` and the agent version.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Agent version.
    pub version: String,
}

/// A request signed by the node's key: `request` is the exact JSON text that was signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRequest {
    /// The JSON text of the request.
    pub request: String,
    /// The server nonce from [`HelloReply`].
    pub server_nonce: String,
    /// Base64 signature over [`crate::handshake::pair_message`].
    pub signature: String,
}

/// Where a pairing stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairReply {
    /// `approved`, `pending` or `rejected`.
    pub status: String,
    /// For humans.
    #[serde(default)]
    pub message: String,
    /// The node's JWT, once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The node's two listen ports on the gateway's 127.0.0.1, once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<[u16; 2]>,
}

/// What an agent reports on its secure link ([`crate::protocol::Message::Heartbeat`]), at once and
/// every `interval_s` (30 s by default, jittered). Every field added since the first heartbeat has a
/// default, so a gateway reads an older agent's beat (and the reverse) without failing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Agent version.
    pub version: String,
    /// Health figures.
    pub metrics: Metrics,
    /// Commands the agent runs at once at most (its `--max-concurrent`); the gateway starts no more
    /// than this on the node and queues the rest. 0: not said (the gateway assumes 64).
    #[serde(default)]
    pub max_jobs: u32,
    /// Commands running on the node now (attached or not).
    #[serde(default)]
    pub running: u32,
    /// The agent's wall clock when it sent this beat, Unix milliseconds. The gateway compares it with
    /// its own clock on arrival (the clock offset; skew beyond a bound is a fault). 0: not said.
    #[serde(default)]
    pub sent_at_ms: u64,
    /// Seconds until the next beat at the latest (the agent's interval plus its jitter): a beat
    /// later than this, on a link that still answers pings, is "late". 0: not said (30 s assumed).
    #[serde(default)]
    pub interval_s: u32,
    /// Faults the node sees in itself now (empty when healthy); a node with any is in `error`.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// The node owner's exec policy in force (docs/policy.md); `None` from agents before issue 9.
    /// Boxed so the rarely-read summary does not grow every `Message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Box<PolicySummary>>,
    /// The services the node declares (`agent run --service`), whether reachable now or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceInfo>,
}

/// A service a node declares: what the gateway lists in `GET /api/v1/nodes/{id}` → `services`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Its name (what `gateway connect NODE NAME` asks for).
    pub name: String,
    /// Where the agent connects on the node: `127.0.0.1:22`, `[::1]:8123` or `unix:/run/x.sock`.
    pub target: String,
    /// Whether the node's owner allows streams to it now (the policy file can turn it off).
    pub enabled: bool,
}

/// What a node says about its exec policy: enough to know what it will refuse, not the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySummary {
    /// `allow-all`, `allowlist` or `deny-all`.
    pub mode: String,
    /// Whether shell strings (`command`) run in allowlist mode.
    #[serde(default)]
    pub allow_shell: bool,
    /// Number of allowlist rules.
    #[serde(default)]
    pub rules: u32,
    /// The user jobs run as, if the owner set one.
    #[serde(default)]
    pub run_as: Option<String>,
    /// The cap on a job's runtime, seconds.
    #[serde(default)]
    pub max_runtime_s: Option<u64>,
    /// Directories file transfers may use (`None`: anywhere; empty: none).
    #[serde(default)]
    pub file_dirs: Option<Vec<String>>,
    /// Whether service streams are allowed (reserved for issue 10).
    #[serde(default)]
    pub services: bool,
    /// Why the last reload (SIGHUP) failed; the previous policy is still in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
}

/// A fault a node reports about itself: `code` is one of [`fault`], `message` is for people.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Machine-readable kind, one of [`fault`].
    pub code: String,
    /// What is wrong, in plain words (with the path or figure involved).
    pub message: String,
}

/// The codes of [`Fault`].
pub mod fault {
    /// The agent cannot write to its data dir (job ledger, results, node key rotation).
    pub const DATA_DIR_NOT_WRITABLE: &str = "data_dir_not_writable";
    /// The node owner's policy file failed to reload (SIGHUP); the previous policy stays in force.
    pub const POLICY_INVALID: &str = "policy_invalid";
}

/// Health figures an agent reports. Sizes are bytes, rates are counters the gateway differences
/// (network), percentages are of the interval since the previous beat. Empty lists and `None` mean
/// "not readable on this machine", never zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Seconds since boot.
    pub uptime_s: u64,
    /// 1-minute load average.
    pub load1: f64,
    /// 5-minute load average.
    #[serde(default)]
    pub load5: f64,
    /// 15-minute load average.
    #[serde(default)]
    pub load15: f64,
    /// CPU use in percent of all cores since the previous beat.
    pub cpu_percent: f32,
    /// CPU use per core, in percent of that core, since the previous beat (index = core number).
    #[serde(default)]
    pub cpu_cores: Vec<f32>,
    /// Memory in bytes.
    pub mem_total: u64,
    /// Memory in use (total minus available), bytes.
    pub mem_used: u64,
    /// Memory available to new programs without swapping (`MemAvailable`), bytes.
    #[serde(default)]
    pub mem_available: u64,
    /// Swap size, bytes.
    #[serde(default)]
    pub swap_total: u64,
    /// Swap in use, bytes.
    #[serde(default)]
    pub swap_used: u64,
    /// Root filesystem size, bytes (also in `filesystems`; kept for older readers).
    pub disk_total: u64,
    /// Root filesystem free, bytes (also in `filesystems`).
    pub disk_free: u64,
    /// Every real filesystem (block devices; no tmpfs, overlay, squashfs, proc or cgroup noise), one
    /// entry per mount point.
    #[serde(default)]
    pub filesystems: Vec<Filesystem>,
    /// Network byte counters per interface since boot (loopback left out).
    #[serde(default)]
    pub network: Vec<NetInterface>,
    /// Temperatures the kernel exposes (`/sys/class/thermal`, hwmon), degrees Celsius.
    #[serde(default)]
    pub temperatures: Vec<Temperature>,
    /// The Raspberry Pi firmware's throttling flags (`get_throttled`, bit 0 under-voltage now, bit
    /// 2 throttled now, ...) where readable.
    #[serde(default)]
    pub throttled: Option<u32>,
    /// Processes on the machine.
    #[serde(default)]
    pub processes: u32,
    /// The agent's own resident memory, bytes.
    pub agent_rss: u64,
}

/// One mounted filesystem, from `statvfs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filesystem {
    /// Mount point.
    pub mount: String,
    /// Device (`/dev/mmcblk0p2`).
    pub device: String,
    /// Filesystem type (`ext4`).
    pub fstype: String,
    /// Size, bytes.
    pub total: u64,
    /// Free for unprivileged users (`f_bavail`), bytes.
    pub available: u64,
    /// Free including the root reserve (`f_bfree`), bytes; used = total - free.
    pub free: u64,
    /// Inodes in all.
    pub inodes_total: u64,
    /// Inodes free.
    pub inodes_free: u64,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Byte counters of one network interface since boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// Interface name (`eth0`, `wlan0`).
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// One temperature sensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// Sensor name (`cpu-thermal`, `coretemp/Package id 0`).
    pub sensor: String,
    /// Degrees Celsius.
    pub celsius: f32,
}
