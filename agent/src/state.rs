//! The agent's data dir: its key (`agent.key`, OpenSSH format, 0600) and `agent.json` with the gateway
//! pins from the join string, its name, assigned ports and current token. Written crash-safely.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use burrow_core::identity::Identity;
use burrow_core::join::JoinTicket;
use serde::{Deserialize, Serialize};

/// What `agent.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    pub name: String,
    /// The gateway as pinned at join time (the secret is not kept).
    pub gateway: Pins,
    pub capabilities: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `approved` once paired, `pending` while waiting for an operator.
    pub status: String,
    #[serde(default)]
    pub ports: Option<[u16; 2]>,
    #[serde(default)]
    pub token: Option<String>,
}

/// The gateway's address and keys, pinned from the join string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    pub ssh: String,
    /// Who the node logs in as once approved.
    pub user: String,
    /// Who it logs in as to pair (join secret, or its own key while pending); `None` in states saved
    /// from join strings without one, which mean `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_user: Option<String>,
    pub host_key: String,
    pub gateway_key: String,
    pub api_port: u16,
}

impl Pins {
    pub fn from_ticket(t: &JoinTicket) -> Pins {
        Pins {
            ssh: t.ssh.clone(),
            user: t.user.clone(),
            enroll_user: t.enroll_user.clone(),
            host_key: t.host_key.clone(),
            gateway_key: t.gateway_key.clone(),
            api_port: t.api_port,
        }
    }
}

pub struct DataDir {
    dir: PathBuf,
}

impl DataDir {
    pub fn open(dir: &Path) -> anyhow::Result<DataDir> {
        burrow_core::atomic_file::private_dir(dir)?;
        Ok(DataDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The node's identity, created on first use.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn identity(&self) -> anyhow::Result<Identity> {
        let host = burrow_core::hostname("node");
        let (identity, created) = Identity::load_or_generate(
            &self.dir.join("agent.key"),
            &format!("burrow-agent@{}", host),
        )?;
        if created {
            log::info!("created node key {}", identity.public().fingerprint());
        }
        Ok(identity)
    }

    pub fn load(&self) -> anyhow::Result<Option<AgentState>> {
        let path = self.dir.join("agent.json");
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, state: &AgentState) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(state).expect("state serializes");
        Ok(burrow_core::atomic_file::write(
            &self.dir.join("agent.json"),
            &json,
            0o600,
        )?)
    }
}
