//! burrow's core: what the gateway and the agent must agree on.
//!
//! - [`identity`]: Ed25519 keys as OpenSSH files, lines and `SHA256:` fingerprints.
//! - [`join`]: the one-line join string and the enrollment key derived from its secret.
//! - [`protocol`] and [`secure`]: the framed, multiplexed wire protocol spoken through each node's
//!   reverse tunnel, and the secure channel (signed X25519 handshake, sealed frames) that carries it.
//! - [`handshake`]: the signed challenges of pairing and the agent's API calls.
//! - [`api`]: JSON bodies of the agent-facing API (pairing, heartbeats).
//! - [`atomic_file`]: crash-safe state files.
//! - `settings` (feature `settings`): both binaries' flags, filled in from a TOML file and `BURROW_*`
//!   variables.
//! - `install` (feature `settings`): what `agent install` and `gateway install` share: paths, the
//!   config file, crash-safe writes and the instructions printed after them.
//!
//! This crate knows neither the gateway nor the agent, and links no JWT, HTTP or SSH code, so the agent
//! stays small.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod atomic_file;
mod error;
pub mod handshake;
pub mod identity;
#[cfg(feature = "settings")]
pub mod install;
pub mod join;
pub mod protocol;
pub mod secure;
#[cfg(feature = "settings")]
pub mod settings;

pub use error::{Error, Result};

/// The version of this build, shared by both binaries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// This machine's hostname (from `/proc/sys/kernel/hostname`), or `fallback` when it is unknown.
pub fn hostname(fallback: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback.to_string())
}

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).expect("the OS random source is available");
    bytes
}
