//! `run.json`: where the running gateway's API and sshd are, so tools (and tests) find them without
//! being told. Written after startup, removed on clean shutdown. The CLI itself does not use it: it
//! talks to the gateway over [`socket_path`], which only the gateway can create.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, Serialize)]
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

pub fn remove(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("run.json"));
}

/// The API's Unix socket in the (0700) data dir: the CLI's way to the running gateway. A local user
/// can squat the TCP port in `run.json` while the gateway is down, but cannot create this file.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("api.sock")
}
