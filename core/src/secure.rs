//! The secure channel of protocol v2: the handshake that authenticates both ends and derives session
//! keys, and the [`Sealer`]/[`Opener`] pair that seals and opens every later frame. The design (what
//! is signed, the key schedule, the nonces, what a relay can do) is in [`crate::protocol`]'s module doc.
//!
//! The two halves are separate values so that one thread can write while another reads: the gateway
//! keeps the `Sealer` behind its writer mutex and the `Opener` in its reader thread; the agent gives the
//! `Sealer` to its writer thread and reads with the `Opener`.

use std::io::{Read, Write};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use ed25519_compact::x25519;
use hkdf::Hkdf;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::identity::{Identity, PublicKey};
use crate::protocol::codec::role_byte;
use crate::protocol::{read_plain, write_plain, Message, Role, MAX_FRAME, VERSION};

#[cfg(test)]
mod tests;

/// Bytes the AEAD adds to each frame.
pub const TAG_LEN: usize = 16;
/// Largest plaintext frame accepted before the peer is authenticated: a `Hello` is 104 bytes, so an
/// unauthenticated peer cannot make us allocate more than this.
const MAX_HELLO_FRAME: usize = 256;

/// An authenticated connection: who the peer is, and the two halves of the channel.
pub struct Channel {
    /// The peer's identity key, proved in the handshake.
    pub peer: PublicKey,
    /// Seals frames for the peer.
    pub sealer: Sealer,
    /// Opens the peer's frames.
    pub opener: Opener,
}

/// Runs the v2 handshake on a fresh connection as `role`.
///
/// `accept` decides whether the identity key the peer announces is one we talk to (the pinned gateway
/// key on the agent, the node's registered key on the gateway); it is checked before any key is derived
/// or anything is signed. Fails on another protocol version, the same role, a refused key, a bad
/// signature or any frame that does not open.
pub fn handshake<S: Read + Write + ?Sized>(
    stream: &mut S,
    me: &Identity,
    role: Role,
    accept: impl FnOnce(&PublicKey) -> bool,
) -> Result<Channel> {
    let ephemeral = x25519::KeyPair::generate();
    let hello = Message::Hello {
        version: VERSION,
        role,
        key: *me.public().as_bytes(),
        ephemeral: *ephemeral.pk,
        nonce: crate::random_bytes(),
    };
    let my_body = hello.encode_body()?;
    write_plain(stream, &hello)?;

    let peer_body = read_plain(stream, MAX_HELLO_FRAME)?;
    let (peer_key, peer_ephemeral) = match Message::decode(&peer_body)? {
        Message::Hello {
            role: peer_role,
            key,
            ephemeral,
            ..
        } => {
            if peer_role != role.peer() {
                return Err(Error::Protocol("peer claims our own role".into()));
            }
            (PublicKey::from_bytes(key), ephemeral)
        }
        other => {
            return Err(Error::Protocol(format!(
                "expected Hello, got {}",
                other.kind_name()
            )))
        }
    };
    if !accept(&peer_key) {
        return Err(Error::BadSignature("peer key is not the one expected"));
    }

    let (gateway_hello, agent_hello) = match role {
        Role::Gateway => (&my_body, &peer_body),
        Role::Agent => (&peer_body, &my_body),
    };
    let hash = transcript_hash(gateway_hello, agent_hello);
    let shared = x25519::PublicKey::new(peer_ephemeral)
        .dh(&ephemeral.sk)
        .map_err(|_| Error::Protocol("peer's ephemeral key is a low-order point".into()))?;
    let (gateway_to_agent, agent_to_gateway) = session_keys(&shared, &hash);
    drop(ephemeral);
    let (send_key, receive_key) = match role {
        Role::Gateway => (gateway_to_agent, agent_to_gateway),
        Role::Agent => (agent_to_gateway, gateway_to_agent),
    };
    let mut sealer = Sealer::new(&send_key);
    let mut opener = Opener::new(&receive_key);

    let signature = me.sign(&auth_message(role, &hash));
    sealer.write_message(stream, &Message::Auth { signature })?;
    match opener.read_message(stream)? {
        Message::Auth { signature } => {
            peer_key.verify(&auth_message(role.peer(), &hash), &signature)?;
        }
        other => {
            return Err(Error::Protocol(format!(
                "expected Auth, got {}",
                other.kind_name()
            )))
        }
    }
    Ok(Channel {
        peer: peer_key,
        sealer,
        opener,
    })
}

/// The two halves of one direction under `key`, both counters at zero: what [`handshake`] builds
/// from a derived key. For the fuzz targets (core/fuzz), which need an established channel without
/// running a handshake per input; a connection's keys come from [`handshake`] alone.
#[doc(hidden)]
pub fn direction_from_key(key: &[u8; 32]) -> (Sealer, Opener) {
    (Sealer::new(key), Opener::new(key))
}

/// `SHA-256("burrow-v2-transcript\0" ‖ len ‖ gateway Hello ‖ len ‖ agent Hello)`.
fn transcript_hash(gateway_hello: &[u8], agent_hello: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"burrow-v2-transcript\0");
    for body in [gateway_hello, agent_hello] {
        h.update((body.len() as u32).to_be_bytes());
        h.update(body);
    }
    h.finalize().into()
}

