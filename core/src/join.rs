//! The join string: one line an operator copies from the gateway to a node.
//!
//! It carries everything the node needs to trust the gateway without trust-on-first-use: the sshd address
//! and users, the sshd host-key fingerprint to pin, the gateway's Ed25519 signing key to pin, the API port
//! on the gateway's loopback, and the join secret. Format: `burrow1.` + unpadded base64url of JSON.
//! Fields added later are optional, so join strings of older gateways still decode.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::identity::{Identity, PublicKey};

const PREFIX: &str = "burrow1.";

/// The decoded contents of a join string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTicket {
    /// `host:port` of the gateway's sshd as nodes reach it.
    pub ssh: String,
    /// The SSH user approved nodes log in as.
    pub user: String,
    /// The SSH user enrollment logins (the join secret's key, a pending node's own key) use: its sshd
    /// settings let it reach the API port and nothing else, listening included. Absent (`None`) when
    /// the gateway's sshd runs unprivileged and can log in only one user: then [`JoinTicket::user`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_user: Option<String>,
    /// `SHA256:` fingerprint of the sshd host key.
    pub host_key: String,
    /// The gateway's Ed25519 signing key (base64).
    pub gateway_key: String,
    /// The API port on the gateway's 127.0.0.1 (reached through direct-tcpip).
    pub api_port: u16,
    /// The join secret (base64url, 32 bytes).
    pub secret: String,
}

impl JoinTicket {
    /// Encodes as a single copy-pasteable string.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("ticket serializes");
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Decodes a join string, with a message that says what is wrong.
    pub fn decode(text: &str) -> Result<JoinTicket> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| Error::InvalidJoin(format!("it must start with {PREFIX:?}")))?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| {
            Error::InvalidJoin("not valid base64url (was it cut while copying?)".into())
        })?;
        let ticket: JoinTicket = serde_json::from_slice(&json)
            .map_err(|e| Error::InvalidJoin(format!("bad contents: {e}")))?;
        ticket.gateway_public_key()?;
        if !ticket.host_key.starts_with("SHA256:") {
            return Err(Error::InvalidJoin(
                "host key fingerprint must start with SHA256:".into(),
            ));
        }
        Ok(ticket)
    }

    /// The user enrollment logins use: [`JoinTicket::enroll_user`], else [`JoinTicket::user`].
    pub fn enrollment_user(&self) -> &str {
        self.enroll_user.as_deref().unwrap_or(&self.user)
    }

    /// The pinned gateway signing key.
    pub fn gateway_public_key(&self) -> Result<PublicKey> {
        PublicKey::from_base64(&self.gateway_key)
            .map_err(|e| Error::InvalidJoin(format!("gateway key: {e}")))
    }
}

/// A new random join secret (base64url).
pub fn new_secret() -> String {
    URL_SAFE_NO_PAD.encode(crate::random_bytes::<32>())
}

/// What the gateway stores instead of the secret: hex SHA-256, also used as the token's id prefix.
pub fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// The enrollment key both sides derive from a join secret. The gateway lets this key (and only while
/// the token is valid) open a direct-tcpip channel to the API, so a new node can reach the pairing
/// endpoint before its own key is known; it cannot listen, run commands or reach anything else.
pub fn enrollment_identity(secret: &str) -> Identity {
    let mut h = Sha256::new();
    h.update(b"burrow-enroll-v1\0");
    h.update(secret.as_bytes());
    Identity::from_seed(h.finalize().into(), "burrow-enroll")
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> JoinTicket {
        JoinTicket {
            ssh: "203.0.113.7:2222".into(),
            user: "burrow".into(),
            enroll_user: Some("burrow-enroll".into()),
            host_key: "SHA256:abc".into(),
            gateway_key: Identity::generate("g").public().to_base64(),
            api_port: 18789,
            secret: new_secret(),
        }
    }

    #[test]
    fn round_trips() {
        let t = ticket();
        assert_eq!(JoinTicket::decode(&t.encode()).unwrap(), t);
    }

    /// Join strings of gateways before the enrollment user (no `enroll_user` field) still decode, and
    /// enrollment then logs in as the node user, as it did.
    #[test]
    fn join_strings_without_an_enrollment_user_still_decode() {
        let mut old = ticket();
        old.enroll_user = None;
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("enroll_user"), "{json}");
        let decoded = JoinTicket::decode(&old.encode()).unwrap();
        assert_eq!(decoded, old);
        assert_eq!(decoded.enrollment_user(), "burrow");
        assert_eq!(ticket().enrollment_user(), "burrow-enroll");
    }

    #[test]
    fn damaged_strings_say_why() {
        let s = ticket().encode();
        assert!(JoinTicket::decode("hello")
            .unwrap_err()
            .to_string()
            .contains("burrow1."));
        let cut = &s[..s.len() - 5];
        assert!(JoinTicket::decode(cut).is_err());
    }

    #[test]
    fn enrollment_key_is_deterministic_per_secret() {
        let a = enrollment_identity("s1").public();
        assert_eq!(a, enrollment_identity("s1").public());
        assert_ne!(a, enrollment_identity("s2").public());
    }
}
