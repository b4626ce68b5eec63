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
/// every 30 s.
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
}

/// Health figures an agent reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Seconds since boot.
    pub uptime_s: u64,
    /// 1-minute load average.
    pub load1: f64,
    /// CPU use in percent of all cores since the previous beat.
    pub cpu_percent: f32,
    /// Memory in bytes.
    pub mem_total: u64,
    /// Memory in use, bytes.
    pub mem_used: u64,
    /// Root filesystem size, bytes.
    pub disk_total: u64,
    /// Root filesystem free, bytes.
    pub disk_free: u64,
    /// The agent's own resident memory, bytes.
    pub agent_rss: u64,
}
