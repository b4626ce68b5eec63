//! The node registry: who is paired, pending or rejected, which join tokens exist, which API tokens are
//! revoked (persisted crash-safely in `state.json`), and what the gateway knows live about each node
//! (online, last seen, metrics; not persisted).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use burrow_core::api::{Heartbeat, Metrics};
use serde::{Deserialize, Serialize};

/// Where a node stands in pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    Pending,
    Approved,
    Rejected,
}

/// A node as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// OpenSSH line of the node's key.
    pub public_key: String,
    pub fingerprint: String,
    pub approval: Approval,
    pub hostname: String,
    pub capabilities: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub os: String,
    pub arch: String,
    pub version: String,
    /// The node's two listen ports on 127.0.0.1, assigned at approval.
    pub ports: Option<[u16; 2]>,
    pub created_at: u64,
    pub approved_at: Option<u64>,
    /// Pending requests lapse at this time.
    pub pending_until: Option<u64>,
    /// The join token it came with.
    pub join_token: String,
}

/// A join token as persisted (the secret itself is never stored, only its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub id: String,
    pub secret_hash: String,
    /// The enrollment key derived from the secret (OpenSSH line), installed in sshd while valid.
    pub enrollment_key: String,
    pub created_at: u64,
    pub expires_at: u64,
    pub uses: u32,
    pub used: u32,
    pub manual: bool,
    pub revoked: bool,
}

impl JoinTokenRecord {
    /// Whether its enrollment key may still log in to sshd. Spent tokens stay enrollable until they
    /// expire, so a reused token reaches the pairing endpoint and is told why it is refused, instead
    /// of failing with a bare sshd authentication error.
    pub fn enrollable(&self, now: u64) -> bool {
        !self.revoked && now < self.expires_at
    }
}

/// Everything in `state.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeRecord>,
    #[serde(default)]
    pub join_tokens: Vec<JoinTokenRecord>,
    /// Revoked API token ids and when they expire anyway (then they are forgotten).
    #[serde(default)]
    pub revoked_jtis: BTreeMap<String, u64>,
}

/// What is known live about a node (not persisted).
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub online: bool,
    pub online_since: Option<u64>,
    pub last_seen: Option<u64>,
    pub port: Option<u16>,
    pub metrics: Option<Metrics>,
    pub agent_version: Option<String>,
}

/// The registry; all mutation goes through [`Registry::update`], which persists before returning.
pub struct Registry {
    path: PathBuf,
    state: Mutex<State>,
    live: Mutex<HashMap<String, Live>>,
}

impl Registry {
    /// Opens `state.json` in `data_dir` (a missing file is an empty registry; a corrupt one is an error,
    /// never silently replaced).
    pub fn open(data_dir: &Path) -> anyhow::Result<Registry> {
        let path = data_dir.join("state.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {} (fix or move it away)", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Registry {
            path,
            state: Mutex::new(state),
            live: Mutex::new(HashMap::new()),
        })
    }

    /// Read access.
    pub fn read(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change`, then writes the state crash-safely. If `change` fails nothing is written; if
    /// writing fails the error is returned (the in-memory change stays, and the next write retries).
    pub fn update<T, E: From<anyhow::Error>>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut state = self.read();
        let out = change(&mut state)?;
        let now = now();
        state.revoked_jtis.retain(|_, exp| *exp > now);
        let json = serde_json::to_vec_pretty(&*state).expect("state serializes");
        burrow_core::atomic_file::write(&self.path, &json, 0o600).map_err(anyhow::Error::from)?;
        Ok(out)
    }

    /// Live view of one node.
    pub fn live(&self, id: &str) -> Live {
        self.live_map().get(id).cloned().unwrap_or_default()
    }

    /// Changes the live view of one node.
    pub fn set_live(&self, id: &str, change: impl FnOnce(&mut Live)) {
        change(self.live_map().entry(id.to_string()).or_default());
    }

    /// A heartbeat from an approved node, over its secure link (or the older HTTP route): seen now,
    /// with these metrics and this agent version. The port it names is not recorded: the link's own
    /// port is (`Bus::attach`), and nothing dials a port a node merely reports.
    pub fn record_heartbeat(&self, id: &str, beat: Heartbeat) {
        let t = now();
        self.set_live(id, |l| {
            l.last_seen = Some(t);
            l.metrics = Some(beat.metrics);
            l.agent_version = Some(beat.version);
        });
    }

    fn live_map(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write (humantime panics past it).
pub const LATEST: u64 = 253_402_300_799;

/// RFC 3339 UTC for the API. A time past year 9999 (only a state file written before TTLs were
/// bounded holds one) shows as [`LATEST`] rather than panicking.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(unix.min(LATEST)))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_across_reopen_and_refuses_corrupt_state() {
        let dir = std::env::temp_dir().join(format!("burrow-reg-{}", std::process::id()));
        burrow_core::atomic_file::private_dir(&dir).unwrap();
        let reg = Registry::open(&dir).unwrap();
        reg.update(|s| {
            s.revoked_jtis.insert("j1".into(), now() + 60);
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
        let again = Registry::open(&dir).unwrap();
        assert!(again.read().revoked_jtis.contains_key("j1"));
        std::fs::write(dir.join("state.json"), b"{not json").unwrap();
        assert!(Registry::open(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
