//! Mutual Ed25519 authentication: at the start of every gateway ↔ agent connection, and the signed
//! challenges that protect pairing and the agent's API calls.
//!
//! Each signature covers a domain-separation label, both fresh nonces and both keys, so a signature made
//! for one purpose, one connection or one peer is useless for any other, and a recorded handshake
//! cannot be replayed.

use std::io::{Read, Write};

use crate::error::{Error, Result};
use crate::identity::{Identity, PublicKey};
use crate::protocol::{read_message, write_message, Message, Role, VERSION};

/// Runs the handshake on a fresh connection as `role`, and returns the peer's key once it has proved it.
///
/// `accept` decides whether the key the peer announces is one we talk to (the pinned gateway key on the
/// agent, the node's registered key on the gateway); it is checked before any signature is made.
pub fn handshake<S: Read + Write + ?Sized>(
    stream: &mut S,
    me: &Identity,
    role: Role,
    accept: impl FnOnce(&PublicKey) -> bool,
) -> Result<PublicKey> {
    let my_nonce: [u8; 32] = crate::random_bytes();
    let my_key = me.public();
    write_message(
        stream,
        &Message::Hello {
            version: VERSION,
            role,
            key: *my_key.as_bytes(),
            nonce: my_nonce,
        },
    )?;
    let (peer_key, peer_nonce) = match read_message(stream)? {
        Message::Hello {
            version,
            role: peer_role,
            key,
            nonce,
        } => {
            if version != VERSION {
                return Err(Error::Protocol(format!(
                    "peer speaks protocol version {version}, this build speaks {VERSION}"
                )));
            }
            if peer_role == role {
                return Err(Error::Protocol("peer claims our own role".into()));
            }
            (PublicKey::from_bytes(key), nonce)
        }
        other => return Err(Error::Protocol(format!("expected Hello, got {other:?}"))),
    };
    if !accept(&peer_key) {
        return Err(Error::BadSignature("peer key is not the one expected"));
    }
    let signature = me.sign(&transcript(
        role,
        &my_nonce,
        &peer_nonce,
        &my_key,
        &peer_key,
    ));
    write_message(stream, &Message::Auth { signature })?;
    match read_message(stream)? {
        Message::Auth { signature } => {
            let peer_role = match role {
                Role::Gateway => Role::Agent,
                Role::Agent => Role::Gateway,
            };
            let expected = transcript(peer_role, &peer_nonce, &my_nonce, &peer_key, &my_key);
            peer_key.verify(&expected, &signature)?;
            Ok(peer_key)
        }
        other => Err(Error::Protocol(format!("expected Auth, got {other:?}"))),
    }
}

/// What the `signer` signs: label, its role, its nonce, the verifier's nonce, its key, the verifier's key.
fn transcript(
    signer: Role,
    signer_nonce: &[u8; 32],
    verifier_nonce: &[u8; 32],
    signer_key: &PublicKey,
    verifier_key: &PublicKey,
) -> Vec<u8> {
    let mut t = b"burrow-handshake-v1\0".to_vec();
    t.push(match signer {
        Role::Gateway => b'G',
        Role::Agent => b'A',
    });
    t.extend_from_slice(signer_nonce);
    t.extend_from_slice(verifier_nonce);
    t.extend_from_slice(signer_key.as_bytes());
    t.extend_from_slice(verifier_key.as_bytes());
    t
}

/// What the gateway signs to prove, over a direct-tcpip channel, that it is the API the agent pinned
/// (before the agent sends a token or a pairing request there).
pub fn api_hello_message(client_nonce: &[u8], server_nonce: &[u8]) -> Vec<u8> {
    let mut m = b"burrow-api-hello-v1\0".to_vec();
    m.extend_from_slice(client_nonce);
    m.extend_from_slice(server_nonce);
    m
}

/// What a node signs to prove possession of its key in a pairing request: the gateway's one-time
/// server nonce and the exact request bytes.
pub fn pair_message(server_nonce: &[u8], request: &[u8]) -> Vec<u8> {
    let mut m = b"burrow-pair-v1\0".to_vec();
    m.extend_from_slice(server_nonce);
    m.extend_from_slice(request);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::os::unix::net::UnixStream;

    fn run_pair(
        gateway: Identity,
        agent: Identity,
        gateway_expects: PublicKey,
        agent_expects: PublicKey,
    ) -> (Result<PublicKey>, Result<PublicKey>) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let r = handshake(&mut a, &gateway, Role::Gateway, |k| *k == gateway_expects);
            drop(a);
            r
        });
        let r_agent = handshake(&mut b, &agent, Role::Agent, |k| *k == agent_expects);
        drop(b);
        (t.join().unwrap(), r_agent)
    }

    #[test]
    fn both_sides_learn_each_other() {
        let (g, a) = (Identity::generate("g"), Identity::generate("a"));
        let (rg, ra) = run_pair(g.clone(), a.clone(), a.public(), g.public());
        assert_eq!(rg.unwrap(), a.public());
        assert_eq!(ra.unwrap(), g.public());
    }

    #[test]
    fn impostor_gateway_is_refused() {
        let (g, a, evil) = (
            Identity::generate("g"),
            Identity::generate("a"),
            Identity::generate("e"),
        );
        // The agent pinned `g`; a local attacker with its own key gets nowhere.
        let (_rg, ra) = run_pair(evil, a.clone(), a.public(), g.public());
        assert!(ra.is_err());
    }

    /// A recorded agent handshake replayed by an attacker must not authenticate: the gateway's nonce
    /// is fresh, so the old signature does not verify.
    #[test]
    fn replayed_handshake_is_refused() {
        let (g, a) = (Identity::generate("g"), Identity::generate("a"));
        // Record what the agent sends in a genuine session.
        let (mut ga, mut gb) = UnixStream::pair().unwrap();
        let g2 = g.clone();
        let apub = a.public();
        let t = std::thread::spawn(move || handshake(&mut ga, &g2, Role::Gateway, |k| *k == apub));
        let mut recorder = Recorder {
            inner: &mut gb,
            sent: Vec::new(),
        };
        handshake(&mut recorder, &a, Role::Agent, |k| *k == g.public()).unwrap();
        t.join().unwrap().unwrap();
        let recorded = recorder.sent;
        // Replay it against a new gateway session.
        let (mut x, mut y) = UnixStream::pair().unwrap();
        let apub = a.public();
        let t = std::thread::spawn(move || handshake(&mut x, &g, Role::Gateway, |k| *k == apub));
        y.write_all(&recorded).unwrap();
        let result = t.join().unwrap();
        assert!(matches!(result, Err(Error::BadSignature(_))), "{result:?}");
    }

    struct Recorder<'a> {
        inner: &'a mut UnixStream,
        sent: Vec<u8>,
    }
    impl Read for Recorder<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(buf)
        }
    }
    impl Write for Recorder<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buf);
            self.inner.write_all(buf)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
}
