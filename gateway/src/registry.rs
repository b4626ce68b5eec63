//! The node registry: who is paired, pending or rejected, which join tokens exist, which API tokens are
//! revoked, and what the gateway knows live about each node (last seen, metrics). Whether a node is
//! linked is the bus's; what state it is in is the health module's (`crate::health`).
//!
//! The registry is kept in memory and persisted in the store (`burrow.db`, tables of migration 1,
//! rows in `store::registry`): [`Registry::update`] writes the rows it changed durably before it
//! returns. When and what each node last reported (`last_seen`, its last heartbeat) is written lazily,
//! at most every [`BEAT_SAVE_EVERY`] per node, so it survives a restart without an fsync per beat.
//!
//! Before the store, the registry lived in `state.json`. The first start with such a file imports it
//! into the database, in one transaction that also records the file's SHA-256 in `meta`, then renames
//! it `state.json.imported` (kept, not deleted). A crash between the two finishes the rename at the
//! next start; a `state.json` that differs from what was imported, or that turns up beside a
//! registry already in the database, is an error: the gateway never picks one silently.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use burrow_core::api::{Heartbeat, Metrics, PolicySummary};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::registry::{self as rows, Diff};
use crate::store::Store;

/// A node's `last_seen` and last heartbeat are written to the store at most this often (seconds).
pub const BEAT_SAVE_EVERY: u64 = 10;

/// Where a node stands in pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    Pending,
    Approved,
    Rejected,
}

/// A node as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// The persisted registry (also the format of the old `state.json`, which is imported once).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeRecord>,
    #[serde(default)]
    pub join_tokens: Vec<JoinTokenRecord>,
    /// Revoked API token ids and when they expire anyway (then they are forgotten).
    #[serde(default)]
    pub revoked_jtis: BTreeMap<String, u64>,
}

/// What is known live about a node. `last_seen`, `metrics` and `agent_version` are saved with its
/// heartbeats ([`Registry::record_heartbeat`], lazily) and come back after a restart; the rest
/// starts empty.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// When its current link came up (kept after the link ends; the health module says whether
    /// the node is online).
    pub online_since: Option<u64>,
    pub last_seen: Option<u64>,
    pub port: Option<u16>,
    pub metrics: Option<Metrics>,
    pub agent_version: Option<String>,
    /// The node owner's exec policy, as the node last said (`GET /api/v1/nodes/{id}` shows it).
    pub policy: Option<Box<PolicySummary>>,
    /// The services the node declares, as it last said (`GET /api/v1/nodes/{id}` → `services`).
    pub services: Vec<burrow_core::api::ServiceInfo>,
}

/// The registry; all mutation goes through [`Registry::update`], which persists before returning.
pub struct Registry {
    store: Arc<Store>,
    state: Mutex<State>,
    /// What the store holds: [`Registry::update`] writes the difference to this.
    persisted: Mutex<State>,
    live: Mutex<HashMap<String, Live>>,
    /// When each node's heartbeat was last queued for the store.
    beats_saved: Mutex<HashMap<String, u64>>,
}

impl Registry {
    /// Opens the store in `data_dir` and the registry in it (importing an old `state.json` first; a
    /// corrupt one is an error, never silently replaced). [`Registry::store`] shares the store.
    pub fn open(data_dir: &Path) -> anyhow::Result<Registry> {
        Registry::with_store(data_dir, &Store::open(data_dir)?)
    }

    /// The registry in an open store; `data_dir` is where an old `state.json` may wait for import.
    pub fn with_store(data_dir: &Path, store: &Arc<Store>) -> anyhow::Result<Registry> {
        import_state_json(data_dir, store)?;
        let (state, beats) = store.read(|c| Ok((rows::load(c)?, rows::load_beats(c)?)))?;
        let mut live = HashMap::new();
        for (id, seen, beat) in beats {
            let beat = beat.and_then(|b: String| match serde_json::from_str::<Heartbeat>(&b) {
                Ok(beat) => Some(beat),
                Err(e) => {
                    log::warn!("node {id}: ignoring its saved heartbeat ({e})");
                    None
                }
            });
            let entry: &mut Live = live.entry(id).or_default();
            entry.last_seen = Some(seen);
            if let Some(beat) = beat {
                entry.metrics = Some(beat.metrics);
                entry.agent_version = Some(beat.version);
                entry.policy = beat.policy;
                entry.services = beat.services;
            }
        }
        Ok(Registry {
            store: store.clone(),
            persisted: Mutex::new(state.clone()),
            state: Mutex::new(state),
            live: Mutex::new(live),
            beats_saved: Mutex::new(HashMap::new()),
        })
    }

