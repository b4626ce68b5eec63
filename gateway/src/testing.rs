//! Helpers the gateway's unit tests share (compiled for tests only).

use std::path::Path;
use std::process::Command;

/// A port nothing listens on, on 127.0.0.1 (`serve::free_port`).
pub fn free_port() -> u16 {
    crate::serve::free_port(([127, 0, 0, 1], 0).into())
        .unwrap()
        .port()
}

/// `sshd -T` (the settings sshd itself derives) for a login of `user` from 127.0.0.1 under
/// `config`, run with the sshd binary `sshd`.
pub fn sshd_t(sshd: &Path, config: &Path, user: &str) -> String {
    let out = Command::new(sshd)
        .arg("-T")
        .arg("-f")
        .arg(config)
        .arg("-C")
        .arg(format!("user={user},host=node,addr=127.0.0.1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
