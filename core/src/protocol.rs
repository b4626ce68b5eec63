//! The gateway ↔ agent wire protocol, spoken over each node's reverse-forwarded port.
//!
//! # Framing
//!
//! Every message is one frame:
//!
//! ```text
//! u32 length (big endian, counts everything after itself) | u8 kind | u32 request id | payload
//! ```
//!
//! `length` is at most [`MAX_FRAME`]; a larger or unknown frame is a protocol error and the connection is
//! dropped. Payloads are raw bytes (process output is not text) or, for structured messages, JSON.
//!
//! # Session
//!
//! 1. Both ends send [`Message::Hello`] at once: protocol version, role, Ed25519 key, 32-byte nonce.
//! 2. Each then sends [`Message::Auth`]: a signature over both nonces and both keys
//!    (see [`crate::handshake`]). The agent accepts requests only from the gateway key pinned at join
//!    time; the gateway accepts only the key registered for the node behind that port. Fresh nonces on
//!    both sides make a recorded handshake worthless.
//! 3. Requests are multiplexed by request id (chosen by the gateway, non-zero). For `Exec` the agent
//!    answers with any number of `Stdout`/`Stderr` frames and exactly one `Exit` (or `Failed`).
//!
//! # Flow control
//!
//! Each request starts with [`INITIAL_WINDOW`] bytes of output credit. The agent never sends more
//! `Stdout`/`Stderr` payload than the credit it holds; the gateway returns credit with `Credit` as it hands
//! output on. A chatty command therefore blocks on its own pipe instead of flooding the connection, and
//! other requests on the same node keep flowing.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The protocol version sent in `Hello`; peers with another version are refused.
pub const VERSION: u16 = 1;
/// Largest frame (kind + id + payload) a peer may send.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest output chunk the agent puts in one `Stdout`/`Stderr` frame.
pub const MAX_CHUNK: usize = 32 * 1024;
/// Output credit each request starts with.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Which side of the connection a peer claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The gateway, which sends requests.
    Gateway,
    /// An agent, which serves them.
    Agent,
}

/// What to run on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExecSpec {
    /// Run by `/bin/sh -c`; exclusive with `argv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Program and arguments, run without a shell; exclusive with `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Kill the process group after this many seconds.
    pub timeout_s: u64,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Whether burrow killed it because `timeout_s` expired.
    pub timed_out: bool,
    /// Wall time from spawn to exit.
    pub duration_ms: u64,
}

/// One protocol message with its request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Opens the handshake.
    Hello {
        /// Protocol version ([`VERSION`]).
        version: u16,
        /// The sender's role.
        role: Role,
        /// The sender's Ed25519 public key.
        key: [u8; 32],
        /// Fresh random nonce.
        nonce: [u8; 32],
    },
    /// Proves the key from `Hello` (see [`crate::handshake`]).
    Auth {
        /// Ed25519 signature over the handshake transcript.
        signature: [u8; 64],
    },
    /// Gateway → agent: run a command.
    Exec {
        /// Request id.
        id: u32,
        /// What to run.
        spec: ExecSpec,
    },
    /// Agent → gateway: standard output bytes.
    Stdout {
        /// Request id.
        id: u32,
        /// Raw bytes.
        data: Vec<u8>,
    },
    /// Agent → gateway: standard error bytes.
    Stderr {
        /// Request id.
        id: u32,
        /// Raw bytes.
        data: Vec<u8>,
    },
    /// Agent → gateway: the command ended; the last frame of a request.
    Exit {
        /// Request id.
        id: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// Agent → gateway: the request could not be carried out (spawn failed, refused by policy).
    Failed {
        /// Request id.
        id: u32,
        /// Why, for humans.
        message: String,
    },
    /// Gateway → agent: more output credit for a request.
    Credit {
        /// Request id.
        id: u32,
        /// Bytes of payload the agent may send in addition.
        bytes: u32,
    },
    /// Gateway → agent: stop a request (its process group is killed).
    Cancel {
        /// Request id.
        id: u32,
    },
    /// Liveness probe; answered with `Pong` carrying the same value.
    Ping(u64),
    /// Answer to `Ping`.
    Pong(u64),
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const AUTH: u8 = 2;
    pub const EXEC: u8 = 3;
    pub const STDOUT: u8 = 4;
    pub const STDERR: u8 = 5;
    pub const EXIT: u8 = 6;
    pub const FAILED: u8 = 7;
    pub const CREDIT: u8 = 8;
    pub const CANCEL: u8 = 9;
    pub const PING: u8 = 10;
    pub const PONG: u8 = 11;
}