    /// The store the registry lives in (the API token table shares it).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Read access.
    pub fn read(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Applies `change`, then writes the rows it changed in one durable store transaction. If
    /// `change` fails nothing is written; if writing fails the error is returned (the in-memory change
    /// stays, and the next update writes it too).
    pub fn update<T, E: From<anyhow::Error>>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut state = self.read();
        let out = change(&mut state)?;
        let now = now();
        state.revoked_jtis.retain(|_, exp| *exp > now);
        let mut persisted = lock(&self.persisted);
        let diff = Diff::between(&persisted, &state);
        if !diff.is_empty() {
            self.store
                .write(move |tx| diff.apply(tx))
                .map_err(E::from)?;
            *persisted = state.clone();
        }
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
    /// port is (`Bus::attach`), and nothing dials a port a node merely reports. Saved to the store
    /// lazily, at most every [`BEAT_SAVE_EVERY`] seconds per node.
    pub fn record_heartbeat(&self, id: &str, beat: Heartbeat) {
        let t = now();
        let due = {
            let mut saved = lock(&self.beats_saved);
            match saved.get(id) {
                Some(&last) if t < last.saturating_add(BEAT_SAVE_EVERY) && t >= last => false,
                _ => {
                    saved.insert(id.to_string(), t);
                    true
                }
            }
        };
        if due {
            let json = serde_json::to_string(&beat).ok();
            let id = id.to_string();
            self.store
                .write_lazy(move |tx| rows::record_beat(tx, &id, t, json.as_deref()));
        }
        self.set_live(id, |l| {
            l.last_seen = Some(t);
            l.metrics = Some(beat.metrics);
            l.agent_version = Some(beat.version);
            l.policy = beat.policy;
            l.services = beat.services;
        });
    }

    fn live_map(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        lock(&self.live)
    }
}

/// Imports `<data_dir>/state.json` into the store once (see the module doc).
fn import_state_json(data_dir: &Path, store: &Store) -> anyhow::Result<()> {
    let path = data_dir.join("state.json");
    let shown = path.display();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {shown}")),
    };
    let hash = burrow_core::join::hex(&Sha256::digest(&bytes));
    let (imported, empty) = store.read(|c| {
        Ok((
            rows::meta(c, rows::IMPORTED_STATE_JSON)?,
            rows::is_empty(c)?,
        ))
    })?;
    let db = store.path().display();
    let counts = match imported {
        // Imported, but the rename did not happen (a crash in between): finish it.
        Some(h) if h == hash => None,
        Some(_) => bail!(
            "{shown} is not the state.json that was imported into {db}: the database holds the              registry now; move {shown} away"
        ),
        None if !empty => bail!(
            "both {shown} and {db} hold a registry; the database is the one in use: move {shown}              away (or, to start over from the file, move the database and its -wal file away)"
        ),
        None => {
            let mut state: State = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {shown} (fix or move it away)"))?;
            let now = now();
            state.revoked_jtis.retain(|_, exp| *exp > now);
            let counts = (state.nodes.len(), state.join_tokens.len());
            let diff = Diff::between(&State::default(), &state);
            store
                .write(move |tx| {
                    diff.apply(tx)?;
                    rows::set_meta(tx, rows::IMPORTED_STATE_JSON, &hash)
                })
                .with_context(|| format!("importing {shown} into {db}"))?;
            Some(counts)
        }
    };
    let kept = kept_name(data_dir);
    std::fs::rename(&path, &kept)
        .and_then(|()| std::fs::File::open(data_dir)?.sync_all())
        .with_context(|| format!("renaming {shown} to {}", kept.display()))?;
    match counts {
        Some((nodes, tokens)) => log::info!(
            "imported {shown} into {db} ({nodes} nodes, {tokens} join tokens); the file is kept as {}",
            kept.display()
        ),
        None => log::info!(
            "{shown} was imported into {db} before; renamed it to {}",
            kept.display()
        ),
    }
    Ok(())
}

