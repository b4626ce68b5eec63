//! The API's Unix socket, `api.sock` in the 0700 data dir: how the `gateway` CLI reaches the
//! running gateway (issue 6 §3). Only the gateway's own user (and root) can enter the data dir, so
//! nobody else can connect to the socket — or put their own socket in its place, as a local user
//! can squat the TCP port while the gateway is down. No token travels on this path: the caller is
//! whoever the kernel says connected (`SO_PEERCRED`), and the audit log names that Unix user.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use anyhow::{bail, Context};
use tiny_http::{Limits, Server};

use crate::refusal::{Kind, Refusal};
use crate::tokens::{Role, Verified};

/// Binds the socket, replacing one left by a gateway that died (nothing answers on it), but never
/// one a running gateway still serves.
pub fn bind(path: &Path, limits: Limits) -> anyhow::Result<Server> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another gateway is serving this data dir ({} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the CLI socket {}", path.display()))?;
    // The 0700 data dir is what keeps others out; 0600 says the same on the socket itself.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    Server::from_listener_with_limits(listener, None, limits)
        .map_err(|e| anyhow::anyhow!("serving the CLI socket {}: {e}", path.display()))
}

/// The caller on the socket, by Unix user: root and the gateway's own user are admins (they can
/// read the gateway key anyway); anyone else who got in (a data dir made group-accessible) is not.
pub fn authenticate(uid: u32) -> Result<Verified, Refusal> {
    let subject = actor(uid);
    if uid != 0 && uid != rustix::process::getuid().as_raw() {
        return Err(Refusal::new(
            Kind::Forbidden,
            format!("Unix user {subject} may not use the gateway's socket"),
        ));
    }
    Ok(Verified {
        subject,
        role: Role::Gateway,
        jti: String::new(),
        expires_at: u64::MAX,
    })
}

/// `uid:1000(alice)`: what the audit log records as the actor of a CLI action.
pub fn actor(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid:{uid}({name})"),
        None => format!("uid:{uid}"),
    }
}

/// The account name of `uid` from /etc/passwd (no NSS: enough for local accounts, and the uid is
/// what counts).
fn user_name(uid: u32) -> Option<String> {
    let passwd = match std::fs::read_to_string("/etc/passwd") {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => {
            log::debug!("reading /etc/passwd: {e}");
            return None;
        }
    };
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named_in_the_actor() {
        assert_eq!(actor(0), "uid:0(root)");
    }

    #[test]
    fn a_foreign_uid_on_the_socket_is_forbidden() {
        let foreign = rustix::process::getuid().as_raw().wrapping_add(4242).max(1);
        let err = authenticate(foreign).unwrap_err();
        assert!(matches!(err.kind, Kind::Forbidden));
        let own = authenticate(rustix::process::getuid().as_raw()).unwrap();
        assert_eq!(own.role, Role::Gateway);
    }
}
