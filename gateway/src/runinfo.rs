//! `run.json`: where the running gateway's API and sshd are, so CLI subcommands (and tests) find them
//! without being told. Written after startup, removed on clean shutdown.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub pid: u32,
    pub api: SocketAddr,
    pub ssh: SocketAddr,
    pub ssh_public: String,
    pub host_fingerprint: String,
}

pub fn write(
    dir: &Path,
    api: SocketAddr,
    ssh: SocketAddr,
    ssh_public: &str,
    fp: &str,
) -> anyhow::Result<()> {
    let info = RunInfo {
        pid: std::process::id(),
        api,
        ssh,
        ssh_public: ssh_public.to_string(),
        host_fingerprint: fp.to_string(),
    };
    let json = serde_json::to_vec_pretty(&info).expect("serializes");
    Ok(burrow_core::atomic_file::write(
        &dir.join("run.json"),
        &json,
        0o600,
    )?)
}

pub fn read(dir: &Path) -> anyhow::Result<RunInfo> {
    let path = dir.join("run.json");
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "the gateway does not seem to be running ({} is missing); start it with `gateway serve --data-dir {}`",
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

pub fn remove(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("run.json"));
}