/// The two directions' keys: (gateway → agent, agent → gateway).
fn session_keys(shared: &[u8; 32], hash: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let hk = Hkdf::<Sha256>::new(Some(hash), shared);
    let expand = |label: &[u8]| {
        let mut key = [0u8; 32];
        hk.expand_multi_info(&[label, hash], &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    };
    (
        expand(b"burrow-v2 gateway->agent"),
        expand(b"burrow-v2 agent->gateway"),
    )
}

/// What each side signs: the label, its own role (so one side's signature is useless as the other's)
/// and the transcript hash.
fn auth_message(signer: Role, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = b"burrow-v2-auth\0".to_vec();
    m.push(role_byte(signer));
    m.extend_from_slice(hash);
    m
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::from(n)
}

/// Seals frames in one direction. Each frame uses the next counter value as its nonce.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl Sealer {
    fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(&Key::from(*key)),
            counter: 0,
        }
    }

    /// The sealed frame for `message`: `u32 length | ciphertext | tag`. Fails on a message above
    /// [`MAX_FRAME`] ([`Error::TooLarge`]) and when the nonce counter is spent (the connection must end).
    pub fn seal(&mut self, message: &Message) -> Result<Vec<u8>> {
        self.seal_body(&message.encode_body()?)
    }

    /// Seals an already encoded frame body. For tests and tools that need a frame no [`Message`]
    /// encodes to (a malformed payload); [`Sealer::seal`] is the way to send a message.
    pub fn seal_body(&mut self, body: &[u8]) -> Result<Vec<u8>> {
        if body.len() > MAX_FRAME {
            return Err(Error::TooLarge {
                what: "frame",
                size: body.len(),
                max: MAX_FRAME,
            });
        }
        if self.counter == u64::MAX {
            return Err(Error::Protocol(
                "the nonce counter is exhausted; the connection must end".into(),
            ));
        }
        let mut frame = Vec::with_capacity(4 + body.len() + TAG_LEN);
        let len = (body.len() + TAG_LEN) as u32;
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(body);
        let (prefix, plaintext) = frame.split_at_mut(4);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce(self.counter), prefix, plaintext.into())
            .map_err(|_| Error::Protocol("sealing a frame failed".into()))?;
        self.counter += 1;
        frame.extend_from_slice(&tag);
        Ok(frame)
    }

    /// Seals `message`, writes it and flushes.
    pub fn write_message<W: Write + ?Sized>(
        &mut self,
        writer: &mut W,
        message: &Message,
    ) -> Result<()> {
        let frame = self.seal(message)?;
        writer
            .write_all(&frame)
            .and_then(|()| writer.flush())
            .map_err(|e| Error::io("writing frame", e))
    }

    #[cfg(test)]
    fn set_counter(&mut self, counter: u64) {
        self.counter = counter;
    }
}

/// Opens frames in one direction, in order. After any failure it refuses everything: the connection
/// must be dropped.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    counter: u64,
    /// The frame being read: its prefix, then its sealed body. Kept across a read timeout, so a caller
    /// whose stream has a read timeout (to check liveness) can call again and lose nothing.
    buf: Vec<u8>,
    filled: usize,
    broken: bool,
}

impl Opener {
    fn new(key: &[u8; 32]) -> Opener {
        Opener {
            cipher: ChaCha20Poly1305::new(&Key::from(*key)),
            counter: 0,
            buf: vec![0; 4],
            filled: 0,
            broken: false,
        }
    }

    /// Reads and opens the next frame. `Err(Error::Closed)` on a clean end of stream between frames;
    /// an error for which [`Error::is_timeout`] holds leaves a partly read frame in place, so the call
    /// may be repeated; any other error is final.
    pub fn read_message<R: Read + ?Sized>(&mut self, reader: &mut R) -> Result<Message> {
        if self.broken {
            return Err(Error::Integrity(
                "an earlier frame failed; the connection is unusable",
            ));
        }
        let result = self.read_inner(reader);
        match &result {
            Err(e) if e.is_timeout() => {}
            Err(_) => self.broken = true,
            Ok(_) => {}
        }
        result
    }

    fn read_inner<R: Read + ?Sized>(&mut self, reader: &mut R) -> Result<Message> {
        self.fill(reader)?;
        if self.buf.len() == 4 {
            let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
            if !(5 + TAG_LEN..=MAX_FRAME + TAG_LEN).contains(&len) {
                return Err(Error::Integrity("frame length out of bounds"));
            }
            self.buf.resize(4 + len, 0);
            self.fill(reader)?;
        }
        let mut frame = std::mem::replace(&mut self.buf, vec![0; 4]);
        self.filled = 0;
        let message = self.open(&mut frame)?;
        Ok(message)
    }

    /// Reads until `buf` is full.
    fn fill<R: Read + ?Sized>(&mut self, reader: &mut R) -> Result<()> {
        while self.filled < self.buf.len() {
            match reader.read(&mut self.buf[self.filled..]) {
                Ok(0) if self.filled == 0 => return Err(Error::Closed),
                Ok(0) => return Err(Error::Integrity("the stream ended inside a frame")),
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading frame", e)),
            }
        }
        Ok(())
    }

    /// Opens a whole sealed frame (prefix included) and decodes it.
    fn open(&mut self, frame: &mut [u8]) -> Result<Message> {
        if self.counter == u64::MAX {
            return Err(Error::Protocol(
                "the nonce counter is exhausted; the connection must end".into(),
            ));
        }
        let (prefix, rest) = frame.split_at_mut(4);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let tag = Tag::try_from(&*tag).expect("16 bytes");
        self.cipher
            .decrypt_inout_detached(&nonce(self.counter), prefix, (&mut *body).into(), &tag)
            .map_err(|_| {
                Error::Integrity("the frame does not open with this connection's key and counter")
            })?;
        self.counter += 1;
        Message::decode(body)
    }

    #[cfg(test)]
    fn set_counter(&mut self, counter: u64) {
        self.counter = counter;
    }
}