/// `state.json.imported`, or `state.json.imported.N` if that is taken (an older import is kept too).
fn kept_name(data_dir: &Path) -> std::path::PathBuf {
    let first = data_dir.join("state.json.imported");
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| data_dir.join(format!("state.json.imported.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public_key: format!("ssh-ed25519 AAAA {id}"),
            fingerprint: format!("SHA256:{id}"),
            approval: Approval::Approved,
            hostname: format!("{id}.lan"),
            capabilities: vec!["gpu".into(), "test".into()],
            labels: BTreeMap::from([("site".into(), "home".into())]),
            os: "linux".into(),
            arch: "aarch64".into(),
            version: "0.1.0".into(),
            ports: Some([41000, 41001]),
            created_at: 1_700_000_000,
            approved_at: Some(1_700_000_001),
            pending_until: None,
            join_token: "jt1".into(),
        }
    }

    fn token(id: &str) -> JoinTokenRecord {
        JoinTokenRecord {
            id: id.into(),
            secret_hash: format!("hash-{id}"),
            enrollment_key: format!("ssh-ed25519 BBBB {id}"),
            created_at: 1_700_000_000,
            // A year-10000 expiry from an old state file is kept as it is.
            expires_at: 1_700_000_000 + 10_000 * 365 * 86400,
            uses: 3,
            used: 1,
            manual: true,
            revoked: false,
        }
    }

    fn sample() -> State {
        let mut s = State::default();
        for id in ["pi-1", "pi-2"] {
            s.nodes.insert(id.into(), node(id));
        }
        let mut pending = node("pi-3");
        pending.approval = Approval::Pending;
        pending.ports = None;
        pending.approved_at = None;
        pending.pending_until = Some(1_700_000_600);
        s.nodes.insert("pi-3".into(), pending);
        // Not in id order: the registry keeps the list's order.
        s.join_tokens = vec![token("zz"), token("aa")];
        // A fixed time far ahead, not `now() + …`: two calls of `sample()` a second apart must be
        // equal (`a_corrupt_state_json_is_an_error_and_stays` compared 1796234474 with …475 once).
        s.revoked_jtis.insert("j1".into(), 4_000_000_000);
        s
    }

    fn set(reg: &Registry, to: State) {
        reg.update(|s| {
            *s = to;
            Ok::<_, anyhow::Error>(())
        })
        .unwrap();
    }

    #[test]
    fn round_trips_through_the_store_and_writes_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let mut want = sample();
        set(&reg, want.clone());
        assert_eq!(*Registry::open(dir.path()).unwrap().read(), want);

        // Remove one node, change another, drop a token and an expired jti: all of it persists.
        want.nodes.remove("pi-2");
        want.nodes
            .get_mut("pi-1")
            .unwrap()
            .labels
            .insert("rack".into(), "2".into());
        want.join_tokens.remove(0);
        want.revoked_jtis.insert("old".into(), 1);
        set(&reg, want.clone());
        want.revoked_jtis.remove("old");
        assert_eq!(*reg.read(), want, "expired jtis are forgotten");
        assert_eq!(*Registry::open(dir.path()).unwrap().read(), want);

        // An update that changes nothing, or fails, costs no transaction.
        let commits = reg.store().commits();
        reg.update(|_| Ok::<_, anyhow::Error>(())).unwrap();
        let failed: anyhow::Result<()> = reg.update(|s| {
            s.nodes.clear();
            Err(anyhow::anyhow!("refused"))
        });
        assert!(failed.is_err());
        assert_eq!(reg.store().commits(), commits);
    }

    #[test]
    fn heartbeats_survive_a_restart_and_are_saved_at_most_every_10_s() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        set(&reg, sample());
        let beat = |uptime_s| Heartbeat {
            version: "9.9.9".into(),
            metrics: Metrics {
                uptime_s,
                ..Metrics::default()
            },
            max_jobs: 64,
            running: 0,
            ..Heartbeat::default()
        };
        reg.record_heartbeat("pi-1", beat(100));
        reg.record_heartbeat("pi-1", beat(200));
        assert_eq!(reg.live("pi-1").metrics.unwrap().uptime_s, 200);
        // Dropping the registry closes the store, which commits what is queued.
        drop(reg);
        let reg = Registry::open(dir.path()).unwrap();
        let live = reg.live("pi-1");
        assert_eq!(live.online_since, None, "a link does not survive a restart");
        assert!(live.last_seen.unwrap() + 60 > now());
        assert_eq!(live.agent_version.as_deref(), Some("9.9.9"));
        assert_eq!(
            live.metrics.unwrap().uptime_s,
            100,
            "the second beat, 0 s later, was not written"
        );
        assert_eq!(reg.live("pi-2").last_seen, None);
    }

    #[test]
    fn imports_state_json_once_and_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("state.json");
        let bytes = serde_json::to_vec_pretty(&sample()).unwrap();
        std::fs::write(&old, &bytes).unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        assert_eq!(*reg.read(), sample());
        assert!(!old.exists());
        let kept = dir.path().join("state.json.imported");
        assert_eq!(std::fs::read(&kept).unwrap(), bytes);
        drop(reg);
        assert_eq!(*Registry::open(dir.path()).unwrap().read(), sample());

        // The same file back (a crash before the rename): no second import, renamed again.
        std::fs::write(&old, &bytes).unwrap();
        assert_eq!(*Registry::open(dir.path()).unwrap().read(), sample());
        assert!(!old.exists() && dir.path().join("state.json.imported.1").exists());

        // A different state.json beside the database is refused, and left where it is.
        std::fs::write(&old, b"{}").unwrap();
        let err = format!("{:#}", Registry::open(dir.path()).err().unwrap());
        assert!(
            err.contains("not the state.json that was imported"),
            "{err}"
        );
        assert!(old.exists());
    }

    #[test]
    fn a_corrupt_state_json_is_an_error_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("state.json");
        std::fs::write(&old, b"{not json").unwrap();
        let err = format!("{:#}", Registry::open(dir.path()).err().unwrap());
        assert!(
            err.contains("parsing") && err.contains("state.json"),
            "{err}"
        );
        assert_eq!(std::fs::read(&old).unwrap(), b"{not json");
        // Fixed, it imports (the failed attempt left an empty database behind).
        std::fs::write(&old, serde_json::to_vec(&sample()).unwrap()).unwrap();
        assert_eq!(*Registry::open(dir.path()).unwrap().read(), sample());
    }

    #[test]
    fn a_state_json_beside_a_registry_that_was_never_imported_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        set(&Registry::open(dir.path()).unwrap(), sample());
        std::fs::write(dir.path().join("state.json"), b"{}").unwrap();
        let err = format!("{:#}", Registry::open(dir.path()).err().unwrap());
        assert!(err.contains("both"), "{err}");
    }
}
