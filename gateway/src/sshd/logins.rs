//! Which key each live sshd connection logged in with, read from sshd's own log: with `LogLevel
//! VERBOSE` it says `Accepted publickey for USER from IP port PORT ssh2: ED25519 SHA256:…` once per
//! login. The client's address and port name the TCP connection, and so (through `/proc/net/tcp`)
//! the session process holding it: how [`super::Supervisor::cut_off`] finds a node's sessions.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// More connections than this are not remembered; the oldest are dropped (they most likely ended
/// without sshd saying so, e.g. killed).
const MAX_REMEMBERED: usize = 65_536;

/// Live logins by the client's address: the key fingerprint and the order they came in.
#[derive(Default)]
pub(super) struct Logins {
    by_peer: HashMap<SocketAddr, (String, u64)>,
    counter: u64,
}

impl Logins {
    /// Updates the table from one line of sshd's log.
    pub(super) fn observe(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("Accepted publickey for ") {
            // USER from IP port PORT ssh2: TYPE SHA256:…
            let Some((_, rest)) = rest.split_once(" from ") else {
                return;
            };
            let Some(peer) = peer(rest) else { return };
            let Some(fingerprint) = rest.split_whitespace().find(|w| w.starts_with("SHA256:"))
            else {
                return;
            };
            if self.by_peer.len() >= MAX_REMEMBERED {
                let oldest = self
                    .by_peer
                    .iter()
                    .min_by_key(|(_, v)| v.1)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    self.by_peer.remove(&oldest);
                }
            }
            self.counter += 1;
            self.by_peer
                .insert(peer, (fingerprint.to_string(), self.counter));
            return;
        }
        // The last line sshd logs for a connection that ends by itself.
        let ended = ["Closing connection to ", "Disconnected from user "]
            .iter()
            .find_map(|p| line.strip_prefix(p));
        if let Some(rest) = ended {
            // "Disconnected from user USER IP port N": skip the user name.
            let rest = match line.starts_with("Disconnected") {
                true => rest.split_once(' ').map_or("", |(_, r)| r),
                false => rest,
            };
            if let Some(peer) = peer(rest) {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// Forgets logins whose sessions were killed (sshd logs nothing for them).
    pub(super) fn forget(&mut self, peers: &[SocketAddr]) {
        for peer in peers {
            self.by_peer.remove(peer);
        }
    }

    /// The client addresses of live logins with `fingerprint`.
    pub(super) fn peers_of(&self, fingerprint: &str) -> Vec<SocketAddr> {
        (self.by_peer.iter())
            .filter(|(_, (fp, _))| fp == fingerprint)
            .map(|(peer, _)| *peer)
            .collect()
    }
}

/// `IP port N…` → the address.
fn peer(text: &str) -> Option<SocketAddr> {
    let mut words = text.split_whitespace();
    let ip: IpAddr = words.next()?.parse().ok()?;
    if words.next()? != "port" {
        return None;
    }
    let port: u16 = words.next()?.trim_end_matches(':').parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_follow_sshd_verbose_lines() {
        let mut l = Logins::default();
        let fp = "SHA256:eMniSsoSxhvescO5cX5s0dyeC0PVNN0uC8I3lFhBGco";
        l.observe(&format!(
            "Accepted publickey for root from 127.0.0.1 port 46956 ssh2: ED25519 {fp}"
        ));
        l.observe(&format!(
            "Accepted publickey for burrow-enroll from ::1 port 40000 ssh2: ED25519 {fp}"
        ));
        l.observe("Accepted publickey for root from 127.0.0.1 port 1 ssh2: ED25519 SHA256:other");
        let mut peers = l.peers_of(fp);
        peers.sort();
        assert_eq!(
            peers,
            vec![
                "127.0.0.1:46956".parse().unwrap(),
                "[::1]:40000".parse().unwrap()
            ]
        );
        l.observe("Disconnected from user root 127.0.0.1 port 46956");
        l.observe("Closing connection to ::1 port 40000");
        assert!(l.peers_of(fp).is_empty());
        assert_eq!(l.peers_of("SHA256:other").len(), 1);
        // Lines that only look alike change nothing.
        l.observe("Accepted key ED25519 SHA256:x found at /bin/cat \"/x\":1");
        l.observe("Received disconnect from 127.0.0.1 port 1:11: disconnected by user");
        assert_eq!(l.peers_of("SHA256:other").len(), 1);
        l.forget(&["127.0.0.1:1".parse().unwrap()]);
        assert!(l.peers_of("SHA256:other").is_empty());
    }
}