impl Message {
    /// Encodes the message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, id, payload): (u8, u32, Vec<u8>) = match self {
            Message::Hello {
                version,
                role,
                key,
                nonce,
            } => {
                let mut p = version.to_be_bytes().to_vec();
                p.push(match role {
                    Role::Gateway => 1,
                    Role::Agent => 2,
                });
                p.extend_from_slice(key);
                p.extend_from_slice(nonce);
                (kind::HELLO, 0, p)
            }
            Message::Auth { signature } => (kind::AUTH, 0, signature.to_vec()),
            Message::Exec { id, spec } => (kind::EXEC, *id, json(spec)),
            Message::Stdout { id, data } => (kind::STDOUT, *id, data.clone()),
            Message::Stderr { id, data } => (kind::STDERR, *id, data.clone()),
            Message::Exit { id, status } => (kind::EXIT, *id, json(status)),
            Message::Failed { id, message } => (kind::FAILED, *id, message.as_bytes().to_vec()),
            Message::Credit { id, bytes } => (kind::CREDIT, *id, bytes.to_be_bytes().to_vec()),
            Message::Cancel { id } => (kind::CANCEL, *id, Vec::new()),
            Message::Ping(v) => (kind::PING, 0, v.to_be_bytes().to_vec()),
            Message::Pong(v) => (kind::PONG, 0, v.to_be_bytes().to_vec()),
        };
        let len = 1 + 4 + payload.len();
        let mut frame = Vec::with_capacity(4 + len);
        frame.extend_from_slice(&(len as u32).to_be_bytes());
        frame.push(kind);
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&payload);
        frame
    }

    /// Decodes one frame body (everything after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Message> {
        if body.len() < 5 {
            return Err(proto("frame shorter than its header"));
        }
        let kind = body[0];
        let id = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes"));
        let p = &body[5..];
        let msg = match kind {
            kind::HELLO => {
                if p.len() != 2 + 1 + 32 + 32 {
                    return Err(proto("Hello has the wrong length"));
                }
                let role = match p[2] {
                    1 => Role::Gateway,
                    2 => Role::Agent,
                    other => return Err(proto(format!("unknown role {other}"))),
                };
                Message::Hello {
                    version: u16::from_be_bytes([p[0], p[1]]),
                    role,
                    key: p[3..35].try_into().expect("32 bytes"),
                    nonce: p[35..67].try_into().expect("32 bytes"),
                }
            }
            kind::AUTH => Message::Auth {
                signature: p
                    .try_into()
                    .map_err(|_| proto("Auth signature is not 64 bytes"))?,
            },
            kind::EXEC => Message::Exec {
                id,
                spec: from_json(p, "Exec")?,
            },
            kind::STDOUT => Message::Stdout {
                id,
                data: p.to_vec(),
            },
            kind::STDERR => Message::Stderr {
                id,
                data: p.to_vec(),
            },
            kind::EXIT => Message::Exit {
                id,
                status: from_json(p, "Exit")?,
            },
            kind::FAILED => Message::Failed {
                id,
                message: String::from_utf8_lossy(p).into_owned(),
            },
            kind::CREDIT => Message::Credit {
                id,
                bytes: u32::from_be_bytes(
                    p.try_into().map_err(|_| proto("Credit is not 4 bytes"))?,
                ),
            },
            kind::CANCEL => Message::Cancel { id },
            kind::PING | kind::PONG => {
                let v = u64::from_be_bytes(p.try_into().map_err(|_| proto("Ping is not 8 bytes"))?);
                if kind == kind::PING {
                    Message::Ping(v)
                } else {
                    Message::Pong(v)
                }
            }
            other => return Err(proto(format!("unknown frame kind {other}"))),
        };
        Ok(msg)
    }
}

/// Reads one message; `Err(Error::Closed)` on a clean end of stream between frames.
pub fn read_message<R: Read + ?Sized>(reader: &mut R) -> Result<Message> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match reader.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(Error::Closed),
            Ok(0) => return Err(proto("stream ended inside a frame header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading frame", e)),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(proto(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME} byte limit"
        )));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            proto("stream ended inside a frame")
        } else {
            Error::io("reading frame", e)
        }
    })?;
    Message::decode(&body)
}

/// Writes one message and flushes.
pub fn write_message<W: Write + ?Sized>(writer: &mut W, message: &Message) -> Result<()> {
    writer
        .write_all(&message.encode())
        .and_then(|()| writer.flush())
        .map_err(|e| Error::io("writing frame", e))
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types serialize")
}

fn from_json<T: for<'de> Deserialize<'de>>(payload: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(payload).map_err(|e| proto(format!("bad {what} payload: {e}")))
}

fn proto(message: impl Into<String>) -> Error {
    Error::Protocol(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                version: VERSION,
                role: Role::Agent,
                key: [7; 32],
                nonce: [9; 32],
            },
            Message::Auth { signature: [3; 64] },
            Message::Exec {
                id: 5,
                spec: ExecSpec {
                    argv: Some(vec!["uname".into(), "-a".into()]),
                    timeout_s: 60,
                    ..ExecSpec::default()
                },
            },
            Message::Stdout {
                id: 5,
                data: vec![0, 0xff, 0xfe, b'\n'],
            },
            Message::Stderr {
                id: 6,
                data: vec![],
            },
            Message::Exit {
                id: 5,
                status: ExitStatus {
                    exit_code: None,
                    signal: Some(9),
                    timed_out: true,
                    duration_ms: 10,
                },
            },
            Message::Failed {
                id: 2,
                message: "no such file".into(),
            },
            Message::Credit { id: 5, bytes: 4096 },
            Message::Cancel { id: 5 },
            Message::Ping(42),
            Message::Pong(42),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let mut stream = Vec::new();
        for m in samples() {
            write_message(&mut stream, &m).unwrap();
        }
        let mut reader = &stream[..];
        for m in samples() {
            assert_eq!(read_message(&mut reader).unwrap(), m);
        }
        assert!(matches!(read_message(&mut reader), Err(Error::Closed)));
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let frame = (u32::MAX).to_be_bytes();
        let err = read_message(&mut &frame[..]).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        for m in samples() {
            let frame = m.encode();
            for cut in 1..frame.len() {
                assert!(read_message(&mut &frame[..cut]).is_err());
            }
        }
    }

    /// A cheap stand-in for the fuzzer: random bytes must never panic the decoder.
    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 80) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8).collect();
            let _ = Message::decode(&bytes);
            let _ = read_message(&mut &bytes[..]);
        }
    }
}
